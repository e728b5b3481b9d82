//! Building ops from named attributes (the one builder of recipes and the IR-text parser) and
//! the attributes of an op for printing.

use qc_dsl::sections::Requantize;
use std::collections::BTreeMap;

use super::*;

/// Reads named attributes for one op, remembering which names it asked for so that unknown
/// ones can be reported with the accepted names.
pub(super) struct Attrs<'a> {
    op: &'a str,
    given: &'a [(String, Attr)],
    known: Vec<&'static str>,
    errors: Vec<AttrError>,
    /// Whether the IR-only attributes (fused activation, kept BN, quantization) are accepted.
    internal: bool,
}

/// Attribute names of a [`QSpec`]: plain on observer nodes, `w_`-prefixed on weighted ops.
pub(super) struct QKeys {
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

pub(super) const ACT_KEYS: QKeys = QKeys {
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

pub(super) const WEIGHT_KEYS: QKeys = QKeys {
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

pub(super) fn put_qspec(m: &mut BTreeMap<&'static str, Attr>, k: &QKeys, q: &QSpec) {
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

pub(super) fn put_act(m: &mut BTreeMap<&'static str, Attr>, act: &Option<Act>) {
    if let Some(a) = act {
        m.insert("act", Attr::Name(a.name().into()));
        if let Act::Clamp { min, max } = a {
            m.insert("act_min", Attr::Float(*min));
            m.insert("act_max", Attr::Float(*max));
        }
    }
}

pub(super) fn put_bn(m: &mut BTreeMap<&'static str, Attr>, bn: &Option<BatchNorm>) {
    if let Some(b) = bn {
        m.insert("bn_eps", Attr::Float(b.eps));
        m.insert("bn_momentum", Attr::Float(b.momentum));
    }
}

pub(super) fn put_weight_quant(m: &mut BTreeMap<&'static str, Attr>, wq: &Option<WeightQuant>) {
    if let Some(w) = wq {
        put_qspec(m, &WEIGHT_KEYS, &w.spec);
        m.insert("w_fake", Attr::Bool(w.fake));
        m.insert("requantize", Attr::Name(w.requantize.name().into()));
    }
}

/// PyTorch's spellings, accepted as aliases of qc's short names.
pub(super) const ALIASES: &[(&str, &str)] = &[
    ("out_channels", "out"),
    ("out_features", "out"),
    ("kernel_size", "kernel"),
    ("padding", "pad"),
    ("output_size", "output"),
    ("min_val", "min"),
    ("max_val", "max"),
];

pub(super) fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(_, c)| *c)
        .unwrap_or(name)
}

impl<'a> Attrs<'a> {
    pub(super) fn new(op: &'a str, given: &'a [(String, Attr)], internal: bool) -> Self {
        Attrs {
            op,
            given,
            known: vec![],
            errors: vec![],
            internal,
        }
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.given.iter().any(|(k, _)| canonical(k) == key)
    }

    pub(super) fn name_opt(&mut self, key: &'static str) -> Option<String> {
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
    pub(super) fn act(&mut self) -> Option<Act> {
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
    pub(super) fn bn(&mut self) -> Option<BatchNorm> {
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

    pub(super) fn qspec(&mut self, k: &QKeys) -> QSpec {
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
    pub(super) fn weight_quant(&mut self) -> Option<WeightQuant> {
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
                "requantize",
            ]);
            return None;
        }
        let spec = self.qspec(&WEIGHT_KEYS);
        let fake = self.boolean("w_fake", false);
        let requantize = match self.name_opt("requantize").as_deref() {
            None => Requantize::Integer,
            Some(name) => Requantize::from_name(name).unwrap_or_else(|| {
                let words: Vec<&str> = Requantize::ALL.iter().map(|r| r.name()).collect();
                self.fail(
                    "requantize",
                    format!("unknown requantization rule `{name}`"),
                    format!("one of: {}", words.join(", ")),
                );
                Requantize::Integer
            }),
        };
        Some(WeightQuant { spec, fake, requantize })
    }

    pub(super) fn get(&mut self, key: &'static str) -> Option<&'a Attr> {
        self.known.push(key);
        self.given
            .iter()
            .rev()
            .find(|(k, _)| canonical(k) == key)
            .map(|(_, v)| v)
    }

    pub(super) fn fail(&mut self, key: &str, message: String, help: String) {
        self.errors.push(AttrError {
            key: Some(key.to_string()),
            message,
            help,
        });
    }

    pub(super) fn int_opt(&mut self, key: &'static str, min: i64) -> Option<i64> {
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

    pub(super) fn int(&mut self, key: &'static str, min: i64, default: Option<i64>) -> i64 {
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

    pub(super) fn float(&mut self, key: &'static str, default: f64) -> f64 {
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

    pub(super) fn boolean(&mut self, key: &'static str, default: bool) -> bool {
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
    pub(super) fn ints(&mut self, key: &'static str, rank: usize, min: i64, default: Option<Vec<usize>>) -> Vec<usize> {
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

    pub(super) fn finish(mut self, op: Op) -> Result<Op, Vec<AttrError>> {
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
            "mul" => Op::Mul,
            "qmul" => Op::QMul,
            "hardswish" | "hardsigmoid" | "sigmoid" => Op::Curve(Curve::from_name(name).expect("one of the three")),
            "qhardswish" | "qhardsigmoid" | "qsigmoid" => {
                Op::QCurve(Curve::from_name(&name[1..]).expect("one of the three"))
            }
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
                normalize: None,
            },
            _ => return None,
        };
        Some(a.finish(op))
    }

    /// Attributes, sorted by name (the printer's order; `Op::build` reads them back).
    pub fn attrs(&self) -> BTreeMap<&'static str, Attr> {
        let ints = |v: &[usize]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
        let mut m = BTreeMap::new();
        match self {
            Op::Input { index, .. } => {
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
            Op::Relu
            | Op::Relu6
            | Op::GlobalAvgPool
            | Op::Identity
            | Op::Dequantize
            | Op::Curve(_)
            | Op::QCurve(_)
            | Op::Mul
            | Op::QMul => {}
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
}
