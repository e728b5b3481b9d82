//! Choosing scale and zero point from a calibrated range (docs/numerics.md §2): affine,
//! symmetric, power-of-two scales.

use super::*;

pub(super) fn widen_range(min: f32, max: f32) -> Result<(f32, f32), QuantError> {
    if !(min.is_finite() && max.is_finite()) {
        return Err(QuantError::NonFiniteRange { min, max });
    }
    if min > max {
        return Err(QuantError::InvertedRange { min, max });
    }
    Ok((min.min(0.0), max.max(0.0)))
}

pub(super) fn finish_scale(scale: f32, pow2: bool, min: f32, max: f32) -> Result<f32, QuantError> {
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
    QParams::new(scale, symmetric_zero_point(range), range)
}

/// The zero point of symmetric quantization over `range`: 0 for a signed range,
/// `(qmin + qmax + 1) / 2` (`2^(bits-1)`, 128 for u8) for an unsigned one.
pub fn symmetric_zero_point(range: QRange) -> i32 {
    if range.is_signed() {
        0
    } else {
        (range.qmin + range.qmax + 1) / 2
    }
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
