//! qc's integer numerics, once: the scalar reference that every int8 kernel (CPU SIMD, CUDA,
//! fake-quant in training) must match. `docs/numerics.md` states the rules; every formula there is
//! a function here with the same name, and has a test below.
//!
//! Pure scalar code: no `unsafe`, no allocation in per-element functions. SIMD kernels are
//! proptested against these functions bit for bit.

use std::cmp::Ordering;

/// Smallest scale a calibration produces (PyTorch's observers clamp with the same `eps`).
pub const SCALE_EPS: f32 = f32::EPSILON;

/// Smallest real multiplier [`quantize_multiplier`] accepts: `2^-32` (shift 62).
pub const MIN_MULTIPLIER: f64 = 1.0 / 4_294_967_296.0;

/// Real multipliers must stay below `2^30` (shift 1).
pub const MAX_MULTIPLIER: f64 = 1_073_741_824.0;

/// Left shift that lifts `q - zp` of each [`QAdd`] input into the common int32 domain (TFLite's 20).
pub const QADD_LEFT_SHIFT: u32 = 20;

/// Fake-quant (float simulation) and int8 outputs may differ by this many quantization steps.
pub const FAKE_QUANT_TOLERANCE_STEPS: u32 = 1;

/// Float rewrites (BN folding, …) keep every output within this fraction of the output's largest
/// magnitude; see [`float_rewrite_close`].
pub const FLOAT_REWRITE_RTOL: f32 = 1e-4;

/// Errors of quantization-parameter construction. Per-element functions never fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{bits}-bit quantization is not supported (2..=8 bits)")]
    BadBits { bits: u32 },
    #[error("integer range [{qmin}, {qmax}] is not a valid 8-bit range containing 0")]
    BadRange { qmin: i32, qmax: i32 },
    #[error("calibration range [{min}, {max}] is not finite")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("calibration range [{min}, {max}] has min > max")]
    InvertedRange { min: f32, max: f32 },
    #[error("scale {scale} is not a positive normal finite f32")]
    BadScale { scale: f32 },
    #[error("zero point {zero_point} is outside [{qmin}, {qmax}]")]
    ZeroPointOutOfRange { zero_point: i32, qmin: i32, qmax: i32 },
    #[error("real multiplier {multiplier} cannot be represented (needs 2^-32 <= M < 2^30)")]
    MultiplierOutOfRange { multiplier: f64 },
    #[error("bias {bias} is NaN")]
    NanBias { bias: f32 },
    #[error("length mismatch: expected {expected} elements, got {got}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("integer range [{qmin}, {qmax}] does not fit the element type {dtype}")]
    RangeDoesNotFit { qmin: i32, qmax: i32, dtype: &'static str },
}

// ---------------------------------------------------------------------------------------------
// Integer ranges and quantization parameters
// ---------------------------------------------------------------------------------------------

/// The integer range `[qmin, qmax]` of a quantized tensor. Always at most 8 bits wide, contains 0,
/// and fits `i8` or `u8`: that is what makes the overflow bounds in docs/numerics.md hold.
/// Serialized as `{"qmin": .., "qmax": ..}`; deserializing checks it with [`QRange::custom`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RangeRepr", into = "RangeRepr")]
pub struct QRange {
    qmin: i32,
    qmax: i32,
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
    scale: f32,
    zero_point: i32,
    range: QRange,
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

fn check_fits<T: QElem>(range: QRange) -> Result<(), QuantError> {
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

fn check_len(expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch { expected, got })
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Quantize / dequantize
// ---------------------------------------------------------------------------------------------

/// `q = clamp(rint(x * inv_scale) + zero_point, qmin, qmax)`, in f32, `rint` = round half to even,
/// `inv_scale = 1.0f32 / scale` precomputed. NaN maps to `zero_point`; ±inf and huge values
/// saturate to `qmax` / `qmin`.
#[inline]
pub fn quantize(x: f32, inv_scale: f32, zero_point: i32, range: QRange) -> i32 {
    let r = (x * inv_scale).round_ties_even();
    // `as` saturates to i32 and maps NaN to 0; `saturating_add` keeps ±2^31 saturated.
    (r as i32).saturating_add(zero_point).clamp(range.qmin, range.qmax)
}

/// `x = (q - zero_point) as f32 * scale` (the subtraction is exact in i32, one f32 rounding).
#[inline]
pub fn dequantize(q: i32, scale: f32, zero_point: i32) -> f32 {
    q.wrapping_sub(zero_point) as f32 * scale
}

/// `dequantize(quantize(x))`: the float simulation training uses. The same formula as libtorch's
/// `fake_quantize_per_tensor_affine` for every non-NaN `x`.
#[inline]
pub fn fake_quantize(x: f32, p: &QParams) -> f32 {
    p.dequantize(p.quantize(x))
}

/// [`quantize`] over a tensor with one set of parameters.
pub fn quantize_per_tensor<T: QElem>(x: &[f32], p: &QParams, out: &mut [T]) -> Result<(), QuantError> {
    check_len(x.len(), out.len())?;
    check_fits::<T>(p.range)?;
    let inv = p.inv_scale();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = T::from_q(quantize(v, inv, p.zero_point, p.range));
    }
    Ok(())
}

/// [`dequantize`] over a tensor with one set of parameters.
pub fn dequantize_per_tensor<T: QElem>(q: &[T], p: &QParams, out: &mut [f32]) -> Result<(), QuantError> {
    check_len(q.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(q) {
        *o = dequantize(v.to_q(), p.scale, p.zero_point);
    }
    Ok(())
}

/// `x` laid out as `[outer, C, inner]` with `C = params.len()`: length must be a multiple of
/// `C * inner` (and zero when that is zero).
fn channel_layout(len: usize, channels: usize, inner: usize) -> Result<(), QuantError> {
    let block = channels * inner;
    let expected = if block == 0 { 0 } else { len - len % block };
    check_len(expected, len)
}

/// [`quantize`] per channel: `x` is `[outer, C, inner]`, channel `c` uses `params[c]`. Equal to
/// [`quantize_per_tensor`] applied to each channel's elements.
pub fn quantize_per_channel<T: QElem>(
    x: &[f32],
    params: &[QParams],
    inner: usize,
    out: &mut [T],
) -> Result<(), QuantError> {
    check_len(x.len(), out.len())?;
    channel_layout(x.len(), params.len(), inner)?;
    for p in params {
        check_fits::<T>(p.range)?;
    }
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let p = &params[(i / inner) % params.len()];
        *o = T::from_q(quantize(v, p.inv_scale(), p.zero_point, p.range));
    }
    Ok(())
}

/// [`dequantize`] per channel, same layout as [`quantize_per_channel`].
pub fn dequantize_per_channel<T: QElem>(
    q: &[T],
    params: &[QParams],
    inner: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    check_len(q.len(), out.len())?;
    channel_layout(q.len(), params.len(), inner)?;
    for (i, (o, &v)) in out.iter_mut().zip(q).enumerate() {
        let p = &params[(i / inner) % params.len()];
        *o = dequantize(v.to_q(), p.scale, p.zero_point);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Choosing scale and zero point
// ---------------------------------------------------------------------------------------------

fn widen_range(min: f32, max: f32) -> Result<(f32, f32), QuantError> {
    if !(min.is_finite() && max.is_finite()) {
        return Err(QuantError::NonFiniteRange { min, max });
    }
    if min > max {
        return Err(QuantError::InvertedRange { min, max });
    }
    Ok((min.min(0.0), max.max(0.0)))
}

fn finish_scale(scale: f32, pow2: bool, min: f32, max: f32) -> Result<f32, QuantError> {
    let s = scale.max(SCALE_EPS);
    let s = if pow2 { pow2_scale(s) } else { s };
    if s.is_finite() {
        Ok(s)
    } else {
        Err(QuantError::NonFiniteRange { min, max })
    }
}

/// Affine parameters for `[min, max]` (PyTorch's MinMaxObserver, `per_tensor_affine`), all in f32:
/// ```text
/// min' = min(min, 0), max' = max(max, 0)
/// s    = max((max' - min') / (qmax - qmin), SCALE_EPS)      [then pow2_scale(s) if pow2]
/// zp   = clamp(qmin - rint(min' / s), qmin, qmax)
/// ```
pub fn qparams_affine(min: f32, max: f32, range: QRange, pow2: bool) -> Result<QParams, QuantError> {
    let (lo, hi) = widen_range(min, max)?;
    let levels = (range.qmax - range.qmin) as f32;
    let scale = finish_scale((hi - lo) / levels, pow2, min, max)?;
    let zp = range
        .qmin
        .saturating_sub((lo / scale).round_ties_even() as i32)
        .clamp(range.qmin, range.qmax);
    QParams::new(scale, zp, range)
}

/// Symmetric parameters for `[min, max]` (PyTorch's MinMaxObserver, `per_*_symmetric`), in f32:
/// ```text
/// a  = max(-min(min, 0), max(max, 0))
/// s  = max(a / ((qmax - qmin) / 2), SCALE_EPS)              [then pow2_scale(s) if pow2]
/// zp = 0 for a signed range; (qmin + qmax + 1) / 2 (= 2^(bits-1), 128 for u8) for an unsigned one
/// ```
/// The divisor is 127.5 for int8: `+a` lands on 127.5 and saturates to 127, `-a` on -128.
pub fn qparams_symmetric(min: f32, max: f32, range: QRange, pow2: bool) -> Result<QParams, QuantError> {
    let (lo, hi) = widen_range(min, max)?;
    let amax = (-lo).max(hi);
    let half_levels = (range.qmax - range.qmin) as f32 / 2.0;
    let scale = finish_scale(amax / half_levels, pow2, min, max)?;
    let zp = if range.is_signed() {
        0
    } else {
        (range.qmin + range.qmax + 1) / 2
    };
    QParams::new(scale, zp, range)
}

/// `2^ceil(log2(s))`: the smallest power of two `>= s`, exact (bit manipulation, no `log2`).
/// For normal positive `s`; may return `+inf` for `s > 2^127`.
pub fn pow2_scale(s: f32) -> f32 {
    let bits = s.to_bits();
    if bits & 0x007f_ffff == 0 {
        s
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Requantization: integer multiplier and shift
// ---------------------------------------------------------------------------------------------

/// `M ≈ m * 2^-shift` with `m` in `[2^30, 2^31)` and `shift` in `1..=62`:
/// `M = f * 2^e` with `f` in `[0.5, 1)` (frexp), `m = rint(f * 2^31)`, `shift = 31 - e`; if `m`
/// rounds up to `2^31` it becomes `2^30` and `shift - 1`. Relative error `|m 2^-shift - M| <= 2^-31 M`.
/// Errors for `M` not finite, `M <= 0`, or outside `[2^-32, 2^30)` after rounding.
pub fn quantize_multiplier(multiplier: f64) -> Result<(i32, u32), QuantError> {
    let err = QuantError::MultiplierOutOfRange { multiplier };
    // Also refuses NaN and ±inf. Below 2^-33 nothing can round into range (and no subnormals).
    if !(MIN_MULTIPLIER / 2.0..MAX_MULTIPLIER).contains(&multiplier) {
        return Err(err);
    }
    // frexp for a normal positive f64: multiplier = f * 2^e, f in [0.5, 1).
    let bits = multiplier.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1022;
    let f = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1022u64 << 52));
    let mut m = (f * 2_147_483_648.0).round_ties_even() as i64;
    let mut shift = 31 - e;
    if m == 1i64 << 31 {
        m = 1 << 30;
        shift -= 1;
    }
    if !(1..=62).contains(&shift) {
        return Err(err);
    }
    Ok((m as i32, shift as u32))
}

/// `(x * m + 2^(shift-1)) >> shift` in i64, `>>` arithmetic (floor): `x * m * 2^-shift` rounded
/// to nearest, ties toward +inf (2.5 → 3, -2.5 → -2). Needs `m` in `[0, 2^31)`, `shift` in `1..=62`:
/// then `|x * m| < 2^62` and the sum stays below `2^63`.
#[inline]
pub fn mul_shift_round(x: i32, m: i32, shift: u32) -> i64 {
    debug_assert!(m >= 0 && (1..=62).contains(&shift));
    (x as i64 * m as i64 + (1i64 << (shift - 1))) >> shift
}

/// The real multiplier of a conv/linear output channel, `s_in * s_w[c] / s_out`, in f64 (the f32
/// product is exact in f64; one correctly rounded division).
pub fn requant_multiplier(s_in: f32, s_w: f32, s_out: f32) -> f64 {
    s_in as f64 * s_w as f64 / s_out as f64
}

/// Integer-only requantization of an int32 accumulator to the output's integer range.
/// Built by [`Requant::from_real`]; the fields are public for kernels and keep its invariants
/// (`multiplier` in `[2^30, 2^31)`, `shift` in `1..=62`, `qmin <= zero_point <= qmax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requant {
    pub multiplier: i32,
    pub shift: u32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl Requant {
    /// Represents `M` with [`quantize_multiplier`]; `zero_point` must lie in `range`.
    pub fn from_real(m: f64, zero_point: i32, range: QRange) -> Result<Requant, QuantError> {
        if !range.contains(zero_point) {
            return Err(QuantError::ZeroPointOutOfRange {
                zero_point,
                qmin: range.qmin,
                qmax: range.qmax,
            });
        }
        let (multiplier, shift) = quantize_multiplier(m)?;
        Ok(Requant {
            multiplier,
            shift,
            zero_point,
            qmin: range.qmin,
            qmax: range.qmax,
        })
    }

    /// `clamp(mul_shift_round(acc, multiplier, shift) + zero_point, qmin, qmax)`, sum and clamp in
    /// i64. Exact for every `acc`; within 1 of `clamp(rint(acc * M) + zp)`.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let v = mul_shift_round(acc, self.multiplier, self.shift) + self.zero_point as i64;
        v.clamp(self.qmin as i64, self.qmax as i64) as i32
    }

    /// The multiplier actually applied, `multiplier * 2^-shift` (exact in f64).
    pub fn real(&self) -> f64 {
        self.multiplier as f64 * 0.5f64.powi(self.shift as i32)
    }

    /// The same requantization with a fused ReLU: `qmin` raised to `zero_point` (real 0).
    pub fn with_relu(self) -> Requant {
        Requant {
            qmin: self.qmin.max(self.zero_point),
            ..self
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Bias and the int32 accumulator
// ---------------------------------------------------------------------------------------------

/// A quantized bias and whether it had to be clamped (the compiler reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizedBias {
    pub value: i32,
    pub saturated: bool,
}

/// `bias_q = clamp(rint(b / (s_in * s_w[c])), i32::MIN, i32::MAX)`, in f64, zero point 0, rint
/// half to even. ±inf saturates; NaN and bad scales are errors.
pub fn quantize_bias(b: f32, s_in: f32, s_w: f32) -> Result<QuantizedBias, QuantError> {
    if b.is_nan() {
        return Err(QuantError::NanBias { bias: b });
    }
    for s in [s_in, s_w] {
        if !(s.is_normal() && s > 0.0) {
            return Err(QuantError::BadScale { scale: s });
        }
    }
    let v = (b as f64 / (s_in as f64 * s_w as f64)).round_ties_even();
    let c = v.clamp(i32::MIN as f64, i32::MAX as f64);
    Ok(QuantizedBias {
        value: c as i32,
        saturated: c != v,
    })
}

/// `acc = bias + Σ_k (x[k] - x_zp) * w[k]` in wrapping i32 (weights symmetric, zero point 0).
/// Wrapping makes every evaluation order (e.g. `Σ x*w - x_zp * Σ w`) give the same bits; the
/// compiler keeps [`accumulator_fits`] true so that no wrap happens.
pub fn dot_acc<X: QElem, W: QElem>(x: &[X], x_zp: i32, w: &[W], bias: i32) -> Result<i32, QuantError> {
    check_len(x.len(), w.len())?;
    let mut acc = bias;
    for (&a, &b) in x.iter().zip(w) {
        acc = acc.wrapping_add(a.to_q().wrapping_sub(x_zp).wrapping_mul(b.to_q()));
    }
    Ok(acc)
}

/// Largest `|Σ_k (x[k] - x_zp) * w[k]|` over `k` terms: `k * max|x - x_zp| * max|w|`
/// (u8 activations with any zero point and i8 weights: `k * 255 * 128`).
pub fn accumulator_bound(k: u64, x: QRange, x_zp: i32, w: QRange) -> u64 {
    let dx = (x.qmax - x_zp).unsigned_abs().max((x.qmin - x_zp).unsigned_abs()) as u64;
    let dw = w.qmax.unsigned_abs().max(w.qmin.unsigned_abs()) as u64;
    k.saturating_mul(dx).saturating_mul(dw)
}

/// `accumulator_bound(k, ..) + |bias| <= i32::MAX`: no int32 accumulation can overflow.
/// With zero bias, u8 × i8 fits for `k <= 65793`.
pub fn accumulator_fits(k: u64, x: QRange, x_zp: i32, w: QRange, bias: i32) -> bool {
    accumulator_bound(k, x, x_zp, w).saturating_add(bias.unsigned_abs() as u64) <= i32::MAX as u64
}

// ---------------------------------------------------------------------------------------------
// 5. Average pooling
// ---------------------------------------------------------------------------------------------

/// `sum / count` rounded to nearest, ties to even, in integers only. `count >= 1`.
#[inline]
pub fn avg_round(sum: i32, count: i32) -> i32 {
    debug_assert!(count >= 1);
    let q = sum.div_euclid(count);
    let r = sum.rem_euclid(count); // 0 <= r < count
    match r.cmp(&(count - r)) {
        Ordering::Less => q,
        Ordering::Greater => q + 1,
        Ordering::Equal => q + (q & 1),
    }
}

/// One output of a quantized average pool (input and output share `zero_point`, and the scale):
/// `clamp(avg_round(sum - elems * zp, divisor) + zp, qmin, qmax)`, where `sum = Σ q` over the
/// `elems` real input elements of the window and `divisor` is the op's (with padding counted when
/// `count_include_pad`). The centring is wrapping i32, exact for `elems <= 2^23`.
#[inline]
pub fn avg_pool_out(sum: i32, elems: i32, divisor: i32, zero_point: i32, range: QRange) -> i32 {
    let centred = sum.wrapping_sub(elems.wrapping_mul(zero_point));
    avg_round(centred, divisor)
        .saturating_add(zero_point)
        .clamp(range.qmin, range.qmax)
}

// ---------------------------------------------------------------------------------------------
// 6. Adding two quantized tensors
// ---------------------------------------------------------------------------------------------

/// Integer-only `out = a + b` for inputs with their own scales (TFLite's scheme, our rounding):
/// ```text
/// t  = 2 * max(s_a, s_b)
/// a' = mul_shift_round((qa - zp_a) << 20, m_a, sh_a)     m_a 2^-sh_a ≈ s_a / t  (<= 0.5)
/// b' = mul_shift_round((qb - zp_b) << 20, m_b, sh_b)     m_b 2^-sh_b ≈ s_b / t  (<= 0.5)
/// out = Requant(M = t / (2^20 * s_out), zp_out).apply(a' + b')
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QAdd {
    pub a_zero_point: i32,
    pub a_multiplier: i32,
    pub a_shift: u32,
    pub b_zero_point: i32,
    pub b_multiplier: i32,
    pub b_shift: u32,
    pub out: Requant,
}

impl QAdd {
    /// Errors when a multiplier falls outside [`quantize_multiplier`]'s range: needs
    /// `max(s_a, s_b) / min(s_a, s_b) <= 2^31` and `2^-13 <= max(s_a, s_b) / s_out < 2^49`.
    pub fn new(a: &QParams, b: &QParams, out: &QParams) -> Result<QAdd, QuantError> {
        let t = 2.0 * (a.scale as f64).max(b.scale as f64);
        let (a_multiplier, a_shift) = quantize_multiplier(a.scale as f64 / t)?;
        let (b_multiplier, b_shift) = quantize_multiplier(b.scale as f64 / t)?;
        let m_out = t / ((1u64 << QADD_LEFT_SHIFT) as f64 * out.scale as f64);
        let out = Requant::from_real(m_out, out.zero_point, out.range)?;
        Ok(QAdd {
            a_zero_point: a.zero_point,
            a_multiplier,
            a_shift,
            b_zero_point: b.zero_point,
            b_multiplier,
            b_shift,
            out,
        })
    }

    /// `qa`, `qb` in their ranges: `|qa - zp_a| <= 255`, so `(qa - zp_a) << 20` is below `2^28`
    /// and `a' + b'` below `2^28 + 1`.
    #[inline]
    pub fn apply(&self, qa: i32, qb: i32) -> i32 {
        let a = mul_shift_round(
            qa.wrapping_sub(self.a_zero_point) << QADD_LEFT_SHIFT,
            self.a_multiplier,
            self.a_shift,
        );
        let b = mul_shift_round(
            qb.wrapping_sub(self.b_zero_point) << QADD_LEFT_SHIFT,
            self.b_multiplier,
            self.b_shift,
        );
        self.out.apply((a + b) as i32)
    }

    /// The same add with a fused ReLU.
    pub fn with_relu(self) -> QAdd {
        QAdd {
            out: self.out.with_relu(),
            ..self
        }
    }
}

/// PyTorch x86's float formula for a quantized add: `quantize(dequantize(qa) + dequantize(qb))`
/// in f32. [`QAdd::apply`] stays within one step of it.
pub fn qadd_f32_reference(qa: i32, qb: i32, a: &QParams, b: &QParams, out: &QParams) -> i32 {
    out.quantize(a.dequantize(qa) + b.dequantize(qb))
}

// ---------------------------------------------------------------------------------------------
// 7. Tolerances
// ---------------------------------------------------------------------------------------------

/// Largest `|a[i] - b[i]|` in quantization steps (integer codes); `None` when lengths differ.
/// The fake-quant ↔ int8 check is `max_step_diff(..) <= Some(FAKE_QUANT_TOLERANCE_STEPS)`.
pub fn max_step_diff<T: QElem>(a: &[T], b: &[T]) -> Option<u32> {
    if a.len() != b.len() {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x.to_q().abs_diff(y.to_q()))
            .max()
            .unwrap_or(0),
    )
}

/// `|rewritten[i] - reference[i]| <= FLOAT_REWRITE_RTOL * max_j |reference[j]| + f32::MIN_POSITIVE`
/// for every `i`; false on length mismatch or any NaN.
pub fn float_rewrite_close(reference: &[f32], rewritten: &[f32]) -> bool {
    if reference.len() != rewritten.len() {
        return false;
    }
    let max_abs = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = FLOAT_REWRITE_RTOL * max_abs + f32::MIN_POSITIVE;
    reference.iter().zip(rewritten).all(|(a, b)| (a - b).abs() <= tol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::SplitMix64;
    use proptest::prelude::*;

    fn qp(scale: f32, zp: i32, range: QRange) -> QParams {
        QParams::new(scale, zp, range).unwrap()
    }

    // ----- ranges -----

    #[test]
    fn ranges_from_bits() {
        assert_eq!(QRange::new(8, false).unwrap(), QRange::U8);
        assert_eq!(QRange::new(8, true).unwrap(), QRange::I8);
        let r4 = QRange::new(4, true).unwrap();
        assert_eq!((r4.qmin(), r4.qmax()), (-8, 7));
        let r2 = QRange::new(2, false).unwrap();
        assert_eq!((r2.qmin(), r2.qmax()), (0, 3));
        assert_eq!(QRange::new(1, true), Err(QuantError::BadBits { bits: 1 }));
        assert_eq!(QRange::new(9, false), Err(QuantError::BadBits { bits: 9 }));
        assert!(QRange::custom(-127, 127).is_ok());
        assert!(QRange::custom(0, 256).is_err());
        assert!(QRange::custom(-129, 127).is_err());
        assert!(QRange::custom(1, 10).is_err());
        assert!(QParams::new(0.0, 0, QRange::U8).is_err());
        assert!(QParams::new(f32::NAN, 0, QRange::U8).is_err());
        assert!(QParams::new(1e-40, 0, QRange::U8).is_err()); // subnormal
        assert!(QParams::new(1.0, 256, QRange::U8).is_err());
    }

    // ----- 1. quantize / dequantize -----

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let p = qp(1.0, 10, QRange::U8);
        let cases = [
            (0.5, 10),
            (1.5, 12),
            (2.5, 12),
            (-0.5, 10),
            (-1.5, 8),
            (-2.5, 8),
            (0.49, 10),
            (0.51, 11),
        ];
        for (x, q) in cases {
            assert_eq!(p.quantize(x), q, "x = {x}");
        }
        assert_eq!(p.quantize(1e9), 255);
        assert_eq!(p.quantize(-1e9), 0);
        assert_eq!(p.quantize(f32::INFINITY), 255);
        assert_eq!(p.quantize(f32::NEG_INFINITY), 0);
        assert_eq!(p.quantize(f32::MAX), 255);
        let s = qp(0.1, 0, QRange::I8);
        assert_eq!(s.quantize(100.0), 127);
        assert_eq!(s.quantize(-100.0), -128);
    }

    #[test]
    fn quantize_maps_nan_to_zero_point() {
        for (zp, range) in [(0, QRange::I8), (37, QRange::U8), (255, QRange::U8), (-128, QRange::I8)] {
            let p = qp(0.25, zp, range);
            assert_eq!(p.quantize(f32::NAN), zp);
            assert_eq!(p.quantize(-f32::NAN), zp);
        }
    }

    #[test]
    fn quantize_multiplies_by_inverse_scale_not_divides() {
        // fbgemm's example: x * (1/s) lands on 127.5 (→ 128), x / s on 127.49999 (→ 127).
        let (s, x) = (0.002_148_548_6f32, 0.273_939_94f32);
        assert_eq!(x * (1.0 / s), 127.5);
        assert!(x / s < 127.5);
        let p = qp(s, 0, QRange::U8);
        assert_eq!(p.quantize(x), 128);
    }

    #[test]
    fn dequantize_formula() {
        assert_eq!(dequantize(200, 0.5, 100), 50.0);
        assert_eq!(dequantize(-128, 0.25, 0), -32.0);
        assert_eq!(dequantize(0, 0.1, 0), 0.0);
        let p = qp(0.1, 3, QRange::U8);
        assert_eq!(fake_quantize(0.26, &p), dequantize(p.quantize(0.26), 0.1, 3));
        assert_eq!(fake_quantize(f32::NAN, &p), 0.0);
    }

    #[test]
    fn slice_functions_check_shapes() {
        let p = qp(0.5, 0, QRange::I8);
        let mut out = [0i8; 3];
        assert_eq!(
            quantize_per_tensor(&[1.0, 2.0], &p, &mut out),
            Err(QuantError::LengthMismatch { expected: 2, got: 3 })
        );
        let mut u = [0u8; 2];
        assert!(matches!(
            quantize_per_tensor(&[1.0, 2.0], &p, &mut u),
            Err(QuantError::RangeDoesNotFit { .. })
        ));
        let params = [p, p];
        let mut out5 = [0i8; 5];
        assert!(quantize_per_channel(&[0.0; 5], &params, 2, &mut out5).is_err());
        let mut out8 = [0i8; 8];
        quantize_per_channel(&[1.0; 8], &params, 2, &mut out8).unwrap();
        assert_eq!(out8, [2; 8]);
        let mut f = [0.0f32; 8];
        dequantize_per_channel(&out8, &params, 2, &mut f).unwrap();
        assert_eq!(f, [1.0; 8]);
        let mut f2 = [0.0f32; 2];
        dequantize_per_tensor(&[4i8, -4], &p, &mut f2).unwrap();
        assert_eq!(f2, [2.0, -2.0]);
    }

    // ----- 2. choosing parameters -----

    #[test]
    fn affine_params_match_pytorch_formula() {
        let p = qparams_affine(-1.0, 3.0, QRange::U8, false).unwrap();
        assert_eq!(p.scale(), 4.0 / 255.0);
        assert_eq!(p.zero_point(), 64); // 0 - rint(-1 / (4/255)) = rint(63.75)
        assert_eq!(p.quantize(0.0), 64); // 0 is exact
                                         // min clamped to <= 0, max to >= 0.
        let q = qparams_affine(2.0, 6.0, QRange::U8, false).unwrap();
        assert_eq!((q.scale(), q.zero_point()), (6.0 / 255.0, 0));
        let n = qparams_affine(-6.0, -2.0, QRange::U8, false).unwrap();
        assert_eq!((n.scale(), n.zero_point()), (6.0 / 255.0, 255));
        // Degenerate range: PyTorch's eps, zero point qmin - 0.
        let z = qparams_affine(0.0, 0.0, QRange::U8, false).unwrap();
        assert_eq!((z.scale(), z.zero_point()), (f32::EPSILON, 0));
        assert_eq!(z.quantize(0.0), 0);
        let zs = qparams_affine(0.0, 0.0, QRange::I8, false).unwrap();
        assert_eq!(zs.zero_point(), -128);
        assert!(matches!(
            qparams_affine(f32::NAN, 1.0, QRange::U8, false),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            qparams_affine(1.0, f32::INFINITY, QRange::U8, false),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            qparams_affine(-f32::MAX, f32::MAX, QRange::U8, false),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            qparams_affine(2.0, 1.0, QRange::U8, false),
            Err(QuantError::InvertedRange { .. })
        ));
    }

    #[test]
    fn symmetric_params_use_half_the_levels() {
        let p = qparams_symmetric(-0.5, 1.275, QRange::I8, false).unwrap();
        assert_eq!(p.scale(), 1.275f32 / 127.5);
        assert_eq!(p.zero_point(), 0);
        assert_eq!(p.quantize(1.275), 127); // 127.5 saturates
        assert_eq!(p.quantize(-1.275), -128);
        let u = qparams_symmetric(-1.0, 1.0, QRange::U8, false).unwrap();
        assert_eq!(u.zero_point(), 128);
        let u4 = qparams_symmetric(-1.0, 1.0, QRange::new(4, false).unwrap(), false).unwrap();
        assert_eq!(u4.zero_point(), 8);
        let narrow = qparams_symmetric(-2.54, 0.0, QRange::custom(-127, 127).unwrap(), false).unwrap();
        assert_eq!(narrow.scale(), 2.54f32 / 127.0);
        let z = qparams_symmetric(0.0, 0.0, QRange::I8, false).unwrap();
        assert_eq!((z.scale(), z.zero_point()), (f32::EPSILON, 0));
    }

    #[test]
    fn pow2_scales() {
        assert_eq!(pow2_scale(0.3), 0.5);
        assert_eq!(pow2_scale(0.25), 0.25);
        assert_eq!(pow2_scale(1.0), 1.0);
        assert_eq!(pow2_scale(3.0), 4.0);
        assert_eq!(pow2_scale(4.000_001), 8.0);
        assert_eq!(pow2_scale(f32::EPSILON), f32::EPSILON);
        assert_eq!(pow2_scale(f32::MIN_POSITIVE * 1.5), f32::MIN_POSITIVE * 2.0);
        let p = qparams_symmetric(-1.0, 1.0, QRange::I8, true).unwrap();
        assert_eq!(p.scale(), 1.0 / 64.0); // 1/127.5 → 2^-6
        let a = qparams_affine(-1.0, 3.0, QRange::U8, true).unwrap();
        assert_eq!((a.scale(), a.zero_point()), (1.0 / 32.0, 32));
    }

    // ----- 3. requantization -----

    #[test]
    fn multiplier_representation() {
        assert_eq!(quantize_multiplier(0.5), Ok((1 << 30, 31)));
        assert_eq!(quantize_multiplier(1.0), Ok((1 << 30, 30)));
        assert_eq!(quantize_multiplier(0.75), Ok((3 << 29, 31)));
        assert_eq!(quantize_multiplier(0.1), Ok((1_717_986_918, 34)));
        assert_eq!(quantize_multiplier(MIN_MULTIPLIER), Ok((1 << 30, 62)));
        assert_eq!(quantize_multiplier(MAX_MULTIPLIER / 2.0), Ok((1 << 30, 1)));
        // Rounds up to 2^31 → renormalised.
        assert_eq!(quantize_multiplier(1.0 - 1e-12), Ok((1 << 30, 30)));
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            MIN_MULTIPLIER / 4.0,
            MAX_MULTIPLIER,
            1e-300,
        ] {
            assert!(quantize_multiplier(bad).is_err(), "{bad}");
        }
        let (m, s) = quantize_multiplier(1.0e-3).unwrap();
        assert!((1 << 30..=i32::MAX).contains(&m));
        let real = m as f64 * 0.5f64.powi(s as i32);
        assert!((real - 1.0e-3).abs() <= 1.0e-3 * 2f64.powi(-31));
    }

    #[test]
    fn requant_hand_picked() {
        let wide = QRange::I8;
        let r = Requant::from_real(0.25, 0, wide).unwrap();
        // Ties go toward +inf.
        let cases = [
            (2, 1),
            (-2, 0),
            (6, 2),
            (-6, -1),
            (-7, -2),
            (5, 1),
            (-5, -1),
            (0, 0),
            (1, 0),
            (-1, 0),
        ];
        for (acc, want) in cases {
            assert_eq!(r.apply(acc), want, "acc = {acc}");
        }
        // 0.1 is stored slightly below 0.1, so 5 * 0.1 = 0.5 rounds down.
        let t = Requant::from_real(0.1, 0, wide).unwrap();
        assert!(t.real() < 0.1);
        assert_eq!((t.apply(5), t.apply(15), t.apply(-15), t.apply(1000)), (0, 1, -1, 100));
        let z = Requant::from_real(0.5, 100, QRange::U8).unwrap();
        assert_eq!((z.apply(0), z.apply(1), z.apply(-1), z.apply(-3)), (100, 101, 100, 99));
        // M >= 1.
        let big = Requant::from_real(3.0, 0, wide).unwrap();
        assert_eq!((big.apply(10), big.apply(-42), big.apply(43)), (30, -126, 127));
        assert!(Requant::from_real(0.5, 300, QRange::U8).is_err());
        assert!(Requant::from_real(0.0, 0, QRange::U8).is_err());
    }

    #[test]
    fn requant_saturates_at_both_ends_and_extremes_do_not_overflow() {
        let r = Requant::from_real(1.0, 0, QRange::U8).unwrap();
        assert_eq!(
            (r.apply(1000), r.apply(-1000), r.apply(255), r.apply(256)),
            (255, 0, 255, 255)
        );
        for m in [MIN_MULTIPLIER, 1e-6, 0.999_999, 1.0, 7.5, MAX_MULTIPLIER * 0.999] {
            let r = Requant::from_real(m, 0, QRange::I8).unwrap();
            for acc in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX] {
                let want = (acc as f64 * m).round().clamp(-128.0, 127.0) as i32;
                assert!(r.apply(acc).abs_diff(want) <= 1, "m {m} acc {acc}");
            }
        }
        let relu = Requant::from_real(1.0, 10, QRange::U8).unwrap().with_relu();
        assert_eq!((relu.apply(-5), relu.apply(5)), (10, 15));
    }

    #[test]
    fn mul_shift_round_is_floor_of_half_up() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..20_000 {
            let x = rng.next_u64() as i32;
            let m = (rng.next_u64() >> 33) as i32;
            let shift = 1 + (rng.next_u64() % 62) as u32;
            let num = x as i128 * m as i128 + (1i128 << (shift - 1));
            let want = num.div_euclid(1i128 << shift) as i64;
            assert_eq!(mul_shift_round(x, m, shift), want);
        }
    }

    #[test]
    fn requant_multiplier_in_f64() {
        assert_eq!(requant_multiplier(0.5, 0.25, 0.125), 1.0);
        let (a, b, c) = (0.1f32, 0.3f32, 0.7f32);
        assert_eq!(requant_multiplier(a, b, c), (a as f64 * b as f64) / c as f64);
    }

    // ----- 4. bias and accumulation -----

    #[test]
    fn bias_quantization() {
        assert_eq!(
            quantize_bias(1.0, 0.5, 0.25).unwrap(),
            QuantizedBias {
                value: 8,
                saturated: false
            }
        );
        assert_eq!(quantize_bias(0.0625, 0.5, 0.25).unwrap().value, 0); // 0.5 → 0 (even)
        assert_eq!(quantize_bias(0.1875, 0.5, 0.25).unwrap().value, 2); // 1.5 → 2
        assert_eq!(quantize_bias(-0.1875, 0.5, 0.25).unwrap().value, -2);
        assert_eq!(
            quantize_bias(1e9, 1e-3, 1e-3).unwrap(),
            QuantizedBias {
                value: i32::MAX,
                saturated: true
            }
        );
        assert_eq!(
            quantize_bias(-1e9, 1e-3, 1e-3).unwrap(),
            QuantizedBias {
                value: i32::MIN,
                saturated: true
            }
        );
        assert!(quantize_bias(f32::INFINITY, 1.0, 1.0).unwrap().saturated);
        assert!(matches!(
            quantize_bias(f32::NAN, 1.0, 1.0),
            Err(QuantError::NanBias { .. })
        ));
        assert!(matches!(quantize_bias(1.0, 0.0, 1.0), Err(QuantError::BadScale { .. })));
    }

    #[test]
    fn accumulation_and_bounds() {
        let x: [u8; 3] = [0, 128, 255];
        let w: [i8; 3] = [-128, 1, 127];
        let want = 7 + (-128) * (-128) + 127 * 127; // middle term: (128 - 128) * 1 = 0
        assert_eq!(dot_acc(&x, 128, &w, 7).unwrap(), want);
        assert!(dot_acc(&x, 0, &w[..2], 0).is_err());
        // Wrapping: the split form agrees bit for bit even past i32.
        let xs = vec![255u8; 70_000];
        let ws = vec![-128i8; 70_000];
        let direct = dot_acc(&xs, 0, &ws, 0).unwrap();
        let split = xs
            .iter()
            .zip(&ws)
            .fold(0i32, |a, (&x, &w)| a.wrapping_add(x as i32 * w as i32));
        assert_eq!(direct, split);
        assert_eq!(accumulator_bound(1, QRange::U8, 0, QRange::I8), 255 * 128);
        assert_eq!(accumulator_bound(1, QRange::U8, 200, QRange::I8), 200 * 128);
        assert!(accumulator_fits(65_793, QRange::U8, 0, QRange::I8, 0));
        assert!(!accumulator_fits(65_794, QRange::U8, 0, QRange::I8, 0));
        assert!(!accumulator_fits(65_793, QRange::U8, 0, QRange::I8, 1 << 20));
    }

    // ----- 5. average pooling -----

    #[test]
    fn avg_round_hand_picked() {
        let cases = [
            (2, 4, 0),
            (6, 4, 2),
            (10, 4, 2),
            (-2, 4, 0),
            (-6, 4, -2),
            (-10, 4, -2),
            (7, 4, 2),
            (-7, 4, -2),
            (5, 4, 1),
            (-5, 4, -1),
            (3, 2, 2),
            (1, 2, 0),
            (24, 49, 0),
            (25, 49, 1),
            (i32::MAX, 1, i32::MAX),
            (i32::MIN, 1, i32::MIN),
            (i32::MAX, 2, 1 << 30),
            (i32::MIN, 3, -715_827_883),
        ];
        for (sum, count, want) in cases {
            assert_eq!(avg_round(sum, count), want, "{sum} / {count}");
        }
    }

    #[test]
    fn avg_pool_out_centres_on_zero_point() {
        // zp 1: Σ(q - zp) = 2 over 4 → 0.5 → 0 (even), + 1.
        assert_eq!(avg_pool_out(6, 4, 4, 1, QRange::U8), 1);
        // Padding counted in the divisor pulls toward real 0 (the zero point).
        assert_eq!(avg_pool_out(4 * 200, 4, 9, 100, QRange::U8), 144);
        assert_eq!(avg_pool_out(255, 1, 1, 0, QRange::U8), 255);
        assert_eq!(avg_pool_out(-128 * 4, 4, 4, 0, QRange::I8), -128);
    }

    #[test]
    fn avg_round_matches_pytorch_float_rule_for_power_of_two_counts() {
        let mut rng = SplitMix64::new(11);
        for _ in 0..50_000 {
            let count = 1 << (rng.next_u64() % 12);
            let sum = (rng.next_u64() % (1 << 24)) as i32 - (1 << 23);
            let pt = (sum as f32 * (1.0f32 / count as f32)).round_ties_even() as i32;
            assert_eq!(avg_round(sum, count), pt);
        }
    }

    // ----- 6. add -----

    #[test]
    fn qadd_hand_picked() {
        let a = qp(0.5, 10, QRange::U8);
        let b = qp(0.25, 0, QRange::U8);
        let out = qp(1.0, 5, QRange::U8);
        let add = QAdd::new(&a, &b, &out).unwrap();
        // (20 - 10) * 0.5 + 8 * 0.25 = 7 → 12.
        assert_eq!(add.apply(20, 8), 12);
        assert_eq!(add.apply(10, 0), 5);
        assert_eq!(add.apply(255, 255), 191); // 122.5 + 63.75 = 186.25 → 186 + 5
        assert_eq!(
            QAdd::new(&a, &b, &qp(0.25, 5, QRange::U8)).unwrap().apply(255, 255),
            255
        );
        assert_eq!(add.apply(0, 0), 0); // -5 + 5 = 0 → exactly qmin
                                        // A tie: 1 * 0.5 + 0 = 0.5 → +inf rounding gives 6, f32 reference gives even 5 + 0 = 5.
        assert_eq!(add.apply(11, 0), 6);
        assert_eq!(qadd_f32_reference(11, 0, &a, &b, &out), 5);
        let relu = QAdd::new(&a, &b, &qp(1.0, 50, QRange::U8)).unwrap().with_relu();
        assert_eq!(relu.apply(0, 0), 50);
        assert!(QAdd::new(&a, &qp(1e-20, 0, QRange::U8), &out).is_err());
    }

    #[test]
    fn qadd_rarely_differs_from_f32_reference() {
        let mut rng = SplitMix64::new(5);
        let (mut n, mut differ) = (0, 0);
        for _ in 0..200 {
            let a = qp(rng.uniform(0.001, 0.1), (rng.next_u64() % 256) as i32, QRange::U8);
            let b = qp(rng.uniform(0.001, 0.1), (rng.next_u64() % 256) as i32, QRange::U8);
            let o = qp(rng.uniform(0.01, 0.2), (rng.next_u64() % 256) as i32, QRange::U8);
            let add = QAdd::new(&a, &b, &o).unwrap();
            for _ in 0..500 {
                let (qa, qb) = ((rng.next_u64() % 256) as i32, (rng.next_u64() % 256) as i32);
                let (x, y) = (add.apply(qa, qb), qadd_f32_reference(qa, qb, &a, &b, &o));
                assert!(x.abs_diff(y) <= 1);
                n += 1;
                differ += (x != y) as u32;
            }
        }
        assert!(differ * 1000 < n, "{differ} of {n} differ");
    }

    // ----- 7. tolerances -----

    #[test]
    fn tolerance_helpers() {
        assert_eq!(max_step_diff(&[1u8, 5, 9], &[2u8, 5, 7]), Some(2));
        assert_eq!(max_step_diff::<i8>(&[], &[]), Some(0));
        assert_eq!(max_step_diff(&[1u8], &[]), None);
        assert!(float_rewrite_close(&[100.0, 1.0], &[100.005, 1.009]));
        assert!(!float_rewrite_close(&[100.0, 1.0], &[100.0, 1.011]));
        assert!(!float_rewrite_close(&[1.0], &[f32::NAN]));
        assert!(!float_rewrite_close(&[1.0], &[1.0, 1.0]));
        assert!(float_rewrite_close(&[0.0, 0.0], &[0.0, 0.0]));
    }

    /// Batch-norm folding on a 3x3x512 reduction: the folded form stays inside the float-rewrite
    /// tolerance, a wrong fold (mean not subtracted) does not.
    #[test]
    fn bn_folding_stays_within_float_rewrite_tolerance() {
        let mut rng = SplitMix64::new(17);
        let (k, ch, n) = (4608, 8, 16);
        let mut worst = 0.0f32;
        for _ in 0..ch {
            let w: Vec<f32> = (0..k).map(|_| rng.uniform(-0.05, 0.05)).collect();
            let (bias, gamma, beta) = (rng.uniform(-1.0, 1.0), rng.uniform(0.5, 2.0), rng.uniform(-1.0, 1.0));
            let (mean, var) = (rng.uniform(-1.0, 1.0), rng.uniform(0.01, 4.0));
            let inv_std = gamma / (var + 1e-5).sqrt();
            let wf: Vec<f32> = w.iter().map(|v| v * inv_std).collect();
            let bf = (bias - mean) * inv_std + beta;
            let (mut reference, mut folded, mut wrong) = (vec![], vec![], vec![]);
            for _ in 0..n {
                let x: Vec<f32> = (0..k).map(|_| rng.uniform(-3.0, 3.0)).collect();
                let conv: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bias;
                reference.push((conv - mean) * inv_std + beta);
                folded.push(wf.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bf);
                wrong.push(folded.last().unwrap() + mean * inv_std);
            }
            let m = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in reference.iter().zip(&folded) {
                worst = worst.max((a - b).abs() / m);
            }
            assert!(float_rewrite_close(&reference, &folded));
            assert!(!float_rewrite_close(&reference, &wrong) || mean.abs() * inv_std < FLOAT_REWRITE_RTOL * m);
        }
        // The tolerance leaves at least a 10x margin over what f32 actually does here.
        assert!(worst * 10.0 < FLOAT_REWRITE_RTOL, "worst relative error {worst}");
    }

    // ----- properties -----

    fn qparams_strategy() -> impl Strategy<Value = QParams> {
        (1e-4f32..10.0, any::<bool>(), 0i32..256).prop_map(|(s, signed, z)| {
            if signed {
                qp(s, z - 128, QRange::I8)
            } else {
                qp(s, z, QRange::U8)
            }
        })
    }

    /// A linear output computed the fake-quant way (f32 simulation, float bias) and the int8 way.
    fn fake_vs_int(x: &[f32], w: &[f32], bias: f32, k: usize) -> (u8, u8) {
        let (xmin, xmax) = x.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let (wmin, wmax) = w.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let px = qparams_affine(xmin, xmax, QRange::U8, false).unwrap();
        let pw = qparams_symmetric(wmin, wmax, QRange::I8, false).unwrap();
        let xf: Vec<f32> = x.iter().map(|&v| fake_quantize(v, &px)).collect();
        let wf: Vec<f32> = w.iter().map(|&v| fake_quantize(v, &pw)).collect();
        let y: f32 = xf.iter().zip(&wf).map(|(a, b)| a * b).sum::<f32>() + bias;
        let amax = (k as f32).sqrt() * xmax.abs().max(xmin.abs()) * wmax.abs().max(wmin.abs()) + bias.abs();
        let po = qparams_affine(-amax, amax * 0.7, QRange::U8, false).unwrap();
        let fake = po.quantize(y) as u8;

        let mut xq = vec![0u8; k];
        let mut wq = vec![0i8; k];
        quantize_per_tensor(x, &px, &mut xq).unwrap();
        quantize_per_tensor(w, &pw, &mut wq).unwrap();
        let bq = quantize_bias(bias, px.scale(), pw.scale()).unwrap();
        assert!(!bq.saturated);
        let acc = dot_acc(&xq, px.zero_point(), &wq, bq.value).unwrap();
        let m = requant_multiplier(px.scale(), pw.scale(), po.scale());
        let int = Requant::from_real(m, po.zero_point(), QRange::U8).unwrap().apply(acc) as u8;
        (fake, int)
    }

    proptest! {
        #[test]
        fn prop_round_trip_within_half_step(p in qparams_strategy(), t in 0.0f32..1.0) {
            let lo = dequantize(p.range().qmin(), p.scale(), p.zero_point());
            let hi = dequantize(p.range().qmax(), p.scale(), p.zero_point());
            let x = lo + (hi - lo) * t;
            let back = p.dequantize(p.quantize(x));
            let tol = p.scale() * 0.5 + 4.0 * f32::EPSILON * x.abs().max(p.scale());
            prop_assert!((back - x).abs() <= tol, "x {} back {} p {:?}", x, back, p);
        }

        #[test]
        fn prop_quantize_is_monotonic(p in qparams_strategy(), a in -1e4f32..1e4, b in -1e4f32..1e4) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(p.quantize(lo) <= p.quantize(hi));
        }

        #[test]
        fn prop_per_channel_equals_per_tensor(
            params in prop::collection::vec(qparams_strategy(), 1..5),
            inner in 1usize..4,
            outer in 1usize..4,
            seed in any::<u64>(),
        ) {
            // One element type for all channels: force them into i8's range when any is signed.
            let params: Vec<QParams> = params.iter().map(|p| qp(p.scale(), p.zero_point().clamp(-128, 127), QRange::I8)).collect();
            let c = params.len();
            let mut rng = SplitMix64::new(seed);
            let x: Vec<f32> = (0..outer * c * inner).map(|_| rng.uniform(-300.0, 300.0)).collect();
            let mut all = vec![0i8; x.len()];
            quantize_per_channel(&x, &params, inner, &mut all).unwrap();
            for (ch, p) in params.iter().enumerate() {
                let idx: Vec<usize> = (0..outer).flat_map(|o| (0..inner).map(move |i| (o * c + ch) * inner + i)).collect();
                let xs: Vec<f32> = idx.iter().map(|&i| x[i]).collect();
                let mut one = vec![0i8; xs.len()];
                quantize_per_tensor(&xs, p, &mut one).unwrap();
                for (j, &i) in idx.iter().enumerate() {
                    prop_assert_eq!(all[i], one[j]);
                }
            }
        }

        #[test]
        fn prop_symmetric_unsigned_is_signed_shifted(min in -100f32..0.0, max in 0f32..100.0, bits in 2u32..=8) {
            let s = qparams_symmetric(min, max, QRange::new(bits, true).unwrap(), false).unwrap();
            let u = qparams_symmetric(min, max, QRange::new(bits, false).unwrap(), false).unwrap();
            prop_assert_eq!(s.scale(), u.scale());
            prop_assert_eq!(u.zero_point(), 1 << (bits - 1));
            for t in [-1.3f32, -0.5, 0.0, 0.2, 0.77, 1.5] {
                let x = t * max.max(-min);
                prop_assert_eq!(u.quantize(x), s.quantize(x) + (1 << (bits - 1)));
            }
        }

        #[test]
        fn prop_affine_range_is_covered(min in -100f32..100.0, width in 0f32..200.0, bits in 2u32..=8, signed: bool, pow2: bool) {
            let range = QRange::new(bits, signed).unwrap();
            let p = qparams_affine(min, min + width, range, pow2).unwrap();
            prop_assert_eq!(p.quantize(0.0), p.zero_point()); // 0 exact
            prop_assert_eq!(p.dequantize(p.zero_point()), 0.0);
            // The ends of the range quantize within half a step (no clipping beyond rounding).
            for x in [min.min(0.0), (min + width).max(0.0)] {
                let back = p.dequantize(p.quantize(x));
                prop_assert!((back - x).abs() <= p.scale() * 0.5 + 1e-4 * x.abs().max(p.scale()), "{} {}", x, back);
            }
            if pow2 {
                prop_assert_eq!(pow2_scale(p.scale()), p.scale());
            }
        }

        #[test]
        fn prop_requant_within_one_of_exact(acc in any::<i32>(), log2m in -32.0f64..29.9, zp in 0i32..256) {
            let m = 2f64.powf(log2m);
            let r = Requant::from_real(m, zp, QRange::U8).unwrap();
            let exact = ((acc as f64 * m).round_ties_even() + zp as f64).clamp(0.0, 255.0) as i32;
            prop_assert!(r.apply(acc).abs_diff(exact) <= 1, "acc {} m {} got {} want {}", acc, m, r.apply(acc), exact);
        }

        #[test]
        fn prop_requant_small_acc_exact_unless_near_tie(acc in -100_000i32..100_000, log2m in -20.0f64..0.0) {
            let m = 2f64.powf(log2m);
            let r = Requant::from_real(m, 0, QRange::custom(-128, 127).unwrap()).unwrap();
            let real = acc as f64 * m;
            let exact = real.round_ties_even().clamp(-128.0, 127.0) as i32;
            if (real - real.floor() - 0.5).abs() > 1e-4 {
                prop_assert_eq!(r.apply(acc), exact);
            }
        }

        #[test]
        fn prop_requant_monotonic(a in any::<i32>(), b in any::<i32>(), log2m in -32.0f64..29.9, zp in 0i32..256) {
            let r = Requant::from_real(2f64.powf(log2m), zp, QRange::U8).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(r.apply(lo) <= r.apply(hi));
        }

        #[test]
        fn prop_qadd_within_one_of_f32(
            a in qparams_strategy(), b in qparams_strategy(), o in qparams_strategy(),
            ta in 0u8.., tb in 0u8..,
        ) {
            // Output scale at most 2^13 times the larger input scale (QAdd::new's bound).
            prop_assume!(a.scale().max(b.scale()) / o.scale() >= 1.0 / 8192.0);
            let add = QAdd::new(&a, &b, &o).unwrap();
            let qa = a.range().qmin() + ta as i32;
            let qb = b.range().qmin() + tb as i32;
            let got = add.apply(qa, qb);
            let want = qadd_f32_reference(qa, qb, &a, &b, &o);
            prop_assert!(got.abs_diff(want) <= 1, "got {} want {}", got, want);
            prop_assert!(o.range().contains(got));
        }

        #[test]
        fn prop_avg_round_is_nearest_even(sum in any::<i32>(), count in 1i32..100_000) {
            let want = (sum as f64 / count as f64).round_ties_even() as i32;
            prop_assert_eq!(avg_round(sum, count), want);
        }

        #[test]
        fn prop_fake_quant_within_one_step_of_int8(k in 1usize..300, seed in any::<u64>(), bias in -2.0f32..2.0) {
            let mut rng = SplitMix64::new(seed);
            let x: Vec<f32> = (0..k).map(|_| rng.uniform(-1.0, 3.0)).collect();
            let w: Vec<f32> = (0..k).map(|_| rng.uniform(-0.5, 0.5)).collect();
            let (fake, int) = fake_vs_int(&x, &w, bias, k);
            prop_assert!(max_step_diff(&[fake], &[int]) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{} vs {}", fake, int);
        }
    }
}
