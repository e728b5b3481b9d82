//! Lowering to the runtime's `Program`, for every stage from `float` on: float ops become float
//! steps (PyTorch layout), integer ops (stage `quantized`) become int8 steps on channels-last
//! `u8` values with weights in the reference kernels' layouts (docs/runtime-program.md). Fused
//! activations and a kept batch norm of a float op become extra steps on values named
//! `<node>#pre_bn` / `<node>#pre_act`. Observers and fake-quant nodes lower to identities (their
//! output value keeps the node's name, which is how calibration reads what they see).

use std::collections::HashMap;

use qc_dsl::sections::Requantize;
use qc_runtime::kernels::Activation;
use qc_runtime::program::{from_torch_order, FloatOp, Layout, Program, QuantOp, Step, StepOp, ValueInfo, Window};
use qc_runtime::program::{FakeQuantAt, FakeQuantSite, QatPlan};
use qc_runtime::quant::{quantize_bias, QParams, QRange, RequantRule};
use qc_runtime::{DType, Tensor, TensorData};

use crate::ir::{Module, Node, NodeId, ParamQuant, Stage};
use crate::ops::{Act, BatchNorm, Conv, Op};
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
    let mut l = Lowering {
        module,
        program: Program {
            values: vec![],
            inputs: vec![],
            outputs: vec![],
            steps: vec![],
            constants: vec![],
        },
        value_of: HashMap::new(),
        const_of: HashMap::new(),
    };
    for id in module.graph.topo_order() {
        l.node(id)?;
    }
    let Lowering {
        mut program, value_of, ..
    } = l;
    program.outputs = module.graph.outputs.iter().map(|(_, id)| value_of[id]).collect();
    Ok(program)
}

/// The program being built, node by node in topological order.
struct Lowering<'m> {
    module: &'m Module,
    program: Program,
    /// The value holding each node's output.
    value_of: HashMap<NodeId, usize>,
    /// The constant holding each parameter key (float parameters are shared, not copied).
    const_of: HashMap<String, usize>,
}

/// One node being lowered: what its op's arms read.
struct At<'m> {
    node: &'m Node,
    rank: usize,
    integer: bool,
    /// Rank and quantization of the first input.
    in_rank: usize,
    in_quant: Option<QuantParams>,
}

impl<'m> At<'m> {
    fn fail(&self, message: String) -> LowerError {
        LowerError::Node {
            node: self.node.name.clone(),
            message,
        }
    }
}

impl<'m> Lowering<'m> {
    /// Lowers one node: its value, then its step (and the steps of what it fused).
    fn node(&mut self, id: NodeId) -> Result<(), LowerError> {
        let g = &self.module.graph;
        let node = g.node(id);
        let fail = |message: String| node_error(node, &message);
        let ty = node.ty.as_ref().ok_or_else(|| fail("no type".into()))?;
        let node_inputs = g.inputs_of(id);
        let rank = ty.dims.len();
        let integer = ty.dtype != DType::F32;
        // Identities on integers: the value is the input's.
        if integer && matches!(node.op, Op::Identity | Op::Dropout { .. }) {
            self.value_of.insert(id, self.value_of[&node_inputs[0]]);
            return Ok(());
        }
        let value = self.push_value(node)?;
        self.value_of.insert(id, value);
        let first_in = node_inputs.first().and_then(|i| g.node(*i).ty.as_ref());
        let at = At {
            node,
            rank,
            integer,
            in_rank: first_in.map_or(rank, |t| t.dims.len()),
            in_quant: first_in.and_then(|t| t.quant),
        };
        if let Op::Input { .. } = node.op {
            self.program.inputs.push(value);
            return Ok(());
        }
        // Ops fused into a float node (a kept batch norm, an activation) run after it.
        let mut then: Vec<FloatOp> = vec![];
        let op = match self.int8_op(&at)? {
            Some(op) => op,
            None => self.float_op(&at, &mut then)?,
        };
        let inputs: Vec<usize> = node_inputs.iter().map(|i| self.value_of[i]).collect();
        self.push_chain(value, inputs, op, then);
        Ok(())
    }

    /// The node's value: float in PyTorch's layout, or `u8` (channels-last for rank 3 and 4)
    /// with its quantization parameters.
    fn push_value(&mut self, node: &Node) -> Result<usize, LowerError> {
        let fail = |message: String| node_error(node, &message);
        let ty = node.ty.as_ref().ok_or_else(|| fail("no type".into()))?;
        let torch_shape: Vec<Option<usize>> = ty
            .dims
            .iter()
            .map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None })
            .collect();
        let value = self.program.values.len();
        if ty.dtype != DType::F32 {
            let q = ty
                .quant
                .as_ref()
                .ok_or_else(|| fail("an integer value without parameters".into()))?;
            let layout = if matches!(ty.dims.len(), 3 | 4) {
                Layout::ChannelsLast
            } else {
                Layout::Torch
            };
            self.program.values.push(ValueInfo::quantized(
                node.name.clone(),
                from_torch_order(&torch_shape, layout),
                DType::U8,
                layout,
                runtime_qparams(q).map_err(fail)?,
            ));
        } else {
            self.program
                .values
                .push(ValueInfo::float(node.name.clone(), torch_shape));
        }
        Ok(value)
    }

    /// The key a node holds in `role`.
    fn param_key(&self, at: &At<'m>, role: &str) -> Result<&'m String, LowerError> {
        at.node
            .params
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, k)| k)
            .ok_or_else(|| at.fail(format!("no `{role}`")))
    }

    /// The value (and integer scheme) of the parameter a node holds in `role`.
    fn param_value(&self, at: &At<'m>, role: &str) -> Result<(&'m Tensor, Option<&'m ParamQuant>), LowerError> {
        let key = self.param_key(at, role)?;
        let p = self
            .module
            .params
            .get(key)
            .ok_or_else(|| at.fail(format!("no parameter `{key}`")))?;
        let t = p.value.as_ref().ok_or_else(|| at.fail(format!("`{key}` is unbound")))?;
        Ok((t, p.quant.as_ref()))
    }

    /// A constant; one with a parameter key is made once and shared.
    fn constant(&mut self, key: Option<&str>, t: Tensor) -> usize {
        if let Some(&c) = key.and_then(|k| self.const_of.get(k)) {
            return c;
        }
        self.program.constants.push(t);
        let c = self.program.constants.len() - 1;
        if let Some(k) = key {
            self.const_of.insert(k.to_string(), c);
        }
        c
    }

    /// The constant of a float parameter, as is.
    fn float_param(&mut self, at: &At<'m>, role: &str) -> Result<usize, LowerError> {
        let key = self.param_key(at, role)?;
        let (t, _) = self.param_value(at, role)?;
        Ok(self.constant(Some(key), t.clone()))
    }

    /// The int8 weight, per-channel weight scales and bias constants of a `qconv` / `qlinear`:
    /// the weight in the kernels' layout (`layout`); the bias an `i32` at scale `s_in · s_w[c]`,
    /// or with `requantize: float_bias` the float bias as it is (added before the multiply).
    fn int8_weights(
        &mut self,
        at: &At<'m>,
        (weight_role, bias_role): (&str, Option<&str>),
        out_channels: usize,
        layout: fn(&Tensor) -> Result<Tensor, String>,
        requantize: Requantize,
    ) -> Result<(usize, usize, Option<usize>), LowerError> {
        let fail = |m: String| at.fail(m);
        let s_in = at
            .in_quant
            .ok_or_else(|| fail("the input has no parameters".into()))?
            .scale;
        let (w, wq) = self.param_value(at, weight_role)?;
        let scales = weight_scales(wq, out_channels).map_err(fail)?;
        let weight = layout(w).map_err(fail)?;
        let bias = match bias_role {
            Some(role) => {
                let (b, _) = self.param_value(at, role)?;
                Some(match requantize {
                    Requantize::FloatBias => float_bias(b, &scales).map_err(fail)?,
                    Requantize::Float | Requantize::Integer => int_bias(b, s_in, &scales).map_err(fail)?,
                })
            }
            None => None,
        };
        let weight = self.constant(None, weight);
        let weight_scales = self.constant(None, Tensor::f32(vec![scales.len()], scales));
        let bias = bias.map(|b| self.constant(None, b));
        Ok((weight, weight_scales, bias))
    }

    /// The int8 step of an integer op; `None` for an op that lowers to a float step.
    fn int8_op(&mut self, at: &At<'m>) -> Result<Option<StepOp>, LowerError> {
        let (rank, integer) = (at.rank, at.integer);
        let op: StepOp = match &at.node.op {
            Op::Quantize { .. } => QuantOp::Quantize.into(),
            Op::Dequantize => QuantOp::Dequantize.into(),
            Op::QConv(c) => {
                let bias = c.bias.then_some("bias");
                let requantize = c.weight_quant.as_ref().map_or(Requantize::Integer, |w| w.requantize);
                let (weight, weight_scales, bias) =
                    self.int8_weights(at, ("weight", bias), c.out_channels, to_ohwi, requantize)?;
                QuantOp::QConv {
                    window: window(&c.kernel, &c.stride, &c.pad, &c.dilation, false),
                    groups: c.groups,
                    weight,
                    weight_scales,
                    bias,
                    act: activation(&c.act),
                    requantize: rule(requantize),
                }
                .into()
            }
            Op::QLinear(l) => {
                let roles = ("_packed_params.weight", l.bias.then_some("_packed_params.bias"));
                let requantize = l.weight_quant.as_ref().map_or(Requantize::Integer, |w| w.requantize);
                let (weight, weight_scales, bias) =
                    self.int8_weights(at, roles, l.out_features, i8_weight, requantize)?;
                QuantOp::QLinear {
                    weight,
                    weight_scales,
                    bias,
                    act: activation(&l.act),
                    requantize: rule(requantize),
                }
                .into()
            }
            Op::QAdd { act } => QuantOp::QAdd {
                relu: match act {
                    None => false,
                    Some(Act::Relu) => true,
                    Some(other) => {
                        return Err(at.fail(format!(
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
                    return Err(at.fail(format!("the int8 concat joins channels (dim 1), not dim {dim}")));
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
                if norm(*start_dim, at.in_rank) != 1 || norm(*end_dim, at.in_rank) + 1 != at.in_rank {
                    return Err(
                        at.fail("the int8 flatten is `flatten(start_dim: 1)`; keep other flattens in float".into())
                    );
                }
                QuantOp::QFlatten.into()
            }
            Op::QCurve(curve) => QuantOp::QLut(*curve).into(),
            Op::QMul => {
                let g = &self.module.graph;
                let id = g
                    .find(&at.node.name)
                    .ok_or_else(|| at.fail("not in the graph".into()))?;
                if g.inputs_of(id)
                    .iter()
                    .any(|&i| g.node(i).ty.as_ref().map(|t| t.dims.len()) != Some(rank))
                {
                    return Err(at.fail(
                        "the int8 mul multiplies inputs of the output's rank; keep a mul of inputs of different ranks in float with `layer NAME { skip }`".into(),
                    ));
                }
                QuantOp::QMul.into()
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
            _ => return Ok(None),
        };
        Ok(Some(op))
    }

    /// What a float conv/linear fused runs after it: its kept batch norm, then its activation.
    fn fused_after(
        &mut self,
        at: &At<'m>,
        bn: &Option<BatchNorm>,
        act: &Option<Act>,
        then: &mut Vec<FloatOp>,
    ) -> Result<(), LowerError> {
        if let Some(bn) = bn {
            then.push(FloatOp::BatchNorm {
                eps: bn.eps as f32,
                weight: self.float_param(at, "bn.weight")?,
                bias: self.float_param(at, "bn.bias")?,
                mean: self.float_param(at, "bn.running_mean")?,
                var: self.float_param(at, "bn.running_var")?,
            });
        }
        then.extend(act_op(act));
        Ok(())
    }

    /// The float step of a node; what it fused goes to `then`.
    fn float_op(&mut self, at: &At<'m>, then: &mut Vec<FloatOp>) -> Result<StepOp, LowerError> {
        let (rank, in_rank) = (at.rank, at.in_rank);
        Ok(match &at.node.op {
            Op::Conv(c) => {
                self.fused_after(at, &c.bn, &c.act, then)?;
                FloatOp::Conv {
                    window: window(&c.kernel, &c.stride, &c.pad, &c.dilation, false),
                    groups: c.groups,
                    weight: self.float_param(at, "weight")?,
                    bias: if c.bias {
                        Some(self.float_param(at, "bias")?)
                    } else {
                        None
                    },
                }
                .into()
            }
            Op::Linear(l) => {
                self.fused_after(at, &l.bn, &l.act, then)?;
                FloatOp::Linear {
                    weight: self.float_param(at, "weight")?,
                    bias: if l.bias {
                        Some(self.float_param(at, "bias")?)
                    } else {
                        None
                    },
                }
                .into()
            }
            Op::BatchNorm(bn) => FloatOp::BatchNorm {
                eps: bn.eps as f32,
                weight: self.float_param(at, "weight")?,
                bias: self.float_param(at, "bias")?,
                mean: self.float_param(at, "running_mean")?,
                var: self.float_param(at, "running_var")?,
            }
            .into(),
            Op::Relu => FloatOp::Relu.into(),
            Op::Relu6 => FloatOp::Clamp { min: 0.0, max: 6.0 }.into(),
            Op::Clamp { min, max } => FloatOp::Clamp {
                min: *min as f32,
                max: *max as f32,
            }
            .into(),
            Op::MaxPool(p) => FloatOp::MaxPool {
                window: window(&p.kernel, &p.stride, &p.pad, &p.dilation, p.ceil_mode),
            }
            .into(),
            Op::AvgPool(p) => FloatOp::AvgPool {
                window: window(&p.kernel, &p.stride, &p.pad, &p.dilation, p.ceil_mode),
                count_include_pad: p.count_include_pad,
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
            Op::Add { act } => {
                then.extend(act_op(act));
                FloatOp::Add.into()
            }
            Op::Concat { dim } => FloatOp::Concat { dim: norm(*dim, rank) }.into(),
            Op::Curve(curve) => FloatOp::Curve(*curve).into(),
            Op::Mul => FloatOp::Mul.into(),
            Op::Identity | Op::Dropout { .. } | Op::Observe(_) | Op::FakeQuant { .. } => FloatOp::Identity.into(),
            Op::Input { .. }
            | Op::Quantize { .. }
            | Op::Dequantize
            | Op::QConv(_)
            | Op::QLinear(_)
            | Op::QAdd { .. }
            | Op::QConcat { .. }
            | Op::QCurve(_)
            | Op::QMul => unreachable!("lowered by `int8_op`"),
        })
    }

    /// The steps of one node: its op, then what it fused. The node's own value is the last of
    /// the chain; the ones before are named after the op they feed (`conv1#pre_bn`,
    /// `conv1#pre_act`).
    fn push_chain(&mut self, value: usize, mut inputs: Vec<usize>, op: StepOp, then: Vec<FloatOp>) {
        let program = &mut self.program;
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
}

/// A dim index counted from the end (`-1`) as one from the start.
fn norm(d: i64, r: usize) -> usize {
    if d < 0 {
        (d + r as i64) as usize
    } else {
        d as usize
    }
}

/// The float steps of a fused activation.
fn act_op(act: &Option<Act>) -> Vec<FloatOp> {
    match act {
        None => vec![],
        Some(Act::Relu) => vec![FloatOp::Relu],
        Some(Act::Relu6) => vec![FloatOp::Clamp { min: 0.0, max: 6.0 }],
        Some(Act::Clamp { min, max }) => vec![FloatOp::Clamp {
            min: *min as f32,
            max: *max as f32,
        }],
    }
}

/// The float stages' lowering (kept as the name calibration and tests use).
pub fn lower_float(module: &Module) -> Result<Program, LowerError> {
    lower(module)
}

/// The runtime's rule for a recipe's `requantize:` word (`float_bias` is the float rule; its
/// bias constant is `f32`).
fn rule(r: Requantize) -> RequantRule {
    match r {
        Requantize::Float | Requantize::FloatBias => RequantRule::Float,
        Requantize::Integer => RequantRule::Integer,
    }
}

/// The float bias kept for `requantize: float_bias`: `f32`, one finite value per channel (the
/// runtime divides it by `s_in · s_w[c]` at load).
fn float_bias(b: &Tensor, scales: &[f32]) -> Result<Tensor, String> {
    let TensorData::F32(v) = &b.data else {
        return Err(format!("the bias is {}, not f32", b.dtype()));
    };
    if v.len() != scales.len() {
        return Err(format!("{} bias values for {} output channels", v.len(), scales.len()));
    }
    if let Some(c) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!("bias of channel {c} is {}", v[c]));
    }
    Ok(Tensor {
        shape: vec![v.len()],
        data: TensorData::F32(v.clone()),
    })
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
fn set_key(module: &Module, node: &Node, program: &Program, keys: &mut [Option<String>], c: usize, role: &str) {
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
            power_of_two: spec.power_of_two,
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

fn node_error(node: &Node, message: &str) -> LowerError {
    LowerError::Node {
        node: node.name.clone(),
        message: message.to_string(),
    }
}
