//! Reference pooling: max, average, global and adaptive average, 2-D and 1-D.

use super::super::{
    check_len, check_range_u8, check_zp_u8, KernelError, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d, QGlobalAvgPool,
};
use crate::quant::{avg_pool_out, QElem};

/// Quantized max pool over NHWC (PyTorch `max_pool2d`: padding never wins, dilation,
/// `ceil_mode`). Output `[N, OH, OW, C]` keeps the input's parameters: dequantization is monotonic,
/// so the max of the codes is the code of the max. The geometry check guarantees every window holds
/// at least one input element, so starting from `u8::MIN` yields the window's max.
pub fn qmaxpool2d(g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let [oh_n, ow_n] = g.out_hw()?;
    check_len("input", g.input_len(), x.len())?;
    check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
    let c_n = g.channels;
    for n in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let o = &mut out[((n * oh_n + oh) * ow_n + ow) * c_n..][..c_n];
                o.fill(u8::MIN);
                for kh in 0..g.h.kernel {
                    let Some(ih) = g.h.input_index(oh, kh, g.in_h) else {
                        continue;
                    };
                    for kw in 0..g.w.kernel {
                        let Some(iw) = g.w.input_index(ow, kw, g.in_w) else {
                            continue;
                        };
                        let xs = &x[((n * g.in_h + ih) * g.in_w + iw) * c_n..][..c_n];
                        for (m, &v) in o.iter_mut().zip(xs) {
                            *m = (*m).max(v);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// 1-D max pool over NLC: [`qmaxpool2d`] with `H = 1` ([`Pool2dGeom::pool1d`]).
pub fn qmaxpool1d(g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    if !g.is_1d() {
        return Err(KernelError::Geometry(format!(
            "qmaxpool1d needs a 1-D geometry, got {g:?}"
        )));
    }
    qmaxpool2d(g, x, out)
}

/// Quantized average pool over NHWC (PyTorch `avg_pool2d` without `divisor_override`):
/// ```text
/// window rows [hs, he) = [oh·sh - ph, min(oh·sh - ph + kh, H + ph)), likewise columns
/// divisor = count_include_pad ? (he - hs)·(we - ws)  : real elements in the window
/// out     = avg_pool_out(Σ_real q, real elements, divisor, zp, range)
/// ```
/// Padding counts as real 0 (code `zp`) in the divisor only; the part of a `ceil_mode` window
/// beyond the padding never counts. Output keeps the input's parameters. Windows are limited to
/// `2^23` elements, where `avg_pool_out` is exact.
pub fn qavgpool2d(p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let g = &p.geom;
    if g.h.dilation != 1 || g.w.dilation != 1 {
        return Err(KernelError::Geometry(format!("average pooling has no dilation: {g:?}")));
    }
    if g.h.kernel.saturating_mul(g.w.kernel) > 1 << 23 {
        return Err(KernelError::Geometry(format!(
            "average pooling window over 2^23 elements: {g:?}"
        )));
    }
    let [oh_n, ow_n] = g.out_hw()?;
    check_len("input", g.input_len(), x.len())?;
    check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
    check_zp_u8("input", p.zero_point)?;
    check_range_u8("input", p.range.qmin(), p.range.qmax())?;
    let c_n = g.channels;
    for n in 0..g.batch {
        for oh in 0..oh_n {
            let (h0, h1, h_padded) = g.h.avg_bounds(oh, g.in_h);
            for ow in 0..ow_n {
                let (w0, w1, w_padded) = g.w.avg_bounds(ow, g.in_w);
                let elems = ((h1 - h0) * (w1 - w0)) as i32;
                let divisor = if p.count_include_pad {
                    (h_padded * w_padded) as i32
                } else {
                    elems
                };
                for c in 0..c_n {
                    let mut sum = 0i32;
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            sum += x[((n * g.in_h + ih) * g.in_w + iw) * c_n + c].to_q();
                        }
                    }
                    let q = avg_pool_out(sum, elems, divisor, p.zero_point, p.range);
                    out[((n * oh_n + oh) * ow_n + ow) * c_n + c] = u8::from_q(q);
                }
            }
        }
    }
    Ok(())
}

/// 1-D average pool over NLC: [`qavgpool2d`] with `H = 1` ([`Pool2dGeom::pool1d`]).
pub fn qavgpool1d(p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    if !p.geom.is_1d() {
        return Err(KernelError::Geometry(format!(
            "qavgpool1d needs a 1-D geometry, got {:?}",
            p.geom
        )));
    }
    qavgpool2d(p, x, out)
}

/// Quantized global average pool: `[N, S, C]` → `[N, C]` with `S = H·W` (NHWC) or `L` (NLC):
/// `out[n, c] = avg_pool_out(Σ_s q, S, S, zp, range)`. Needs `1 <= S <= 2^23` (quant.rs's bound).
pub fn qglobal_avgpool(p: &QGlobalAvgPool, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let (s_n, c_n) = (p.spatial, p.channels);
    if !(1..=1 << 23).contains(&s_n) || c_n == 0 {
        return Err(KernelError::Geometry(format!(
            "global average pool over {s_n} positions (1..=2^23) and {c_n} channels"
        )));
    }
    check_len("input", p.batch * s_n * c_n, x.len())?;
    check_len("output", p.batch * c_n, out.len())?;
    check_zp_u8("input", p.zero_point)?;
    check_range_u8("input", p.range.qmin(), p.range.qmax())?;
    for (xs, os) in x.chunks_exact(s_n * c_n).zip(out.chunks_exact_mut(c_n)) {
        for (c, o) in os.iter_mut().enumerate() {
            let sum: i32 = (0..s_n).map(|s| xs[s * c_n + c].to_q()).sum();
            *o = u8::from_q(avg_pool_out(sum, s_n as i32, s_n as i32, p.zero_point, p.range));
        }
    }
    Ok(())
}

/// Quantized adaptive average pool over NHWC (PyTorch `adaptive_avg_pool2d`): output row `oy`
/// averages input rows `[floor(oy·H/OH), ceil((oy+1)·H/OH))`, likewise columns, and
/// `out = avg_pool_out(Σ q, n, n, zp, range)` with `n` the window's element count (no padding).
/// Output `[N, OH, OW, C]` keeps the input's parameters. `OH = OW = 1` is [`qglobal_avgpool`]
/// (same bits). Windows are limited to `2^23` elements.
pub fn qadaptive_avgpool2d(p: &QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let [h_n, w_n] = p.in_hw;
    let [oh_n, ow_n] = p.out_hw;
    let c_n = p.channels;
    if h_n == 0 || w_n == 0 || oh_n == 0 || ow_n == 0 || c_n == 0 {
        return Err(KernelError::Geometry(format!(
            "adaptive average pool with a zero size: {p:?}"
        )));
    }
    // The largest window is ceil(H/OH) + 1 rows by ceil(W/OW) + 1 columns.
    if (h_n.div_ceil(oh_n) + 1).saturating_mul(w_n.div_ceil(ow_n) + 1) > 1 << 23 {
        return Err(KernelError::Geometry(format!(
            "adaptive average pooling window over 2^23 elements: {p:?}"
        )));
    }
    check_len("input", p.batch * h_n * w_n * c_n, x.len())?;
    check_len("output", p.batch * oh_n * ow_n * c_n, out.len())?;
    check_zp_u8("input", p.zero_point)?;
    check_range_u8("input", p.range.qmin(), p.range.qmax())?;
    for n in 0..p.batch {
        for oy in 0..oh_n {
            let (h0, h1) = (oy * h_n / oh_n, ((oy + 1) * h_n).div_ceil(oh_n));
            for ox in 0..ow_n {
                let (w0, w1) = (ox * w_n / ow_n, ((ox + 1) * w_n).div_ceil(ow_n));
                let elems = ((h1 - h0) * (w1 - w0)) as i32;
                for c in 0..c_n {
                    let mut sum = 0i32;
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            sum += x[((n * h_n + ih) * w_n + iw) * c_n + c].to_q();
                        }
                    }
                    let q = avg_pool_out(sum, elems, elems, p.zero_point, p.range);
                    out[((n * oh_n + oy) * ow_n + ox) * c_n + c] = u8::from_q(q);
                }
            }
        }
    }
    Ok(())
}
