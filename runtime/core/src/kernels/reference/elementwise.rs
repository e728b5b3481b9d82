//! Reference elementwise ops on quantized data: add, mul (broadcasting), a pointwise curve (lookup
//! table), a standalone activation (clamp) and channel concatenation with requantization.

use super::super::{check_len, check_range_u8, check_zp_u8, KernelError, QConcat};
use crate::quant::{QAdd, QElem, QMul, QParams};

/// Quantized elementwise add of two u8 tensors of the same shape (any layout), each with its own
/// scale and zero point: `out[i] = p.apply(a[i], b[i])` ([`QAdd::apply`]; build `p` with
/// [`QAdd::new`], and [`QAdd::with_relu`] for a fused ReLU).
pub fn qadd(p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("second input", a.len(), b.len())?;
    check_len("output", a.len(), out.len())?;
    check_zp_u8("first input", p.a_zero_point)?;
    check_zp_u8("second input", p.b_zero_point)?;
    check_range_u8("output", p.out.qmin, p.out.qmax)?;
    for ((o, &qa), &qb) in out.iter_mut().zip(a).zip(b) {
        *o = u8::from_q(p.apply(qa.to_q(), qb.to_q()));
    }
    Ok(())
}

/// A standalone activation on quantized data (any layout): `out = clamp(q, lo, hi)` with
/// `(lo, hi) = act.bounds(p)` ([`Activation::bounds`](super::super::Activation::bounds)), which is
/// exactly `quantize(act(dequantize(q)))` because `quantize` is monotonic and `dequantize(q)`
/// quantizes back to `q`. Output keeps the input's parameters.
pub fn qclamp(act: super::super::Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    act.check()?;
    check_len("output", x.len(), out.len())?;
    check_range_u8("input", p.range().qmin(), p.range().qmax())?;
    let (lo, hi) = act.bounds(p);
    for (o, &q) in out.iter_mut().zip(x) {
        // `lo <= hi` for a checked activation; `max` then `min` keeps that order explicit.
        *o = u8::from_q(q.to_q().max(lo).min(hi));
    }
    Ok(())
}

/// Concatenation along the channel (last) axis: inputs `[outer, C_i]`, output `[outer, Σ C_i]`.
/// Each input is moved to the output's scale and zero point with its part's [`Requant`]
/// (multiplier `s_i / s_out`): `out = requant.apply(q - zp_i)`, one half-up rounding, within one
/// step of PyTorch's `quantize(dequantize(q))`, and a plain copy when the parameters are equal.
///
/// [`Requant`]: crate::quant::Requant
pub fn qconcat_channels(p: &QConcat, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("inputs", p.parts.len(), inputs.len())?;
    let total = p.out_channels();
    check_len("output", p.outer * total, out.len())?;
    for (part, x) in p.parts.iter().zip(inputs) {
        check_len("concat input", p.outer * part.channels, x.len())?;
        check_zp_u8("concat input", part.input_zero_point)?;
        check_range_u8("output", part.requant.qmin, part.requant.qmax)?;
    }
    let mut c0 = 0;
    for (part, x) in p.parts.iter().zip(inputs) {
        let c_n = part.channels;
        for o in 0..p.outer {
            let dst = &mut out[o * total + c0..][..c_n];
            for (d, &q) in dst.iter_mut().zip(&x[o * c_n..][..c_n]) {
                *d = u8::from_q(part.requant.apply(q.to_q() - part.input_zero_point));
            }
        }
        c0 += c_n;
    }
    Ok(())
}

/// A pointwise curve on quantized data (any layout) through its table ([`lut_table`]):
/// `out[i] = table[x[i]]`.
///
/// [`lut_table`]: crate::quant::lut_table
pub fn qlut(table: &[u8; 256], x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("output", x.len(), out.len())?;
    for (o, &q) in out.iter_mut().zip(x) {
        *o = table[q as usize];
    }
    Ok(())
}

/// Quantized elementwise product with PyTorch's broadcasting: `a` of shape `a_shape`, `b` of
/// shape `b_shape` and `out` of shape `out_shape` have the same rank (the same layout), and each
/// input dim equals the output's or is 1 (rank at most 8). `out[i] = p.apply(a[i'], b[i''])`
/// ([`QMul::apply`]).
pub fn qmul(
    p: &QMul,
    (a, a_shape): (&[u8], &[usize]),
    (b, b_shape): (&[u8], &[usize]),
    out: &mut [u8],
    out_shape: &[usize],
) -> Result<(), KernelError> {
    const MAX_RANK: usize = 8;
    let strides = |what: &'static str, shape: &[usize], len: usize| -> Result<[usize; MAX_RANK], KernelError> {
        if shape.len() != out_shape.len() || shape.len() > MAX_RANK {
            return Err(KernelError::Geometry(format!(
                "qmul: {what} has rank {}, the output {} (equal ranks up to {MAX_RANK})",
                shape.len(),
                out_shape.len()
            )));
        }
        check_len(what, shape.iter().product(), len)?;
        let mut s = [0; MAX_RANK];
        let mut step = 1;
        for k in (0..shape.len()).rev() {
            if shape[k] == out_shape[k] {
                s[k] = if shape[k] == 1 { 0 } else { step };
            } else if shape[k] != 1 {
                return Err(KernelError::Geometry(format!(
                    "qmul: {what} {shape:?} does not broadcast to {out_shape:?}"
                )));
            }
            step *= shape[k];
        }
        Ok(s)
    };
    check_len("output", out_shape.iter().product(), out.len())?;
    check_zp_u8("first input", p.a_zero_point)?;
    check_zp_u8("second input", p.b_zero_point)?;
    check_range_u8("output", p.out.qmin, p.out.qmax)?;
    let sa = strides("first input", a_shape, a.len())?;
    let sb = strides("second input", b_shape, b.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let rank = out_shape.len();
    if rank == 0 {
        out[0] = u8::from_q(p.apply(a[0].to_q(), b[0].to_q()));
        return Ok(());
    }
    // The last dim runs in an inner loop; the others count like an odometer.
    let inner = out_shape[rank - 1];
    let (ia, ib) = (sa[rank - 1], sb[rank - 1]);
    let mut idx = [0usize; MAX_RANK];
    let (mut oa, mut ob) = (0usize, 0usize);
    for row in out.chunks_mut(inner) {
        for (j, o) in row.iter_mut().enumerate() {
            *o = u8::from_q(p.apply(a[oa + j * ia].to_q(), b[ob + j * ib].to_q()));
        }
        for k in (0..rank - 1).rev() {
            idx[k] += 1;
            oa += sa[k];
            ob += sb[k];
            if idx[k] < out_shape[k] {
                break;
            }
            oa -= sa[k] * out_shape[k];
            ob -= sb[k] * out_shape[k];
            idx[k] = 0;
        }
    }
    Ok(())
}
