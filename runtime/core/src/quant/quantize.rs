//! Quantize and dequantize (docs/numerics.md §1): per element, per tensor and per channel.

use super::*;

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
pub(super) fn channel_layout(len: usize, channels: usize, inner: usize) -> Result<(), QuantError> {
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
