//! The steps other than convolution and linear layers on the selected kernels: add, quantize,
//! dequantize, pooling, clamp, concat and layout changes, large ones split over threads.

use super::isa::{detected, supported, Isa};
#[cfg(target_arch = "x86_64")]
use super::threads::SendPtr;
use crate::kernels::reference;
use crate::kernels::{
    check_len, check_range_u8, check_zp_u8, Activation, KernelError, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d,
    QConcat, QGlobalAvgPool,
};
use crate::quant::{QAdd, QParams};

/// [`reference::qadd`] on `isa`'s kernels.
pub fn qadd_with(isa: Isa, p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("second input", a.len(), b.len())?;
    check_len("output", a.len(), out.len())?;
    check_zp_u8("first input", p.a_zero_point)?;
    check_zp_u8("second input", p.b_zero_point)?;
    check_range_u8("output", p.out.qmin, p.out.qmax)?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        par_elementwise(out, |i0, o| {
            let n = o.len();
            // SAFETY: AVX2 detected; lengths and parameters checked; the chunk lies inside a, b.
            unsafe { crate::kernels::avx2::qadd(p, &a[i0..i0 + n], &b[i0..i0 + n], o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::qadd(p, a, b, out)
}

/// [`reference::qadd`], dispatched.
pub fn qadd(p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qadd_with(detected(), p, a, b, out)
}

/// [`reference::quantize_u8`] on `isa`'s kernels.
pub fn quantize_u8_with(isa: Isa, x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    check_len("output", x.len(), out.len())?;
    let r = p.range();
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() && r.qmin() >= 0 && r.qmax() <= 255 {
        par_elementwise(out, |i0, o| {
            let xs = &x[i0..i0 + o.len()];
            // SAFETY: AVX2 detected; lengths checked; the range fits u8 (so does the zero point).
            unsafe { crate::kernels::avx2::quantize_u8(xs, p.inv_scale(), p.zero_point(), r, o) };
        });
        return Ok(());
    }
    let _ = (isa, r);
    reference::quantize_u8(x, p, out)
}

/// [`reference::quantize_u8`], dispatched.
pub fn quantize_u8(x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    quantize_u8_with(detected(), x, p, out)
}

/// [`reference::dequantize_u8`] on `isa`'s kernels.
pub fn dequantize_u8_with(isa: Isa, q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    check_len("output", q.len(), out.len())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        par_elementwise(out, |i0, o| {
            let qs = &q[i0..i0 + o.len()];
            // SAFETY: AVX2 detected; lengths checked.
            unsafe { crate::kernels::avx2::dequantize_u8(qs, p.scale(), p.zero_point(), o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::dequantize_u8(q, p, out)
}

/// [`reference::dequantize_u8`], dispatched.
pub fn dequantize_u8(q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    dequantize_u8_with(detected(), q, p, out)
}

/// [`reference::qmaxpool2d`] on `isa`'s kernels.
pub fn qmaxpool2d_with(isa: Isa, g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let [oh_n, ow_n] = g.out_hw()?;
    check_len("input", g.input_len(), x.len())?;
    check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        let rows = g.batch * oh_n;
        let optr = SendPtr(out.as_mut_ptr());
        // SAFETY: AVX2 detected; geometry and lengths checked; tasks write disjoint output rows.
        let task = |r: usize| unsafe { crate::kernels::avx2::maxpool_rows(g, [oh_n, ow_n], x, optr.get(), r, r + 1) };
        if rayon::current_num_threads() > 1 && out.len() >= PAR_MIN_ELEMS && rows > 1 {
            use rayon::prelude::*;
            (0..rows).into_par_iter().for_each(task);
        } else {
            // SAFETY: as above, all rows at once.
            unsafe { crate::kernels::avx2::maxpool_rows(g, [oh_n, ow_n], x, optr.get(), 0, rows) };
        }
        return Ok(());
    }
    let _ = isa;
    reference::qmaxpool2d(g, x, out)
}

/// [`reference::qmaxpool2d`], dispatched.
pub fn qmaxpool2d(g: &Pool2dGeom, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qmaxpool2d_with(detected(), g, x, out)
}

/// [`reference::qglobal_avgpool`] on `isa`'s kernels.
pub fn qglobal_avgpool_with(isa: Isa, p: &QGlobalAvgPool, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let (s_n, c_n) = (p.spatial, p.channels);
    let checked = (1..=1 << 23).contains(&s_n)
        && c_n > 0
        && x.len() == p.batch * s_n * c_n
        && out.len() == p.batch * c_n
        && (0..=255).contains(&p.zero_point)
        && p.range.qmin() >= 0
        && p.range.qmax() <= 255;
    #[cfg(target_arch = "x86_64")]
    if checked && supported(isa).has_avx2() {
        // SAFETY: AVX2 detected; the reference's checks hold (else it reports the error).
        unsafe { crate::kernels::avx2::global_avgpool(p, x, out) };
        return Ok(());
    }
    let _ = (isa, checked);
    reference::qglobal_avgpool(p, x, out)
}

/// [`reference::qglobal_avgpool`], dispatched.
pub fn qglobal_avgpool(p: &QGlobalAvgPool, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qglobal_avgpool_with(detected(), p, x, out)
}

// ---------------------------------------------------------------------------------------------
// Layout changes, and elementwise kernels split over threads
// ---------------------------------------------------------------------------------------------

/// Below this many elements an elementwise kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Runs `f(i0, chunk)` over consecutive chunks `[i0, i0 + chunk.len())` of `out` (rayon's threads
/// for large outputs); every output element is computed by `f` alone, so the split never changes
/// a result.
fn par_elementwise<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let threads = rayon::current_num_threads();
    if threads > 1 && out.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let per = out.len().div_ceil(4 * threads).max(PAR_MIN_ELEMS / 4);
        out.par_chunks_mut(per).enumerate().for_each(|(i, c)| f(i * per, c));
    } else {
        f(0, out);
    }
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` matrix, in 32×32 tiles (both sides stay in the L1
/// cache); bytes with AVX2 ([`crate::kernels::avx2::transpose_u8`]). Lengths checked by the caller.
fn transpose<T: Copy + 'static>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<u8>() && detected().has_avx2() {
        // SAFETY: T is u8 (same layout); AVX2 detected; lengths asserted above.
        unsafe {
            let s = std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len());
            let d = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len());
            crate::kernels::avx2::transpose_u8(s, rows, cols, d);
        }
        return;
    }
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                for c in c0..c1 {
                    // SAFETY: r < rows, c < cols, both slices hold rows · cols elements (asserted).
                    unsafe { *dst.get_unchecked_mut(c * rows + r) = *src.get_unchecked(r * cols + c) };
                }
            }
        }
    }
}

/// [`reference::nchw_to_nhwc`], tiled (the same elements moved; any element type).
pub fn nchw_to_nhwc<T: Copy + 'static>(x: &[T], [n, c, h, w]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    let img = c * h * w;
    if img == 0 {
        return Ok(());
    }
    for (xs, os) in x.chunks_exact(img).zip(out.chunks_exact_mut(img)) {
        transpose(xs, c, h * w, os);
    }
    Ok(())
}

/// [`reference::nhwc_to_nchw`], tiled (the same elements moved; any element type).
pub fn nhwc_to_nchw<T: Copy + 'static>(x: &[T], [n, h, w, c]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, x.len())?;
    check_len("output", x.len(), out.len())?;
    let img = c * h * w;
    if img == 0 {
        return Ok(());
    }
    for (xs, os) in x.chunks_exact(img).zip(out.chunks_exact_mut(img)) {
        transpose(xs, h * w, c, os);
    }
    Ok(())
}

/// [`reference::qavgpool2d`] on `isa`'s kernels (the reference's checks first).
pub fn qavgpool2d_with(isa: Isa, p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let g = &p.geom;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2()
        && g.h.dilation == 1
        && g.w.dilation == 1
        && g.h.kernel.saturating_mul(g.w.kernel) <= 1 << 23
    {
        let [oh_n, ow_n] = g.out_hw()?;
        check_len("input", g.input_len(), x.len())?;
        check_len("output", g.batch * oh_n * ow_n * g.channels, out.len())?;
        check_zp_u8("input", p.zero_point)?;
        check_range_u8("input", p.range.qmin(), p.range.qmax())?;
        // SAFETY: AVX2 detected; the reference's checks hold.
        unsafe { crate::kernels::avx2::avgpool(p, [oh_n, ow_n], x, out) };
        return Ok(());
    }
    let _ = (isa, g);
    reference::qavgpool2d(p, x, out)
}

/// [`reference::qavgpool2d`], dispatched.
pub fn qavgpool2d(p: &QAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qavgpool2d_with(detected(), p, x, out)
}

/// [`reference::qadaptive_avgpool2d`] on `isa`'s kernels (the reference's checks first).
pub fn qadaptive_avgpool2d_with(isa: Isa, p: &QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    let ([h_n, w_n], [oh_n, ow_n], c_n) = (p.in_hw, p.out_hw, p.channels);
    let checked = h_n > 0
        && w_n > 0
        && oh_n > 0
        && ow_n > 0
        && c_n > 0
        && (h_n.div_ceil(oh_n) + 1).saturating_mul(w_n.div_ceil(ow_n) + 1) <= 1 << 23
        && x.len() == p.batch * h_n * w_n * c_n
        && out.len() == p.batch * oh_n * ow_n * c_n
        && (0..=255).contains(&p.zero_point)
        && p.range.qmin() >= 0
        && p.range.qmax() <= 255;
    #[cfg(target_arch = "x86_64")]
    if checked && supported(isa).has_avx2() {
        // SAFETY: AVX2 detected; the reference's checks hold (else it reports the error).
        unsafe { crate::kernels::avx2::adaptive_avgpool(p, x, out) };
        return Ok(());
    }
    let _ = (isa, checked);
    reference::qadaptive_avgpool2d(p, x, out)
}

/// [`reference::qadaptive_avgpool2d`], dispatched.
pub fn qadaptive_avgpool2d(p: &QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qadaptive_avgpool2d_with(detected(), p, x, out)
}

/// [`reference::qclamp`] on `isa`'s kernels.
pub fn qclamp_with(isa: Isa, act: Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    act.check()?;
    check_len("output", x.len(), out.len())?;
    check_range_u8("input", p.range().qmin(), p.range().qmax())?;
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        // The reference's `max(lo).min(hi)` on codes in [0, 255]: with lo <= hi (a checked
        // activation), clamping the bounds into [0, 255] first changes no result.
        let (lo, hi) = act.bounds(p);
        let (lo, hi) = (lo.clamp(0, 255) as u8, hi.clamp(0, 255) as u8);
        par_elementwise(out, |i0, o| {
            // SAFETY: AVX2 detected; the chunk lies inside x.
            unsafe { crate::kernels::avx2::clamp_u8(&x[i0..i0 + o.len()], lo, hi, o) };
        });
        return Ok(());
    }
    let _ = isa;
    reference::qclamp(act, p, x, out)
}

/// [`reference::qclamp`], dispatched.
pub fn qclamp(act: Activation, p: &QParams, x: &[u8], out: &mut [u8]) -> Result<(), KernelError> {
    qclamp_with(detected(), act, p, x, out)
}

/// [`reference::qconcat_channels`] on `isa`'s kernels (the reference's checks first).
pub fn qconcat_channels_with(isa: Isa, p: &QConcat, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), KernelError> {
    check_len("inputs", p.parts.len(), inputs.len())?;
    let total = p.out_channels();
    check_len("output", p.outer * total, out.len())?;
    for (part, x) in p.parts.iter().zip(inputs) {
        check_len("concat input", p.outer * part.channels, x.len())?;
        check_zp_u8("concat input", part.input_zero_point)?;
        check_range_u8("output", part.requant.qmin, part.requant.qmax)?;
    }
    #[cfg(target_arch = "x86_64")]
    if supported(isa).has_avx2() {
        let mut c0 = 0;
        for (part, x) in p.parts.iter().zip(inputs) {
            // SAFETY: AVX2 detected; lengths and parameters checked above.
            unsafe {
                crate::kernels::avx2::concat_part(
                    &part.requant,
                    part.input_zero_point,
                    x,
                    part.channels,
                    out,
                    total,
                    c0,
                )
            };
            c0 += part.channels;
        }
        return Ok(());
    }
    let _ = isa;
    reference::qconcat_channels(p, inputs, out)
}

/// [`reference::qconcat_channels`], dispatched.
pub fn qconcat_channels(p: &QConcat, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), KernelError> {
    qconcat_channels_with(detected(), p, inputs, out)
}
