//! The executable format the compiler lowers into: values (dtype, shape, layout, quantization),
//! steps in topological order (float steps and int8 steps, mixed freely), and constants. The
//! format, layouts and rules are in `docs/runtime-program.md`; [`crate::exec`] validates and runs
//! it, [`crate::artifact`] stores it in a `.qmodel` file.

use serde::{Deserialize, Serialize};

mod device;
mod qat;

pub use device::Device;
pub use qat::{FakeQuantAt, FakeQuantSite, QatPlan};

use crate::kernels::{Activation, KernelError};
use crate::quant::{Curve, QParams, RequantRule};
use crate::tensor::{DType, Tensor};

/// Index of a value (an input or a step's output) in `Program::values`.
pub type ValueId = usize;
/// Index of a constant in `Program::constants`.
pub type ConstId = usize;

/// How a value's elements lie in memory. `ValueInfo::shape` is always the shape *in memory order*
/// (row-major), so the layout says what its axes mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// PyTorch's order: `[N, C, H, W]`, `[N, C, L]`, `[N, F]`, or any other rank as PyTorch has
    /// it. Every float step reads and writes this layout.
    #[default]
    Torch,
    /// Channels last, the int8 kernels' layout: `[N, H, W, C]` (rank 4) or `[N, L, C]` (rank 3)
    /// for PyTorch's `[N, C, H, W]` / `[N, C, L]`. Only ranks 3 and 4.
    ChannelsLast,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Torch => "torch",
            Layout::ChannelsLast => "channels_last",
        }
    }
}

/// What the program knows of a value before running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    /// The IR node's name (a PyTorch module path); errors name values and steps by it.
    pub name: String,
    /// The shape in memory order (see [`Layout`]); `None` for the symbolic batch dimension.
    pub shape: Vec<Option<usize>>,
    /// `f32` for float values; `u8` (or `i8`) for quantized ones.
    pub dtype: DType,
    pub layout: Layout,
    /// Scale, zero point and integer range of a quantized (`u8`/`i8`) value, per tensor;
    /// `None` for `f32` values.
    pub quant: Option<QParams>,
}

impl ValueInfo {
    /// An `f32` value in PyTorch's layout.
    pub fn float(name: impl Into<String>, shape: Vec<Option<usize>>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            shape,
            dtype: DType::F32,
            layout: Layout::Torch,
            quant: None,
        }
    }

    /// A quantized value (`dtype` `u8` or `i8`) with per-tensor parameters.
    pub fn quantized(
        name: impl Into<String>,
        shape: Vec<Option<usize>>,
        dtype: DType,
        layout: Layout,
        params: QParams,
    ) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            shape,
            dtype,
            layout,
            quant: Some(params),
        }
    }

    /// The shape as PyTorch sees it (`[N, C, H, W]` for a channels-last `[N, H, W, C]`).
    pub fn torch_shape(&self) -> Vec<Option<usize>> {
        to_torch_order(&self.shape, self.layout)
    }

    /// `[N, 3, 224, 224]`, the symbolic batch written `N`.
    pub fn shape_string(&self) -> String {
        shape_string(&self.shape)
    }
}

/// `[N, 3, 224, 224]`: `None` dims written `N`.
pub fn shape_string(shape: &[Option<usize>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("N".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Reorders a shape written in `layout` into PyTorch's order (channels-last rank 3/4 → NC…).
pub fn to_torch_order<T: Copy>(shape: &[T], layout: Layout) -> Vec<T> {
    match (layout, shape.len()) {
        (Layout::ChannelsLast, 3 | 4) => {
            let mut v = vec![shape[0], shape[shape.len() - 1]];
            v.extend_from_slice(&shape[1..shape.len() - 1]);
            v
        }
        _ => shape.to_vec(),
    }
}

/// Reorders a PyTorch-order shape into `layout` (NC… → channels last for rank 3/4).
pub fn from_torch_order<T: Copy>(shape: &[T], layout: Layout) -> Vec<T> {
    match (layout, shape.len()) {
        (Layout::ChannelsLast, 3 | 4) => {
            let mut v = vec![shape[0]];
            v.extend_from_slice(&shape[2..]);
            v.push(shape[1]);
            v
        }
        _ => shape.to_vec(),
    }
}

/// A sliding window: kernel, stride, padding and dilation per spatial dim (1 or 2 of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub pad: Vec<usize>,
    pub dilation: Vec<usize>,
    pub ceil_mode: bool,
}

/// One float operation, PyTorch semantics, NCHW (or NCL) layout, `f32` values and constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatOp {
    /// Weight `[Cout, Cin/groups, k...]`.
    Conv {
        window: Window,
        groups: usize,
        weight: ConstId,
        bias: Option<ConstId>,
    },
    /// Inference batch norm with running statistics.
    BatchNorm {
        eps: f32,
        weight: ConstId,
        bias: ConstId,
        mean: ConstId,
        var: ConstId,
    },
    Relu,
    Clamp {
        min: f32,
        max: f32,
    },
    MaxPool {
        window: Window,
    },
    AvgPool {
        window: Window,
        count_include_pad: bool,
    },
    AdaptiveAvgPool {
        output: Vec<usize>,
    },
    Flatten {
        start_dim: usize,
        end_dim: usize,
    },
    /// Weight `[out, in]`.
    Linear {
        weight: ConstId,
        bias: Option<ConstId>,
    },
    Add,
    Concat {
        dim: usize,
    },
    Identity,
    /// A pointwise curve: hardswish, hardsigmoid or sigmoid ([`Curve::eval`]).
    Curve(Curve),
    /// Elementwise product with PyTorch's broadcasting (both inputs of the output's rank; each
    /// dim equal to the output's or 1).
    Mul,
}

/// One int8 operation. Every quantized value is per tensor (`ValueInfo::quant`); inputs and
/// outputs of the compute ops are `u8` (the kernels' activation type). Weights are constants in the
/// reference kernels' layouts: `i8`, symmetric per output channel (zero point 0), their scales an
/// `f32` constant `[Cout]`; biases `i32` `[Cout]` with scale `s_in · s_w[c]`
/// ([`quant::quantize_bias`](crate::quant::quantize_bias)), or, with the float rule, the `f32`
/// bias itself. The integer requantization of each
/// output channel is derived when the program is loaded, with
/// [`kernels::requant_per_channel`](crate::kernels::requant_per_channel) (`Requant::from_scales` of
/// `s_in`, `s_w[c]`, `s_out` by the op's `requantize` rule, the activation fused), so the program
/// stores only real scales.
/// Semantics and numerics: `docs/runtime-program.md`, `docs/numerics.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantOp {
    /// `f32` → `u8`/`i8` with the output's parameters ([`quant::quantize`](crate::quant::quantize)),
    /// converting the input's layout into the output's (e.g. PyTorch NCHW → NHWC).
    Quantize,
    /// `u8`/`i8` → `f32` with the input's parameters, converting the layout likewise.
    Dequantize,
    /// Convolution, 1-D (`[N, L, Cin]` → `[N, OL, Cout]`) or 2-D (`[N, H, W, Cin]` →
    /// `[N, OH, OW, Cout]`), channels last, PyTorch's groups (depthwise: `groups = Cin`), stride,
    /// padding (with the input's zero point, i.e. real 0) and dilation; `window.ceil_mode` false.
    QConv {
        window: Window,
        groups: usize,
        /// `i8` `[Cout, KH, KW, Cin/groups]` (OHWI) or, 1-D, `[Cout, K, Cin/groups]`.
        weight: ConstId,
        /// `f32` `[Cout]`: each output channel's weight scale (positive normal).
        weight_scales: ConstId,
        /// `i32` `[Cout]` (added to the accumulator), or with the float rule `f32` `[Cout]`: the
        /// real bias, added to `f32(acc)` before the multiply (PyTorch's fbgemm; numerics §4).
        bias: Option<ConstId>,
        /// Fused into the output range.
        act: Activation,
        /// How the accumulator is requantized (absent in older `.qmodel`s: `integer`).
        #[serde(default)]
        requantize: RequantRule,
    },
    /// `[.., K]` → `[.., M]` in PyTorch's layout.
    QLinear {
        /// `i8` `[M, K]` (PyTorch's `[out, in]`).
        weight: ConstId,
        /// `f32` `[M]`.
        weight_scales: ConstId,
        /// `i32` `[M]`, or `f32` `[M]` with the float rule (as [`QuantOp::QConv`]'s).
        bias: Option<ConstId>,
        act: Activation,
        /// As [`QuantOp::QConv`]'s.
        #[serde(default)]
        requantize: RequantRule,
    },
    /// Elementwise sum of two tensors of the same shape and layout, each with its own parameters
    /// ([`quant::QAdd`](crate::quant::QAdd)), optionally followed by ReLU.
    QAdd { relu: bool },
    /// Max pooling, channels last, PyTorch's `max_pool1d/2d` (dilation, `ceil_mode`). The output
    /// keeps the input's parameters.
    QMaxPool { window: Window },
    /// Average pooling, channels last, PyTorch's `avg_pool1d/2d` (no dilation, no divisor
    /// override). The output keeps the input's parameters.
    QAvgPool { window: Window, count_include_pad: bool },
    /// PyTorch's `adaptive_avg_pool1d/2d` (all ones: global average pooling), channels last. The
    /// output keeps the input's parameters.
    QAdaptiveAvgPool { output: Vec<usize> },
    /// Concatenation along the channel axis (PyTorch's dim 1: the last axis of a channels-last
    /// value, dim 1 of a rank-2 value); each input is requantized to the output's parameters
    /// (a copy where they are equal).
    QConcat,
    /// PyTorch's `flatten(1)`: `[N, H, W, C]` / `[N, L, C]` channels last → `[N, C·H·W]` in
    /// PyTorch's `(c, h, w)` feature order (a `Torch`-layout input is reshaped as is). The output
    /// keeps the input's parameters.
    QFlatten,
    /// A standalone activation (`relu`, `relu6`, `clamp`) that no conv/linear/add absorbed. The
    /// output keeps the input's parameters.
    QClamp { act: Activation },
    /// A pointwise curve (hardswish, hardsigmoid, sigmoid) through a 256-entry table derived at
    /// load from the input's and output's parameters ([`quant::lut_table`](crate::quant::lut_table)),
    /// any layout (the output's is the input's).
    QLut(Curve),
    /// Elementwise product of two values of the same rank and layout, PyTorch's broadcasting (a
    /// dim of 1 repeats), each with its own parameters ([`quant::QMul`](crate::quant::QMul)).
    QMul,
}

impl QuantOp {
    /// The op's name in errors and docs (`qconv`).
    pub fn name(&self) -> &'static str {
        match self {
            QuantOp::Quantize => "quantize",
            QuantOp::Dequantize => "dequantize",
            QuantOp::QConv { .. } => "qconv",
            QuantOp::QLinear { .. } => "qlinear",
            QuantOp::QAdd { .. } => "qadd",
            QuantOp::QMaxPool { .. } => "qmax_pool",
            QuantOp::QAvgPool { .. } => "qavg_pool",
            QuantOp::QAdaptiveAvgPool { .. } => "qadaptive_avg_pool",
            QuantOp::QConcat => "qconcat",
            QuantOp::QFlatten => "qflatten",
            QuantOp::QClamp { .. } => "qclamp",
            QuantOp::QLut(_) => "qlut",
            QuantOp::QMul => "qmul",
        }
    }
}

impl FloatOp {
    /// The op's name in errors and docs (`conv`).
    pub fn name(&self) -> &'static str {
        match self {
            FloatOp::Conv { .. } => "conv",
            FloatOp::BatchNorm { .. } => "batch_norm",
            FloatOp::Relu => "relu",
            FloatOp::Clamp { .. } => "clamp",
            FloatOp::MaxPool { .. } => "max_pool",
            FloatOp::AvgPool { .. } => "avg_pool",
            FloatOp::AdaptiveAvgPool { .. } => "adaptive_avg_pool",
            FloatOp::Flatten { .. } => "flatten",
            FloatOp::Linear { .. } => "linear",
            FloatOp::Add => "add",
            FloatOp::Concat { .. } => "concat",
            FloatOp::Identity => "identity",
            FloatOp::Curve(c) => c.name(),
            FloatOp::Mul => "mul",
        }
    }
}

/// What a step computes: a float op (reference interpreter or libtorch) or an int8 op (the CPU
/// int8 kernels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    Float(FloatOp),
    Quant(QuantOp),
}

impl StepOp {
    pub fn name(&self) -> &'static str {
        match self {
            StepOp::Float(op) => op.name(),
            StepOp::Quant(op) => op.name(),
        }
    }
}

impl From<FloatOp> for StepOp {
    fn from(op: FloatOp) -> StepOp {
        StepOp::Float(op)
    }
}

impl From<QuantOp> for StepOp {
    fn from(op: QuantOp) -> StepOp {
        StepOp::Quant(op)
    }
}

/// One step: `output = op(inputs...)`. A step is named after its output value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub op: StepOp,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// An executable program. Steps are in topological order; every value is computed once (an
/// input, or one step's output); constants are referenced by index from the ops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub values: Vec<ValueInfo>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub steps: Vec<Step>,
    pub constants: Vec<Tensor>,
}

/// Why a program is malformed: found once, when it is loaded or built into an executor, and
/// naming the step (by index and output name), value or constant at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Isa(#[from] crate::kernels::fast::IsaError),
    #[error("{what} refers to value {id}, but the program has {count} values")]
    ValueOutOfRange { what: String, id: usize, count: usize },
    #[error("step {index} (`{step}`) refers to constant {id}, but the program has {count} constants")]
    ConstOutOfRange {
        index: usize,
        step: String,
        id: usize,
        count: usize,
    },
    #[error("step {index} (`{step}`) reads `{value}` before any step computes it; steps must be in topological order")]
    NotYetComputed { index: usize, step: String, value: String },
    #[error("value `{value}` is computed more than once")]
    ComputedTwice { value: String },
    #[error("output `{value}` is never computed")]
    OutputNotComputed { value: String },
    #[error("value `{value}`: {message}")]
    Value { value: String, message: String },
    #[error("step {index} (`{step}`, {op}): constant {constant}: {message}")]
    Constant {
        index: usize,
        step: String,
        op: &'static str,
        constant: usize,
        message: String,
    },
    #[error("step {index} (`{step}`, {op}): {message}")]
    Step {
        index: usize,
        step: String,
        op: &'static str,
        message: String,
    },
}

/// Why a program could not run on the inputs given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("the model takes {expected} inputs, {found} were given")]
    InputCount { expected: usize, found: usize },
    #[error("input `{name}` must have shape {expected}, found {found:?}")]
    InputShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("input `{name}` must be {expected}, found {found}")]
    InputDType {
        name: String,
        expected: DType,
        found: DType,
    },
    #[error("`{node}` produced a non-finite value ({value}) at element {index}")]
    NonFinite { node: String, index: usize, value: f32 },
    #[error("the program is malformed: {0}")]
    Invalid(#[from] ProgramError),
    #[error("step `{step}` cannot run on these shapes: {message}")]
    Shape { step: String, message: String },
    #[error("step `{step}`: {error}")]
    Kernel { step: String, error: KernelError },
    /// A caller's per-value hook (`interp::run_with`) stopped the run after this value.
    #[error("stopped after `{node}`")]
    Stopped { node: String },
    #[error("backend: {0}")]
    Backend(String),
}

impl Program {
    /// Checks inputs against the declared dtypes and shapes (any batch size; every dimension at
    /// least 1).
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), RunError> {
        if inputs.len() != self.inputs.len() {
            return Err(RunError::InputCount {
                expected: self.inputs.len(),
                found: inputs.len(),
            });
        }
        for (t, &id) in inputs.iter().zip(&self.inputs) {
            let Some(info) = self.values.get(id) else {
                return Err(ProgramError::ValueOutOfRange {
                    what: "an input".into(),
                    id,
                    count: self.values.len(),
                }
                .into());
            };
            if t.dtype() != info.dtype {
                return Err(RunError::InputDType {
                    name: info.name.clone(),
                    expected: info.dtype,
                    found: t.dtype(),
                });
            }
            let fits = t.shape.len() == info.shape.len()
                && Some(t.data_len()) == t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
                && t.shape
                    .iter()
                    .zip(&info.shape)
                    .all(|(d, want)| *d >= 1 && want.is_none_or(|w| w == *d));
            if !fits {
                return Err(RunError::InputShape {
                    name: info.name.clone(),
                    expected: info.shape_string(),
                    found: t.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// Per value, the index of the last step that reads it (`None` for outputs and for values no
    /// step reads): where an executor may free it.
    pub fn last_uses(&self) -> Vec<Option<usize>> {
        let mut last_use = vec![None; self.values.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for &v in &step.inputs {
                last_use[v] = Some(i);
            }
        }
        for &v in &self.outputs {
            last_use[v] = None;
        }
        last_use
    }

    /// The name of value `id`, `?` when out of range (for messages about malformed programs).
    pub fn value_name(&self, id: ValueId) -> &str {
        self.values.get(id).map_or("?", |v| v.name.as_str())
    }
}

/// Output length of a sliding window, PyTorch's `pooling_output_shape` exactly (floor division,
/// `ceil_mode` adding `stride - 1`, and a last window that would start in the right padding
/// dropped). `None` when a parameter is zero or the output would be empty. The compiler's shape
/// rule, the interpreter and the int8 kernels all use this one function.
pub fn window_out(n: usize, k: usize, s: usize, p: usize, d: usize, ceil_mode: bool) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 || n == 0 {
        return None;
    }
    let (n, k, s, p, d) = (n as i128, k as i128, s as i128, p as i128, d as i128);
    let span = d * (k - 1) + 1;
    let extra = if ceil_mode { s - 1 } else { 0 };
    let mut out = (n + 2 * p - span + extra).div_euclid(s) + 1;
    if ceil_mode && (out - 1) * s >= n + p {
        out -= 1;
    }
    (out >= 1).then(|| usize::try_from(out).ok()).flatten()
}

/// PyTorch's broadcast of two shapes: aligned at the right (the shorter one padded with leading
/// 1s), each pair of dims equal or one of them 1. `None` when they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], k: usize| if k + s.len() < rank { 1 } else { s[k + s.len() - rank] };
    (0..rank)
        .map(|k| match (dim(a, k), dim(b, k)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}
