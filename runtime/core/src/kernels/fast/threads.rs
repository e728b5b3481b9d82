//! An AVX2 convolution pack run over rayon's threads: tasks of output rows and channel blocks,
//! the per-thread scratch buffers, Winograd tiles.

#[cfg(target_arch = "x86_64")]
use super::conv::{winograd_geometry, Avx2Conv, PAR_MIN_MACS};
#[cfg(target_arch = "x86_64")]
use crate::kernels::Conv2dGeom;

pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// (By hand: a raw pointer is `Copy` whatever `T` is, which derive would require.)
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint output regions (and a read-only input) to rayon's threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH8: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static COL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`crate::kernels::avx2::wino_row`]'s transformed inputs and products.
    static WINO: std::cell::RefCell<(Vec<i16>, Vec<i32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs the AVX2 kernels; `false` (nothing written) when a 7-bit convolution gets an input byte
/// above 127, which the caller then hands to the reference kernels.
///
/// # Safety
/// AVX2 present; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn run_avx2(
    a: &Avx2Conv,
    g: &Conv2dGeom,
    zp: i32,
    [oh_n, ow_n]: [usize; 2],
    x: &[u8],
    out: &mut [u8],
) -> bool {
    use crate::kernels::avx2::{
        conv_row, dw_row, im2col7_row, im2col_run, im2col_stride, pad_centre, pad_raw7, ConvRun, PadGeom, IM2COL_SLACK,
    };
    if let Avx2Conv::Winograd { wino, direct } = a {
        if !winograd_geometry(g) {
            return run_avx2(direct, g, zp, [oh_n, ow_n], x, out);
        }
        run_winograd(wino, g, zp, x, out);
        return true;
    }
    let (cg, cgp) = match a {
        Avx2Conv::Direct(pk) => (pk.cig, 2 * pk.pairs),
        Avx2Conv::Direct7(pk) => (pk.cig, 4 * pk.quads),
        Avx2Conv::Im2col7(_) => (g.in_c, g.in_c),
        Avx2Conv::Winograd { .. } => unreachable!("handled above"),
        Avx2Conv::Depthwise(_) => (1, 1),
    };
    let pad = PadGeom {
        batch: g.batch,
        in_h: g.in_h,
        in_w: g.in_w,
        groups: g.groups,
        cg,
        cgp,
        ph: g.h.padding,
        pw: g.w.padding,
    };
    let r = ConvRun {
        pad,
        kh: g.h.kernel,
        kw: g.w.kernel,
        sh: g.h.stride,
        sw: g.w.stride,
        dh: g.h.dilation,
        dw: g.w.dilation,
        out_h: oh_n,
        out_w: ow_n,
        out_c: g.out_c,
    };
    let rows = g.batch * oh_n;
    let macs = rows * ow_n * g.out_c * g.reduction_len();
    let threads = rayon::current_num_threads();
    let optr = SendPtr(out.as_mut_ptr());
    let parallel = threads > 1 && macs >= PAR_MIN_MACS;
    // Few rows (small images, linear layers): also split the channel blocks. Weights of more than
    // 128 KiB (ResNet's 256- and 512-channel layers) do not stay in the L2 cache from one output
    // row to the next: then each task is one pair of blocks and the tasks run block-major, so a
    // pair's weights serve every row (of every image) while they are cached.
    let split = |blocks: usize, weight_bytes: usize| {
        let big = weight_bytes > 128 << 10 && blocks > 2;
        let chunks = if big {
            blocks.div_ceil(2)
        } else if parallel && rows < 2 * threads {
            blocks.min((4 * threads).div_ceil(rows))
        } else {
            1
        };
        let per = blocks.div_ceil(chunks);
        let chunks = blocks.div_ceil(per);
        // Task `t` → (output row, blocks).
        let at = move |t: usize| {
            let (i, c) = if big {
                (t % rows, t / rows)
            } else {
                (t / chunks, t % chunks)
            };
            (i, (c * per, ((c + 1) * per).min(blocks)))
        };
        (rows * chunks, at)
    };
    if let Avx2Conv::Im2col7(pk) | Avx2Conv::Direct7(pk) = a {
        let mut buf = SCRATCH8.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let seven = pad_raw7(x, pk.zp, &pad, &mut buf);
        if seven {
            let xptr = SendPtr(buf.as_ptr() as *mut u8);
            if let Avx2Conv::Im2col7(_) = a {
                let kp = im2col_stride(pk.cig);
                let rc = im2col_run(&r, kp);
                let (tasks, at) = split(pk.blocks, 0);
                for_each_task(parallel, tasks, |t: usize| {
                    let (i, (b0, b1)) = at(t);
                    let mut col = COL.with(|s| std::mem::take(&mut *s.borrow_mut()));
                    col.clear();
                    col.resize(ow_n * kp + IM2COL_SLACK, 0);
                    im2col7_row(&r, xptr.get(), i / oh_n, i % oh_n, col.as_mut_ptr(), kp);
                    let orow = optr.get().add(i * ow_n * g.out_c);
                    conv_row(pk, &rc, col.as_ptr(), orow, 0, 0, (0, ow_n), (b0, b1));
                    COL.with(|s| *s.borrow_mut() = col);
                });
            } else {
                direct_rows(pk, &r, (xptr, optr), [oh_n, ow_n], parallel, split);
            }
        }
        SCRATCH8.with(|s| *s.borrow_mut() = buf);
        return seven;
    }
    // Taken out of the thread-local while in use: a rayon worker waiting below may run another
    // convolution that asks for its own buffer.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    pad_centre(x, zp, &pad, &mut buf);
    let xptr = SendPtr(buf.as_ptr() as *mut i16);
    match a {
        Avx2Conv::Depthwise(pk) => for_each_task(parallel, rows, |i: usize| {
            dw_row(pk, &r, xptr.get(), optr.get(), i / oh_n, i % oh_n)
        }),
        Avx2Conv::Direct(pk) => direct_rows(pk, &r, (xptr, optr), [oh_n, ow_n], parallel, split),
        Avx2Conv::Direct7(_) | Avx2Conv::Im2col7(_) | Avx2Conv::Winograd { .. } => {
            unreachable!("handled above")
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = buf);
    true
}

/// Runs `task(0..n)`, over rayon's threads when `parallel`.
#[cfg(target_arch = "x86_64")]
fn for_each_task(parallel: bool, n: usize, task: impl Fn(usize) + Send + Sync) {
    use rayon::prelude::*;
    if parallel {
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

/// Every output row of a direct pack (centred `i16` or 7-bit bytes) on its padded input `xpad`,
/// in the tasks `split` makes of rows and channel blocks (given the pack's blocks and weight
/// bytes).
///
/// # Safety
/// AVX2 present; `xpad` the pack's padded input ([`crate::kernels::avx2::conv_row`]'s conditions), `out`
/// the whole output; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
unsafe fn direct_rows<K, S, A>(
    pk: &K,
    r: &crate::kernels::avx2::ConvRun,
    (xpad, out): (SendPtr<K::X>, SendPtr<u8>),
    [oh_n, ow_n]: [usize; 2],
    parallel: bool,
    split: S,
) where
    K: crate::kernels::avx2::DirectPack + Sync,
    S: Fn(usize, usize) -> (usize, A),
    A: Fn(usize) -> (usize, (usize, usize)) + Send + Sync,
{
    let (tasks, at) = split(pk.blocks(), pk.groups() * pk.blocks() * pk.taps() * pk.steps() * 32);
    for_each_task(parallel, tasks, |t: usize| {
        let (i, (b0, b1)) = at(t);
        crate::kernels::avx2::conv_row(pk, r, xpad.get(), out.get(), i / oh_n, i % oh_n, (0, ow_n), (b0, b1));
    });
}

/// Runs a Winograd pack (geometry: 3x3, stride 1, padding 1, dilation 1; output size = input
/// size), split over rayon's threads by pairs of output rows.
///
/// # Safety
/// AVX2 present; geometry and lengths checked.
#[cfg(target_arch = "x86_64")]
unsafe fn run_winograd(pk: &crate::kernels::avx2::WinoPack, g: &Conv2dGeom, zp: i32, x: &[u8], out: &mut [u8]) {
    use crate::kernels::avx2::{wino_pad, wino_tiles, WinoGeom};
    let wg = WinoGeom {
        batch: g.batch,
        in_h: g.in_h,
        in_w: g.in_w,
        cin: pk.cin,
        cinp: pk.cinp,
        cout: pk.cout,
    };
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    wino_pad(x, zp, &wg, &mut buf);
    let (xptr, optr) = (SendPtr(buf.as_ptr() as *mut i16), SendPtr(out.as_mut_ptr()));
    // Tasks of at least a tile row and at least 32 tiles (small images: the transformed weights
    // are read once per task, so fewer, larger tasks), at least 2 per thread when threaded.
    let tiles = wg.tiles();
    let macs = g.batch * g.in_h * g.in_w * g.out_c * g.reduction_len();
    let threads = if macs >= PAR_MIN_MACS {
        rayon::current_num_threads()
    } else {
        1
    };
    let per = wg.tiles_w().max(32).min(tiles.div_ceil(2 * threads).max(8)).min(tiles);
    let tasks = tiles.div_ceil(per);
    let (vlen, mlen) = wg.scratch_len(per);
    let task = |i: usize| {
        let (mut v, mut m) = WINO.with(|s| std::mem::take(&mut *s.borrow_mut()));
        v.resize(vlen.max(v.len()), 0);
        m.resize(mlen.max(m.len()), 0);
        let (t0, t1) = (i * per, ((i + 1) * per).min(tiles));
        wino_tiles(pk, &wg, xptr.get(), optr.get(), t0, t1, v.as_mut_ptr(), m.as_mut_ptr());
        WINO.with(|s| *s.borrow_mut() = (v, m));
    };
    for_each_task(threads > 1, tasks, task);
    SCRATCH.with(|s| *s.borrow_mut() = buf);
}
