//! The one `vpdpbusd` convolution driver, generic over [`Lanes`]: tiles of `P` output pixels
//! (consecutive in NHWC order, so a tile may span output rows and images: 7×7 maps and linear
//! layers fill whole tiles) times `B` blocks of 16 output channels, reading the padded input
//! ([`PaddedInput`]) through each pixel's offset, with the epilogue
//! ([`Requant16`](super::pack::Requant16)) applied while the accumulators are in registers.

use super::lanes::Lanes;
use super::pack::{AddLanes, PaddedInput, VnniPack, LANES, QUAD_BYTES};
use crate::kernels::Conv2dGeom;

/// Where a run reads and writes: the padded input's layout, the window, the output's size.
#[derive(Clone, Copy, Debug)]
pub struct VnniRun {
    pub pad: PaddedInput,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub out_c: usize,
    /// A residual add fused into the epilogue: the add's parameters and the residual tensor
    /// (NHWC, the output's shape).
    pub residual: Option<(AddLanes, ResidualPtr)>,
}

/// The residual tensor's first byte, shared read-only by the threads of a run.
#[derive(Clone, Copy, Debug)]
pub struct ResidualPtr(pub *const u8);
// SAFETY: the residual is only read, and outlives the run (`run` borrows it).
unsafe impl Send for ResidualPtr {}
unsafe impl Sync for ResidualPtr {}

impl VnniRun {
    /// The run of geometry `g` (output size `[out_h, out_w]`, checked by the caller) on `pk`.
    pub fn new(g: &Conv2dGeom, pk: &VnniPack, [out_h, out_w]: [usize; 2]) -> VnniRun {
        VnniRun {
            pad: PaddedInput::new(g, pk),
            kh: g.h.kernel,
            kw: g.w.kernel,
            sh: g.h.stride,
            sw: g.w.stride,
            dh: g.h.dilation,
            dw: g.w.dilation,
            out_h,
            out_w,
            out_c: g.out_c,
            residual: None,
        }
    }

    /// Output pixels of the whole batch.
    pub fn pixels(&self) -> usize {
        self.pad.batch * self.out_h * self.out_w
    }

    /// The padded input's offset of output pixel `f` (NHWC order over the batch) at tap (0, 0).
    #[inline(always)]
    pub fn pixel_offset(&self, f: usize) -> usize {
        let per_image = self.out_h * self.out_w;
        let (n, r) = (f / per_image, f % per_image);
        let (oh, ow) = (r / self.out_w, r % self.out_w);
        n * self.pad.image() + oh * self.sh * self.pad.row() + ow * self.sw * self.pad.pixel()
    }

    /// The padded input's offset of tap `(i, j)` from a pixel's tap (0, 0).
    #[inline(always)]
    pub fn tap_offset(&self, i: usize, j: usize) -> usize {
        i * self.dh * self.pad.row() + j * self.dw * self.pad.pixel()
    }
}

/// `P` output pixels from `f0` times `B` blocks from `blk0` of group `g`.
///
/// # Safety
/// `L`'s instructions present; `xpad` the padded input of `r`, `out` the whole output; the
/// pixels and blocks exist.
#[inline(always)]
unsafe fn tile<L: Lanes, const P: usize, const B: usize>(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    blk0: usize,
    f0: usize,
) {
    let mut acc = [[L::zero(); B]; P];
    let mut base = [0usize; P];
    for (p, b) in base.iter_mut().enumerate() {
        *b = r.pixel_offset(f0 + p) + g * r.pad.cgp;
    }
    for i in 0..r.kh {
        for j in 0..r.kw {
            let t = i * r.kw + j;
            let x = xpad.add(r.tap_offset(i, j));
            let mut w = [std::ptr::null::<i8>(); B];
            for (k, wk) in w.iter_mut().enumerate() {
                *wk = pk.weights(g, blk0 + k, t);
            }
            for q in 0..pk.quads {
                let mut wv = [L::load_w(w[0].add(q * QUAD_BYTES)); B];
                for k in 1..B {
                    wv[k] = L::load_w(w[k].add(q * QUAD_BYTES));
                }
                for p in 0..P {
                    let xp = x.add(base[p] + 4 * q);
                    for k in 0..B {
                        acc[p][k] = L::dot(acc[p][k], xp, wv[k]);
                    }
                }
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        let at = (f0 + p) * r.out_c + g * pk.cog;
        for (k, &ak) in a.iter().enumerate() {
            let c0 = (blk0 + k) * LANES;
            let (rq, n) = (pk.requant(g, blk0 + k), (pk.cog - c0).min(LANES));
            match &r.residual {
                None => L::store(ak, rq, out.add(at + c0), n),
                Some((add, res)) => L::store_add(ak, rq, add, res.0.add(at + c0), out.add(at + c0), n),
            }
        }
    }
}

/// Pixels `f0..f1` of blocks `b0..b1` of group `g`, in tiles of `P` pixels times `B` blocks
/// (`B` 1 or 2; then tiles of 4 and 1 pixels, and a single block, at the ends).
///
/// # Safety
/// `L`'s instructions present; `xpad` the padded input of `r`, `out` the whole output (and
/// `r.residual`, when set, a tensor of its length); the pixels and blocks exist.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_range<L: Lanes, const P: usize, const B: usize>(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    (b0, b1): (usize, usize),
    (f0, f1): (usize, usize),
) {
    let mut b = b0;
    while b < b1 {
        let pair = B == 2 && b + 2 <= b1;
        let mut f = f0;
        while f + P <= f1 {
            if pair {
                tile::<L, P, 2>(pk, r, xpad, out, g, b, f);
            } else {
                tile::<L, P, 1>(pk, r, xpad, out, g, b, f);
            }
            f += P;
        }
        while f + 4 <= f1 {
            if pair {
                tile::<L, 4, 2>(pk, r, xpad, out, g, b, f);
            } else {
                tile::<L, 4, 1>(pk, r, xpad, out, g, b, f);
            }
            f += 4;
        }
        while f < f1 {
            if pair {
                tile::<L, 1, 2>(pk, r, xpad, out, g, b, f);
            } else {
                tile::<L, 1, 1>(pk, r, xpad, out, g, b, f);
            }
            f += 1;
        }
        b += if pair { 2 } else { 1 };
    }
}

/// One task of a threaded run: a group, a range of its blocks, a range of output pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub group: usize,
    pub blocks: (usize, usize),
    pub pixels: (usize, usize),
}

/// The tasks of a run of `pixels` output pixels on `pk` for `threads` threads: block pairs
/// (of each group) outermost, so each pair's weights serve every pixel while cached, and the
/// pixels split in chunks of whole tiles of `tile` pixels so there are at least `4 · threads`
/// tasks where the work allows (one task when `threads` is 1).
pub fn tasks(pk: &VnniPack, pixels: usize, threads: usize, tile: usize) -> Vec<Task> {
    let pairs = pk.blocks.div_ceil(2);
    let units = pk.groups * pairs;
    let (bchunk, pchunk) = if threads <= 1 {
        (pk.blocks, pixels.max(1))
    } else {
        let want = 4 * threads;
        let pchunks = want.div_ceil(units).min(pixels.div_ceil(tile)).max(1);
        (2, pixels.div_ceil(pchunks).next_multiple_of(tile).max(1))
    };
    let mut v = Vec::new();
    for group in 0..pk.groups {
        for b in (0..pk.blocks).step_by(bchunk) {
            for f in (0..pixels).step_by(pchunk) {
                v.push(Task {
                    group,
                    blocks: (b, (b + bchunk).min(pk.blocks)),
                    pixels: (f, (f + pchunk).min(pixels)),
                });
            }
        }
    }
    v
}

/// The kernel of one task ([`conv_range`] instantiated for an instruction set, inside a function
/// that enables it).
pub type RangeFn = unsafe fn(&VnniPack, &VnniRun, *const u8, *mut u8, usize, (usize, usize), (usize, usize));

/// Bytes read past the padded input's end: a tile's last quad reads 4 bytes from the last
/// pixel's channel padding at most, but AMX rows read 64.
pub const SLACK: usize = 64;

thread_local! {
    static PADDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `pk` on NHWC `x` with geometry `g` (output `[oh, ow]`; lengths checked by the caller)
/// into NHWC `out`, with `residual` (the add, and a tensor of the output's length) added in the
/// epilogue when given: pads the input once, then runs `range` on every [`tasks`] task of `tile`
/// pixels, over rayon's threads when `parallel`.
///
/// # Safety
/// `range`'s instructions present.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    pk: &VnniPack,
    range: RangeFn,
    tile: usize,
    g: &Conv2dGeom,
    out_hw: [usize; 2],
    x: &[u8],
    residual: Option<(&AddLanes, &[u8])>,
    out: &mut [u8],
    parallel: bool,
) {
    use crate::kernels::fast::SendPtr;
    use rayon::prelude::*;
    let r = VnniRun {
        residual: residual.map(|(add, t)| (*add, ResidualPtr(t.as_ptr()))),
        ..VnniRun::new(g, pk, out_hw)
    };
    // Taken out of the thread-local while in use: a rayon worker waiting below may run another
    // convolution that asks for its own buffer.
    let mut buf = PADDED.with(|s| std::mem::take(&mut *s.borrow_mut()));
    r.pad.fill(x, pk.zp, SLACK, &mut buf);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let tasks = tasks(pk, r.pixels(), threads, tile);
    let (xp, op) = (SendPtr(buf.as_ptr() as *mut u8), SendPtr(out.as_mut_ptr()));
    let one = |t: &Task| {
        // SAFETY: the caller's conditions; tasks write disjoint (pixel, channel) ranges.
        unsafe { range(pk, &r, xp.get(), op.get(), t.group, t.blocks, t.pixels) }
    };
    if threads > 1 && tasks.len() > 1 {
        tasks.par_iter().for_each(one);
    } else {
        tasks.iter().for_each(one);
    }
    PADDED.with(|s| *s.borrow_mut() = buf);
}

/// [`conv_range`] on [`super::Emulated`] lanes: the portable kernel, for tests on any CPU.
///
/// # Safety
/// As [`conv_range`] (no instruction set needed).
#[allow(clippy::too_many_arguments)]
pub unsafe fn range_emulated(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    blocks: (usize, usize),
    pixels: (usize, usize),
) {
    conv_range::<super::Emulated, 12, 2>(pk, r, xpad, out, g, blocks, pixels)
}
