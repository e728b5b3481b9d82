//! Bias quantization and the `i32` accumulator (docs/numerics.md §3): [`quantize_bias`],
//! [`dot_acc`] and the no-overflow bound.

use super::*;

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
