//! The closed set of ops: typed payloads, how each is built from named attributes (the one
//! builder that both recipe expansion and the IR text parser use), its attributes for printing,
//! its parameters (PyTorch names) and its shape rule.

use crate::types::{Dim, TensorType};
use qc_dsl::sections::Observer;
pub use qc_runtime::quant::Curve;
use qc_runtime::DType;

/// An attribute value, as written in a recipe or an IR dump.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(Vec<i64>),
    /// A bare word: `act: relu`, `observer: histogram` (IR dumps only; a recipe cannot write one).
    Name(String),
}

impl std::fmt::Display for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Float(v) => write!(f, "{}", crate::fmt::fmt_f64(*v)),
            Attr::Bool(v) => write!(f, "{v}"),
            Attr::Ints(v) => {
                let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            Attr::Name(v) => f.write_str(v),
        }
    }
}

/// Convolution (1-D or 2-D), PyTorch `nn.Conv1d`/`nn.Conv2d` semantics.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub rank: usize,
    pub out_channels: usize,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub pad: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    pub bias: bool,
    /// Fused activation (stage `fused` on).
    pub act: Option<Act>,
    /// Batch norm kept unfolded for QAT (PyTorch's `ConvBn` modules): owns `bn.*` parameters.
    pub bn: Option<BatchNorm>,
    /// How the weight is quantized (stage `observed` on).
    pub weight_quant: Option<WeightQuant>,
}

/// Max or average pooling window (1-D or 2-D).
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub rank: usize,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub pad: Vec<usize>,
    pub dilation: Vec<usize>,
    pub ceil_mode: bool,
    /// Average pooling only: whether padded zeros count in the divisor.
    pub count_include_pad: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub eps: f64,
    pub momentum: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub out_features: usize,
    pub bias: bool,
    /// Fused activation (stage `fused` on).
    pub act: Option<Act>,
    /// `batch_norm1d` kept unfolded for QAT: owns `bn.*` parameters.
    pub bn: Option<BatchNorm>,
    /// How the weight is quantized (stage `observed` on).
    pub weight_quant: Option<WeightQuant>,
}

/// An activation fused into the op before it (`conv_bn_relu`, `linear_relu`, `add_relu`).
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    Relu,
    Relu6,
    /// `hardtanh`/`clamp`: min(max(x, min), max).
    Clamp {
        min: f64,
        max: f64,
    },
}

impl Act {
    pub fn name(&self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::Relu6 => "relu6",
            Act::Clamp { .. } => "clamp",
        }
    }
    /// The standalone op this activation was.
    pub fn as_op(&self) -> Op {
        match self {
            Act::Relu => Op::Relu,
            Act::Relu6 => Op::Relu6,
            Act::Clamp { min, max } => Op::Clamp { min: *min, max: *max },
        }
    }
    /// The activation a standalone op can become, if any.
    pub fn from_op(op: &Op) -> Option<Act> {
        match op {
            Op::Relu => Some(Act::Relu),
            Op::Relu6 => Some(Act::Relu6),
            Op::Clamp { min, max } => Some(Act::Clamp { min: *min, max: *max }),
            _ => None,
        }
    }
}

/// How one tensor is quantized: a resolved plan entry (see `qc plan`), written into observer
/// and fake-quant nodes (activations) and into weighted ops (weights).
#[derive(Clone, Debug, PartialEq)]
pub struct QSpec {
    /// 2 to 8.
    pub bits: u8,
    pub signed: bool,
    pub symmetric: bool,
    pub power_of_two: bool,
    /// One scale per output channel (axis 0 of the weight) instead of one per tensor.
    pub per_channel: bool,
    pub observer: Observer,
}

impl QSpec {
    /// `[qmin, qmax]` of the integer type.
    pub fn range(&self) -> (i32, i32) {
        let b = self.bits.clamp(2, 8) as u32;
        if self.signed {
            (-(1 << (b - 1)), (1 << (b - 1)) - 1)
        } else {
            (0, (1 << b) - 1)
        }
    }
    /// The integer dtype that stores values of this spec.
    pub fn storage(&self) -> DType {
        if self.signed {
            DType::I8
        } else {
            DType::U8
        }
    }
    /// Short text: `u8 affine per_tensor histogram(bins: 2048)`.
    pub fn describe(&self) -> String {
        let ty = if self.signed { "int" } else { "uint" };
        let mut s = format!(
            "{ty}{} {} {}",
            self.bits,
            if self.symmetric { "symmetric" } else { "affine" },
            if self.per_channel { "per_channel" } else { "per_tensor" }
        );
        if self.power_of_two {
            s.push_str(" power_of_two");
        }
        s.push(' ');
        s.push_str(&observer_text(&self.observer));
        s
    }
}

/// `histogram(bins: 2048)`, `minmax`, ...
pub fn observer_text(o: &Observer) -> String {
    match o {
        Observer::MinMax => "minmax".into(),
        Observer::MovingAverageMinMax { momentum } => {
            format!("moving_average_minmax(momentum: {})", crate::fmt::fmt_f64(*momentum))
        }
        Observer::Histogram { bins } => format!("histogram(bins: {bins})"),
        Observer::Percentile { p } => format!("percentile(p: {})", crate::fmt::fmt_f64(*p)),
    }
}

/// The quantization of a weighted op's weight: observed (PTQ) or fake-quantized (QAT, with
/// PyTorch's `weight_fake_quant.*` state).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightQuant {
    pub spec: QSpec,
    pub fake: bool,
    /// How the int8 layer requantizes its accumulator (the plan's `requantize`); shown on the
    /// `qconv`/`qlinear` of stage `quantized` as `requantize: float|float_bias|integer`.
    pub requantize: qc_dsl::sections::Requantize,
}

/// Every op of the IR. Closed: adding one means adding its builder, attributes, parameters and
/// shape rule here, and the compiler tells you every other place that must learn it.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input {
        index: usize,
        /// `normalize(mean, std)` of the input's line: the model's raw input becomes
        /// `(x - mean[c]) / std[c]` before any op (applied by the data's readers and the runtime,
        /// not by a node).
        normalize: Option<qc_runtime::normalize::Normalize>,
    },
    Conv(Conv),
    BatchNorm(BatchNorm),
    Relu,
    Relu6,
    /// `hardtanh` and `clamp`: min(max(x, min), max).
    Clamp {
        min: f64,
        max: f64,
    },
    MaxPool(Pool),
    AvgPool(Pool),
    AdaptiveAvgPool {
        output: Vec<usize>,
    },
    /// Mean over every spatial dim, which stay as size 1.
    GlobalAvgPool,
    Flatten {
        start_dim: i64,
        end_dim: i64,
    },
    Linear(Linear),
    Add {
        act: Option<Act>,
    },
    Concat {
        dim: i64,
    },
    Identity,
    /// `hardswish`, `hardsigmoid`, `sigmoid`: a pointwise curve, PyTorch's semantics.
    Curve(Curve),
    /// Elementwise `a * b` with PyTorch's broadcasting (squeeze-excite's `[N, C, H, W] · [N, C, 1, 1]`).
    Mul,
    /// Inference no-op; training drops with probability `p`.
    Dropout {
        p: f64,
    },
    /// PTQ observer of an activation (PyTorch's `activation_post_process`); stage `observed`.
    Observe(QSpec),
    /// QAT fake-quantization of an activation, observing while enabled; stage `observed`.
    FakeQuant {
        spec: QSpec,
        learnable: bool,
    },
    /// Float to integer at the model's edge or before a quantized op (PyTorch's `quant`).
    Quantize {
        dtype: DType,
    },
    /// Integer to float, after the last quantized op or before a float-kept op.
    Dequantize,
    /// int8 convolution: integer weight (per-channel parameters on the parameter), float bias,
    /// output `scale`/`zero_point`; stage `quantized`.
    QConv(Conv),
    /// int8 linear, PyTorch's `_packed_params`.
    QLinear(Linear),
    /// int8 add with output `scale`/`zero_point`.
    QAdd {
        act: Option<Act>,
    },
    /// int8 concatenation, every input requantized to the output's parameters.
    QConcat {
        dim: i64,
    },
    /// int8 pointwise curve (a 256-entry table from the input's and output's parameters) with
    /// output `scale`/`zero_point`: `qhardswish`, `qhardsigmoid`, `qsigmoid`.
    QCurve(Curve),
    /// int8 broadcasting product with output `scale`/`zero_point`.
    QMul,
}

/// Why an op could not be built from its attributes; `key` names the attribute at fault.
#[derive(Clone, Debug, PartialEq)]
pub struct AttrError {
    pub key: Option<String>,
    pub message: String,
    pub help: String,
}

/// Names a recipe can call, with the op each builds.
pub const OP_NAMES: &[&str] = &[
    "conv1d",
    "conv2d",
    "batch_norm",
    "relu",
    "relu6",
    "hardtanh",
    "clamp",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "global_avg_pool",
    "flatten",
    "linear",
    "add",
    "concat",
    "identity",
    "dropout",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "mul",
];

/// Ops that only passes create (IR dumps name them; a recipe cannot call them).
pub const IR_ONLY_OP_NAMES: &[&str] = &[
    "observe",
    "fake_quant",
    "quantize",
    "dequantize",
    "qconv1d",
    "qconv2d",
    "qlinear",
    "qadd",
    "qconcat",
    "qhardswish",
    "qhardsigmoid",
    "qsigmoid",
    "qmul",
    "input",
];

/// How many tensor inputs an op takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
    pub fn describe(self) -> String {
        match self {
            Arity::Exactly(1) => "one tensor input".into(),
            Arity::Exactly(k) => format!("{k} tensor inputs"),
            Arity::AtLeast(k) => format!("{k} or more tensor inputs"),
        }
    }
}

impl Op {
    /// Ops that run on their input's integers and keep its quantization parameters (pools,
    /// flatten, relu/relu6/clamp, identity, dropout): the plan gives them no observer, and
    /// `convert` and checkpoint binding give them their input's integer type.
    pub fn shares_input_quant(&self) -> bool {
        matches!(
            self,
            Op::MaxPool(_)
                | Op::AvgPool(_)
                | Op::AdaptiveAvgPool { .. }
                | Op::GlobalAvgPool
                | Op::Flatten { .. }
                | Op::Relu
                | Op::Relu6
                | Op::Clamp { .. }
                | Op::Identity
                | Op::Dropout { .. }
        )
    }

    /// The name used in recipes and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv(c) if c.rank == 1 => "conv1d",
            Op::Conv(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::Clamp { .. } => "clamp",
            Op::MaxPool(p) if p.rank == 1 => "max_pool1d",
            Op::MaxPool(_) => "max_pool2d",
            Op::AvgPool(p) if p.rank == 1 => "avg_pool1d",
            Op::AvgPool(_) => "avg_pool2d",
            Op::AdaptiveAvgPool { output } if output.len() == 1 => "adaptive_avg_pool1d",
            Op::AdaptiveAvgPool { .. } => "adaptive_avg_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Flatten { .. } => "flatten",
            Op::Linear(_) => "linear",
            Op::Add { .. } => "add",
            Op::Concat { .. } => "concat",
            Op::Identity => "identity",
            Op::Dropout { .. } => "dropout",
            Op::Observe(_) => "observe",
            Op::FakeQuant { .. } => "fake_quant",
            Op::Quantize { .. } => "quantize",
            Op::Dequantize => "dequantize",
            Op::QConv(c) if c.rank == 1 => "qconv1d",
            Op::QConv(_) => "qconv2d",
            Op::QLinear(_) => "qlinear",
            Op::QAdd { .. } => "qadd",
            Op::QConcat { .. } => "qconcat",
            Op::Curve(c) => c.name(),
            Op::QCurve(Curve::HardSwish) => "qhardswish",
            Op::QCurve(Curve::HardSigmoid) => "qhardsigmoid",
            Op::QCurve(Curve::Sigmoid) => "qsigmoid",
            Op::Mul => "mul",
            Op::QMul => "qmul",
        }
    }

    pub fn arity(&self) -> Arity {
        match self {
            Op::Input { .. } => Arity::Exactly(0),
            Op::Add { .. } | Op::QAdd { .. } | Op::Mul | Op::QMul => Arity::Exactly(2),
            Op::Concat { .. } | Op::QConcat { .. } => Arity::AtLeast(1),
            _ => Arity::Exactly(1),
        }
    }

    /// Arity by recipe name, before attributes are known.
    pub fn arity_of(name: &str) -> Option<Arity> {
        Some(match name {
            "add" | "mul" => Arity::Exactly(2),
            "concat" | "cat" => Arity::AtLeast(1),
            n if OP_NAMES.contains(&n) => Arity::Exactly(1),
            _ => return None,
        })
    }
}

mod attrs;
mod params;
mod shape;

pub use params::{BN_ROLES, KEPT_BN_ROLES};
pub use shape::{elements, window_out, MAX_ELEMENTS};

#[cfg(test)]
mod tests;
