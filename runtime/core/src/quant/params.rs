//! Integer ranges ([`QRange`]), quantization parameters ([`QParams`]) and the element types
//! codes are stored in ([`QElem`]).

use super::*;

/// The integer range `[qmin, qmax]` of a quantized tensor. Always at most 8 bits wide, contains 0,
/// and fits `i8` or `u8`: that is what makes the overflow bounds in docs/numerics.md hold.
/// Serialized as `{"qmin": .., "qmax": ..}`; deserializing checks it with [`QRange::custom`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RangeRepr", into = "RangeRepr")]
pub struct QRange {
    pub(super) qmin: i32,
    pub(super) qmax: i32,
}

impl QRange {
    /// `[0, 255]`: activations.
    pub const U8: QRange = QRange { qmin: 0, qmax: 255 };
    /// `[-128, 127]`: weights.
    pub const I8: QRange = QRange { qmin: -128, qmax: 127 };

    /// The full range of `bits` bits: signed `[-2^(b-1), 2^(b-1) - 1]`, unsigned `[0, 2^b - 1]`.
    /// PyTorch's `reduce_range` is not used.
    pub fn new(bits: u32, signed: bool) -> Result<QRange, QuantError> {
        if !(2..=8).contains(&bits) {
            return Err(QuantError::BadBits { bits });
        }
        Ok(if signed {
            QRange {
                qmin: -(1 << (bits - 1)),
                qmax: (1 << (bits - 1)) - 1,
            }
        } else {
            QRange {
                qmin: 0,
                qmax: (1 << bits) - 1,
            }
        })
    }

    /// A custom range such as the narrow `[-127, 127]`: `qmin < qmax`, `qmin <= 0 <= qmax`, inside
    /// `i8` (when `qmin < 0`) or `u8` (when `qmin == 0`).
    pub fn custom(qmin: i32, qmax: i32) -> Result<QRange, QuantError> {
        let ok = qmin < qmax
            && qmin <= 0
            && 0 <= qmax
            && if qmin < 0 {
                qmin >= -128 && qmax <= 127
            } else {
                qmax <= 255
            };
        if ok {
            Ok(QRange { qmin, qmax })
        } else {
            Err(QuantError::BadRange { qmin, qmax })
        }
    }

    pub fn qmin(self) -> i32 {
        self.qmin
    }
    pub fn qmax(self) -> i32 {
        self.qmax
    }
    pub fn is_signed(self) -> bool {
        self.qmin < 0
    }
    pub fn contains(self, q: i32) -> bool {
        (self.qmin..=self.qmax).contains(&q)
    }
}

/// The serialized form of [`QRange`].
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct RangeRepr {
    qmin: i32,
    qmax: i32,
}

impl TryFrom<RangeRepr> for QRange {
    type Error = QuantError;
    fn try_from(r: RangeRepr) -> Result<QRange, QuantError> {
        QRange::custom(r.qmin, r.qmax)
    }
}

impl From<QRange> for RangeRepr {
    fn from(r: QRange) -> RangeRepr {
        RangeRepr {
            qmin: r.qmin,
            qmax: r.qmax,
        }
    }
}

/// Affine quantization parameters: `real = (q - zero_point) * scale`, `q` in `range`.
/// Serialized as `{"scale": .., "zero_point": .., "qmin": .., "qmax": ..}`; deserializing checks
/// it with [`QParams::new`], so a file cannot produce parameters the constructor would refuse.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ParamsRepr", into = "ParamsRepr")]
pub struct QParams {
    pub(super) scale: f32,
    pub(super) zero_point: i32,
    pub(super) range: QRange,
}

impl QParams {
    /// Checks that `scale` is a positive normal finite f32 and `zero_point` lies in `range`.
    pub fn new(scale: f32, zero_point: i32, range: QRange) -> Result<QParams, QuantError> {
        if !(scale.is_normal() && scale > 0.0) {
            return Err(QuantError::BadScale { scale });
        }
        if !range.contains(zero_point) {
            return Err(QuantError::ZeroPointOutOfRange {
                zero_point,
                qmin: range.qmin,
                qmax: range.qmax,
            });
        }
        Ok(QParams {
            scale,
            zero_point,
            range,
        })
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }
    pub fn range(&self) -> QRange {
        self.range
    }
    /// `1.0f32 / scale`, the factor [`quantize`] multiplies by (PyTorch's, not ONNX's `x / s`).
    pub fn inv_scale(&self) -> f32 {
        1.0f32 / self.scale
    }
    /// [`quantize`] with these parameters.
    pub fn quantize(&self, x: f32) -> i32 {
        quantize(x, self.inv_scale(), self.zero_point, self.range)
    }
    /// [`dequantize`] with these parameters.
    pub fn dequantize(&self, q: i32) -> f32 {
        dequantize(q, self.scale, self.zero_point)
    }
}

/// The serialized form of [`QParams`].
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct ParamsRepr {
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

impl TryFrom<ParamsRepr> for QParams {
    type Error = QuantError;
    fn try_from(r: ParamsRepr) -> Result<QParams, QuantError> {
        QParams::new(r.scale, r.zero_point, QRange::custom(r.qmin, r.qmax)?)
    }
}

impl From<QParams> for ParamsRepr {
    fn from(p: QParams) -> ParamsRepr {
        ParamsRepr {
            scale: p.scale,
            zero_point: p.zero_point,
            qmin: p.range.qmin,
            qmax: p.range.qmax,
        }
    }
}

/// Element types a quantized tensor is stored in.
pub trait QElem: Copy {
    const MIN: i32;
    const MAX: i32;
    const NAME: &'static str;
    /// `q` must lie in `MIN..=MAX` (the quantizers guarantee it).
    fn from_q(q: i32) -> Self;
    fn to_q(self) -> i32;
}

impl QElem for u8 {
    const MIN: i32 = 0;
    const MAX: i32 = 255;
    const NAME: &'static str = "u8";
    fn from_q(q: i32) -> Self {
        q as u8
    }
    fn to_q(self) -> i32 {
        self as i32
    }
}

impl QElem for i8 {
    const MIN: i32 = -128;
    const MAX: i32 = 127;
    const NAME: &'static str = "i8";
    fn from_q(q: i32) -> Self {
        q as i8
    }
    fn to_q(self) -> i32 {
        self as i32
    }
}

pub(super) fn check_fits<T: QElem>(range: QRange) -> Result<(), QuantError> {
    if range.qmin >= T::MIN && range.qmax <= T::MAX {
        Ok(())
    } else {
        Err(QuantError::RangeDoesNotFit {
            qmin: range.qmin,
            qmax: range.qmax,
            dtype: T::NAME,
        })
    }
}

pub(super) fn check_len(expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch { expected, got })
    }
}
