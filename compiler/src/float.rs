//! Stage `float`: shapes and dtypes inferred (`infer-shapes`), then weights bound from the
//! recipe's checkpoint or a deterministic initialiser (`bind-weights`).

use qc_dsl::sections::KeyRemap;
use qc_dsl::{Diagnostic, Span};
use qc_runtime::{DType, SplitMix64, Tensor, TensorData};

use crate::ir::{Module, NodeId, Provenance};
use crate::keys::Problem;
use crate::ops::Op;
use crate::pass::{Changed, Ctx, Pass, PassError};

/// A diagnostic at a node's recipe line, with notes at the block instances it sits in.
pub fn node_diagnostic(
    module: &Module,
    id: NodeId,
    code: &'static str,
    message: String,
    label: &str,
    help: String,
) -> Diagnostic {
    let node = module.graph.node(id);
    let mut d = Diagnostic::new(code, node.origin.span, message).label(label).help(help);
    for inst in node.origin.instances.iter().rev() {
        d = d.note(
            inst.call,
            format!("in `{}`, an instance of block `{}`", inst.name, inst.block),
        );
    }
    d
}

/// Infers every node's output type and every parameter's shape.
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        "infer-shapes"
    }

    fn run(&self, module: &mut Module, _cx: &mut Ctx) -> Result<Changed, PassError> {
        let mut diags = vec![];
        for id in module.graph.topo_order() {
            if matches!(module.graph.node(id).op, Op::Input { .. }) {
                continue;
            }
            let inputs = module.graph.inputs_of(id);
            let types: Option<Vec<_>> = inputs.iter().map(|i| module.graph.node(*i).ty.clone()).collect();
            // An input that failed inference was reported already.
            let Some(types) = types else { continue };
            let refs: Vec<_> = types.iter().collect();
            let node = module.graph.node(id);
            let inferred = node.op.infer(&refs).and_then(|ty| {
                let fixed_dims: Vec<usize> = ty.dims.iter().filter_map(fixed).collect();
                match crate::ops::elements(&fixed_dims) {
                    Some(_) => Ok(ty),
                    None => Err(format!(
                        "the output {ty} has more than {} elements",
                        crate::ops::MAX_ELEMENTS
                    )),
                }
            });
            match inferred {
                Ok(ty) => {
                    let in_channels = match &node.op {
                        Op::Linear(_) => types[0].dims.last().and_then(fixed),
                        _ => types.first().and_then(|t| t.dims.get(1)).and_then(fixed),
                    };
                    let shapes = node.op.params(in_channels);
                    if let Some((role, _, shape)) = shapes.iter().find(|(_, _, s)| crate::ops::elements(s).is_none()) {
                        let name = node.name.clone();
                        diags.push(node_diagnostic(
                            module,
                            id,
                            "qc::too-large",
                            format!(
                                "parameter `{name}.{role}` would be {shape:?}, more than {} values",
                                crate::ops::MAX_ELEMENTS
                            ),
                            "this layer is too large",
                            "check `out`, `kernel` and the input size of this layer".into(),
                        ));
                        continue;
                    }
                    let keys = node.params.clone();
                    for (role, key) in keys {
                        if let Some((_, _, shape)) = shapes.iter().find(|(r, _, _)| *r == role) {
                            if let Some(p) = module.params.get_mut(&key) {
                                p.shape = shape.clone();
                            }
                        }
                    }
                    module.graph.node_mut(id).ty = Some(ty);
                }
                Err(msg) => {
                    let inputs_text: Vec<String> = inputs
                        .iter()
                        .zip(&types)
                        .map(|(i, t)| format!("`{}` is {t}", module.graph.node(*i).name))
                        .collect();
                    let name = node.name.clone();
                    diags.push(node_diagnostic(
                        module,
                        id,
                        "qc::shape",
                        format!("shape error in `{name}`: {msg}"),
                        "the shapes do not fit here",
                        format!("inputs: {}", inputs_text.join(", ")),
                    ));
                }
            }
        }
        if diags.is_empty() {
            Ok(Changed::Yes)
        } else {
            Err(PassError::User(diags))
        }
    }
}

fn fixed(d: &crate::types::Dim) -> Option<usize> {
    match d {
        crate::types::Dim::Fixed(n) => Some(*n),
        _ => None,
    }
}

/// Binds every parameter: from the recipe's `weights` file when it has one (every key must fit),
/// else from qc's deterministic initialiser (PyTorch's default schemes, seeded by the key).
pub struct BindWeights;

impl Pass for BindWeights {
    fn name(&self) -> &'static str {
        "bind-weights"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        let recipe = &cx.loaded.recipe;
        match recipe.weights.as_slice() {
            [] => {
                init_all(module, cx.opts.keys_only);
                Ok(Changed::Yes)
            }
            [w, rest @ ..] => {
                if let Some(extra) = rest.first() {
                    return Err(PassError::User(vec![Diagnostic::new(
                        "qc::many-weights",
                        extra.span,
                        "a second `weights` line",
                    )
                    .label("second checkpoint")
                    .note(w.span, "first here")
                    .help("a recipe binds one checkpoint; merge them into one file")]));
                }
                if cx.opts.keys_only {
                    init_all(module, true);
                    return Ok(Changed::Yes);
                }
                let values = crate::checkpoint::read_checkpoint(&w.resolved).map_err(|e| {
                    PassError::User(vec![Diagnostic::new("qc::weights-file", w.span, e.message)
                        .label("this checkpoint")
                        .help(e.help)])
                })?;
                let remap = cx
                    .loaded
                    .sections
                    .weights
                    .first()
                    .map(|s| s.remap.clone())
                    .unwrap_or_default();
                let (values, origins) = crate::remap::apply(values, &remap, &w.path).map_err(PassError::User)?;
                // A float checkpoint binds here, key by key; any other (QAT, converted) waits
                // for the stage it fits.
                let plain: Option<indexmap::IndexMap<String, Tensor>> = values
                    .iter()
                    .map(|(k, v)| match v {
                        crate::checkpoint::CkptValue::Tensor(t) => Some((k.clone(), t.clone())),
                        _ => None,
                    })
                    .collect();
                let later_stage = values.keys().any(|k| crate::keys::is_later_stage_key(k));
                let float_diagnostics = match &plain {
                    Some(tensors) => match bind_checkpoint(module, tensors, &w.path, &remap, &origins, w.span) {
                        Ok(()) => return Ok(Changed::Yes),
                        Err(d) if !later_stage => return Err(PassError::User(d)),
                        Err(d) => d,
                    },
                    None => vec![Diagnostic::new(
                        "qc::checkpoint-stage",
                        w.span,
                        format!("`{}` holds quantized tensors: it is not a float checkpoint", w.path),
                    )
                    .label("this checkpoint")
                    .help("it is bound at the stage whose keys it fits")],
                };
                init_all(module, false);
                cx.pending = Some(crate::pass::PendingCheckpoint {
                    values,
                    file: w.path.clone(),
                    origins,
                    span: w.span,
                    float_diagnostics,
                });
                Ok(Changed::Yes)
            }
        }
    }
}

/// `keys_only` (`RunOptions::keys_only`): conv and linear parameters are zeros instead of
/// random draws (no value is used, and zeros cost nothing to make).
fn init_all(module: &mut Module, keys_only: bool) {
    let keys: Vec<String> = module.params.keys().cloned().collect();
    for key in keys {
        let (dtype, shape, owner) = {
            let p = &module.params[&key];
            (p.dtype, p.shape.clone(), p.owner.clone())
        };
        let op = module.graph.find(&owner).map(|id| module.graph.node(id).op.clone());
        let role = key.rsplit('.').next().unwrap_or("");
        let seed = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let n: usize = shape.iter().product();
        let (method, tensor) = match (dtype, role, &op) {
            (DType::I64, _, _) => (
                "zeros",
                Tensor {
                    shape: shape.clone(),
                    data: TensorData::I64(vec![0; n]),
                },
            ),
            (_, "weight", Some(Op::BatchNorm(_))) | (_, "running_var", _) => {
                ("ones", Tensor::f32(shape.clone(), vec![1.0; n]))
            }
            (_, "bias", Some(Op::BatchNorm(_))) | (_, "running_mean", _) => {
                ("zeros", Tensor::f32(shape.clone(), vec![0.0; n]))
            }
            _ if keys_only => ("zeros", Tensor::f32(shape.clone(), vec![0.0; n])),
            _ => {
                // PyTorch's default for conv and linear: kaiming_uniform(a=sqrt(5)) for the
                // weight and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias; both reduce to
                // that same bound.
                let weight_shape = module
                    .params
                    .get(&format!("{owner}.weight"))
                    .map(|p| p.shape.clone())
                    .unwrap_or_default();
                let fan_in: usize = weight_shape.iter().skip(1).product::<usize>().max(1);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let mut rng = SplitMix64::new(seed);
                let v = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
                (
                    if role == "weight" {
                        "kaiming_uniform"
                    } else {
                        "uniform_fan_in"
                    },
                    Tensor::f32(shape.clone(), v),
                )
            }
        };
        let p = module.params.get_mut(&key).expect("key from the store");
        p.value = Some(tensor);
        p.provenance = Provenance::Init { method, seed };
    }
}

/// Binds a checkpoint; every missing, unexpected, mis-shaped or wrongly typed key is one
/// diagnostic with the closest key on the other side (and the `rename` that binds it, when that
/// key has the same shape), except that a prefix on every key (DataParallel's `module.`) is one
/// diagnostic with the `strip` to write. `remap` is the `weights` line's, for the line a help
/// suggests; `origins` the file's own names of remapped keys, for provenance.
pub fn bind_checkpoint(
    module: &mut Module,
    tensors: &indexmap::IndexMap<String, Tensor>,
    file: &str,
    remap: &KeyRemap,
    origins: &crate::remap::Origins,
    span: Span,
) -> Result<(), Vec<Diagnostic>> {
    let problems = crate::keys::check(module, &crate::keys::entries_of_tensors(tensors));
    if !problems.is_empty() {
        return Err(problems
            .iter()
            .map(|p| checkpoint_diagnostic(module, p, file, remap, span))
            .collect());
    }
    for (key, p) in module.params.iter_mut() {
        p.value = Some(tensors[key].clone());
        p.provenance = Provenance::Checkpoint {
            file: file.to_string(),
            key: origins.get(key).unwrap_or(key).clone(),
        };
    }
    Ok(())
}

/// `f32 [2, 4]`.
fn typed(e: &crate::keys::Entry) -> String {
    format!("{} {:?}", e.dtype, e.shape)
}

/// One problem of binding a float checkpoint, at the `weights` line.
fn checkpoint_diagnostic(module: &Module, problem: &Problem, file: &str, remap: &KeyRemap, span: Span) -> Diagnostic {
    let owner_note = |key: &str, d: Diagnostic| -> Diagnostic {
        match module.params.get(key).and_then(|p| module.graph.find(&p.owner)) {
            Some(id) => d.note(
                module.graph.node(id).origin.span,
                format!("`{key}` belongs to this node"),
            ),
            None => d,
        }
    };
    let rename_line =
        |(from, to): (&str, &str)| crate::remap::weights_line(file, remap, crate::remap::Addition::Rename(from, to));
    match problem {
        Problem::Prefix { prefix, total, fit } => {
            let who = if prefix == "module." {
                "a model saved from inside `nn.DataParallel` or `DistributedDataParallel` has its keys under `module.`; "
            } else {
                ""
            };
            Diagnostic::new(
                "qc::checkpoint-prefix",
                span,
                format!("every key of `{file}` starts with `{prefix}`, which no parameter of the model has"),
            )
            .label(format!("{total} keys under `{prefix}`"))
            .help(format!(
                "{who}strip the prefix ({}): `{}`",
                crate::keys::prefix_outcome(*total, *fit),
                crate::remap::weights_line(file, remap, crate::remap::Addition::Strip(prefix))
            ))
        }
        Problem::Missing {
            key, expected, closest, ..
        } => {
            let help = match (closest, problem.rename()) {
                (Some(c), Some(r)) => format!(
                    "the checkpoint has `{c}`, of the same shape, which the model does not use: if it is this one under another name, rename it: `{}`",
                    rename_line(r)
                ),
                (Some(c), None) => {
                    format!("the checkpoint has `{c}`, which the model does not use: is it this one under another name?")
                }
                (None, _) => {
                    "export the checkpoint from the same architecture (torch.save(model.state_dict()) → safetensors)".into()
                }
            };
            let d = Diagnostic::new(
                "qc::checkpoint-missing",
                span,
                format!("`{file}` has no `{key}` ({})", typed(expected)),
            )
            .label("missing key")
            .help(help);
            owner_note(key, d)
        }
        Problem::Misshaped {
            key, expected, found, ..
        } => {
            let d = Diagnostic::new(
                "qc::checkpoint-shape",
                span,
                format!("`{key}` is {} in `{file}`, the model needs {}", typed(found), typed(expected)),
            )
            .label("mis-shaped key")
            .help("the recipe and the checkpoint disagree on this layer's size: check `out`, `kernel`, `groups` and the input channels");
            owner_note(key, d)
        }
        Problem::WrongDType { key, expected, found } => {
            let help = if expected.dtype == DType::F32 {
                "save it as a float tensor (`tensor.float()` in PyTorch before saving); qc reads float32 and float64 (and, in a .pth, float16 and bfloat16) as float"
            } else {
                "save it with the dtype the model needs (`qc keys RECIPE --stage float` lists each key's dtype)"
            };
            let d = Diagnostic::new(
                "qc::checkpoint-dtype",
                span,
                format!(
                    "`{key}` is {} in `{file}`, the model needs {} (the shape {:?} fits)",
                    found.dtype, expected.dtype, expected.shape
                ),
            )
            .label("wrong dtype")
            .help(help);
            owner_note(key, d)
        }
        Problem::Unexpected { key, closest, .. } => {
            let help = match (closest, problem.rename()) {
                (Some(c), Some(r)) => format!(
                    "closest key of the model: `{c}`, of the same shape; if it is this one, rename it: `{}`",
                    rename_line(r)
                ),
                (Some(c), None) => format!("closest key of the model: `{c}`"),
                (None, _) => "remove it from the checkpoint, or add the layer it belongs to to the recipe".into(),
            };
            Diagnostic::new(
                "qc::checkpoint-unexpected",
                span,
                format!("`{file}` has `{key}`, which no layer of the model owns"),
            )
            .label("unexpected key")
            .help(help)
        }
    }
}
