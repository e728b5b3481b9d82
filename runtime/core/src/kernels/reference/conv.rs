//! Reference convolution (2-D, 1-D, grouped, depthwise) and linear layer: exact `i32`
//! accumulation and per-channel requantization.

use super::super::{check_epilogue, check_len, KernelError, QConv2d, QLinear};
use crate::quant::{dot_acc, QElem};

/// Quantized 2-D convolution, NHWC `u8` input `x`, OHWI `i8` weights `w`, optional `i32` bias,
/// NHWC `u8` output `[N, OH, OW, Cout]`:
/// ```text
/// acc[n, oh, ow, co] = bias[co] + Σ_{kh, kw, ci} (x[n, ih, iw, g·Cin/G + ci] - zp_x) · w[co, kh, kw, ci]
///                      ih = oh·sh + kh·dh - ph,  iw = ow·sw + kw·dw - pw,  g = co / (Cout/G)
/// out = requant[co].apply(acc)
/// ```
/// Padding is the input's zero point, because `zp_x` is the code of real 0, and zero padding in
/// PyTorch's float convolution pads with real 0 (a pad value of code 0 would be real `-zp·s`). A
/// padded tap then contributes `(zp_x - zp_x) · w = 0`, so the reference skips it; a kernel that
/// reads an explicitly padded buffer filled with `zp_x` gets the same bits.
/// The sum runs per tap over the contiguous `Cin/G` channels with [`dot_acc`] (wrapping i32; the
/// check guarantees no wrap).
pub fn qconv2d(p: &QConv2d, x: &[u8], w: &[i8], bias: Option<&[i32]>, out: &mut [u8]) -> Result<(), KernelError> {
    let g = &p.geom;
    let [oh_n, ow_n] = g.out_hw()?;
    check_len("input", g.input_len(), x.len())?;
    check_len("weight", g.weight_len(), w.len())?;
    check_len("output", g.batch * oh_n * ow_n * g.out_c, out.len())?;
    check_epilogue(g.out_c, g.reduction_len(), p.input_zero_point, &p.requant, bias)?;
    let (cig, cog) = (g.in_c / g.groups, g.out_c / g.groups);
    let zp = p.input_zero_point;
    for n in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let o_base = ((n * oh_n + oh) * ow_n + ow) * g.out_c;
                for co in 0..g.out_c {
                    let ci0 = co / cog * cig;
                    let mut acc = bias.map_or(0, |b| b[co]);
                    for kh in 0..g.h.kernel {
                        let Some(ih) = g.h.input_index(oh, kh, g.in_h) else {
                            continue;
                        };
                        for kw in 0..g.w.kernel {
                            let Some(iw) = g.w.input_index(ow, kw, g.in_w) else {
                                continue;
                            };
                            let xs = &x[((n * g.in_h + ih) * g.in_w + iw) * g.in_c + ci0..][..cig];
                            let ws = &w[((co * g.h.kernel + kh) * g.w.kernel + kw) * cig..][..cig];
                            acc = dot_acc(xs, zp, ws, acc)?;
                        }
                    }
                    out[o_base + co] = u8::from_q(p.requant[co].apply(acc));
                }
            }
        }
    }
    Ok(())
}

/// Quantized 1-D convolution over NLC `[N, L, Cin]` with weights `[Cout, K, Cin/groups]`, output
/// `[N, OL, Cout]`: [`qconv2d`] on the same memory read as `H = 1` (geometry from
/// [`Conv2dGeom::conv1d`](super::Conv2dGeom::conv1d); an error if `p.geom` is not 1-D).
pub fn qconv1d(p: &QConv2d, x: &[u8], w: &[i8], bias: Option<&[i32]>, out: &mut [u8]) -> Result<(), KernelError> {
    if !p.geom.is_1d() {
        return Err(KernelError::Geometry(format!(
            "qconv1d needs a 1-D geometry, got {:?}",
            p.geom
        )));
    }
    qconv2d(p, x, w, bias, out)
}

/// Quantized linear layer: `x [N, K] u8`, `w [M, K] i8` (PyTorch's `[out, in]`), optional bias
/// `[M]`, `out [N, M] u8`: `out[n, m] = requant[m].apply(dot_acc(x[n], zp_x, w[m], bias[m]))`.
pub fn qlinear(p: &QLinear, x: &[u8], w: &[i8], bias: Option<&[i32]>, out: &mut [u8]) -> Result<(), KernelError> {
    let (k, m) = (p.in_features, p.out_features);
    if k == 0 || m == 0 {
        return Err(KernelError::Geometry(format!("qlinear with K = {k}, M = {m}")));
    }
    check_len("input", p.batch * k, x.len())?;
    check_len("weight", m * k, w.len())?;
    check_len("output", p.batch * m, out.len())?;
    check_epilogue(m, k, p.input_zero_point, &p.requant, bias)?;
    for (xs, os) in x.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (j, (ws, o)) in w.chunks_exact(k).zip(os.iter_mut()).enumerate() {
            let acc = dot_acc(xs, p.input_zero_point, ws, bias.map_or(0, |b| b[j]))?;
            *o = u8::from_q(p.requant[j].apply(acc));
        }
    }
    Ok(())
}
