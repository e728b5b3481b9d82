//! Stage `quantized` (pass `convert`): observers and fake-quant nodes become integer types and
//! parameters. A conv/linear/add/concat whose output is observed and whose inputs are integer
//! becomes `qconv`/`qlinear`/`qadd`/`qconcat` with an integer weight (per-channel or per-tensor
//! `ParamQuant`), PyTorch's float bias and the output `scale`/`zero_point`; an observer after a
//! model input or a float-kept op becomes a `quantize` node; float-kept ops and model outputs
//! get a `dequantize` before them. Pools, flatten and standalone activations stay as they are and
//! run on integers (their type says so). Rounding and saturation: `qc_runtime::quant`
//! (docs/numerics.md).
//!
//! Activation parameters come from the observer's output type (set at `calibrated`) or, for a
//! QAT fake-quant, from its `scale`/`zero_point` state. Weight parameters are computed from the
//! weight with the op's weight spec (`w_*` attributes); a QAT weight fake-quant's observed
//! `min_val`/`max_val` are used when present, as PyTorch's `convert` does. A QAT conv that still
//! holds its batch norm has it folded first (`fold.rs`).

use std::collections::HashMap;

use petgraph::visit::EdgeRef;
use petgraph::Direction;
use qc_dsl::Diagnostic;
use qc_runtime::quant::{pow2_scale, QParams, QRange};
use qc_runtime::{DType, Tensor, TensorData};
use qc_runtime_host::observe::{qparams_for_range, ObserverKind, ObserverState};

use crate::fold;
use crate::ir::{Graph, Module, Node, NodeId, Param, ParamQuant, Provenance};
use crate::ops::{Conv, Linear, Op, QSpec, WeightQuant};
use crate::pass::{Changed, Ctx, Pass, PassError};
use crate::types::{QuantParams, TensorType};

/// The `convert` pass.
pub struct Convert;

impl Pass for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        convert(module, cx.opts.keys_only).map_err(|d| PassError::User(vec![*d]))?;
        Ok(Changed::Yes)
    }
}

/// The observer's kind as the runtime names it.
pub fn observer_kind(o: &qc_dsl::sections::Observer) -> ObserverKind {
    use qc_dsl::sections::Observer as O;
    match *o {
        O::MinMax => ObserverKind::MinMax,
        O::MovingAverageMinMax { momentum } => ObserverKind::MovingAverageMinMax { momentum },
        O::Histogram { bins } => ObserverKind::Histogram { bins },
        O::Percentile { p } => ObserverKind::Percentile { p },
    }
}

fn range_of(spec: &QSpec) -> Result<QRange, String> {
    QRange::new(spec.bits as u32, spec.signed).map_err(|e| e.to_string())
}

fn err(module: &Module, node: &str, message: String, help: &str) -> Box<Diagnostic> {
    let span = module
        .graph
        .find(node)
        .map(|id| module.graph.node(id).origin.span)
        .unwrap_or_default();
    Box::new(
        Diagnostic::new("qc::convert", span, message)
            .label("this node")
            .help(help.to_string()),
    )
}

/// `transform` applied to `key`: composed with `key`'s own derivation so that `from` always
/// names keys of the float model (or of the checkpoint they were read from).
fn derive(module: &Module, transform: &str, keys: &[&str]) -> Provenance {
    let mut from = vec![];
    let mut inner: Option<String> = None;
    for k in keys {
        match module.params.get(*k).map(|p| &p.provenance) {
            Some(Provenance::Derived { transform: t, from: f }) if !f.is_empty() => {
                inner.get_or_insert_with(|| t.clone());
                from.extend(f.iter().cloned());
            }
            _ => from.push(k.to_string()),
        }
    }
    from.dedup();
    Provenance::Derived {
        transform: match inner {
            Some(t) => format!("{transform}∘{t}"),
            None => transform.to_string(),
        },
        from,
    }
}

fn scalar_f32(module: &Module, key: &str) -> Option<Vec<f32>> {
    match &module.params.get(key)?.value.as_ref()?.data {
        TensorData::F32(v) => Some(v.clone()),
        _ => None,
    }
}

fn scalar_int(module: &Module, key: &str) -> Option<Vec<i64>> {
    match &module.params.get(key)?.value.as_ref()?.data {
        TensorData::I64(v) => Some(v.clone()),
        TensorData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
        _ => None,
    }
}

/// Activation parameters an observer or fake-quant node settled on.
fn observed_qparams(module: &Module, id: NodeId) -> Result<QuantParams, Box<Diagnostic>> {
    let node = module.graph.node(id);
    if let Some(q) = node.ty.as_ref().and_then(|t| t.quant) {
        return Ok(q);
    }
    if let Op::FakeQuant { spec, .. } = &node.op {
        let scale = scalar_f32(module, &format!("{}.scale", node.name));
        let zp = scalar_int(module, &format!("{}.zero_point", node.name));
        if let (Some(s), Some(z)) = (
            scale.and_then(|v| v.first().copied()),
            zp.and_then(|v| v.first().copied()),
        ) {
            // A power-of-two site's QAT scale is continuous; it quantized with
            // `pow2_scale(scale)`, and so does the int8 model (docs/design-later-stages.md 7.1).
            let s = if spec.power_of_two { pow2_scale(s) } else { s };
            let (qmin, qmax) = spec.range();
            return Ok(QuantParams {
                scale: s,
                zero_point: z as i32,
                qmin,
                qmax,
            });
        }
    }
    Err(err(
        module,
        &node.name,
        format!("`{}` has no quantization parameters yet", node.name),
        "run stage `calibrated` first (a `calibrate` entry in `quantize { }`), or load a checkpoint of stage `calibrated`",
    ))
}

/// The runtime parameters of a weight's `ParamQuant` (fixed at `calibrated`), when they have the
/// layout `spec` asks for.
fn fixed_weight_qparams(pq: &ParamQuant, spec: &QSpec, channels: usize) -> Option<Vec<QParams>> {
    match (pq, spec.per_channel) {
        (ParamQuant::PerTensor(q), false) => Some(vec![q.to_runtime().ok()?]),
        (
            ParamQuant::PerChannel {
                axis: 0,
                scales,
                zero_points,
                qmin,
                qmax,
            },
            true,
        ) if scales.len() == channels && zero_points.len() == channels => {
            let range = QRange::custom(*qmin, *qmax).ok()?;
            scales
                .iter()
                .zip(zero_points)
                .map(|(&s, &z)| QParams::new(s, z, range).ok())
                .collect()
        }
        _ => None,
    }
}

/// Quantizes a float weight `[C, ...]` with `spec` (per channel along axis 0, or per tensor):
/// with the parameters `fixed` at `calibrated` when the weight has them, else from `ranges` (one
/// `(min, max)` per channel, or one) when given, else from the weight's own range.
fn quantize_weight(
    w: &Tensor,
    spec: &QSpec,
    fixed: Option<&ParamQuant>,
    ranges: Option<Vec<(f32, f32)>>,
    keys_only: bool,
) -> Result<(Tensor, ParamQuant), String> {
    let TensorData::F32(values) = &w.data else {
        return Err("the weight is not f32".into());
    };
    let range = range_of(spec)?;
    let channels = if spec.per_channel { w.shape[0].max(1) } else { 1 };
    let inner = values.len() / channels.max(1);
    let fixed = fixed.and_then(|pq| fixed_weight_qparams(pq, spec, channels));
    // A power-of-two weight's QAT scales are continuous; QAT quantized with `pow2_scale` of them.
    let fixed = match fixed {
        Some(p) if spec.power_of_two => Some(
            p.iter()
                .map(|q| QParams::new(pow2_scale(q.scale()), q.zero_point(), q.range()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
        ),
        other => other,
    };
    let params: Vec<QParams> = match (fixed, ranges) {
        (Some(p), _) => p,
        (None, Some(r)) if r.len() == channels => r
            .into_iter()
            .map(|(lo, hi)| qparams_for_range(lo, hi, range, spec.symmetric, spec.power_of_two))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        (None, _) => {
            let kind = observer_kind(&spec.observer);
            let mut state = if spec.per_channel {
                ObserverState::per_channel(kind)
            } else {
                ObserverState::per_tensor(kind)
            }
            .map_err(|e| e.to_string())?;
            if spec.per_channel {
                state.observe_per_channel(values, &w.shape, 0)
            } else {
                state.observe(values)
            }
            .map_err(|e| e.to_string())?;
            state
                .qparams(range, spec.symmetric, spec.power_of_two)
                .map_err(|e| e.to_string())?
                .values()
                .to_vec()
        }
    };
    let q: Vec<i32> = if keys_only {
        vec![0; values.len()]
    } else {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| params[(i / inner.max(1)).min(params.len() - 1)].quantize(v))
            .collect()
    };
    let data = if spec.signed {
        TensorData::I8(q.iter().map(|&v| v as i8).collect())
    } else {
        TensorData::U8(q.iter().map(|&v| v as u8).collect())
    };
    let quant = if spec.per_channel {
        ParamQuant::PerChannel {
            axis: 0,
            scales: params.iter().map(|p| p.scale()).collect(),
            zero_points: params.iter().map(|p| p.zero_point()).collect(),
            qmin: range.qmin(),
            qmax: range.qmax(),
        }
    } else {
        ParamQuant::PerTensor(QuantParams::from_runtime(&params[0]))
    };
    Ok((
        Tensor {
            shape: w.shape.clone(),
            data,
        },
        quant,
    ))
}

/// The scales and zero points a QAT weight fake-quant trained with (`weight_fake_quant.scale`,
/// `.zero_point`), when it saw data: the int8 weight uses exactly these, so the converted model
/// computes what the fake-quantized one did (PyTorch's `convert` recomputes them from the
/// observer's range, the same values while observers are frozen). For a weight whose batch norm
/// is folded, the fake quant saw `w · γ / sqrt(running_var + eps)`, the folded weight itself.
fn fake_quant_params(module: &Module, owner: &str, spec: &QSpec) -> Option<ParamQuant> {
    fake_quant_ranges(module, owner)?;
    let scales = scalar_f32(module, &format!("{owner}.weight_fake_quant.scale"))?;
    let zero_points = scalar_int(module, &format!("{owner}.weight_fake_quant.zero_point"))?;
    let range = range_of(spec).ok()?;
    if scales.len() != zero_points.len() || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return None;
    }
    if spec.per_channel {
        Some(ParamQuant::PerChannel {
            axis: 0,
            scales,
            zero_points: zero_points.iter().map(|&z| z as i32).collect(),
            qmin: range.qmin(),
            qmax: range.qmax(),
        })
    } else {
        let q = QParams::new(scales[0], zero_points[0] as i32, range).ok()?;
        Some(ParamQuant::PerTensor(QuantParams::from_runtime(&q)))
    }
}

/// The observed weight ranges of a QAT weight fake-quant, when it saw data.
fn fake_quant_ranges(module: &Module, owner: &str) -> Option<Vec<(f32, f32)>> {
    let lo = scalar_f32(
        module,
        &format!("{owner}.weight_fake_quant.activation_post_process.min_val"),
    )?;
    let hi = scalar_f32(
        module,
        &format!("{owner}.weight_fake_quant.activation_post_process.max_val"),
    )?;
    (lo.len() == hi.len() && !lo.is_empty() && lo.iter().chain(&hi).all(|v| v.is_finite()))
        .then(|| lo.into_iter().zip(hi).collect())
}

fn set_param(
    module: &mut Module,
    owner: &str,
    key: String,
    value: Tensor,
    provenance: Provenance,
    quant: Option<ParamQuant>,
) {
    module.params.insert(
        key,
        Param {
            dtype: value.dtype(),
            shape: value.shape.clone(),
            value: Some(value),
            provenance,
            owner: owner.to_string(),
            quant,
        },
    );
}

/// Redirects every use of `from` to `to` (ports kept).
fn redirect_users(g: &mut Graph, from: NodeId, to: NodeId) {
    let uses: Vec<(NodeId, usize)> =
        g.g.edges_directed(from, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
    for (t, port) in uses {
        if let Some(e) = g.g.find_edge(from, t) {
            g.g.remove_edge(e);
        }
        g.g.add_edge(to, t, port);
    }
    for out in g.outputs.iter_mut() {
        if out.1 == from {
            out.1 = to;
        }
    }
}

/// Adds a node right after `after` in creation order (so dumps keep source order).
fn add_after(g: &mut Graph, after: NodeId, node: Node, inputs: &[NodeId]) -> NodeId {
    let id = g.add(node, inputs);
    g.order.pop();
    let pos = g
        .order
        .iter()
        .position(|n| *n == after)
        .map_or(g.order.len(), |p| p + 1);
    g.order.insert(pos, id);
    id
}

fn unique_name(g: &Graph, base: &str) -> String {
    if g.find(base).is_none() {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| g.find(n).is_none())
        .expect("some suffix is free")
}

fn remove_params_of(module: &mut Module, owner: &str) {
    module.params.retain(|_, p| p.owner != owner);
}

fn is_observer(op: &Op) -> bool {
    matches!(op, Op::Observe(_) | Op::FakeQuant { .. })
}

/// Converts a calibrated (or QAT-trained) module to integer ops. See the module comment.
/// `keys_only` (`RunOptions::keys_only`): integer weights are left at zero instead of quantized,
/// their parameters and every key, dtype and shape as in a real conversion.
pub fn convert(module: &mut Module, keys_only: bool) -> Result<(), Box<Diagnostic>> {
    let order = module.graph.topo_order();
    let single_input = module.graph.inputs.len() == 1;
    let mut quantized: HashMap<NodeId, QuantParams> = HashMap::new();
    for id in order {
        if !module.graph.g.contains_node(id) {
            continue;
        }
        let node = module.graph.node(id).clone();
        let inputs = module.graph.inputs_of(id);
        if is_observer(&node.op) {
            let producer = inputs[0];
            let q = observed_qparams(module, id)?;
            let p_node = module.graph.node(producer).clone();
            let p_inputs = module.graph.inputs_of(producer);
            if fuses_with_observer(module, producer, &p_inputs, &quantized) {
                to_integer_op(module, producer, &p_node, q, keys_only)?;
                redirect_users(&mut module.graph, id, producer);
                remove_params_of(module, &node.name);
                module.graph.g.remove_node(id);
                quantized.insert(producer, q);
            } else {
                // A `quantize` node in the observer's place: model input, or a float producer.
                let name = if matches!(p_node.op, Op::Input { .. }) {
                    if single_input {
                        "quant".to_string()
                    } else {
                        format!("quant_{}", p_node.name)
                    }
                } else {
                    format!("{}.quant", p_node.name)
                };
                let name = unique_name(&module.graph, &name);
                let obs_keys: Vec<String> = node.params.iter().map(|(_, k)| k.clone()).collect();
                remove_params_of(module, &node.name);
                let prov = Provenance::Derived {
                    transform: "qparams".into(),
                    from: obs_keys,
                };
                set_param(
                    module,
                    &name,
                    format!("{name}.scale"),
                    Tensor::f32(vec![1], vec![q.scale]),
                    prov.clone(),
                    None,
                );
                set_param(
                    module,
                    &name,
                    format!("{name}.zero_point"),
                    Tensor {
                        shape: vec![1],
                        data: TensorData::I64(vec![q.zero_point as i64]),
                    },
                    prov,
                    None,
                );
                let dims = node.ty.as_ref().map(|t| t.dims.clone()).unwrap_or_default();
                let n = module.graph.node_mut(id);
                n.op = Op::Quantize { dtype: q.storage() };
                n.name = name.clone();
                n.params = vec![
                    ("scale", format!("{name}.scale")),
                    ("zero_point", format!("{name}.zero_point")),
                ];
                n.ty = Some(TensorType {
                    dtype: q.storage(),
                    dims,
                    quant: Some(q),
                });
                quantized.insert(id, q);
            }
            continue;
        }
        // Value-preserving ops on an integer input stay integer with the input's parameters.
        let passes_through = node.op.shares_input_quant();
        if passes_through && inputs.len() == 1 && quantized.contains_key(&inputs[0]) {
            let q = quantized[&inputs[0]];
            let ty = module.graph.node_mut(id).ty.as_mut().expect("typed at float");
            ty.dtype = q.storage();
            ty.quant = Some(q);
            quantized.insert(id, q);
            continue;
        }
        // An integer-capable op whose observer follows: it becomes integer when the observer
        // is reached (above), so its integer inputs stay integer.
        if fuses_with_observer(module, id, &inputs, &quantized) {
            continue;
        }
        // A float op (or an op left float by the plan) reading integers: dequantize first.
        for (port, input) in inputs.iter().enumerate() {
            if quantized.contains_key(input) && !matches!(node.op, Op::Input { .. }) {
                let deq = dequantize_after(module, *input);
                if let Some(e) = module.graph.g.find_edge(*input, id) {
                    module.graph.g.remove_edge(e);
                }
                module.graph.g.add_edge(deq, id, port);
            }
        }
    }
    // Integer model outputs leave through `dequant`.
    let outputs = module.graph.outputs.clone();
    let single_output = outputs.len() == 1;
    for (name, id) in outputs {
        if quantized.contains_key(&id) {
            let deq = dequantize_after(module, id);
            let new_name = if single_output {
                "dequant".to_string()
            } else {
                format!("dequant_{name}")
            };
            let new_name = unique_name(&module.graph, &new_name);
            module.graph.node_mut(deq).name = new_name;
            for out in module.graph.outputs.iter_mut() {
                if out.1 == id {
                    out.1 = deq;
                }
            }
        }
    }
    Ok(())
}

/// Whether `producer` becomes an integer op with the observer after it: a conv/linear with a
/// weight quantization, an add or a concat, whose inputs are all integer and whose only user is
/// an observer or fake-quant node.
fn fuses_with_observer(
    module: &Module,
    producer: NodeId,
    inputs: &[NodeId],
    quantized: &HashMap<NodeId, QuantParams>,
) -> bool {
    let users = module.graph.users_of(producer);
    !inputs.is_empty()
        && inputs.iter().all(|i| quantized.contains_key(i))
        && match &module.graph.node(producer).op {
            Op::Conv(c) => c.weight_quant.is_some(),
            Op::Linear(l) => l.weight_quant.is_some(),
            Op::Add { .. } | Op::Concat { .. } | Op::Curve(_) | Op::Mul => true,
            _ => false,
        }
        && users.len() == 1
        && is_observer(&module.graph.node(users[0]).op)
}

/// A `dequantize` of `value` (one per value: reused when there is one already).
fn dequantize_after(module: &mut Module, value: NodeId) -> NodeId {
    if let Some(d) = module
        .graph
        .users_of(value)
        .into_iter()
        .find(|u| matches!(module.graph.node(*u).op, Op::Dequantize))
    {
        return d;
    }
    let src = module.graph.node(value).clone();
    let name = unique_name(&module.graph, &format!("{}.dequant", src.name));
    let ty = src.ty.as_ref().map(|t| TensorType::new(DType::F32, t.dims.clone()));
    add_after(
        &mut module.graph,
        value,
        Node {
            name,
            op: Op::Dequantize,
            ty,
            params: vec![],
            origin: src.origin.clone(),
        },
        &[value],
    )
}

/// Rewrites a conv/linear/add/concat node in place into its integer op with output `q`.
fn to_integer_op(
    module: &mut Module,
    id: NodeId,
    node: &Node,
    q: QuantParams,
    keys_only: bool,
) -> Result<(), Box<Diagnostic>> {
    let name = node.name.clone();
    let fail = |module: &Module, m: String| {
        err(
            module,
            &name,
            format!("cannot quantize `{name}`: {m}"),
            "keep it in float with `layer NAME { skip }`",
        )
    };
    let out_prov = {
        let obs: Vec<String> = module
            .graph
            .users_of(id)
            .into_iter()
            .flat_map(|u| {
                module
                    .graph
                    .node(u)
                    .params
                    .iter()
                    .map(|(_, k)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        Provenance::Derived {
            transform: "qparams".into(),
            from: obs,
        }
    };
    let (new_op, roles): (Op, Vec<(&'static str, String)>) = match &node.op {
        Op::Conv(c) => {
            let wq = c.weight_quant.clone().expect("checked by the caller");
            let (roles, has_bias) =
                quantize_layer(module, node, &wq, &c.bn, false, keys_only).map_err(|m| fail(module, m))?;
            let conv = Conv {
                bias: has_bias,
                bn: None,
                weight_quant: Some(WeightQuant { fake: false, ..wq }),
                ..c.clone()
            };
            (Op::QConv(conv), roles)
        }
        Op::Linear(l) => {
            let wq = l.weight_quant.clone().expect("checked by the caller");
            let (roles, has_bias) =
                quantize_layer(module, node, &wq, &l.bn, true, keys_only).map_err(|m| fail(module, m))?;
            let linear = Linear {
                bias: has_bias,
                bn: None,
                weight_quant: Some(WeightQuant { fake: false, ..wq }),
                ..l.clone()
            };
            (Op::QLinear(linear), roles)
        }
        Op::Add { act } => (Op::QAdd { act: act.clone() }, vec![]),
        Op::Concat { dim } => (Op::QConcat { dim: *dim }, vec![]),
        Op::Curve(c) => (Op::QCurve(*c), vec![]),
        Op::Mul => (Op::QMul, vec![]),
        other => return Err(fail(module, format!("{} has no integer form", other.name()))),
    };
    let mut roles = roles;
    set_param(
        module,
        &name,
        format!("{name}.scale"),
        Tensor::f32(vec![], vec![q.scale]),
        out_prov.clone(),
        None,
    );
    set_param(
        module,
        &name,
        format!("{name}.zero_point"),
        Tensor {
            shape: vec![],
            data: TensorData::I64(vec![q.zero_point as i64]),
        },
        out_prov,
        None,
    );
    roles.push(("scale", format!("{name}.scale")));
    roles.push(("zero_point", format!("{name}.zero_point")));
    let n = module.graph.node_mut(id);
    n.op = new_op;
    n.params = roles;
    let ty = n.ty.as_mut().expect("typed at float");
    ty.dtype = q.storage();
    ty.quant = Some(q);
    Ok(())
}

/// A node's parameters: (role, key).
type Roles = Vec<(&'static str, String)>;

/// The integer parameters of a conv (`packed`: false) or linear (`packed`: true, PyTorch's
/// `_packed_params.weight`/`_packed_params.bias`): folds a kept batch norm, quantizes the weight
/// (with the parameters a checkpoint or fake-quant state fixed), keeps the float bias, and
/// replaces the node's parameters. Returns the node's roles and whether it has a bias.
fn quantize_layer(
    module: &mut Module,
    node: &Node,
    wq: &WeightQuant,
    bn: &Option<crate::ops::BatchNorm>,
    packed: bool,
    keys_only: bool,
) -> Result<(Roles, bool), String> {
    let name = node.name.clone();
    let (weight_key, bias_key) = fold_kept_bn(module, node, bn)?;
    let w = module.params[&weight_key].value.clone().expect("bound at float");
    let fixed = module.params[&weight_key]
        .quant
        .clone()
        .or_else(|| wq.fake.then(|| fake_quant_params(module, &name, &wq.spec)).flatten());
    let ranges = if wq.fake && bn.is_none() {
        fake_quant_ranges(module, &name)
    } else {
        None
    };
    let (wq_t, pq) = quantize_weight(&w, &wq.spec, fixed.as_ref(), ranges, keys_only)?;
    let transform = if wq.spec.per_channel {
        "quantize_per_channel"
    } else {
        "quantize_per_tensor"
    };
    let (prov, (weight_role, bias_role)) = if packed {
        (
            derive(module, &format!("pack∘{transform}"), &[&weight_key]),
            ("_packed_params.weight", "_packed_params.bias"),
        )
    } else {
        (derive(module, transform, &[&weight_key]), ("weight", "bias"))
    };
    let bias = bias_key.as_ref().map(|k| {
        let p = if packed {
            derive(module, "pack", &[k])
        } else {
            module.params[k].provenance.clone()
        };
        (module.params[k].value.clone().expect("bound"), p)
    });
    remove_params_of(module, &name);
    let wkey = format!("{name}.{weight_role}");
    set_param(module, &name, wkey.clone(), wq_t, prov, Some(pq));
    let mut roles = vec![(weight_role, wkey)];
    if let Some((b, p)) = bias {
        let bkey = format!("{name}.{bias_role}");
        set_param(module, &name, bkey.clone(), b, p, None);
        roles.push((bias_role, bkey));
    }
    Ok((roles, bias_key.is_some()))
}

/// For a QAT conv/linear that still holds its batch norm: folds it (running statistics) into
/// new `weight`/`bias` parameters. Returns the keys of the (folded) weight and bias.
fn fold_kept_bn(
    module: &mut Module,
    node: &Node,
    bn: &Option<crate::ops::BatchNorm>,
) -> Result<(String, Option<String>), String> {
    let name = &node.name;
    let weight_key = format!("{name}.weight");
    let bias_key = format!("{name}.bias");
    let has_bias = module.params.contains_key(&bias_key);
    let Some(bn) = bn else {
        return Ok((weight_key, has_bias.then_some(bias_key)));
    };
    let get = |k: &str| -> Result<Tensor, String> {
        module
            .params
            .get(k)
            .and_then(|p| p.value.clone())
            .ok_or_else(|| format!("`{k}` has no value"))
    };
    let w = get(&weight_key)?;
    let b = if has_bias { Some(get(&bias_key)?) } else { None };
    let roles = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"];
    let t: Vec<Tensor> = roles
        .iter()
        .map(|r| get(&format!("{name}.{r}")))
        .collect::<Result<_, _>>()?;
    let layer = if matches!(node.op, Op::Linear(_)) {
        fold::Layer::Linear
    } else {
        fold::Layer::Conv
    };
    let folded =
        fold::fold_stats(layer, &w, b.as_ref(), [&t[0], &t[1], &t[2], &t[3]], bn.eps).map_err(|e| e.to_string())?;
    let mut from: Vec<&str> = vec![&weight_key];
    if has_bias {
        from.push(&bias_key);
    }
    let bn_keys: Vec<String> = roles.iter().map(|r| format!("{name}.{r}")).collect();
    from.extend(bn_keys.iter().map(|s| s.as_str()));
    let prov = derive(module, "fold_bn", &from);
    let owner = name.clone();
    let folded_w = format!("{name}.weight");
    let folded_b = format!("{name}.bias");
    set_param(module, &owner, folded_w.clone(), folded.weight, prov.clone(), None);
    set_param(module, &owner, folded_b.clone(), folded.bias, prov, None);
    Ok((folded_w, Some(folded_b)))
}
