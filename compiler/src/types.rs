//! Tensor types of the IR: dtype, shape (a dim is a number or a symbol such as `N`) and, once
//! calibrated, the per-tensor quantization parameters the value carries (`!q(scale, zp, [qmin, qmax])`).

use std::fmt;
use std::hash::{Hash, Hasher};

pub use qc_runtime::DType;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// Per-tensor quantization parameters of a value: `real = scale * (q - zero_point)`, with `q`
/// saturated to `[qmin, qmax]` (docs/numerics.md). Compared and hashed bit for bit.
#[derive(Clone, Copy, Debug)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl PartialEq for QuantParams {
    fn eq(&self, o: &Self) -> bool {
        self.scale.to_bits() == o.scale.to_bits()
            && self.zero_point == o.zero_point
            && self.qmin == o.qmin
            && self.qmax == o.qmax
    }
}
impl Eq for QuantParams {}
impl Hash for QuantParams {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.scale.to_bits(), self.zero_point, self.qmin, self.qmax).hash(h)
    }
}

impl QuantParams {
    /// The integer dtype that holds `[qmin, qmax]`.
    pub fn storage(&self) -> DType {
        if self.qmin < 0 {
            DType::I8
        } else {
            DType::U8
        }
    }
    /// The runtime's checked form.
    pub fn to_runtime(&self) -> Result<qc_runtime::quant::QParams, qc_runtime::quant::QuantError> {
        let range = qc_runtime::quant::QRange::custom(self.qmin, self.qmax)?;
        qc_runtime::quant::QParams::new(self.scale, self.zero_point, range)
    }
    pub fn from_runtime(p: &qc_runtime::quant::QParams) -> Self {
        QuantParams {
            scale: p.scale(),
            zero_point: p.zero_point(),
            qmin: p.range().qmin(),
            qmax: p.range().qmax(),
        }
    }
}

impl fmt::Display for QuantParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "!q({}, {}, [{}, {}])",
            crate::fmt::fmt_f64(self.scale as f64),
            self.zero_point,
            self.qmin,
            self.qmax
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<Dim>,
    /// Set from stage `calibrated` on every value that is (or will be) quantized.
    pub quant: Option<QuantParams>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: Vec<Dim>) -> Self {
        TensorType {
            dtype,
            dims,
            quant: None,
        }
    }
    /// The shape with every symbol replaced by `batch`.
    pub fn concrete(&self, batch: usize) -> Vec<usize> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbol(_) => batch,
            })
            .collect()
    }
    /// Same dtype and dims (quantization parameters aside).
    pub fn same_shape(&self, other: &TensorType) -> bool {
        self.dtype == other.dtype && self.dims == other.dims
    }
    /// This type without quantization parameters.
    pub fn plain(&self) -> TensorType {
        TensorType::new(self.dtype, self.dims.clone())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(", "))?;
        if let Some(q) = &self.quant {
            write!(f, " {q}")?;
        }
        Ok(())
    }
}

/// Quantization parameters of an integer parameter (PyTorch's qtensor schemes).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamQuant {
    PerTensor(QuantParams),
    PerChannel {
        axis: usize,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
        qmin: i32,
        qmax: i32,
    },
}

impl std::fmt::Display for ParamQuant {
    /// `!q(0.02, 0, [-128, 127])`, or per channel `!q(axis 0, 16 scales #<hash>, [-128, 127])`
    /// (the hash covers scales and zero points). IR dumps print their own, fuller form
    /// (`dump_values::param_quant_text`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamQuant::PerTensor(q) => write!(f, "{q}"),
            ParamQuant::PerChannel {
                axis,
                scales,
                zero_points,
                qmin,
                qmax,
            } => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                for s in scales {
                    h.update(&s.to_le_bytes());
                }
                for z in zero_points {
                    h.update(&z.to_le_bytes());
                }
                write!(
                    f,
                    "!q(axis {axis}, {} scales #{:016x}, [{qmin}, {qmax}])",
                    scales.len(),
                    h.digest()
                )
            }
        }
    }
}
