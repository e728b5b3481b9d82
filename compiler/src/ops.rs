//! The closed set of ops: typed payloads, how each is built from named attributes (the one
//! builder that both recipe expansion and the IR text parser use), its attributes for printing,
//! its parameters (PyTorch names) and its shape rule.

use std::collections::BTreeMap;

use crate::types::{Dim, TensorType};
use qc_dsl::sections::Observer;
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
            Attr::Float(v) => write!(f, "{}", crate::printer::fmt_f64(*v)),
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
            format!(
                "moving_average_minmax(momentum: {})",
                crate::printer::fmt_f64(*momentum)
            )
        }
        Observer::Histogram { bins } => format!("histogram(bins: {bins})"),
        Observer::Percentile { p } => format!("percentile(p: {})", crate::printer::fmt_f64(*p)),
    }
}

/// The quantization of a weighted op's weight: observed (PTQ) or fake-quantized (QAT, with
/// PyTorch's `weight_fake_quant.*` state).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightQuant {
    pub spec: QSpec,
    pub fake: bool,
}

/// Every op of the IR. Closed: adding one means adding its builder, attributes, parameters and
/// shape rule here, and the compiler tells you every other place that must learn it.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input {
        index: usize,
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

/// Reads named attributes for one op, remembering which names it asked for so that unknown
/// ones can be reported with the accepted names.
struct Attrs<'a> {
    op: &'a str,
    given: &'a [(String, Attr)],
    known: Vec<&'static str>,
    errors: Vec<AttrError>,
    /// Whether the IR-only attributes (fused activation, kept BN, quantization) are accepted.
    internal: bool,
}

/// Attribute names of a [`QSpec`]: plain on observer nodes, `w_`-prefixed on weighted ops.
struct QKeys {
    bits: &'static str,
    signed: &'static str,
    symmetric: &'static str,
    pow2: &'static str,
    per_channel: &'static str,
    observer: &'static str,
    bins: &'static str,
    momentum: &'static str,
    p: &'static str,
}

const ACT_KEYS: QKeys = QKeys {
    bits: "bits",
    signed: "signed",
    symmetric: "symmetric",
    pow2: "pow2",
    per_channel: "per_channel",
    observer: "observer",
    bins: "bins",
    momentum: "momentum",
    p: "p",
};

const WEIGHT_KEYS: QKeys = QKeys {
    bits: "w_bits",
    signed: "w_signed",
    symmetric: "w_symmetric",
    pow2: "w_pow2",
    per_channel: "w_per_channel",
    observer: "w_observer",
    bins: "w_bins",
    momentum: "w_momentum",
    p: "w_p",
};

fn put_qspec(m: &mut BTreeMap<&'static str, Attr>, k: &QKeys, q: &QSpec) {
    m.insert(k.bits, Attr::Int(q.bits as i64));
    m.insert(k.signed, Attr::Bool(q.signed));
    m.insert(k.symmetric, Attr::Bool(q.symmetric));
    m.insert(k.pow2, Attr::Bool(q.power_of_two));
    m.insert(k.per_channel, Attr::Bool(q.per_channel));
    m.insert(k.observer, Attr::Name(q.observer.name().into()));
    match q.observer {
        Observer::MinMax => {}
        Observer::MovingAverageMinMax { momentum } => {
            m.insert(k.momentum, Attr::Float(momentum));
        }
        Observer::Histogram { bins } => {
            m.insert(k.bins, Attr::Int(bins as i64));
        }
        Observer::Percentile { p } => {
            m.insert(k.p, Attr::Float(p));
        }
    }
}

fn put_act(m: &mut BTreeMap<&'static str, Attr>, act: &Option<Act>) {
    if let Some(a) = act {
        m.insert("act", Attr::Name(a.name().into()));
        if let Act::Clamp { min, max } = a {
            m.insert("act_min", Attr::Float(*min));
            m.insert("act_max", Attr::Float(*max));
        }
    }
}

fn put_bn(m: &mut BTreeMap<&'static str, Attr>, bn: &Option<BatchNorm>) {
    if let Some(b) = bn {
        m.insert("bn_eps", Attr::Float(b.eps));
        m.insert("bn_momentum", Attr::Float(b.momentum));
    }
}

fn put_weight_quant(m: &mut BTreeMap<&'static str, Attr>, wq: &Option<WeightQuant>) {
    if let Some(w) = wq {
        put_qspec(m, &WEIGHT_KEYS, &w.spec);
        m.insert("w_fake", Attr::Bool(w.fake));
    }
}

/// PyTorch's spellings, accepted as aliases of qc's short names.
const ALIASES: &[(&str, &str)] = &[
    ("out_channels", "out"),
    ("out_features", "out"),
    ("kernel_size", "kernel"),
    ("padding", "pad"),
    ("output_size", "output"),
    ("min_val", "min"),
    ("max_val", "max"),
];

fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(_, c)| *c)
        .unwrap_or(name)
}

impl<'a> Attrs<'a> {
    fn new(op: &'a str, given: &'a [(String, Attr)], internal: bool) -> Self {
        Attrs {
            op,
            given,
            known: vec![],
            errors: vec![],
            internal,
        }
    }

    fn has(&self, key: &str) -> bool {
        self.given.iter().any(|(k, _)| canonical(k) == key)
    }

    fn name_opt(&mut self, key: &'static str) -> Option<String> {
        match self.get(key)? {
            Attr::Name(n) => Some(n.clone()),
            other => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be a name, found `{other}`", self.op),
                    format!("write e.g. `{key}: relu`"),
                );
                None
            }
        }
    }

    /// `act: relu | relu6 | clamp` (with `act_min`, `act_max`); IR only.
    fn act(&mut self) -> Option<Act> {
        if !self.internal {
            return None;
        }
        let name = self.name_opt("act");
        let (min, max) = (self.float("act_min", -1.0), self.float("act_max", 1.0));
        match name.as_deref() {
            None => None,
            Some("relu") => Some(Act::Relu),
            Some("relu6") => Some(Act::Relu6),
            Some("clamp") => Some(Act::Clamp { min, max }),
            Some(other) => {
                self.fail(
                    "act",
                    format!("unknown fused activation `{other}`"),
                    "one of: relu, relu6, clamp".into(),
                );
                None
            }
        }
    }

    /// `bn_eps`, `bn_momentum`: batch norm kept unfolded (QAT); IR only.
    fn bn(&mut self) -> Option<BatchNorm> {
        if !self.internal || !self.has("bn_eps") {
            if self.internal {
                self.known.extend(["bn_eps", "bn_momentum"]);
            }
            return None;
        }
        Some(BatchNorm {
            eps: self.float("bn_eps", 1e-5),
            momentum: self.float("bn_momentum", 0.1),
        })
    }

    fn qspec(&mut self, k: &QKeys) -> QSpec {
        let bits = self.int(k.bits, 2, Some(8)).clamp(2, 8) as u8;
        let signed = self.boolean(k.signed, true);
        let symmetric = self.boolean(k.symmetric, true);
        let power_of_two = self.boolean(k.pow2, false);
        let per_channel = self.boolean(k.per_channel, false);
        let name = self.name_opt(k.observer).unwrap_or_else(|| "minmax".into());
        let bins = self.int(k.bins, 1, Some(Observer::DEFAULT_BINS as i64));
        let momentum = self.float(k.momentum, Observer::DEFAULT_MOMENTUM);
        let p = self.float(k.p, Observer::DEFAULT_PERCENTILE);
        let observer = match name.as_str() {
            "minmax" => Observer::MinMax,
            "moving_average_minmax" => Observer::MovingAverageMinMax { momentum },
            "histogram" => Observer::Histogram {
                bins: bins.clamp(1, Observer::MAX_BINS as i64) as u32,
            },
            "percentile" => Observer::Percentile { p },
            other => {
                self.fail(
                    k.observer,
                    format!("unknown observer `{other}`"),
                    "one of: minmax, moving_average_minmax, histogram, percentile".into(),
                );
                Observer::MinMax
            }
        };
        QSpec {
            bits,
            signed,
            symmetric,
            power_of_two,
            per_channel,
            observer,
        }
    }

    /// `w_*` attributes: the weight's quantization; IR only.
    fn weight_quant(&mut self) -> Option<WeightQuant> {
        if !self.internal {
            return None;
        }
        if !self.has(WEIGHT_KEYS.bits) {
            self.known.extend([
                WEIGHT_KEYS.bits,
                WEIGHT_KEYS.signed,
                WEIGHT_KEYS.symmetric,
                WEIGHT_KEYS.pow2,
                WEIGHT_KEYS.per_channel,
                WEIGHT_KEYS.observer,
                WEIGHT_KEYS.bins,
                WEIGHT_KEYS.momentum,
                WEIGHT_KEYS.p,
                "w_fake",
            ]);
            return None;
        }
        let spec = self.qspec(&WEIGHT_KEYS);
        let fake = self.boolean("w_fake", false);
        Some(WeightQuant { spec, fake })
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Attr> {
        self.known.push(key);
        self.given
            .iter()
            .rev()
            .find(|(k, _)| canonical(k) == key)
            .map(|(_, v)| v)
    }

    fn fail(&mut self, key: &str, message: String, help: String) {
        self.errors.push(AttrError {
            key: Some(key.to_string()),
            message,
            help,
        });
    }

    fn int_opt(&mut self, key: &'static str, min: i64) -> Option<i64> {
        match self.get(key)? {
            Attr::Int(v) if *v >= min => Some(*v),
            Attr::Int(v) => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be at least {min}, found {v}", self.op),
                    format!("write `{key}: {min}` or more"),
                );
                None
            }
            other => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be an integer, found `{other}`", self.op),
                    format!("write e.g. `{key}: {}`", min.max(1)),
                );
                None
            }
        }
    }

    fn int(&mut self, key: &'static str, min: i64, default: Option<i64>) -> i64 {
        match self.int_opt(key, min) {
            Some(v) => v,
            None if self.given.iter().any(|(k, _)| canonical(k) == key) => min,
            None => match default {
                Some(d) => d,
                None => {
                    self.errors.push(AttrError {
                        key: None,
                        message: format!("{} needs `{key}`", self.op),
                        help: format!("add `{key}: ...` to the call"),
                    });
                    min
                }
            },
        }
    }

    fn float(&mut self, key: &'static str, default: f64) -> f64 {
        match self.get(key) {
            None => default,
            Some(Attr::Float(v)) => *v,
            Some(Attr::Int(v)) => *v as f64,
            Some(other) => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be a number, found `{other}`", self.op),
                    format!("write e.g. `{key}: {default}`"),
                );
                default
            }
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Attr::Bool(v)) => *v,
            Some(other) => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be `true` or `false`, found `{other}`", self.op),
                    format!("write `{key}: {default}`"),
                );
                default
            }
        }
    }

    /// An int or a list of `rank` ints, each at least `min`.
    fn ints(&mut self, key: &'static str, rank: usize, min: i64, default: Option<Vec<usize>>) -> Vec<usize> {
        let given = self.get(key);
        let values: Vec<i64> = match given {
            None => match default {
                Some(d) => return d,
                None => {
                    self.errors.push(AttrError {
                        key: None,
                        message: format!("{} needs `{key}`", self.op),
                        help: format!("add `{key}: ...` to the call (an integer, or a list of {rank})"),
                    });
                    return vec![min.max(1) as usize; rank];
                }
            },
            Some(Attr::Int(v)) => vec![*v; rank],
            Some(Attr::Ints(v)) if v.len() == rank => v.clone(),
            Some(Attr::Ints(v)) => {
                self.fail(
                    key,
                    format!("`{key}` of {} needs {rank} values, found {}", self.op, v.len()),
                    format!("write one integer for all dims, or a list of {rank}"),
                );
                return vec![min.max(1) as usize; rank];
            }
            Some(other) => {
                self.fail(
                    key,
                    format!("`{key}` of {} must be an integer or a list, found `{other}`", self.op),
                    format!("write e.g. `{key}: 3` or `{key}: [3, 3]`"),
                );
                return vec![min.max(1) as usize; rank];
            }
        };
        if let Some(bad) = values.iter().find(|v| **v < min) {
            self.fail(
                key,
                format!("`{key}` of {} must be at least {min}, found {bad}", self.op),
                format!("every `{key}` value must be {min} or more"),
            );
            return vec![min.max(1) as usize; rank];
        }
        values.into_iter().map(|v| v as usize).collect()
    }

    fn finish(mut self, op: Op) -> Result<Op, Vec<AttrError>> {
        for (k, _) in self.given {
            if !self.known.contains(&canonical(k)) {
                let help = match qc_dsl::diag::did_you_mean(k, self.known.iter().copied()) {
                    Some(m) => m,
                    None if self.known.is_empty() => format!("{} takes no keyword arguments", self.op),
                    None => format!("{} accepts: {}", self.op, self.known.join(", ")),
                };
                self.errors.push(AttrError {
                    key: Some(k.clone()),
                    message: format!("{} has no argument `{k}`", self.op),
                    help,
                });
            }
        }
        if self.errors.is_empty() {
            Ok(op)
        } else {
            Err(self.errors)
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

    /// The op a recipe name builds, with its attributes checked. `None` for an unknown name.
    /// Only what a recipe may write is accepted (no IR-only ops or attributes).
    pub fn build(name: &str, attrs: &[(String, Attr)]) -> Option<Result<Op, Vec<AttrError>>> {
        if IR_ONLY_OP_NAMES.contains(&name) {
            return None;
        }
        Self::build_with(name, attrs, false)
    }

    /// The op an IR dump line names: every op and attribute, the IR-only ones included.
    pub fn build_ir(name: &str, attrs: &[(String, Attr)]) -> Option<Result<Op, Vec<AttrError>>> {
        Self::build_with(name, attrs, true)
    }

    fn build_with(name: &str, attrs: &[(String, Attr)], internal: bool) -> Option<Result<Op, Vec<AttrError>>> {
        let mut a = Attrs::new(name, attrs, internal);
        let op = match name {
            "conv1d" | "conv2d" | "qconv1d" | "qconv2d" => {
                let rank = if name.ends_with("1d") { 1 } else { 2 };
                let out_channels = a.int("out", 1, None) as usize;
                let kernel = a.ints("kernel", rank, 1, None);
                let stride = a.ints("stride", rank, 1, Some(vec![1; rank]));
                let pad = a.ints("pad", rank, 0, Some(vec![0; rank]));
                let dilation = a.ints("dilation", rank, 1, Some(vec![1; rank]));
                let groups = a.int("groups", 1, Some(1)) as usize;
                let bias = a.boolean("bias", true);
                let conv = Conv {
                    rank,
                    out_channels,
                    kernel,
                    stride,
                    pad,
                    dilation,
                    groups,
                    bias,
                    act: a.act(),
                    bn: a.bn(),
                    weight_quant: a.weight_quant(),
                };
                if name.starts_with('q') {
                    Op::QConv(conv)
                } else {
                    Op::Conv(conv)
                }
            }
            "batch_norm" => {
                let eps = a.float("eps", 1e-5);
                let momentum = a.float("momentum", 0.1);
                if eps <= 0.0 || !eps.is_finite() {
                    a.fail(
                        "eps",
                        format!("`eps` of batch_norm must be positive, found {eps}"),
                        "PyTorch's default is `eps: 1e-5`".into(),
                    );
                }
                if !(0.0..=1.0).contains(&momentum) {
                    a.fail(
                        "momentum",
                        format!("`momentum` of batch_norm must be in [0, 1], found {momentum}"),
                        "PyTorch's default is `momentum: 0.1`".into(),
                    );
                }
                Op::BatchNorm(BatchNorm { eps, momentum })
            }
            "relu" => Op::Relu,
            "relu6" => Op::Relu6,
            "hardtanh" | "clamp" => {
                let (dmin, dmax) = if name == "hardtanh" {
                    (-1.0, 1.0)
                } else {
                    (f64::NEG_INFINITY, f64::INFINITY)
                };
                let min = a.float("min", dmin);
                let max = a.float("max", dmax);
                if min > max {
                    a.fail(
                        "max",
                        format!("`max` ({max}) of {name} is below `min` ({min})"),
                        "write `min` below `max`".into(),
                    );
                }
                Op::Clamp { min, max }
            }
            "max_pool1d" | "max_pool2d" | "avg_pool1d" | "avg_pool2d" => {
                let rank = if name.ends_with("1d") { 1 } else { 2 };
                let kernel = a.ints("kernel", rank, 1, None);
                let stride = a.ints("stride", rank, 1, Some(kernel.clone()));
                let pad = a.ints("pad", rank, 0, Some(vec![0; rank]));
                let ceil_mode = a.boolean("ceil_mode", false);
                if pad.iter().zip(&kernel).any(|(p, k)| 2 * p > *k) {
                    a.fail(
                        "pad",
                        format!("`pad` of {name} must be at most half the kernel"),
                        "PyTorch requires pad <= kernel / 2".into(),
                    );
                }
                if name.starts_with("max") {
                    let dilation = a.ints("dilation", rank, 1, Some(vec![1; rank]));
                    Op::MaxPool(Pool {
                        rank,
                        kernel,
                        stride,
                        pad,
                        dilation,
                        ceil_mode,
                        count_include_pad: false,
                    })
                } else {
                    let count_include_pad = a.boolean("count_include_pad", true);
                    Op::AvgPool(Pool {
                        rank,
                        kernel,
                        stride,
                        pad,
                        dilation: vec![1; rank],
                        ceil_mode,
                        count_include_pad,
                    })
                }
            }
            "adaptive_avg_pool1d" | "adaptive_avg_pool2d" => {
                let rank = if name.ends_with("1d") { 1 } else { 2 };
                Op::AdaptiveAvgPool {
                    output: a.ints("output", rank, 1, Some(vec![1; rank])),
                }
            }
            "global_avg_pool" => Op::GlobalAvgPool,
            "flatten" => {
                let start_dim = a.int("start_dim", -8, Some(1));
                let end_dim = a.int("end_dim", -8, Some(-1));
                Op::Flatten { start_dim, end_dim }
            }
            "linear" | "qlinear" => {
                let out_features = a.int("out", 1, None) as usize;
                let bias = a.boolean("bias", true);
                let linear = Linear {
                    out_features,
                    bias,
                    act: a.act(),
                    bn: a.bn(),
                    weight_quant: a.weight_quant(),
                };
                if name == "qlinear" {
                    Op::QLinear(linear)
                } else {
                    Op::Linear(linear)
                }
            }
            "add" => Op::Add { act: a.act() },
            "qadd" => Op::QAdd { act: a.act() },
            "qconcat" => Op::QConcat {
                dim: a.int("dim", -8, Some(1)),
            },
            "observe" => Op::Observe(a.qspec(&ACT_KEYS)),
            "fake_quant" => {
                let spec = a.qspec(&ACT_KEYS);
                let learnable = a.boolean("learnable", false);
                Op::FakeQuant { spec, learnable }
            }
            "quantize" => {
                let dtype = match a.name_opt("dtype").as_deref() {
                    Some("i8") => DType::I8,
                    Some("u8") | None => DType::U8,
                    Some(other) => {
                        a.fail("dtype", format!("quantize to `{other}`"), "one of: u8, i8".into());
                        DType::U8
                    }
                };
                Op::Quantize { dtype }
            }
            "dequantize" => Op::Dequantize,
            "concat" | "cat" => Op::Concat {
                dim: a.int("dim", -8, Some(1)),
            },
            "identity" => Op::Identity,
            "dropout" => {
                let p = a.float("p", 0.5);
                if !(0.0..1.0).contains(&p) {
                    a.fail(
                        "p",
                        format!("`p` of dropout must be in [0, 1), found {p}"),
                        "write e.g. `p: 0.2`".into(),
                    );
                }
                Op::Dropout { p }
            }
            "input" => Op::Input {
                index: a.int("index", 0, None) as usize,
            },
            _ => return None,
        };
        Some(a.finish(op))
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
        }
    }

    /// Attributes, sorted by name (the printer's order; `Op::build` reads them back).
    pub fn attrs(&self) -> BTreeMap<&'static str, Attr> {
        let ints = |v: &[usize]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
        let mut m = BTreeMap::new();
        match self {
            Op::Input { index } => {
                m.insert("index", Attr::Int(*index as i64));
            }
            Op::Conv(c) | Op::QConv(c) => {
                m.insert("out", Attr::Int(c.out_channels as i64));
                m.insert("kernel", ints(&c.kernel));
                m.insert("stride", ints(&c.stride));
                m.insert("pad", ints(&c.pad));
                m.insert("dilation", ints(&c.dilation));
                m.insert("groups", Attr::Int(c.groups as i64));
                m.insert("bias", Attr::Bool(c.bias));
                put_act(&mut m, &c.act);
                put_bn(&mut m, &c.bn);
                put_weight_quant(&mut m, &c.weight_quant);
            }
            Op::BatchNorm(b) => {
                m.insert("eps", Attr::Float(b.eps));
                m.insert("momentum", Attr::Float(b.momentum));
            }
            Op::Relu | Op::Relu6 | Op::GlobalAvgPool | Op::Identity | Op::Dequantize => {}
            Op::Add { act } | Op::QAdd { act } => put_act(&mut m, act),
            Op::Observe(q) => put_qspec(&mut m, &ACT_KEYS, q),
            Op::FakeQuant { spec, learnable } => {
                put_qspec(&mut m, &ACT_KEYS, spec);
                m.insert("learnable", Attr::Bool(*learnable));
            }
            Op::Quantize { dtype } => {
                m.insert("dtype", Attr::Name(dtype.name().into()));
            }
            Op::Clamp { min, max } => {
                m.insert("min", Attr::Float(*min));
                m.insert("max", Attr::Float(*max));
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                m.insert("kernel", ints(&p.kernel));
                m.insert("stride", ints(&p.stride));
                m.insert("pad", ints(&p.pad));
                m.insert("ceil_mode", Attr::Bool(p.ceil_mode));
                if matches!(self, Op::MaxPool(_)) {
                    m.insert("dilation", ints(&p.dilation));
                } else {
                    m.insert("count_include_pad", Attr::Bool(p.count_include_pad));
                }
            }
            Op::AdaptiveAvgPool { output } => {
                m.insert("output", ints(output));
            }
            Op::Flatten { start_dim, end_dim } => {
                m.insert("start_dim", Attr::Int(*start_dim));
                m.insert("end_dim", Attr::Int(*end_dim));
            }
            Op::Linear(l) | Op::QLinear(l) => {
                m.insert("out", Attr::Int(l.out_features as i64));
                m.insert("bias", Attr::Bool(l.bias));
                put_act(&mut m, &l.act);
                put_bn(&mut m, &l.bn);
                put_weight_quant(&mut m, &l.weight_quant);
            }
            Op::Concat { dim } | Op::QConcat { dim } => {
                m.insert("dim", Attr::Int(*dim));
            }
            Op::Dropout { p } => {
                m.insert("p", Attr::Float(*p));
            }
        }
        m
    }

    pub fn arity(&self) -> Arity {
        match self {
            Op::Input { .. } => Arity::Exactly(0),
            Op::Add { .. } | Op::QAdd { .. } => Arity::Exactly(2),
            Op::Concat { .. } | Op::QConcat { .. } => Arity::AtLeast(1),
            _ => Arity::Exactly(1),
        }
    }

    /// Arity by recipe name, before attributes are known.
    pub fn arity_of(name: &str) -> Option<Arity> {
        Some(match name {
            "add" => Arity::Exactly(2),
            "concat" | "cat" => Arity::AtLeast(1),
            n if OP_NAMES.contains(&n) => Arity::Exactly(1),
            _ => return None,
        })
    }

    /// Parameters this op owns, as (PyTorch suffix, shape), given its input types. `in_channels`
    /// comes from dim 1 of the input; `None` when it is not known.
    pub fn params(&self, in_channels: Option<usize>) -> Vec<(&'static str, DType, Vec<usize>)> {
        let cin = in_channels.unwrap_or(0);
        match self {
            Op::Conv(c) => {
                let mut shape = vec![c.out_channels, cin / c.groups.max(1)];
                shape.extend(&c.kernel);
                let mut p = vec![("weight", DType::F32, shape)];
                if c.bias {
                    p.push(("bias", DType::F32, vec![c.out_channels]));
                }
                weighted_extras(&mut p, c.out_channels, &c.bn, &c.weight_quant);
                p
            }
            Op::BatchNorm(_) => bn_params(&BN_ROLES, cin),
            Op::Linear(l) => {
                let mut p = vec![("weight", DType::F32, vec![l.out_features, cin])];
                if l.bias {
                    p.push(("bias", DType::F32, vec![l.out_features]));
                }
                weighted_extras(&mut p, l.out_features, &l.bn, &l.weight_quant);
                p
            }
            Op::Observe(q) => {
                let mut p = vec![("min_val", DType::F32, vec![]), ("max_val", DType::F32, vec![])];
                if let Observer::Histogram { bins } = q.observer {
                    p.insert(0, ("histogram", DType::F32, vec![bins as usize]));
                }
                p
            }
            Op::FakeQuant { .. } => fake_quant_params(&ACT_FAKE_QUANT_ROLES, None),
            Op::Quantize { .. } => vec![("scale", DType::F32, vec![1]), ("zero_point", DType::I64, vec![1])],
            Op::QConv(c) => {
                let mut shape = vec![c.out_channels, cin / c.groups.max(1)];
                shape.extend(&c.kernel);
                let dtype = c.weight_quant.as_ref().map_or(DType::I8, |w| w.spec.storage());
                let mut p = vec![("weight", dtype, shape)];
                if c.bias {
                    p.push(("bias", DType::F32, vec![c.out_channels]));
                }
                p.extend(output_qparams());
                p
            }
            Op::QLinear(l) => {
                let dtype = l.weight_quant.as_ref().map_or(DType::I8, |w| w.spec.storage());
                let mut p = vec![("_packed_params.weight", dtype, vec![l.out_features, cin])];
                if l.bias {
                    p.push(("_packed_params.bias", DType::F32, vec![l.out_features]));
                }
                p.extend(output_qparams());
                p
            }
            Op::QAdd { .. } | Op::QConcat { .. } => output_qparams(),
            _ => vec![],
        }
    }

    /// Parameter suffixes this op owns, before shapes are known.
    pub fn param_names(&self) -> Vec<&'static str> {
        self.params(None).into_iter().map(|(n, _, _)| n).collect()
    }

    /// The output type from the input types; an error sentence when they do not fit.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        let x = inputs.first().copied();
        match self {
            Op::Input { .. } => Err("an input's type is declared, not inferred".into()),
            Op::Conv(c) | Op::QConv(c) => {
                let x = x.expect("arity checked");
                expect_rank(x, c.rank + 2, self.name())?;
                let cin = fixed(&x.dims[1], "input channels", self.name())?;
                if cin % c.groups != 0 || c.out_channels % c.groups != 0 {
                    return Err(format!(
                        "groups = {} must divide both the input channels ({cin}) and `out` ({})",
                        c.groups, c.out_channels
                    ));
                }
                let mut dims = vec![x.dims[0].clone(), Dim::Fixed(c.out_channels)];
                for i in 0..c.rank {
                    let n = fixed(&x.dims[2 + i], "spatial size", self.name())?;
                    dims.push(Dim::Fixed(window_out(
                        n,
                        c.kernel[i],
                        c.stride[i],
                        c.pad[i],
                        c.dilation[i],
                        false,
                        self.name(),
                    )?));
                }
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::BatchNorm(_) => {
                let x = x.expect("arity checked");
                if !(2..=4).contains(&x.dims.len()) {
                    return Err(format!(
                        "batch_norm needs a [N, C], [N, C, L] or [N, C, H, W] input, found {x}"
                    ));
                }
                fixed(&x.dims[1], "channels", self.name())?;
                Ok(x.clone())
            }
            Op::Relu
            | Op::Relu6
            | Op::Clamp { .. }
            | Op::Identity
            | Op::Dropout { .. }
            | Op::Observe(_)
            | Op::FakeQuant { .. } => Ok(x.expect("arity checked").clone()),
            Op::Quantize { dtype } => Ok(TensorType::new(*dtype, x.expect("arity checked").dims.clone())),
            Op::Dequantize => Ok(TensorType::new(DType::F32, x.expect("arity checked").dims.clone())),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let x = x.expect("arity checked");
                expect_rank(x, p.rank + 2, self.name())?;
                let mut dims = x.dims[..2].to_vec();
                for i in 0..p.rank {
                    let n = fixed(&x.dims[2 + i], "spatial size", self.name())?;
                    dims.push(Dim::Fixed(window_out(
                        n,
                        p.kernel[i],
                        p.stride[i],
                        p.pad[i],
                        p.dilation[i],
                        p.ceil_mode,
                        self.name(),
                    )?));
                }
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::AdaptiveAvgPool { output } => {
                let x = x.expect("arity checked");
                expect_rank(x, output.len() + 2, self.name())?;
                let mut dims = x.dims[..2].to_vec();
                dims.extend(output.iter().map(|&o| Dim::Fixed(o)));
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::GlobalAvgPool => {
                let x = x.expect("arity checked");
                if x.dims.len() < 3 {
                    return Err(format!("global_avg_pool needs spatial dims ([N, C, ...]), found {x}"));
                }
                let mut dims = x.dims[..2].to_vec();
                dims.extend(std::iter::repeat_n(Dim::Fixed(1), x.dims.len() - 2));
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Flatten { start_dim, end_dim } => {
                let x = x.expect("arity checked");
                let r = x.dims.len() as i64;
                let s = if *start_dim < 0 { start_dim + r } else { *start_dim };
                let e = if *end_dim < 0 { end_dim + r } else { *end_dim };
                if s < 0 || e >= r || s > e {
                    return Err(format!(
                        "flatten(start_dim: {start_dim}, end_dim: {end_dim}) does not fit a rank-{r} input {x}"
                    ));
                }
                let (s, e) = (s as usize, e as usize);
                let mut prod = 1usize;
                for d in &x.dims[s..=e] {
                    prod = prod
                        .checked_mul(fixed(d, "flattened dim", self.name())?)
                        .filter(|n| *n <= MAX_ELEMENTS)
                        .ok_or_else(|| format!("flatten of {x} has more than {MAX_ELEMENTS} elements"))?;
                }
                let mut dims = x.dims[..s].to_vec();
                dims.push(Dim::Fixed(prod));
                dims.extend_from_slice(&x.dims[e + 1..]);
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Linear(l) | Op::QLinear(l) => {
                let x = x.expect("arity checked");
                if x.dims.len() < 2 {
                    return Err(format!("linear needs at least [N, features], found {x}"));
                }
                fixed(x.dims.last().expect("rank checked"), "input features", self.name())?;
                let mut dims = x.dims.clone();
                *dims.last_mut().expect("rank checked") = Dim::Fixed(l.out_features);
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Add { .. } | Op::QAdd { .. } => {
                let (a, b) = (inputs[0], inputs[1]);
                if !a.same_shape(b) {
                    return Err(format!("add needs inputs of the same type, found {a} and {b}"));
                }
                Ok(a.plain())
            }
            Op::Concat { dim } | Op::QConcat { dim } => {
                let first = inputs[0];
                let r = first.dims.len() as i64;
                let d = if *dim < 0 { dim + r } else { *dim };
                if d < 0 || d >= r {
                    return Err(format!("concat dim {dim} is out of range for rank {r}"));
                }
                let d = d as usize;
                let mut total = 0;
                for (i, t) in inputs.iter().enumerate() {
                    if t.dims.len() != first.dims.len() || t.dtype != first.dtype {
                        return Err(format!(
                            "concat input {} is {t}, which does not match input 1 ({first})",
                            i + 1
                        ));
                    }
                    for (k, (a, b)) in t.dims.iter().zip(&first.dims).enumerate() {
                        if k != d && a != b {
                            return Err(format!(
                                "concat inputs must agree on every dim but {d}: input {} is {t}, input 1 is {first}",
                                i + 1
                            ));
                        }
                    }
                    total = fixed(&t.dims[d], "concatenated dim", self.name())?
                        .checked_add(total)
                        .filter(|n| *n <= MAX_ELEMENTS)
                        .ok_or_else(|| format!("concat along dim {d} is larger than {MAX_ELEMENTS}"))?;
                }
                let mut dims = first.dims.clone();
                dims[d] = Dim::Fixed(total);
                Ok(TensorType::new(first.dtype, dims))
            }
        }
    }
}

/// PyTorch's batch-norm buffers, as roles of a `batch_norm` node.
const BN_ROLES: [&str; 5] = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"];
/// The same, kept inside a QAT `ConvBn`/`LinearBn` node (`conv1.bn.weight`).
const KEPT_BN_ROLES: [&str; 5] = [
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
];

fn bn_params(roles: &[&'static str; 5], c: usize) -> Vec<(&'static str, DType, Vec<usize>)> {
    vec![
        (roles[0], DType::F32, vec![c]),
        (roles[1], DType::F32, vec![c]),
        (roles[2], DType::F32, vec![c]),
        (roles[3], DType::F32, vec![c]),
        (roles[4], DType::I64, vec![]),
    ]
}

/// PyTorch's `FusedMovingAvgObsFakeQuantize` state (the x86 QAT default), as roles.
const ACT_FAKE_QUANT_ROLES: [&str; 7] = [
    "fake_quant_enabled",
    "observer_enabled",
    "scale",
    "zero_point",
    "activation_post_process.eps",
    "activation_post_process.min_val",
    "activation_post_process.max_val",
];
const WEIGHT_FAKE_QUANT_ROLES: [&str; 7] = [
    "weight_fake_quant.fake_quant_enabled",
    "weight_fake_quant.observer_enabled",
    "weight_fake_quant.scale",
    "weight_fake_quant.zero_point",
    "weight_fake_quant.activation_post_process.eps",
    "weight_fake_quant.activation_post_process.min_val",
    "weight_fake_quant.activation_post_process.max_val",
];

/// Fake-quant state: per tensor (`channels: None`, scalar statistics) or one entry per channel.
fn fake_quant_params(roles: &[&'static str; 7], channels: Option<usize>) -> Vec<(&'static str, DType, Vec<usize>)> {
    let (q, stat) = match channels {
        Some(c) => (vec![c], vec![c]),
        None => (vec![1], vec![]),
    };
    vec![
        (roles[0], DType::I64, vec![1]),
        (roles[1], DType::I64, vec![1]),
        (roles[2], DType::F32, q.clone()),
        (roles[3], DType::I32, q),
        (roles[4], DType::F32, vec![1]),
        (roles[5], DType::F32, stat.clone()),
        (roles[6], DType::F32, stat),
    ]
}

/// A quantized op's output `scale` and `zero_point` (PyTorch's buffers of converted modules).
fn output_qparams() -> Vec<(&'static str, DType, Vec<usize>)> {
    vec![("scale", DType::F32, vec![]), ("zero_point", DType::I64, vec![])]
}

/// The kept-BN and weight fake-quant parameters of a conv or linear.
fn weighted_extras(
    p: &mut Vec<(&'static str, DType, Vec<usize>)>,
    out: usize,
    bn: &Option<BatchNorm>,
    wq: &Option<WeightQuant>,
) {
    if bn.is_some() {
        p.extend(bn_params(&KEPT_BN_ROLES, out));
    }
    if let Some(w) = wq.as_ref().filter(|w| w.fake) {
        p.extend(fake_quant_params(
            &WEIGHT_FAKE_QUANT_ROLES,
            w.spec.per_channel.then_some(out),
        ));
    }
}

/// qc refuses tensors of more elements than this (2^34): a typo such as `out: 10000000` should be
/// an error message, not an allocation that takes the machine down.
pub const MAX_ELEMENTS: usize = 1 << 34;

/// Elements of a shape, or `None` when the product passes `MAX_ELEMENTS`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d).filter(|n| *n <= MAX_ELEMENTS))
}

fn expect_rank(x: &TensorType, rank: usize, op: &str) -> Result<(), String> {
    if x.dims.len() != rank {
        let want = match rank {
            3 => "[N, C, L]",
            4 => "[N, C, H, W]",
            _ => "a different rank",
        };
        return Err(format!("{op} needs a rank-{rank} input {want}, found {x}"));
    }
    Ok(())
}

fn fixed(d: &Dim, what: &str, op: &str) -> Result<usize, String> {
    match d {
        Dim::Fixed(n) => Ok(*n),
        Dim::Symbol(s) => Err(format!("{op} needs a known {what}, found the symbolic size `{s}`")),
    }
}

/// Output length of a sliding window (PyTorch's formula, `ceil_mode` included), with the error
/// sentence the shape rule reports; the formula is `qc_runtime::program::window_out`.
pub fn window_out(
    n: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    ceil_mode: bool,
    op: &str,
) -> Result<usize, String> {
    qc_runtime::program::window_out(n, k, s, p, d, ceil_mode).ok_or_else(|| {
        let span = d.saturating_mul(k.saturating_sub(1)).saturating_add(1);
        format!(
            "{op}: the window ({span} wide with dilation {d}) does not fit the input ({n} plus padding {p} on each side); the output would be empty"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(dims: &[usize]) -> TensorType {
        TensorType::new(
            DType::F32,
            std::iter::once(Dim::Symbol("N".into()))
                .chain(dims.iter().map(|&d| Dim::Fixed(d)))
                .collect(),
        )
    }

    fn build(name: &str, attrs: &[(&str, Attr)]) -> Op {
        let attrs: Vec<(String, Attr)> = attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Op::build(name, &attrs).unwrap().unwrap()
    }

    #[test]
    fn window_sizes_follow_pytorch() {
        // nn.MaxPool2d(3, 2) on 112 -> 55; ceil_mode -> 56; resnet's stem pool (3, 2, pad 1) -> 56.
        assert_eq!(window_out(112, 3, 2, 0, 1, false, "p"), Ok(55));
        assert_eq!(window_out(112, 3, 2, 0, 1, true, "p"), Ok(56));
        assert_eq!(window_out(112, 3, 2, 1, 1, false, "p"), Ok(56));
        // ceil_mode never starts a window in the right padding: 5, k2, s2, pad 1 -> 3 (not 4).
        assert_eq!(window_out(5, 2, 2, 1, 1, true, "p"), Ok(3));
        // dilation 2, k3 spans 5.
        assert_eq!(window_out(7, 3, 1, 0, 2, false, "p"), Ok(3));
        assert!(window_out(2, 3, 1, 0, 1, false, "p").is_err());
    }

    #[test]
    fn conv_shapes_and_params() {
        let dw = build(
            "conv2d",
            &[
                ("out", Attr::Int(32)),
                ("kernel", Attr::Int(3)),
                ("groups", Attr::Int(32)),
                ("pad", Attr::Int(1)),
            ],
        );
        assert_eq!(dw.infer(&[&ty(&[32, 112, 112])]).unwrap(), ty(&[32, 112, 112]));
        assert_eq!(dw.params(Some(32))[0].2, vec![32, 1, 3, 3]);
        assert!(dw.infer(&[&ty(&[30, 8, 8])]).unwrap_err().contains("groups"));
        let c1 = build(
            "conv1d",
            &[
                ("out_channels", Attr::Int(32)),
                ("kernel_size", Attr::Int(80)),
                ("stride", Attr::Int(16)),
            ],
        );
        assert_eq!(c1.infer(&[&ty(&[1, 8000])]).unwrap(), ty(&[32, 496]));
    }

    #[test]
    fn attributes_are_checked() {
        let errs = Op::build(
            "conv2d",
            &[("out".into(), Attr::Int(8)), ("kernal".into(), Attr::Int(3))],
        )
        .unwrap()
        .unwrap_err();
        assert!(errs.iter().any(|e| e.message.contains("needs `kernel`")));
        assert!(errs
            .iter()
            .any(|e| e.key.as_deref() == Some("kernal") && e.help.contains("did you mean `kernel`")));
        assert!(Op::build("frobnicate", &[]).is_none());
        let errs = Op::build("linear", &[("out".into(), Attr::Float(2.5))])
            .unwrap()
            .unwrap_err();
        assert!(errs[0].message.contains("must be an integer"));
    }

    #[test]
    fn attrs_rebuild_the_same_op() {
        for op in [
            build(
                "conv2d",
                &[
                    ("out", Attr::Int(8)),
                    ("kernel", Attr::Ints(vec![1, 7])),
                    ("pad", Attr::Ints(vec![0, 3])),
                ],
            ),
            build(
                "avg_pool2d",
                &[
                    ("kernel", Attr::Int(3)),
                    ("stride", Attr::Int(1)),
                    ("pad", Attr::Int(1)),
                ],
            ),
            build("hardtanh", &[("min", Attr::Float(-0.5))]),
            build("batch_norm", &[("eps", Attr::Float(1e-3))]),
            build("flatten", &[]),
            build("adaptive_avg_pool1d", &[("output", Attr::Int(4))]),
        ] {
            let attrs: Vec<(String, Attr)> = op.attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(Op::build(op.name(), &attrs).unwrap().unwrap(), op);
        }
    }

    #[test]
    fn ir_only_ops_and_attributes_round_trip() {
        let spec = QSpec {
            bits: 8,
            signed: false,
            symmetric: false,
            power_of_two: false,
            per_channel: false,
            observer: Observer::Histogram { bins: 2048 },
        };
        let wq = WeightQuant {
            spec: QSpec {
                signed: true,
                symmetric: true,
                per_channel: true,
                observer: Observer::MovingAverageMinMax { momentum: 0.01 },
                ..spec.clone()
            },
            fake: true,
        };
        let conv = Conv {
            rank: 2,
            out_channels: 8,
            kernel: vec![3, 3],
            stride: vec![1, 1],
            pad: vec![1, 1],
            dilation: vec![1, 1],
            groups: 1,
            bias: false,
            act: Some(Act::Clamp { min: 0.0, max: 6.0 }),
            bn: Some(BatchNorm {
                eps: 1e-3,
                momentum: 0.1,
            }),
            weight_quant: Some(wq.clone()),
        };
        let ops = [
            Op::Conv(conv.clone()),
            Op::QConv(Conv {
                bn: None,
                ..conv.clone()
            }),
            Op::QLinear(Linear {
                out_features: 4,
                bias: true,
                act: Some(Act::Relu),
                bn: None,
                weight_quant: None,
            }),
            Op::Add { act: Some(Act::Relu6) },
            Op::QAdd { act: None },
            Op::QConcat { dim: 1 },
            Op::Observe(spec.clone()),
            Op::FakeQuant {
                spec: QSpec {
                    observer: Observer::Percentile { p: 99.9 },
                    ..spec
                },
                learnable: true,
            },
            Op::Quantize { dtype: DType::I8 },
            Op::Dequantize,
        ];
        for op in ops {
            let attrs: Vec<(String, Attr)> = op.attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(Op::build_ir(op.name(), &attrs).unwrap().unwrap(), op, "{}", op.name());
        }
        // A kept BN and a per-channel weight fake-quant bring PyTorch's QAT keys.
        let roles: Vec<&str> = Op::Conv(conv).param_names();
        assert!(roles.contains(&"bn.running_var") && roles.contains(&"weight_fake_quant.scale"));
        // Recipes cannot reach IR-only ops or attributes.
        assert!(Op::build("observe", &[]).is_none());
        let errs = Op::build(
            "conv2d",
            &[
                ("out".into(), Attr::Int(8)),
                ("kernel".into(), Attr::Int(3)),
                ("bn_eps".into(), Attr::Float(1e-5)),
            ],
        )
        .unwrap()
        .unwrap_err();
        assert!(errs[0].message.contains("no argument `bn_eps`"), "{errs:?}");
    }

    #[test]
    fn concat_and_flatten_shapes() {
        let cat = build("concat", &[]);
        assert_eq!(
            cat.infer(&[&ty(&[64, 35, 35]), &ty(&[32, 35, 35])]).unwrap(),
            ty(&[96, 35, 35])
        );
        assert!(cat.infer(&[&ty(&[64, 35, 35]), &ty(&[32, 17, 17])]).is_err());
        assert_eq!(build("flatten", &[]).infer(&[&ty(&[32, 7, 7])]).unwrap(), ty(&[1568]));
    }
}
