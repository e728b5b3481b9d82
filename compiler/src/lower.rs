//! Lowering to the runtime's `Program`, for every stage from `float` on: float ops become float
//! steps (PyTorch layout), integer ops (stage `quantized`) become int8 steps on channels-last
//! `u8` values with weights in the reference kernels' layouts (docs/runtime-program.md). Fused
//! activations and a kept batch norm of a float op become extra steps on values named
//! `<node>#pre_bn` / `<node>#pre_act`. Observers and fake-quant nodes lower to identities (their
//! output value keeps the node's name, which is how calibration reads what they see).

use std::collections::HashMap;

use qc_runtime::kernels::Activation;
use qc_runtime::program::{from_torch_order, FloatOp, Layout, Program, QuantOp, Step, StepOp, ValueInfo, Window};
use qc_runtime::program::{FakeQuantAt, FakeQuantSite, QatPlan};
use qc_runtime::quant::{quantize_bias, QParams, QRange};
use qc_runtime::{DType, Tensor, TensorData};

use crate::ir::{Module, NodeId, ParamQuant, Stage};
use crate::ops::{Act, Conv, Op, Pool};
use crate::types::{Dim, QuantParams};

/// Why a module could not be lowered. A module the compiler built always lowers; these name
/// what a hand-edited or checkpoint-bound module got wrong, or an int8 form the kernels lack.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowerError {
    #[error("stage `{stage}` has no bound weights; lower a module at stage `float` or later")]
    Stage { stage: Stage },
    #[error("`{node}`: {message}")]
    Node { node: String, message: String },
}

fn window(kernel: &[usize], stride: &[usize], pad: &[usize], dilation: &[usize], ceil_mode: bool) -> Window {
    Window {
        kernel: kernel.to_vec(),
        stride: stride.to_vec(),
        pad: pad.to_vec(),
        dilation: dilation.to_vec(),
        ceil_mode,
    }
}

/// The runtime's parameters of an integer value, moved into the `u8` domain the kernels use: a
/// signed (symmetric int8) value `q` is the same real number as `q + 128` with zero point
/// `zp + 128`, so the shift is exact.
fn runtime_qparams(q: &QuantParams) -> Result<QParams, String> {
    let shift = if q.qmin < 0 { 128 } else { 0 };
    let range = QRange::custom(q.qmin + shift, q.qmax + shift).map_err(|e| e.to_string())?;
    QParams::new(q.scale, q.zero_point + shift, range).map_err(|e| e.to_string())
}

fn activation(act: &Option<Act>) -> Activation {
    match act {
        None => Activation::None,
        Some(Act::Relu) => Activation::Relu,
        Some(Act::Relu6) => Activation::Relu6,
        Some(Act::Clamp { min, max }) => Activation::Clamp {
            min: *min as f32,
            max: *max as f32,
        },
    }
}

/// Per-output-channel scales of an integer weight (zero points must be 0: the int8 kernels
/// take symmetric weights).
fn weight_scales(quant: Option<&ParamQuant>, channels: usize) -> Result<Vec<f32>, String> {
    match quant {
        Some(ParamQuant::PerChannel {
            axis: 0,
            scales,
            zero_points,
            ..
        }) if scales.len() == channels => {
            if zero_points.iter().any(|z| *z != 0) {
                return Err(
                    "the int8 kernels take symmetric weights (zero point 0); quantize weights `symmetric`".into(),
                );
            }
            Ok(scales.clone())
        }
        Some(ParamQuant::PerTensor(q)) => {
            if q.zero_point != 0 {
                return Err(
                    "the int8 kernels take symmetric weights (zero point 0); quantize weights `symmetric`".into(),
                );
            }
            Ok(vec![q.scale; channels])
        }
        Some(ParamQuant::PerChannel { axis, scales, .. }) => Err(format!(
            "per-channel weight scales along axis {axis} ({} of them) do not fit {channels} output channels",
            scales.len()
        )),
        None => Err("the weight has no quantization parameters".into()),
    }
}

/// `[Cout, Cin/g, k...]` → the kernels' `[Cout, k..., Cin/g]` (OHWI).
fn to_ohwi(w: &Tensor) -> Result<Tensor, String> {
    let TensorData::I8(v) = &w.data else {
        return Err(format!("the int8 kernels take i8 weights, this one is {}", w.dtype()));
    };
    let (o, i) = (w.shape[0], w.shape[1]);
    let k: usize = w.shape[2..].iter().product();
    let mut out = vec![0i8; v.len()];
    for oc in 0..o {
        for ic in 0..i {
            for kk in 0..k {
                out[(oc * k + kk) * i + ic] = v[(oc * i + ic) * k + kk];
            }
        }
    }
    let mut shape = vec![o];
    shape.extend_from_slice(&w.shape[2..]);
    shape.push(i);
    Ok(Tensor {
        shape,
        data: TensorData::I8(out),
    })
}

fn i8_weight(w: &Tensor) -> Result<Tensor, String> {
    match &w.data {
        TensorData::I8(_) => Ok(w.clone()),
        _ => Err(format!("the int8 kernels take i8 weights, this one is {}", w.dtype())),
    }
}

/// Lowers a module at any stage from `float` on to a program whose values are named after the
/// nodes.
pub fn lower(module: &Module) -> Result<Program, LowerError> {
    if module.stage < Stage::Float {
        return Err(LowerError::Stage { stage: module.stage });
    }
    let g = &module.graph;
    let mut program = Program {
        values: vec![],
        inputs: vec![],
        outputs: vec![],
        steps: vec![],
        constants: vec![],
    };
    let mut value_of: HashMap<NodeId, usize> = HashMap::new();
    let mut const_of: HashMap<String, usize> = HashMap::new();
    for id in g.topo_order() {
        let node = g.node(id);
        let fail = |message: String| LowerError::Node {
            node: node.name.clone(),
            message,
        };
        let ty = node.ty.as_ref().ok_or_else(|| fail("no type".into()))?;
        let node_inputs = g.inputs_of(id);
        let torch_shape: Vec<Option<usize>> = ty
            .dims
            .iter()
            .map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None })
            .collect();
        let rank = ty.dims.len();
        let integer = ty.dtype != DType::F32;
        // Identities on integers: the value is the input's.
        if integer && matches!(node.op, Op::Identity | Op::Dropout { .. }) {
            value_of.insert(id, value_of[&node_inputs[0]]);
            continue;
        }
        let value = program.values.len();
        if integer {
            let q = ty
                .quant
                .as_ref()
                .ok_or_else(|| fail("an integer value without parameters".into()))?;
            let layout = if matches!(rank, 3 | 4) {
                Layout::ChannelsLast
            } else {
                Layout::Torch
            };
            program.values.push(ValueInfo::quantized(
                node.name.clone(),
                from_torch_order(&torch_shape, layout),
                DType::U8,
                layout,
                runtime_qparams(q).map_err(fail)?,
            ));
        } else {
            program
                .values
                .push(ValueInfo::float(node.name.clone(), torch_shape.clone()));
        }
        value_of.insert(id, value);
        let param_key = |role: &str| -> Result<&String, LowerError> {
            node.params
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, k)| k)
                .ok_or_else(|| fail(format!("no `{role}`")))
        };
        let param_value = |role: &str| -> Result<(&Tensor, Option<&ParamQuant>), LowerError> {
            let key = param_key(role)?;
            let p = module
                .params
                .get(key)
                .ok_or_else(|| fail(format!("no parameter `{key}`")))?;
            let t = p.value.as_ref().ok_or_else(|| fail(format!("`{key}` is unbound")))?;
            Ok((t, p.quant.as_ref()))
        };
        let mut constant = |key: Option<&str>, t: Tensor| -> usize {
            if let Some(&c) = key.and_then(|k| const_of.get(k)) {
                return c;
            }
            program.constants.push(t);
            let c = program.constants.len() - 1;
            if let Some(k) = key {
                const_of.insert(k.to_string(), c);
            }
            c
        };
        let in_rank = node_inputs
            .first()
            .and_then(|i| g.node(*i).ty.as_ref())
            .map_or(rank, |t| t.dims.len());
        let in_quant = node_inputs
            .first()
            .and_then(|i| g.node(*i).ty.as_ref())
            .and_then(|t| t.quant);
        let norm = |d: i64, r: usize| if d < 0 { (d + r as i64) as usize } else { d as usize };
        let mut float_param = |role: &str| -> Result<usize, LowerError> {
            let key = param_key(role)?.clone();
            let (t, _) = param_value(role)?;
            let t = t.clone();
            Ok(constant(Some(&key), t))
        };
        // Ops fused into a float node (a kept batch norm, an activation) run after it.
        let mut then: Vec<FloatOp> = vec![];
        let act_op = |act: &Option<Act>| -> Vec<FloatOp> {
            match act {
                None => vec![],
                Some(Act::Relu) => vec![FloatOp::Relu],
                Some(Act::Relu6) => vec![FloatOp::Clamp { min: 0.0, max: 6.0 }],
                Some(Act::Clamp { min, max }) => vec![FloatOp::Clamp {
                    min: *min as f32,
                    max: *max as f32,
                }],
            }
        };
        let op: StepOp = match &node.op {
            Op::Input { .. } => {
                program.inputs.push(value);
                continue;
            }
            // ----- int8 -----
            Op::Quantize { .. } => QuantOp::Quantize.into(),
            Op::Dequantize => QuantOp::Dequantize.into(),
            Op::QConv(c) => {
                let s_in = in_quant
                    .ok_or_else(|| fail("the input has no parameters".into()))?
                    .scale;
                let (w, wq) = param_value("weight")?;
                let scales = weight_scales(wq, c.out_channels).map_err(fail)?;
                let weight = to_ohwi(w).map_err(fail)?;
                let bias = if c.bias {
                    let (b, _) = param_value("bias")?;
                    Some(int_bias(b, s_in, &scales).map_err(fail)?)
                } else {
                    None
                };
                let weight = constant(None, weight);
                let weight_scales = constant(None, Tensor::f32(vec![scales.len()], scales));
                let bias = bias.map(|b| constant(None, b));
                QuantOp::QConv {
                    window: window(&c.kernel, &c.stride, &c.pad, &c.dilation, false),
                    groups: c.groups,
                    weight,
                    weight_scales,
                    bias,
                    act: activation(&c.act),
                }
                .into()
            }
            Op::QLinear(l) => {
                let s_in = in_quant
                    .ok_or_else(|| fail("the input has no parameters".into()))?
                    .scale;
                let (w, wq) = param_value("_packed_params.weight")?;
                let scales = weight_scales(wq, l.out_features).map_err(fail)?;
                let weight = i8_weight(w).map_err(fail)?;
                let bias = if l.bias {
                    let (b, _) = param_value("_packed_params.bias")?;
                    Some(int_bias(b, s_in, &scales).map_err(fail)?)
                } else {
                    None
                };
                let weight = constant(None, weight);
                let weight_scales = constant(None, Tensor::f32(vec![scales.len()], scales));
                let bias = bias.map(|b| constant(None, b));
                QuantOp::QLinear {
                    weight,
                    weight_scales,
                    bias,
                    act: activation(&l.act),
                }
                .into()
            }
            Op::QAdd { act } => QuantOp::QAdd {
                relu: match act {
                    None => false,
                    Some(Act::Relu) => true,
                    Some(other) => {
                        return Err(fail(format!(
                            "the int8 add fuses relu only, not {}; keep the {} separate",
                            other.name(),
                            other.name()
                        )))
                    }
                },
            }
            .into(),
            Op::QConcat { dim } => {
                if norm(*dim, rank) != 1 {
                    return Err(fail(format!("the int8 concat joins channels (dim 1), not dim {dim}")));
                }
                QuantOp::QConcat.into()
            }
            Op::MaxPool(p) if integer => QuantOp::QMaxPool {
                window: window(&p.kernel, &p.stride, &p.pad, &p.dilation, p.ceil_mode),
            }
            .into(),
            Op::AvgPool(p) if integer => QuantOp::QAvgPool {
                window: window(&p.kernel, &p.stride, &p.pad, &p.dilation, p.ceil_mode),
                count_include_pad: p.count_include_pad,
            }
            .into(),
            Op::AdaptiveAvgPool { output } if integer => QuantOp::QAdaptiveAvgPool { output: output.clone() }.into(),
            Op::GlobalAvgPool if integer => QuantOp::QAdaptiveAvgPool {
                output: vec![1; rank - 2],
            }
            .into(),
            Op::Flatten { start_dim, end_dim } if integer => {
                if norm(*start_dim, in_rank) != 1 || norm(*end_dim, in_rank) + 1 != in_rank {
                    return Err(fail(
                        "the int8 flatten is `flatten(start_dim: 1)`; keep other flattens in float".into(),
                    ));
                }
                QuantOp::QFlatten.into()
            }
            Op::Relu if integer => QuantOp::QClamp { act: Activation::Relu }.into(),
            Op::Relu6 if integer => QuantOp::QClamp { act: Activation::Relu6 }.into(),
            Op::Clamp { min, max } if integer => QuantOp::QClamp {
                act: Activation::Clamp {
                    min: *min as f32,
                    max: *max as f32,
                },
            }
            .into(),
            // ----- float -----
            Op::Conv(Conv {
                kernel,
                stride,
                pad,
                dilation,
                groups,
                bias,
                act,
                bn,
                ..
            }) => {
                if let Some(bn) = bn {
                    then.push(FloatOp::BatchNorm {
                        eps: bn.eps as f32,
                        weight: float_param("bn.weight")?,
                        bias: float_param("bn.bias")?,
                        mean: float_param("bn.running_mean")?,
                        var: float_param("bn.running_var")?,
                    });
                }
                then.extend(act_op(act));
                FloatOp::Conv {
                    window: window(kernel, stride, pad, dilation, false),
                    groups: *groups,
                    weight: float_param("weight")?,
                    bias: if *bias { Some(float_param("bias")?) } else { None },
                }
                .into()
            }
            Op::BatchNorm(bn) => FloatOp::BatchNorm {
                eps: bn.eps as f32,
                weight: float_param("weight")?,
                bias: float_param("bias")?,
                mean: float_param("running_mean")?,
                var: float_param("running_var")?,
            }
            .into(),
            Op::Relu => FloatOp::Relu.into(),
            Op::Relu6 => FloatOp::Clamp { min: 0.0, max: 6.0 }.into(),
            Op::Clamp { min, max } => FloatOp::Clamp {
                min: *min as f32,
                max: *max as f32,
            }
            .into(),
            Op::MaxPool(Pool {
                kernel,
                stride,
                pad,
                dilation,
                ceil_mode,
                ..
            }) => FloatOp::MaxPool {
                window: window(kernel, stride, pad, dilation, *ceil_mode),
            }
            .into(),
            Op::AvgPool(Pool {
                kernel,
                stride,
                pad,
                dilation,
                ceil_mode,
                count_include_pad,
                ..
            }) => FloatOp::AvgPool {
                window: window(kernel, stride, pad, dilation, *ceil_mode),
                count_include_pad: *count_include_pad,
            }
            .into(),
            Op::AdaptiveAvgPool { output } => FloatOp::AdaptiveAvgPool { output: output.clone() }.into(),
            Op::GlobalAvgPool => FloatOp::AdaptiveAvgPool {
                output: vec![1; rank - 2],
            }
            .into(),
            Op::Flatten { start_dim, end_dim } => FloatOp::Flatten {
                start_dim: norm(*start_dim, in_rank),
                end_dim: norm(*end_dim, in_rank),
            }
            .into(),
            Op::Linear(l) => {
                if let Some(bn) = &l.bn {
                    then.push(FloatOp::BatchNorm {
                        eps: bn.eps as f32,
                        weight: float_param("bn.weight")?,
                        bias: float_param("bn.bias")?,
                        mean: float_param("bn.running_mean")?,
                        var: float_param("bn.running_var")?,
                    });
                }
                then.extend(act_op(&l.act));
                FloatOp::Linear {
                    weight: float_param("weight")?,
                    bias: if l.bias { Some(float_param("bias")?) } else { None },
                }
                .into()
            }
            Op::Add { act } => {
                then.extend(act_op(act));
                FloatOp::Add.into()
            }
            Op::Concat { dim } => FloatOp::Concat { dim: norm(*dim, rank) }.into(),
            Op::Identity | Op::Dropout { .. } | Op::Observe(_) | Op::FakeQuant { .. } => FloatOp::Identity.into(),
        };
        let mut inputs: Vec<usize> = node_inputs.iter().map(|i| value_of[i]).collect();
        // The node's own value is the last of its chain; the ones before are named after the
        // op they feed (`conv1#pre_bn`, `conv1#pre_act`).
        let info = program.values[value].clone();
        let chain: Vec<StepOp> = std::iter::once(op).chain(then.into_iter().map(StepOp::from)).collect();
        for (k, op) in chain.iter().enumerate() {
            let output = match chain.get(k + 1) {
                None => value,
                Some(next) => {
                    let suffix = if matches!(next, StepOp::Float(FloatOp::BatchNorm { .. })) {
                        "#pre_bn"
                    } else {
                        "#pre_act"
                    };
                    program.values.push(ValueInfo {
                        name: format!("{}{suffix}", info.name),
                        ..info.clone()
                    });
                    program.values.len() - 1
                }
            };
            program.steps.push(Step {
                op: op.clone(),
                inputs: std::mem::take(&mut inputs),
                output,
            });
            inputs = vec![output];
        }
    }
    program.outputs = g.outputs.iter().map(|(_, id)| value_of[id]).collect();
    Ok(program)
}

/// The float stages' lowering (kept as the name calibration and tests use).
pub fn lower_float(module: &Module) -> Result<Program, LowerError> {
    lower(module)
}

/// PyTorch's float bias as the kernels' `i32` bias of scale `s_in · s_w[c]`.
fn int_bias(b: &Tensor, s_in: f32, scales: &[f32]) -> Result<Tensor, String> {
    let TensorData::F32(v) = &b.data else {
        return Err(format!("the bias is {}, not f32", b.dtype()));
    };
    if v.len() != scales.len() {
        return Err(format!("{} bias values for {} output channels", v.len(), scales.len()));
    }
    let mut out = Vec::with_capacity(v.len());
    for (c, (&x, &s_w)) in v.iter().zip(scales).enumerate() {
        let q = quantize_bias(x, s_in, s_w).map_err(|e| format!("bias of channel {c}: {e}"))?;
        out.push(q.value);
    }
    Ok(Tensor {
        shape: vec![out.len()],
        data: TensorData::I32(out),
    })
}

/// The `lower` pass (stage `lowered`): the quantized module becomes the runtime's program,
/// validated by the runtime's executor exactly as `Model::load` will validate it, and kept on
/// the module (`Module::program`) for the dump and the artifact. A module that still holds
/// observers or fake-quant nodes is refused: `lowered` follows `quantized`.
pub struct Lower;

impl crate::pass::Pass for Lower {
    fn name(&self) -> &'static str {
        "lower"
    }

    fn run(
        &self,
        module: &mut Module,
        _cx: &mut crate::pass::Ctx,
    ) -> Result<crate::pass::Changed, crate::pass::PassError> {
        use crate::pass::PassError;
        let internal = |message: String| PassError::Internal {
            pass: "lower".into(),
            message,
        };
        if let Some(id) = module
            .graph
            .topo_order()
            .into_iter()
            .find(|&id| matches!(module.graph.node(id).op, Op::Observe(_) | Op::FakeQuant { .. }))
        {
            return Err(internal(format!(
                "`{}` is still an observer at stage `{}`",
                module.graph.node(id).name,
                module.stage
            )));
        }
        let program = lower(module).map_err(|e| lower_diagnostic(module, e))?;
        let executor = qc_runtime::exec::Executor::new(program)
            .map_err(|e| internal(format!("the lowered program is invalid: {e}")))?;
        module.program = Some(executor.into_program());
        Ok(crate::pass::Changed::Yes)
    }
}

/// A lowering failure as the user sees it: at the node's recipe line, with what to do.
fn lower_diagnostic(module: &Module, e: LowerError) -> crate::pass::PassError {
    let (span, message) = match &e {
        LowerError::Node { node, .. } => (
            module
                .graph
                .find(node)
                .map(|id| module.graph.node(id).origin.span)
                .unwrap_or_default(),
            e.to_string(),
        ),
        LowerError::Stage { .. } => (qc_dsl::Span::default(), e.to_string()),
    };
    crate::pass::PassError::User(vec![qc_dsl::Diagnostic::new("qc::lower", span, message)
        .label("this node")
        .help(
            "keep the layer in float with `layer NAME { skip }`, or change its quantization in the recipe",
        )])
}

/// Lowers like [`lower`] and says, per constant of the program, which parameter it holds as is
/// (`Some("conv1.weight")`), or `None` for a constant that is no parameter's value unchanged
/// (int8 weights, scales, integer biases). Training reads it to know what to train and under
/// which PyTorch name to save it. Read from the steps: a float step's output is named after its
/// node (`conv1`, or `conv1#pre_bn` inside a fused chain), and each constant of the op has a
/// role in that node (`weight`, `bias`, `running_mean`, or `bn.weight` for a kept batch norm).
pub fn lower_with_keys(module: &Module) -> Result<(Program, Vec<Option<String>>), LowerError> {
    let program = lower(module)?;
    let mut keys: Vec<Option<String>> = vec![None; program.constants.len()];
    for step in &program.steps {
        let StepOp::Float(op) = &step.op else { continue };
        let name = program.value_name(step.output);
        let base = name.split('#').next().unwrap_or(name);
        let Some(id) = module.graph.find(base) else { continue };
        let node = module.graph.node(id);
        let roles: Vec<(usize, &str)> = match op {
            FloatOp::Conv { weight, bias, .. } | FloatOp::Linear { weight, bias } => {
                std::iter::once((*weight, "weight"))
                    .chain(bias.map(|b| (b, "bias")))
                    .collect()
            }
            FloatOp::BatchNorm {
                weight,
                bias,
                mean,
                var,
                ..
            } => {
                let kept = !matches!(node.op, Op::BatchNorm(_));
                let role = |r: &'static str| if kept { ["bn.", r].concat() } else { r.to_string() };
                let pairs = [
                    (*weight, role("weight")),
                    (*bias, role("bias")),
                    (*mean, role("running_mean")),
                    (*var, role("running_var")),
                ];
                for (c, r) in pairs {
                    set_key(module, node, &program, &mut keys, c, &r);
                }
                vec![]
            }
            _ => vec![],
        };
        for (c, r) in roles {
            set_key(module, node, &program, &mut keys, c, r);
        }
    }
    Ok((program, keys))
}

/// Records that constant `c` holds the parameter of `node` in `role`, when its value is that
/// parameter's unchanged.
fn set_key(
    module: &Module,
    node: &crate::ir::Node,
    program: &Program,
    keys: &mut [Option<String>],
    c: usize,
    role: &str,
) {
    let Some((_, key)) = node.params.iter().find(|(r, _)| *r == role) else {
        return;
    };
    let same = module
        .params
        .get(key)
        .and_then(|p| p.value.as_ref())
        .is_some_and(|v| Some(v) == program.constants.get(c));
    if same {
        if let Some(slot) = keys.get_mut(c) {
            *slot = Some(key.clone());
        }
    }
}

/// Lowers a module compiled for QAT (stage `observed` with `--qat`) for quantization-aware
/// training (`learnable_scales`: every scale is trained, else those of `learnable` nodes): the program and keys of [`lower_with_keys`], with the state of every fake
/// quantization (activation `fake_quant` nodes, `weight_fake_quant` of weighted ops) appended to
/// the constants under its keys, and the plan that says where each fake quantization applies
/// (`docs/design-later-stages.md`, 7.1).
pub fn lower_qat(
    module: &Module,
    learnable_scales: bool,
) -> Result<(Program, Vec<Option<String>>, QatPlan), LowerError> {
    let (mut program, mut keys) = lower_with_keys(module)?;
    let mut plan = QatPlan::default();
    let steps = program.steps.clone();
    for (index, step) in steps.iter().enumerate() {
        let name = program.value_name(step.output).to_string();
        let base = name.split('#').next().unwrap_or(&name).to_string();
        let Some(id) = module.graph.find(&base) else { continue };
        let node = module.graph.node(id);
        let (spec, prefix, at, learnable) = match (&node.op, &step.op) {
            (Op::FakeQuant { spec, learnable }, StepOp::Float(FloatOp::Identity)) if name == node.name => {
                (spec.clone(), "", FakeQuantAt::Value(step.output), *learnable)
            }
            (
                Op::Conv(Conv {
                    weight_quant: Some(wq), ..
                }),
                StepOp::Float(FloatOp::Conv { .. }),
            )
            | (
                Op::Linear(crate::ops::Linear {
                    weight_quant: Some(wq), ..
                }),
                StepOp::Float(FloatOp::Linear { .. }),
            ) if wq.fake => {
                let bn_step = steps.get(index + 1).and_then(|next| {
                    (matches!(next.op, StepOp::Float(FloatOp::BatchNorm { .. })) && next.inputs == [step.output])
                        .then_some(index + 1)
                });
                (
                    wq.spec.clone(),
                    "weight_fake_quant.",
                    FakeQuantAt::Weight { step: index, bn_step },
                    false,
                )
            }
            _ => continue,
        };
        if spec.power_of_two {
            return Err(node_error(
                node,
                "power-of-two scales are not trained yet; QAT learns free scales",
            ));
        }
        let mut state = |role: &str| -> Result<usize, LowerError> {
            let key = node
                .params
                .iter()
                .find(|(r, _)| *r == [prefix, role].concat())
                .map(|(_, k)| k.clone())
                .ok_or_else(|| node_error(node, &format!("has no `{prefix}{role}` state")))?;
            let value = module
                .params
                .get(&key)
                .and_then(|p| p.value.clone())
                .ok_or_else(|| node_error(node, &format!("`{key}` has no value")))?;
            program.constants.push(value);
            keys.push(Some(key));
            Ok(program.constants.len() - 1)
        };
        let (quant_min, quant_max) = spec.range();
        plan.sites.push(FakeQuantSite {
            name: format!(
                "{}{}",
                node.name,
                if prefix.is_empty() { "" } else { ".weight_fake_quant" }
            ),
            at,
            quant_min: quant_min as i64,
            quant_max: quant_max as i64,
            per_channel: spec.per_channel,
            symmetric: spec.symmetric,
            learnable: learnable || learnable_scales,
            averaging_constant: match spec.observer {
                qc_dsl::sections::Observer::MovingAverageMinMax { momentum } => momentum,
                _ => QAT_AVERAGING_CONSTANT,
            },
            observer_enabled: state("observer_enabled")?,
            fake_quant_enabled: state("fake_quant_enabled")?,
            min_val: state("activation_post_process.min_val")?,
            max_val: state("activation_post_process.max_val")?,
            scale: state("scale")?,
            zero_point: state("zero_point")?,
        });
    }
    Ok((program, keys, plan))
}

/// Which constants training trains: every parameter a step uses as is, except batch-norm
/// running statistics (updated by the forward, not the optimizer) and fake-quant state.
pub fn trainable(keys: &[Option<String>], plan: Option<&QatPlan>) -> Vec<bool> {
    let state = plan.map(QatPlan::state_constants).unwrap_or_default();
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            !state.contains(&i)
                && k.as_deref()
                    .is_some_and(|k| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        })
        .collect()
}

/// The averaging constant of QAT observers when the recipe's observer has none: PyTorch's
/// `MovingAverageMinMaxObserver` default.
pub const QAT_AVERAGING_CONSTANT: f64 = 0.01;

fn node_error(node: &crate::ir::Node, message: &str) -> LowerError {
    LowerError::Node {
        node: node.name.clone(),
        message: message.to_string(),
    }
}
