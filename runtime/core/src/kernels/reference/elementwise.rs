//! Reference elementwise ops on quantized data: add, a standalone activation (clamp) and
//! channel concatenation with requantization.

use super::super::{check_len, check_range_u8, check_zp_u8, KernelError, QConcat};
use crate::quant::{QAdd, QElem, QParams};

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
