//! The scalar reference of every int8 op of qc's CPU runtime: the specification SIMD kernels must
//! match bit for bit. Layouts and parameter types are in [`super`] (the `kernels` module doc).
//!
//! Every function is pure over slices: it checks all lengths and parameters first (returning a
//! [`KernelError`], never panicking on bad input), then writes into the caller's output buffer
//! without allocating. Rounding, requantization and saturation come only from `crate::quant`.

use super::{
    check_epilogue, check_len, check_range_u8, check_zp_u8, KernelError, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d,
    QConcat, QConv2d, QGlobalAvgPool, QLinear,
};
use crate::quant::{avg_pool_out, dequantize_per_tensor, dot_acc, quantize_per_tensor, QAdd, QElem, QParams};

// ---------------------------------------------------------------------------------------------
// Layout conversion, quantize, dequantize
// ---------------------------------------------------------------------------------------------

/// `[N, C, H, W]` → `[N, H, W, C]`. Also turns PyTorch's conv weights `[O, I, KH, KW]` into
/// `[O, KH, KW, I]` ([`conv_weight_oihw_to_ohwi`]).
pub fn nchw_to_nhwc<T: Copy>(x: &[T], [n, c, h, w]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * h + y) * w + xx) * c + ch] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    Ok(())
}

/// `[N, H, W, C]` → `[N, C, H, W]`.
pub fn nhwc_to_nchw<T: Copy>(x: &[T], [n, h, w, c]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, x.len())?;
    check_len("output", x.len(), out.len())?;
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    Ok(())
}

/// PyTorch's conv weight `[Cout, Cin/groups, KH, KW]` → qc's `[Cout, KH, KW, Cin/groups]`
/// (the same permutation as [`nchw_to_nhwc`]).
pub fn conv_weight_oihw_to_ohwi<T: Copy>(w: &[T], oihw: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    nchw_to_nhwc(w, oihw, out)
}

/// Quantizes a float tensor to u8, layout unchanged (NHWC in, NHWC out):
/// [`quantize_per_tensor`].
pub fn quantize_u8(x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    Ok(quantize_per_tensor(x, p, out)?)
}

/// Dequantizes a u8 tensor, layout unchanged: [`dequantize_per_tensor`].
pub fn dequantize_u8(q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    Ok(dequantize_per_tensor(q, p, out)?)
}

/// Quantizes a PyTorch NCHW float tensor into qc's NHWC u8 layout: element for element
/// [`QParams::quantize`] (quant.rs's `quantize`), i.e. `quantize_u8(nchw_to_nhwc(x))` without the
/// intermediate buffer.
pub fn quantize_nchw_to_nhwc(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    p: &QParams,
    out: &mut [u8],
) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    check_range_u8("quantization", p.range().qmin(), p.range().qmax())?;
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let v = x[((b * c + ch) * h + y) * w + xx];
                    out[((b * h + y) * w + xx) * c + ch] = u8::from_q(p.quantize(v));
                }
            }
        }
    }
    Ok(())
}

/// Dequantizes qc's NHWC u8 tensor into PyTorch's NCHW float layout ([`QParams::dequantize`]).
pub fn dequantize_nhwc_to_nchw(
    q: &[u8],
    [n, h, w, c]: [usize; 4],
    p: &QParams,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, q.len())?;
    check_len("output", q.len(), out.len())?;
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    let v = q[((b * h + y) * w + xx) * c + ch];
                    out[((b * c + ch) * h + y) * w + xx] = p.dequantize(v.to_q());
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Flatten
// ---------------------------------------------------------------------------------------------

/// PyTorch's `flatten(1)` order from NHWC data: `[N, H, W, C]` → `[N, C·H·W]` with features in
/// `(c, h, w)` order, which is [`nhwc_to_nchw`] (an NCHW tensor flattened is its memory). A plain
/// reshape of NHWC data would list features as `(h, w, c)`, not what a linear layer trained in
/// PyTorch expects (unless `H = W = 1`). For NLC `[N, L, C]` use `[N, 1, L, C]`.
pub fn flatten_nhwc_to_torch_order<T: Copy>(x: &[T], nhwc: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    nhwc_to_nchw(x, nhwc, out)
}

/// The alternative to [`flatten_nhwc_to_torch_order`] at compile time: permutes the columns of a
/// linear weight `[M, C·H·W]` written for PyTorch's `(c, h, w)` feature order into `(h, w, c)`
/// order, so `qlinear(reshape(x_nhwc), w')` equals `qlinear(flatten_nhwc_to_torch_order(x), w)`
/// exactly (same products, same accumulation). `chw = [C, H, W]` of the flattened tensor.
pub fn linear_weight_torch_to_nhwc_flatten<T: Copy>(
    w: &[T],
    out_features: usize,
    [c, h, wd]: [usize; 3],
    out: &mut [T],
) -> Result<(), KernelError> {
    // Each row `[C, H, W]` → `[H, W, C]`: the NCHW → NHWC permutation with N = out_features.
    nchw_to_nhwc(w, [out_features, c, h, wd], out)
}

// ---------------------------------------------------------------------------------------------
// Convolution and linear
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Elementwise add
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Standalone activation
// ---------------------------------------------------------------------------------------------

/// A standalone activation on quantized data (any layout): `out = clamp(q, lo, hi)` with
/// `(lo, hi) = act.bounds(p)` ([`Activation::bounds`](super::Activation::bounds)), which is
/// exactly `quantize(act(dequantize(q)))` because `quantize` is monotonic and `dequantize(q)`
/// quantizes back to `q`. Output keeps the input's parameters.
pub fn qclamp(act: super::Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
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

// ---------------------------------------------------------------------------------------------
// Concatenation
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::super::{requant_per_channel, Activation, Axis, ConcatPart, Conv2dGeom};
    use super::*;
    use crate::quant::{accumulator_fits, max_step_diff, quantize_bias, QRange, Requant, FAKE_QUANT_TOLERANCE_STEPS};
    use crate::tensor::SplitMix64;
    use proptest::prelude::*;

    fn qp(scale: f32, zp: i32) -> QParams {
        QParams::new(scale, zp, QRange::U8).unwrap()
    }

    /// A requantization with real multiplier `m` to zero point `zp` (u8).
    fn rq(m: f64, zp: i32) -> Requant {
        Requant::from_real(m, zp, QRange::U8).unwrap()
    }

    fn linear_params(batch: usize, k: usize, zp: i32, requant: Vec<Requant>) -> QLinear {
        QLinear {
            batch,
            in_features: k,
            out_features: requant.len(),
            input_zero_point: zp,
            requant,
        }
    }

    // ----- random data with the saturation edges over-represented -----

    fn rand_below(rng: &mut SplitMix64, n: u64) -> u64 {
        rng.next_u64() % n
    }

    fn data_u8(rng: &mut SplitMix64, len: usize, zp: i32) -> Vec<u8> {
        (0..len)
            .map(|_| match rand_below(rng, 8) {
                0 => 0,
                1 => 255,
                2 => zp as u8,
                _ => rand_below(rng, 256) as u8,
            })
            .collect()
    }

    fn data_i8(rng: &mut SplitMix64, len: usize) -> Vec<i8> {
        (0..len)
            .map(|_| match rand_below(rng, 8) {
                0 => -128,
                1 => 127,
                2 => 0,
                _ => rand_below(rng, 256) as u8 as i8,
            })
            .collect()
    }

    /// Log-uniform in `[lo, hi)`.
    fn log_uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
        (lo.ln() + (hi.ln() - lo.ln()) * rng.next_f32()).exp()
    }

    /// A zero point: often an edge (0, 255), else uniform.
    fn zero_point(rng: &mut SplitMix64) -> i32 {
        match rand_below(rng, 6) {
            0 => 0,
            1 => 255,
            _ => rand_below(rng, 256) as i32,
        }
    }

    fn deq(q: &[u8], p: &QParams) -> Vec<f64> {
        q.iter().map(|&v| p.dequantize(v.to_q()) as f64).collect()
    }

    /// The float oracle's last step: activation in f64, then quant.rs's `quantize` once.
    fn requantize_oracle(y: &[f64], out: &QParams, act: Activation) -> Vec<u8> {
        y.iter()
            .map(|&v| {
                let v = match act {
                    Activation::None => v,
                    Activation::Relu => v.max(0.0),
                    Activation::Relu6 => v.clamp(0.0, 6.0),
                    Activation::Clamp { min, max } => v.clamp(min as f64, max as f64),
                };
                u8::from_q(out.quantize(v as f32))
            })
            .collect()
    }

    fn act_strategy() -> impl Strategy<Value = Activation> {
        prop_oneof![Just(Activation::None), Just(Activation::Relu), Just(Activation::Relu6)]
    }

    /// Everything a random conv/linear case needs: quantized data in PyTorch layouts (NCHW, OIHW)
    /// and its parameters. The requantization multiplier `M = s_in s_w / s_out` spans `2^-16..2^2`
    /// so some cases stay small and others saturate at both ends.
    struct ConvCase {
        input: QParams,
        output: QParams,
        w_scales: Vec<f32>,
        x: Vec<u8>,
        w: Vec<i8>,
        bias: Option<Vec<i32>>,
    }

    fn conv_case(seed: u64, x_len: usize, out_c: usize, k: usize, has_bias: bool) -> ConvCase {
        let mut rng = SplitMix64::new(seed);
        let input = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
        let sw0 = log_uniform(&mut rng, 1e-3, 1e-1);
        let w_scales: Vec<f32> = (0..out_c).map(|_| sw0 * log_uniform(&mut rng, 1.0, 4.0)).collect();
        let gain = log_uniform(&mut rng, 2f32.powi(-16), 4.0);
        let output = qp(input.scale() * sw0 / gain, zero_point(&mut rng));
        let x = data_u8(&mut rng, x_len, input.zero_point());
        let w = data_i8(&mut rng, out_c * k);
        let bias = has_bias.then(|| {
            w_scales
                .iter()
                .map(|&s_w| {
                    // A float bias of up to ~K·64 accumulator units, quantized as the caller does.
                    let b = rng.uniform(-1.0, 1.0) * input.scale() * s_w * (64 * k) as f32;
                    quantize_bias(b, input.scale(), s_w).unwrap().value
                })
                .collect()
        });
        ConvCase {
            input,
            output,
            w_scales,
            x,
            w,
            bias,
        }
    }

    /// PyTorch's conv2d in f64 on NCHW / OIHW, with an explicitly zero-padded input.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_oracle_nchw(
        x: &[f64],
        [n, c, h, w]: [usize; 4],
        wt: &[f64],
        bias: &[f64],
        out_c: usize,
        (kh, kw): (usize, usize),
        (sh, sw, ph, pw, dh, dw): (usize, usize, usize, usize, usize, usize),
        groups: usize,
    ) -> (Vec<f64>, [usize; 2]) {
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let mut xp = vec![0.0; n * c * hp * wp];
        for b in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        xp[((b * c + ch) * hp + y + ph) * wp + xx + pw] = x[((b * c + ch) * h + y) * w + xx];
                    }
                }
            }
        }
        let oh = (hp - (dh * (kh - 1) + 1)) / sh + 1;
        let ow = (wp - (dw * (kw - 1) + 1)) / sw + 1;
        let (cig, cog) = (c / groups, out_c / groups);
        let mut y = vec![0.0; n * out_c * oh * ow];
        for b in 0..n {
            for co in 0..out_c {
                let g = co / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias[co];
                        for ci in 0..cig {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let v =
                                        xp[((b * c + g * cig + ci) * hp + oy * sh + ky * dh) * wp + ox * sw + kx * dw];
                                    s += v * wt[((co * cig + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        y[((b * out_c + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        (y, [oh, ow])
    }

    /// Pooling oracle on NCHW in f64, one window at a time: each tap is classified as real input,
    /// padding (`[-p, in + p)`), or beyond the padding (a `ceil_mode` overhang). Max ignores padding;
    /// average divides by real taps, or by real + padding taps when `count_include_pad`.
    fn pool_oracle_nchw(
        x: &[f64],
        [n, c, h, w]: [usize; 4],
        (ah, aw): (Axis, Axis),
        [oh, ow]: [usize; 2],
        mode: Option<bool>, // None: max; Some(count_include_pad): average
    ) -> Vec<f64> {
        let class = |a: &Axis, o: usize, t: usize, len: usize| -> (Option<usize>, bool) {
            let i = (o * a.stride + t * a.dilation) as i64 - a.padding as i64;
            let in_pad = i >= -(a.padding as i64) && i < (len + a.padding) as i64;
            ((0..len as i64).contains(&i).then_some(i as usize), in_pad)
        };
        let mut y = vec![0.0; n * c * oh * ow];
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
                        for ty in 0..ah.kernel {
                            for tx in 0..aw.kernel {
                                let (ry, py) = class(&ah, oy, ty, h);
                                let (rx, px) = class(&aw, ox, tx, w);
                                if let (Some(iy), Some(ix)) = (ry, rx) {
                                    let v = x[((b * c + ch) * h + iy) * w + ix];
                                    best = best.max(v);
                                    sum += v;
                                    count += 1;
                                } else if py && px && mode == Some(true) {
                                    count += 1; // a padded real 0
                                }
                            }
                        }
                        y[((b * c + ch) * oh + oy) * ow + ox] = match mode {
                            None => best,
                            Some(_) => sum / count as f64,
                        };
                    }
                }
            }
        }
        y
    }

    fn to_nchw<T: Copy + Default>(x: &[T], nhwc: [usize; 4]) -> Vec<T> {
        let mut out = vec![T::default(); x.len()];
        nhwc_to_nchw(x, nhwc, &mut out).unwrap();
        out
    }

    fn to_nhwc<T: Copy + Default>(x: &[T], nchw: [usize; 4]) -> Vec<T> {
        let mut out = vec![T::default(); x.len()];
        nchw_to_nhwc(x, nchw, &mut out).unwrap();
        out
    }

    /// Runs qconv2d on a random case and returns (int8 result, float oracle), both NCHW.
    fn run_conv_case(geom: Conv2dGeom, act: Activation, has_bias: bool, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let g = geom;
        let cig = g.in_c / g.groups;
        let case = conv_case(seed, g.input_len(), g.out_c, g.reduction_len(), has_bias);
        let nchw = [g.batch, g.in_c, g.in_h, g.in_w];
        let oihw = [g.out_c, cig, g.h.kernel, g.w.kernel];
        // The case's data is NCHW / OIHW (PyTorch); qc's kernel gets NHWC / OHWI.
        let x_nhwc = to_nhwc(&case.x, nchw);
        let mut w_ohwi = vec![0i8; case.w.len()];
        conv_weight_oihw_to_ohwi(&case.w, oihw, &mut w_ohwi).unwrap();
        let p = QConv2d::new(g, &case.input, &case.w_scales, &case.output, act).unwrap();
        let [oh, ow] = g.out_hw().unwrap();
        let mut out = vec![0u8; g.output_len().unwrap()];
        qconv2d(&p, &x_nhwc, &w_ohwi, case.bias.as_deref(), &mut out).unwrap();
        let got = to_nchw(&out, [g.batch, oh, ow, g.out_c]);

        let xf = deq(&case.x, &case.input);
        let wf: Vec<f64> = case
            .w
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * case.w_scales[i / g.reduction_len()] as f64)
            .collect();
        let bf: Vec<f64> = (0..g.out_c)
            .map(|c| {
                let b = case.bias.as_ref().map_or(0, |b| b[c]);
                b as f64 * case.input.scale() as f64 * case.w_scales[c] as f64
            })
            .collect();
        let (y, shape) = conv2d_oracle_nchw(
            &xf,
            nchw,
            &wf,
            &bf,
            g.out_c,
            (g.h.kernel, g.w.kernel),
            (
                g.h.stride,
                g.w.stride,
                g.h.padding,
                g.w.padding,
                g.h.dilation,
                g.w.dilation,
            ),
            g.groups,
        );
        assert_eq!(shape, [oh, ow]);
        (got, requantize_oracle(&y, &case.output, act))
    }

    fn axis_strategy() -> impl Strategy<Value = Axis> {
        (1usize..=3, 1usize..=2, 0usize..=1, 1usize..=2).prop_map(|(k, s, p, d)| Axis::new(k, s, p, d))
    }

    fn pool_axis_strategy(dilated: bool) -> impl Strategy<Value = Axis> {
        (1usize..=3, 1usize..=2, 0usize..=1, 1usize..=if dilated { 2 } else { 1 })
            .prop_map(|(k, s, p, d)| Axis::new(k, s, p.min(k / 2), d))
    }

    // ----- hand-computed cases -----

    #[test]
    fn quantize_and_layouts_by_hand() {
        // NCHW [1, 2, 1, 2]: channel 0 = [0.0, 0.5], channel 1 = [1.0, -0.25]; s = 0.25, zp = 2:
        // q = rint(x · 4) + 2 = [2, 4] and [6, 1]; NHWC interleaves the channels: [2, 6, 4, 1].
        let p = qp(0.25, 2);
        let x = [0.0, 0.5, 1.0, -0.25];
        let mut q = [0u8; 4];
        quantize_nchw_to_nhwc(&x, [1, 2, 1, 2], &p, &mut q).unwrap();
        assert_eq!(q, [2, 6, 4, 1]);
        let mut back = [0f32; 4];
        dequantize_nhwc_to_nchw(&q, [1, 1, 2, 2], &p, &mut back).unwrap();
        assert_eq!(back, x);
        let mut flat = [0u8; 4];
        quantize_u8(&x, &p, &mut flat).unwrap();
        assert_eq!(flat, [2, 4, 6, 1]);
        let mut f = [0f32; 4];
        dequantize_u8(&flat, &p, &mut f).unwrap();
        assert_eq!(f, x);
        // Saturation and NaN: 1e9 → 255, -1e9 → 0, NaN → zp.
        quantize_nchw_to_nhwc(&[1e9, -1e9, f32::NAN, 0.0], [1, 1, 2, 2], &p, &mut q).unwrap();
        assert_eq!(q, [255, 0, 2, 2]);
        // Errors: lengths, a signed range into u8.
        assert!(quantize_nchw_to_nhwc(&x, [1, 2, 2, 2], &p, &mut q).is_err());
        let s = QParams::new(0.25, 0, QRange::I8).unwrap();
        assert!(quantize_nchw_to_nhwc(&x, [1, 2, 1, 2], &s, &mut q).is_err());
        assert!(quantize_u8(&x, &s, &mut q).is_err());
        // OIHW [2, 1, 1, 2] → OHWI [2, 1, 2, 1] (I = 1: unchanged); [1, 2, 1, 1] → [1, 1, 1, 2].
        let mut w = [0i8; 4];
        conv_weight_oihw_to_ohwi(&[1i8, 2, 3, 4], [2, 1, 1, 2], &mut w).unwrap();
        assert_eq!(w, [1, 2, 3, 4]);
        let mut w2 = [0i8; 2];
        conv_weight_oihw_to_ohwi(&[5i8, 6], [1, 2, 1, 1], &mut w2).unwrap();
        assert_eq!(w2, [5, 6]);
    }

    #[test]
    fn quantize_nchw_equals_transpose_then_quantize() {
        let mut rng = SplitMix64::new(3);
        let shape = [2, 3, 4, 5];
        let x: Vec<f32> = (0..120).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let p = qp(0.021, 117);
        let mut a = vec![0u8; 120];
        quantize_nchw_to_nhwc(&x, shape, &p, &mut a).unwrap();
        let mut b = vec![0u8; 120];
        quantize_u8(&to_nhwc(&x, shape), &p, &mut b).unwrap();
        assert_eq!(a, b);
        let mut fa = vec![0f32; 120];
        dequantize_nhwc_to_nchw(&a, [2, 4, 5, 3], &p, &mut fa).unwrap();
        let mut fb = vec![0f32; 120];
        dequantize_u8(&a, &p, &mut fb).unwrap();
        assert_eq!(fa, to_nchw(&fb, [2, 4, 5, 3]));
    }

    /// Input 1×3×3×1, codes 1..=9 with zp 1 (real values ∝ 0..=8):
    /// ```text
    /// 0 1 2
    /// 3 4 5
    /// 6 7 8
    /// ```
    fn three_by_three() -> Vec<u8> {
        (1..=9).collect()
    }

    fn conv_geom(in_hw: [usize; 2], c: [usize; 2], h: Axis, w: Axis, groups: usize) -> Conv2dGeom {
        Conv2dGeom {
            batch: 1,
            in_h: in_hw[0],
            in_w: in_hw[1],
            in_c: c[0],
            out_c: c[1],
            h,
            w,
            groups,
        }
    }

    #[test]
    fn qconv2d_by_hand() {
        let x = three_by_three();
        let ones = [1i8; 4];
        // 2×2 kernel of ones, stride 1: window sums 0+1+3+4 = 8, 12, 20, 24; M = 0.5, zp 10:
        // 4, 6, 10, 12 → 14, 16, 20, 22.
        let a = Axis::new(2, 1, 0, 1);
        let p = QConv2d {
            geom: conv_geom([3, 3], [1, 1], a, a, 1),
            input_zero_point: 1,
            requant: vec![rq(0.5, 10)],
        };
        let mut out = [0u8; 4];
        qconv2d(&p, &x, &ones, None, &mut out).unwrap();
        assert_eq!(out, [14, 16, 20, 22]);
        // Padding 1, stride 2: windows start at -1 and 1. Padded taps read zp (real 0):
        // (-1,-1): only (0,0) = 0 → 0 → 10; (-1,1): 1+2 = 3 → 1.5 → 2 (half-up) → 12;
        // (1,-1): 3+6 = 9 → 4.5 → 5 → 15; (1,1): 4+5+7+8 = 24 → 12 → 22.
        let a = Axis::new(2, 2, 1, 1);
        let p = QConv2d {
            geom: conv_geom([3, 3], [1, 1], a, a, 1),
            ..p
        };
        qconv2d(&p, &x, &ones, None, &mut out).unwrap();
        assert_eq!(out, [10, 12, 15, 22]);
        // Bias -4 (acc units): 0-4, 3-4, 9-4, 24-4 → -2, -0.5 → 0 (half-up), 2.5 → 3, 10 → 8, 10, 13, 20.
        qconv2d(&p, &x, &ones, Some(&[-4]), &mut out).unwrap();
        assert_eq!(out, [8, 10, 13, 20]);
        // Dilation 2 on the 3×3 input, 2×2 kernel [[1, -1], [-1, 1]]: one output,
        // x00 - x02 - x20 + x22 = 0 - 2 - 6 + 8 = 0 → zp 10. With weights [[1, 0], [0, 2]]: 0 + 16 = 16 → 18.
        let a = Axis::new(2, 1, 0, 2);
        let p = QConv2d {
            geom: conv_geom([3, 3], [1, 1], a, a, 1),
            ..p
        };
        let mut one = [0u8; 1];
        qconv2d(&p, &x, &[1, -1, -1, 1], None, &mut one).unwrap();
        assert_eq!(one, [10]);
        qconv2d(&p, &x, &[1, 0, 0, 2], None, &mut one).unwrap();
        assert_eq!(one, [18]);
    }

    #[test]
    fn qconv2d_groups_and_depthwise_by_hand() {
        // One pixel, 4 input channels [zp+1, zp+2, zp+3, zp+4] with zp = 100, 1×1 kernel.
        let x = [101u8, 102, 103, 104];
        let a = Axis::new(1, 1, 0, 1);
        // groups 2, 2 outputs per group: group 0 reads channels 0,1, group 1 reads 2,3.
        // Weights [Cout=4, 1, 1, 2]: co0 [1, 1] → 3; co1 [1, -1] → -1; co2 [2, 0] → 6; co3 [0, -3] → -12.
        let p = QConv2d {
            geom: conv_geom([1, 1], [4, 4], a, a, 2),
            input_zero_point: 100,
            requant: vec![rq(1.0, 50); 4],
        };
        let mut out = [0u8; 4];
        qconv2d(&p, &x, &[1, 1, 1, -1, 2, 0, 0, -3], None, &mut out).unwrap();
        assert_eq!(out, [53, 49, 56, 38]);
        // Depthwise (groups = Cin = 4, multiplier 1), weights [2, -3, 1, 127]: 2, -6, 3, 508.
        // The last saturates at 255; ReLU on the second clamps to zp = 50.
        let mut r = vec![rq(1.0, 50); 4];
        r[1] = r[1].with_relu();
        let p = QConv2d {
            geom: conv_geom([1, 1], [4, 4], a, a, 4),
            requant: r,
            ..p
        };
        qconv2d(&p, &x, &[2, -3, 1, 127], None, &mut out).unwrap();
        assert_eq!(out, [52, 50, 53, 255]);
        // Depthwise with multiplier 2 (Cout = 8): co 2c, 2c+1 read channel c.
        let p = QConv2d {
            geom: conv_geom([1, 1], [4, 8], a, a, 4),
            input_zero_point: 100,
            requant: vec![rq(1.0, 50); 8],
        };
        let mut out = [0u8; 8];
        qconv2d(&p, &x, &[1, -1, 1, -1, 1, -1, 1, -1], None, &mut out).unwrap();
        assert_eq!(out, [51, 49, 52, 48, 53, 47, 54, 46]);
    }

    #[test]
    fn qconv1d_by_hand() {
        // NLC [1, 5, 1] codes 1..=5, zp 0; kernel 2 with dilation 2, weights [1, -1]:
        // x[i] - x[i+2] = -2 for i = 0, 1, 2. M = 1, zp 100 → 98; with ReLU → 100.
        let x = [1u8, 2, 3, 4, 5];
        let geom = Conv2dGeom::conv1d(1, 5, 1, 1, Axis::new(2, 1, 0, 2), 1);
        let mut p = QConv2d {
            geom,
            input_zero_point: 0,
            requant: vec![rq(1.0, 100)],
        };
        let mut out = [0u8; 3];
        qconv1d(&p, &x, &[1, -1], None, &mut out).unwrap();
        assert_eq!(out, [98; 3]);
        p.requant[0] = p.requant[0].with_relu();
        qconv1d(&p, &x, &[1, -1], None, &mut out).unwrap();
        assert_eq!(out, [100; 3]);
        // ReLU6 with s_out = 0.5, zp 3 clamps to [3, 3 + rint(6 / 0.5)] = [3, 15]. Kernel 1, weight 4,
        // M = 1: 4, 8, 12, 16, 20 → 7, 11, 15, 15, 15.
        let out_p = qp(0.5, 3);
        let r = Activation::Relu6.fuse(rq(1.0, 3), &out_p);
        let p = QConv2d {
            geom: Conv2dGeom::conv1d(1, 5, 1, 1, Axis::new(1, 1, 0, 1), 1),
            input_zero_point: 0,
            requant: vec![r],
        };
        let mut out = [0u8; 5];
        qconv1d(&p, &x, &[4], None, &mut out).unwrap();
        assert_eq!(out, [7, 11, 15, 15, 15]);
        // A 2-D geometry is refused.
        let p2 = QConv2d {
            geom: conv_geom([3, 3], [1, 1], Axis::new(2, 1, 0, 1), Axis::new(2, 1, 0, 1), 1),
            ..p
        };
        assert!(qconv1d(&p2, &three_by_three(), &[1; 4], None, &mut [0u8; 4]).is_err());
    }

    #[test]
    fn qlinear_by_hand() {
        // x = [3, 5] with zp 1 → [2, 4]. Rows: [1, 2] + bias 1 → 11; [-1, 0] → -2 (clamps to 0);
        // [127, 127] → 762 (saturates at 255). M = 1, zp 0.
        let p = linear_params(1, 2, 1, vec![rq(1.0, 0); 3]);
        let mut out = [0u8; 3];
        qlinear(&p, &[3, 5], &[1, 2, -1, 0, 127, 127], Some(&[1, 0, 0]), &mut out).unwrap();
        assert_eq!(out, [11, 0, 255]);
        // Two input rows [4, 4], [1, 10] with zp 1 → [3, 3], [0, 9]; weight rows [1, 1], [-1, 1]; M = 0.25,
        // zp 8: row 0: 6 → 1.5 → 2 (half-up) → 10, 0 → 8; row 1: 9 → 2.25 → 2 → 10, 9 → 10.
        let p = linear_params(2, 2, 1, vec![rq(0.25, 8); 2]);
        let mut out = [0u8; 4];
        qlinear(&p, &[4, 4, 1, 10], &[1, 1, -1, 1], None, &mut out).unwrap();
        assert_eq!(out, [10, 8, 10, 10]);
        // Shape errors.
        assert!(qlinear(&p, &[4, 4, 1], &[1, 1, -1, 1], None, &mut out).is_err());
        assert!(qlinear(&p, &[4, 4, 1, 10], &[1, 1, -1, 1], Some(&[0]), &mut out).is_err());
    }

    #[test]
    fn qadd_by_hand() {
        // a: s 0.5, zp 0; b: s 0.25, zp 4; out: s 1, zp 0.
        let (a, b, o) = (qp(0.5, 0), qp(0.25, 4), qp(1.0, 0));
        let add = QAdd::new(&a, &b, &o).unwrap();
        let mut out = [0u8; 3];
        // 4 → 2.0, 10 → 1.5: 3.5 → 4. 2 → 1.0, 10 → 1.5: 2.5 → 3 (half-up; PyTorch's rint gives 2).
        // 255 → 127.5, 255 → 62.75: 190.25 → 190.
        qadd(&add, &[4, 2, 255], &[10, 10, 255], &mut out).unwrap();
        assert_eq!(out, [4, 3, 190]);
        // With zp 100 and ReLU: 0 + (0 - 4)·0.25 = -1 → 99, ReLU → 100.
        let o2 = qp(1.0, 100);
        let add = QAdd::new(&a, &b, &o2).unwrap();
        let mut one = [0u8; 1];
        qadd(&add, &[0], &[0], &mut one).unwrap();
        assert_eq!(one, [99]);
        qadd(&add.with_relu(), &[0], &[0], &mut one).unwrap();
        assert_eq!(one, [100]);
        assert!(qadd(&add, &[0, 1], &[0], &mut one).is_err());
    }

    fn pool_geom(in_hw: [usize; 2], channels: usize, a: Axis, ceil_mode: bool) -> Pool2dGeom {
        Pool2dGeom {
            batch: 1,
            in_h: in_hw[0],
            in_w: in_hw[1],
            channels,
            h: a,
            w: a,
            ceil_mode,
        }
    }

    #[test]
    fn qmaxpool_by_hand() {
        let x = three_by_three(); // codes 1..=9
        let mut out = [0u8; 4];
        // k2 s2, ceil_mode: windows {1,2,4,5}, {3,6}, {7,8}, {9} → 5, 6, 8, 9.
        qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 0, 1), true), &x, &mut out).unwrap();
        assert_eq!(out, [5, 6, 8, 9]);
        // Without ceil_mode: one window {1,2,4,5} → 5.
        let mut one = [0u8; 1];
        qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 0, 1), false), &x, &mut one).unwrap();
        assert_eq!(one, [5]);
        // Padding 1 never wins: windows {1}, {2,3}, {4,7}, {5,6,8,9} → 1, 3, 7, 9.
        qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 1, 1), false), &x, &mut out).unwrap();
        assert_eq!(out, [1, 3, 7, 9]);
        // Dilation 2, k2, s1 on 3×3: taps (0,0), (0,2), (2,0), (2,2) → max(1, 3, 7, 9) = 9.
        qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 1, 0, 2), false), &x, &mut one).unwrap();
        assert_eq!(one, [9]);
        // Two channels stay apart: NLC [1, 4, 2] = [(1, 9), (2, 8), (3, 7), (4, 6)], k2 s2 → (2, 9), (4, 7).
        let g = Pool2dGeom::pool1d(1, 4, 2, Axis::new(2, 2, 0, 1), false);
        qmaxpool1d(&g, &[1, 9, 2, 8, 3, 7, 4, 6], &mut out).unwrap();
        assert_eq!(out, [2, 9, 4, 7]);
    }

    #[test]
    fn qavgpool_by_hand() {
        let x = three_by_three(); // zp 1 → real ∝ 0..=8
        let mut out = [0u8; 4];
        let avg = |a: Axis, ceil: bool, include: bool| QAvgPool2d {
            geom: pool_geom([3, 3], 1, a, ceil),
            count_include_pad: include,
            zero_point: 1,
            range: QRange::U8,
        };
        // k2 s2 p1, count_include_pad: windows (centred) {0}/4 = 0 → 1; {1,2}/4 = 0.75 → 1 → 2;
        // {3,6}/4 = 2.25 → 2 → 3; {4,5,7,8}/4 = 6 → 7.
        qavgpool2d(&avg(Axis::new(2, 2, 1, 1), false, true), &x, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 7]);
        // Same without counting padding: 0/1 → 1; 3/2 = 1.5 → 2 (even) → 3; 9/2 = 4.5 → 4 (even) → 5; 6 → 7.
        qavgpool2d(&avg(Axis::new(2, 2, 1, 1), false, false), &x, &mut out).unwrap();
        assert_eq!(out, [1, 3, 5, 7]);
        // ceil_mode k2 s2 p0: the overhang beyond the input never counts, even with
        // count_include_pad: {0,1,3,4}/4 = 2 → 3; {2,5}/2 = 3.5 → 4 → 5; {6,7}/2 = 6.5 → 6 → 7; {8}/1 → 9.
        qavgpool2d(&avg(Axis::new(2, 2, 0, 1), true, true), &x, &mut out).unwrap();
        assert_eq!(out, [3, 5, 7, 9]);
        // Dilation is refused.
        assert!(qavgpool2d(&avg(Axis::new(2, 1, 0, 2), false, true), &x, &mut [0u8; 1]).is_err());
        // 1-D, NLC [1, 4, 1] codes [10, 11, 13, 20] with zp 10 (centred 0, 1, 3, 10); k3 s1 p1,
        // padding counted: {pad, 0, 1}/3 = 0.33 → 0 → 10; {0, 1, 3}/3 = 1.33 → 1 → 11;
        // {1, 3, 10}/3 = 4.67 → 5 → 15; {3, 10, pad}/3 = 4.33 → 4 → 14.
        let p = QAvgPool2d {
            geom: Pool2dGeom::pool1d(1, 4, 1, Axis::new(3, 1, 1, 1), false),
            count_include_pad: true,
            zero_point: 10,
            range: QRange::U8,
        };
        qavgpool1d(&p, &[10, 11, 13, 20], &mut out).unwrap();
        assert_eq!(out, [10, 11, 15, 14]);
    }

    #[test]
    fn qglobal_avgpool_by_hand() {
        // NHWC [1, 2, 2, 2]: channel 0 codes [1, 2, 3, 5], channel 1 [0, 0, 0, 255]; zp 1:
        // c0: (0+1+2+4)/4 = 1.75 → 2 → 3; c1: (-1-1-1+254)/4 = 62.75 → 63 → 64.
        let p = QGlobalAvgPool {
            batch: 1,
            spatial: 4,
            channels: 2,
            zero_point: 1,
            range: QRange::U8,
        };
        let mut out = [0u8; 2];
        qglobal_avgpool(&p, &[1, 0, 2, 0, 3, 0, 5, 255], &mut out).unwrap();
        assert_eq!(out, [3, 64]);
        // A tie: (0 + 1)/2 = 0.5 → 0 (even) → zp.
        let p = QGlobalAvgPool {
            spatial: 2,
            channels: 1,
            ..p
        };
        let mut one = [0u8; 1];
        qglobal_avgpool(&p, &[1, 2], &mut one).unwrap();
        assert_eq!(one, [1]);
        let p0 = QGlobalAvgPool { spatial: 0, ..p };
        assert!(qglobal_avgpool(&p0, &[], &mut one).is_err());
    }

    #[test]
    fn qconcat_by_hand() {
        // a: s 0.5, zp 0, codes [2, 4] (1.0, 2.0); b: s 1, zp 10, code 11 (1.0); out: s 0.25, zp 1:
        // a → 4 + 1 = 5, 8 + 1 = 9; b → 4 + 1 = 5. Two pixels.
        let (a, b, o) = (qp(0.5, 0), qp(1.0, 10), qp(0.25, 1));
        let p = QConcat {
            outer: 2,
            parts: vec![ConcatPart::new(2, &a, &o).unwrap(), ConcatPart::new(1, &b, &o).unwrap()],
        };
        let mut out = [0u8; 6];
        qconcat_channels(&p, &[&[2, 4, 0, 255], &[11, 0]], &mut out).unwrap();
        // Second pixel: a 0 → 1, 255 → 127.5/0.25 = 510 → 255; b 0 → -10/0.25 = -40 → 0.
        assert_eq!(out, [5, 9, 5, 1, 255, 0]);
        // Ties round half-up: a code 1 (0.5) into s 1, zp 7 → 0.5 → 1 → 8; code 3 (1.5) → 2 → 9.
        let p = QConcat {
            outer: 1,
            parts: vec![ConcatPart::new(2, &a, &qp(1.0, 7)).unwrap()],
        };
        let mut two = [0u8; 2];
        qconcat_channels(&p, &[&[1, 3]], &mut two).unwrap();
        assert_eq!(two, [8, 9]);
        assert!(qconcat_channels(&p, &[&[1, 3], &[1]], &mut two).is_err());
    }

    #[test]
    fn flatten_by_hand() {
        // NHWC [1, 1, 2, 3]: pixels (a0 b0 c0) (a1 b1 c1) = [0, 1, 2, 10, 11, 12].
        // PyTorch flattens NCHW: a0 a1 b0 b1 c0 c1 = [0, 10, 1, 11, 2, 12].
        let x = [0u8, 1, 2, 10, 11, 12];
        let mut out = [0u8; 6];
        flatten_nhwc_to_torch_order(&x, [1, 1, 2, 3], &mut out).unwrap();
        assert_eq!(out, [0, 10, 1, 11, 2, 12]);
        // Weight columns in PyTorch's (c, w) order [c0w0 c0w1 c1w0 c1w1 c2w0 c2w1] go to (w, c).
        let w = [1i8, 2, 3, 4, 5, 6];
        let mut w2 = [0i8; 6];
        linear_weight_torch_to_nhwc_flatten(&w, 1, [3, 1, 2], &mut w2).unwrap();
        assert_eq!(w2, [1, 3, 5, 2, 4, 6]);
    }

    #[test]
    fn flatten_then_linear_matches_pytorch_order_both_ways() {
        let mut rng = SplitMix64::new(11);
        let ([n, h, w, c], m) = ([2, 3, 2, 4], 5);
        let k = h * w * c;
        let x = data_u8(&mut rng, n * k, 37);
        let wt = data_i8(&mut rng, m * k); // PyTorch order (c, h, w) per row
        let p = linear_params(n, k, 37, vec![rq(1.0 / 512.0, 128); m]);
        // Reference: data into PyTorch's order, PyTorch's weights.
        let mut flat = vec![0u8; x.len()];
        flatten_nhwc_to_torch_order(&x, [n, h, w, c], &mut flat).unwrap();
        let mut a = vec![0u8; n * m];
        qlinear(&p, &flat, &wt, None, &mut a).unwrap();
        // Permuted weights on the NHWC data as is.
        let mut w2 = vec![0i8; wt.len()];
        linear_weight_torch_to_nhwc_flatten(&wt, m, [c, h, w], &mut w2).unwrap();
        let mut b = vec![0u8; n * m];
        qlinear(&p, &x, &w2, None, &mut b).unwrap();
        assert_eq!(a, b);
        // And a plain reshape with PyTorch's weights is (in general) wrong.
        let mut wrong = vec![0u8; n * m];
        qlinear(&p, &x, &wt, None, &mut wrong).unwrap();
        assert_ne!(a, wrong);
    }

    #[test]
    fn saturation_extremes() {
        // 3×3 conv over 8 channels, every code at an extreme: acc = ±72·255·128 saturates both ways.
        let a = Axis::new(3, 1, 0, 1);
        let geom = conv_geom([3, 3], [8, 2], a, a, 1);
        let p = QConv2d {
            geom,
            input_zero_point: 0,
            requant: vec![rq(1e-3, 128); 2],
        };
        let x = vec![255u8; 72];
        let mut w = vec![127i8; 72];
        w.extend(vec![-128i8; 72]);
        let mut out = [0u8; 2];
        qconv2d(&p, &x, &w, None, &mut out).unwrap();
        assert_eq!(out, [255, 0]);
        // Zero point 255 and codes 0: (0 - 255)·(-128) positive.
        let p = QConv2d {
            input_zero_point: 255,
            ..p
        };
        qconv2d(&p, &[0u8; 72], &w, None, &mut out).unwrap();
        assert_eq!(out, [0, 255]);
    }

    #[test]
    fn accumulator_at_quant_bound_is_exact() {
        // K = 65793 is the largest K with accumulator_fits for u8 × i8 and zero bias: the worst
        // case |x - zp|·|w| = 255·128 gives 65793 · 32640 = 2147483520 <= 2^31 - 1.
        let k = 65793usize;
        assert!(accumulator_fits(k as u64, QRange::U8, 255, QRange::I8, 0));
        assert!(!accumulator_fits(k as u64 + 1, QRange::U8, 255, QRange::I8, 0));
        let m = 2f64.powi(-24);
        let x0 = vec![0u8; k];
        let x255 = vec![255u8; k];
        let w = vec![-128i8; k];
        let mut out = [0u8; 1];
        // zp 255, codes 0: acc = +2147483520 → ·2^-24 = 127.99999 → 128.
        let p = linear_params(1, k, 255, vec![rq(m, 0)]);
        qlinear(&p, &x0, &w, None, &mut out).unwrap();
        assert_eq!(out[0] as i32, rq(m, 0).apply(2_147_483_520));
        assert_eq!(out, [128]);
        // zp 0, codes 255: acc = -2147483520 → -128, out zp 255 → 127.
        let p = linear_params(1, k, 0, vec![rq(m, 255)]);
        qlinear(&p, &x255, &w, None, &mut out).unwrap();
        assert_eq!(out, [127]);
        // The bias may use up the last 127; one more is refused, as is K + 1.
        let p = linear_params(1, k, 255, vec![rq(m, 0)]);
        qlinear(&p, &x0, &w, Some(&[127]), &mut out).unwrap();
        assert_eq!(out[0] as i32, rq(m, 0).apply(i32::MAX));
        assert!(matches!(
            qlinear(&p, &x0, &w, Some(&[128]), &mut out),
            Err(KernelError::AccumulatorMayOverflow { .. })
        ));
        let p1 = linear_params(1, k + 1, 255, vec![rq(m, 0)]);
        assert!(matches!(
            qlinear(&p1, &[0u8; 65794], &[-128i8; 65794], None, &mut out),
            Err(KernelError::AccumulatorMayOverflow { .. })
        ));
        // A conv reducing over 3·3·7310 = 65790 terms, worst case everywhere: exact too.
        let a = Axis::new(3, 1, 0, 1);
        let geom = conv_geom([3, 3], [7310, 1], a, a, 1);
        let p = QConv2d {
            geom,
            input_zero_point: 255,
            requant: vec![rq(m, 0)],
        };
        qconv2d(&p, &vec![0u8; 65790], &vec![-128i8; 65790], None, &mut out).unwrap();
        assert_eq!(out[0] as i32, rq(m, 0).apply(65790 * 32640));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn prop_qconv2d_within_one_step_of_float(
            batch in 1usize..=2, groups in 1usize..=3, cig in 1usize..=3, cog in 1usize..=3,
            in_h in 1usize..=7, in_w in 1usize..=7, ah in axis_strategy(), aw in axis_strategy(),
            act in act_strategy(), has_bias: bool, seed: u64,
        ) {
            let geom = conv_geom([in_h, in_w], [groups * cig, groups * cog], ah, aw, groups);
            let geom = Conv2dGeom { batch, ..geom };
            prop_assume!(geom.out_hw().is_ok());
            let (got, want) = run_conv_case(geom, act, has_bias, seed);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_depthwise_within_one_step_of_float(
            c in 1usize..=9, mult in 1usize..=2, in_h in 1usize..=7, in_w in 1usize..=7,
            ah in axis_strategy(), aw in axis_strategy(), act in act_strategy(), seed: u64,
        ) {
            let geom = conv_geom([in_h, in_w], [c, c * mult], ah, aw, c);
            prop_assume!(geom.out_hw().is_ok());
            let (got, want) = run_conv_case(geom, act, true, seed);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_qconv1d_is_qconv2d_with_h1_and_within_one_step(
            batch in 1usize..=2, groups in 1usize..=3, cig in 1usize..=3, cog in 1usize..=3,
            len in 1usize..=7, a in axis_strategy(), act in act_strategy(), seed: u64,
        ) {
            let geom = Conv2dGeom::conv1d(batch, len, groups * cig, groups * cog, a, groups);
            prop_assume!(geom.out_hw().is_ok());
            let (got, want) = run_conv_case(geom, act, true, seed);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS));
            // qconv1d gives the same bits as qconv2d (it is qconv2d).
            let case = conv_case(seed, geom.input_len(), geom.out_c, geom.reduction_len(), true);
            let p = QConv2d::new(geom, &case.input, &case.w_scales, &case.output, act).unwrap();
            let (mut o1, mut o2) = (vec![0u8; geom.output_len().unwrap()], vec![0u8; geom.output_len().unwrap()]);
            qconv1d(&p, &case.x, &case.w, case.bias.as_deref(), &mut o1).unwrap();
            qconv2d(&p, &case.x, &case.w, case.bias.as_deref(), &mut o2).unwrap();
            prop_assert_eq!(o1, o2);
        }

        #[test]
        fn prop_qlinear_within_one_step_of_float(
            batch in 1usize..=3, k in 1usize..=64, m in 1usize..=9, act in act_strategy(), has_bias: bool, seed: u64,
        ) {
            let case = conv_case(seed, batch * k, m, k, has_bias);
            let p = QLinear::new(batch, k, &case.input, &case.w_scales, &case.output, act).unwrap();
            let mut got = vec![0u8; batch * m];
            qlinear(&p, &case.x, &case.w, case.bias.as_deref(), &mut got).unwrap();
            let xf = deq(&case.x, &case.input);
            let mut y = vec![0.0; batch * m];
            for n in 0..batch {
                for j in 0..m {
                    let sw = case.w_scales[j] as f64;
                    let mut s = case.bias.as_ref().map_or(0, |b| b[j]) as f64 * case.input.scale() as f64 * sw;
                    for i in 0..k {
                        s += xf[n * k + i] * case.w[j * k + i] as f64 * sw;
                    }
                    y[n * m + j] = s;
                }
            }
            let want = requantize_oracle(&y, &case.output, act);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_qlinear_equals_1x1_conv(batch in 1usize..=2, k in 1usize..=9, m in 1usize..=9, seed: u64) {
            let case = conv_case(seed, batch * k, m, k, true);
            let lp = QLinear::new(batch, k, &case.input, &case.w_scales, &case.output, Activation::Relu).unwrap();
            let a = Axis::new(1, 1, 0, 1);
            let geom = Conv2dGeom { batch, ..conv_geom([1, 1], [k, m], a, a, 1) };
            let cp = QConv2d::new(geom, &case.input, &case.w_scales, &case.output, Activation::Relu).unwrap();
            let (mut o1, mut o2) = (vec![0u8; batch * m], vec![0u8; batch * m]);
            qlinear(&lp, &case.x, &case.w, case.bias.as_deref(), &mut o1).unwrap();
            qconv2d(&cp, &case.x, &case.w, case.bias.as_deref(), &mut o2).unwrap();
            prop_assert_eq!(o1, o2);
        }

        #[test]
        fn prop_accumulator_never_wraps_up_to_bound(k in 1usize..=65793, zp in prop_oneof![Just(0), Just(255), 0i32..256], seed: u64) {
            // Worst-case data for this zero point: the code farthest from zp, weight -128.
            prop_assume!(accumulator_fits(k as u64, QRange::U8, zp, QRange::I8, 0));
            let mut rng = SplitMix64::new(seed);
            let far = if zp < 128 { 255u8 } else { 0 };
            let x: Vec<u8> = (0..k).map(|_| if rand_below(&mut rng, 4) == 0 { rand_below(&mut rng, 256) as u8 } else { far }).collect();
            let w: Vec<i8> = (0..k).map(|_| if rand_below(&mut rng, 4) == 0 { rand_below(&mut rng, 256) as u8 as i8 } else { -128 }).collect();
            let exact: i64 = x.iter().zip(&w).map(|(&a, &b)| (a as i64 - zp as i64) * b as i64).sum();
            prop_assert!(exact.abs() <= i32::MAX as i64);
            let r = rq(2f64.powi(-24), 128);
            let p = linear_params(1, k, zp, vec![r]);
            let mut out = [0u8; 1];
            qlinear(&p, &x, &w, None, &mut out).unwrap();
            prop_assert_eq!(out[0] as i32, r.apply(exact as i32));
        }

        #[test]
        fn prop_qadd_within_one_step_of_float(
            len in 1usize..=64, relu: bool, seed: u64,
        ) {
            let mut rng = SplitMix64::new(seed);
            let a = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
            let b = qp(a.scale() * log_uniform(&mut rng, 1.0 / 64.0, 64.0), zero_point(&mut rng));
            let o = qp(a.scale().max(b.scale()) * log_uniform(&mut rng, 0.125, 8.0), zero_point(&mut rng));
            let add = QAdd::new(&a, &b, &o).unwrap();
            let add = if relu { add.with_relu() } else { add };
            let qa = data_u8(&mut rng, len, a.zero_point());
            let qb = data_u8(&mut rng, len, b.zero_point());
            let mut got = vec![0u8; len];
            qadd(&add, &qa, &qb, &mut got).unwrap();
            let y: Vec<f64> = deq(&qa, &a).iter().zip(deq(&qb, &b)).map(|(x, y)| x + y).collect();
            let want = requantize_oracle(&y, &o, if relu { Activation::Relu } else { Activation::None });
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_qmaxpool2d_equals_float(
            batch in 1usize..=2, c in 1usize..=9, in_h in 1usize..=7, in_w in 1usize..=7,
            ah in pool_axis_strategy(true), aw in pool_axis_strategy(true), ceil_mode: bool, one_d: bool, seed: u64,
        ) {
            let g = if one_d {
                Pool2dGeom::pool1d(batch, in_w, c, aw, ceil_mode)
            } else {
                Pool2dGeom { batch, ..pool_geom([in_h, in_w], c, ah, ceil_mode) }
            };
            let g = Pool2dGeom { w: aw, ..g };
            prop_assume!(g.out_hw().is_ok());
            let mut rng = SplitMix64::new(seed);
            let p = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
            let x = data_u8(&mut rng, g.input_len(), p.zero_point());
            let [oh, ow] = g.out_hw().unwrap();
            let mut out = vec![0u8; g.output_len().unwrap()];
            if one_d {
                qmaxpool1d(&g, &x, &mut out).unwrap();
            } else {
                qmaxpool2d(&g, &x, &mut out).unwrap();
            }
            let nchw = [g.batch, c, g.in_h, g.in_w];
            let y = pool_oracle_nchw(&deq(&to_nchw(&x, [g.batch, g.in_h, g.in_w, c]), &p), nchw, (g.h, g.w), [oh, ow], None);
            let want = requantize_oracle(&y, &p, Activation::None);
            // Max commutes with the monotonic dequantization: exact, not just within a step.
            prop_assert_eq!(to_nchw(&out, [g.batch, oh, ow, c]), want);
        }

        #[test]
        fn prop_qavgpool2d_within_one_step_of_float(
            batch in 1usize..=2, c in 1usize..=9, in_h in 1usize..=7, in_w in 1usize..=7,
            ah in pool_axis_strategy(false), aw in pool_axis_strategy(false), ceil_mode: bool,
            count_include_pad: bool, one_d: bool, seed: u64,
        ) {
            let g = if one_d {
                Pool2dGeom::pool1d(batch, in_w, c, aw, ceil_mode)
            } else {
                Pool2dGeom { batch, ..pool_geom([in_h, in_w], c, ah, ceil_mode) }
            };
            let g = Pool2dGeom { w: aw, ..g };
            prop_assume!(g.out_hw().is_ok());
            let mut rng = SplitMix64::new(seed);
            let ip = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
            let x = data_u8(&mut rng, g.input_len(), ip.zero_point());
            let p = QAvgPool2d::new(g, count_include_pad, &ip);
            let [oh, ow] = g.out_hw().unwrap();
            let mut out = vec![0u8; g.output_len().unwrap()];
            if one_d {
                qavgpool1d(&p, &x, &mut out).unwrap();
            } else {
                qavgpool2d(&p, &x, &mut out).unwrap();
            }
            let nchw = [g.batch, c, g.in_h, g.in_w];
            let y = pool_oracle_nchw(&deq(&to_nchw(&x, [g.batch, g.in_h, g.in_w, c]), &ip), nchw, (g.h, g.w), [oh, ow], Some(count_include_pad));
            let want = requantize_oracle(&y, &ip, Activation::None);
            let got = to_nchw(&out, [g.batch, oh, ow, c]);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_qglobal_avgpool_within_one_step_of_float(
            batch in 1usize..=2, c in 1usize..=9, h in 1usize..=7, w in 1usize..=7, seed: u64,
        ) {
            let mut rng = SplitMix64::new(seed);
            let ip = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
            let x = data_u8(&mut rng, batch * h * w * c, ip.zero_point());
            let p = QGlobalAvgPool::new(batch, h * w, c, &ip);
            let mut got = vec![0u8; batch * c];
            qglobal_avgpool(&p, &x, &mut got).unwrap();
            let xf = deq(&x, &ip);
            let y: Vec<f64> = (0..batch * c)
                .map(|i| (0..h * w).map(|s| xf[((i / c) * h * w + s) * c + i % c]).sum::<f64>() / (h * w) as f64)
                .collect();
            let want = requantize_oracle(&y, &ip, Activation::None);
            prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
        }

        #[test]
        fn prop_qconcat_within_one_step_of_float(
            outer in 1usize..=20, channels in prop::collection::vec(1usize..=5, 1..=4), seed: u64,
        ) {
            let mut rng = SplitMix64::new(seed);
            let o = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
            let ins: Vec<QParams> = channels
                .iter()
                .map(|_| {
                    // Sometimes exactly the output's parameters (a copy), else scales within 2^±6.
                    if rand_below(&mut rng, 4) == 0 { o } else { qp(o.scale() * log_uniform(&mut rng, 1.0 / 64.0, 64.0), zero_point(&mut rng)) }
                })
                .collect();
            let data: Vec<Vec<u8>> = channels.iter().zip(&ins).map(|(&ch, p)| data_u8(&mut rng, outer * ch, p.zero_point())).collect();
            let p = QConcat {
                outer,
                parts: channels.iter().zip(&ins).map(|(&ch, ip)| ConcatPart::new(ch, ip, &o).unwrap()).collect(),
            };
            let total = p.out_channels();
            let mut got = vec![0u8; outer * total];
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            qconcat_channels(&p, &refs, &mut got).unwrap();
            let mut c0 = 0;
            for ((&ch, ip), d) in channels.iter().zip(&ins).zip(&data) {
                for r in 0..outer {
                    let y = deq(&d[r * ch..][..ch], ip);
                    let want = requantize_oracle(&y, &o, Activation::None);
                    let g = &got[r * total + c0..][..ch];
                    prop_assert!(max_step_diff(g, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS));
                    if *ip == o {
                        prop_assert_eq!(g, &d[r * ch..][..ch]);
                    }
                }
                c0 += ch;
            }
        }
    }

    #[test]
    fn adaptive_avgpool_global_case_is_global_avgpool_and_windows_follow_pytorch() {
        let mut rng = SplitMix64::new(3);
        let ip = qp(0.05, 17);
        let (n, h, w, c) = (2, 5, 7, 3);
        let x = data_u8(&mut rng, n * h * w * c, ip.zero_point());
        let a = QAdaptiveAvgPool2d::new(n, [h, w], [1, 1], c, &ip);
        let (mut o1, mut o2) = (vec![0u8; n * c], vec![0u8; n * c]);
        qadaptive_avgpool2d(&a, &x, &mut o1).unwrap();
        qglobal_avgpool(&QGlobalAvgPool::new(n, h * w, c, &ip), &x, &mut o2).unwrap();
        assert_eq!(o1, o2);
        // 1-D [1, 5, 1] → 3 outputs: windows [0, 2), [1, 4), [3, 5) (PyTorch's start/end rule).
        let x = [10u8, 20, 30, 40, 50];
        let a = QAdaptiveAvgPool2d::new(1, [1, 5], [1, 3], 1, &qp(0.1, 0));
        let mut o = [0u8; 3];
        qadaptive_avgpool2d(&a, &x, &mut o).unwrap();
        assert_eq!(o, [15, 30, 45]);
    }

    #[test]
    fn qclamp_is_the_fake_quant_of_the_float_clamp() {
        let p = qp(0.05, 100);
        let x: Vec<u8> = (0..=255).collect();
        for act in [
            Activation::Relu,
            Activation::Relu6,
            Activation::Clamp { min: -1.0, max: 0.5 },
            Activation::None,
        ] {
            let mut out = vec![0u8; 256];
            qclamp(act, &p, &x, &mut out).unwrap();
            let y: Vec<f64> = deq(&x, &p);
            assert_eq!(out, requantize_oracle(&y, &p, act), "{act:?}");
        }
        assert!(qclamp(Activation::Clamp { min: 1.0, max: 0.0 }, &p, &x, &mut [0u8; 256]).is_err());
    }

    #[test]
    fn requant_per_channel_uses_quant_multipliers() {
        let (i, o) = (qp(0.02, 3), qp(0.1, 128));
        let rs = requant_per_channel(&i, &[0.001, 0.004], &o, Activation::None).unwrap();
        for (r, sw) in rs.iter().zip([0.001f32, 0.004]) {
            let want = Requant::from_real(crate::quant::requant_multiplier(0.02, sw, 0.1), 128, QRange::U8).unwrap();
            assert_eq!(*r, want);
        }
        // A multiplier outside quant.rs's range is an error, not a silent clamp.
        assert!(requant_per_channel(&i, &[1e-30], &o, Activation::None).is_err());
    }
}
