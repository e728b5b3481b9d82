//! The one `tdpbusd` convolution driver, generic over [`Tiles`] (the instructions or their
//! emulation) and over the [`Lanes`] whose epilogue requantizes: an implicit GEMM over the padded
//! NHWC input ([`crate::kernels::vnni::PaddedInput`]) with the VNNI weight pack as B tiles.
//!
//! A step computes up to 32 output pixels (two A tiles of 16 pixels) × up to 32 output channels
//! (two B tiles of 16 channels) in four C tiles, summing over chunks of `K <= 16` quads (one A
//! row is `4K` bytes of one pixel, one B tile `K` rows of 64 bytes). Two ways to lay out K:
//!
//! - **Per tap** (many input channels): the chunks of each tap's `quads` quads
//!   (`K = min(quads, 16)`, the pack aligned to whole chunks, [`quad_align`]). When an A tile's
//!   16 pixels lie in one output row, `tileloadd` reads them straight from the padded input (row
//!   stride: the horizontal stride times the padded pixel); otherwise (row and image ends, maps
//!   narrower than 16, the last pixels) their rows are gathered into a scratch tile first.
//! - **im2col** (few input channels, several taps, [`im2col`]: an RGB stem's 7×7 taps of one
//!   quad each): the taps' quads one after the other (the pack's order within a block of 16
//!   channels), in chunks of `K = min(taps · quads, 16)` across tap boundaries. The step's pixels'
//!   rows are gathered once (zeros after the last tap) and serve every block pair; the last B
//!   chunk reads past its block into weights that meet those zeros (the pack's slack after the
//!   last block, `VnniPack::new`).
//!
//! The C tiles are stored to a scratch `16 × 16` `i32` block and each valid pixel's row goes
//! through [`Lanes::store`] (or [`Lanes::store_add`] with a fused residual add), the same epilogue ([`crate::kernels::vnni::Requant16`]) as the
//! `vpdpbusd` kernels.

use super::tiles::{ATile, BTile, CTile, TileConfig, Tiles};
use crate::kernels::vnni::pack::{LANES, QUAD_BYTES};
use crate::kernels::vnni::{Lanes, VnniPack, VnniRun};

/// Output pixels per A tile (its rows).
pub const TILE_PIXELS: usize = 16;
/// Output pixels per step (two A tiles): the `tile` [`crate::kernels::vnni::run`] splits by.
pub const STEP_PIXELS: usize = 2 * TILE_PIXELS;
/// Quads of input channels per K-chunk at most (an A tile's 64 bytes per row, a B tile's rows).
pub const MAX_CHUNK_QUADS: usize = 16;

/// The pack alignment (quads per tap) the driver needs for `cig` input channels per group: one
/// chunk of `ceil(cig / 4)` quads when that is at most 16, else whole chunks of 16.
pub fn quad_align(cig: usize) -> usize {
    if cig.div_ceil(4) > MAX_CHUNK_QUADS {
        MAX_CHUNK_QUADS
    } else {
        1
    }
}

/// Whether `pk`'s runs gather im2col rows (K across the taps): with several taps, when that
/// takes fewer chunks (`tdpbusd`s per C tile) than one chunk per tap; and for a pack not aligned
/// to [`quad_align`] (more than 16 quads per tap, not a multiple of 16), whose taps cannot be
/// cut into whole chunks: im2col rows end in zeros, so any pack gives the right sums.
pub fn im2col(pk: &VnniPack) -> bool {
    let whole_chunks = pk.quads <= MAX_CHUNK_QUADS || pk.quads.is_multiple_of(MAX_CHUNK_QUADS);
    !whole_chunks || (pk.taps > 1 && (pk.taps * pk.quads).div_ceil(MAX_CHUNK_QUADS) < pk.taps)
}

/// Quads per K-chunk of `pk`.
pub fn chunk_quads(pk: &VnniPack) -> usize {
    if im2col(pk) {
        (pk.taps * pk.quads).min(MAX_CHUNK_QUADS)
    } else {
        pk.quads.min(MAX_CHUNK_QUADS)
    }
}

/// The tile shapes of `pk`'s runs: C tiles 16 pixels × 16 `i32`, A tiles 16 pixels × `4K`
/// bytes, B tiles `K` quads × 64 bytes.
pub fn config(pk: &VnniPack) -> TileConfig {
    let k = chunk_quads(pk);
    let mut cfg = TileConfig::new();
    for i in 0..4 {
        cfg = cfg.with(CTile::nth(i).tmm(), TILE_PIXELS, 4 * LANES);
    }
    for i in 0..2 {
        cfg = cfg
            .with(ATile::nth(i).tmm(), TILE_PIXELS, 4 * k)
            .with(BTile::nth(i).tmm(), k, QUAD_BYTES);
    }
    cfg
}

/// A task's scratch: two gathered A tiles and one stored C tile.
#[repr(C, align(64))]
struct Scratch {
    a: [[u8; TILE_PIXELS * 64]; 2],
    c: [i32; TILE_PIXELS * LANES],
}

/// Where the rows of one A tile come from.
#[derive(Clone, Copy)]
struct ARows {
    /// Valid pixels (rows), `1..=16`.
    rows: usize,
    /// `Some(stride)`: row `p` is at `base[0] + p · stride` (one output row); `None`: gathered.
    stride: Option<usize>,
    /// The padded input's offset of each pixel's tap (0, 0), group `g`'s first byte.
    base: [usize; TILE_PIXELS],
}

impl ARows {
    fn new(r: &VnniRun, g: usize, f: usize, rows: usize) -> ARows {
        let mut base = [0usize; TILE_PIXELS];
        for (p, b) in base.iter_mut().enumerate().take(rows) {
            *b = r.pixel_offset(f + p) + g * r.pad.cgp;
        }
        let one_row = rows == TILE_PIXELS && f % r.out_w + TILE_PIXELS <= r.out_w;
        ARows {
            rows,
            stride: one_row.then(|| r.sw * r.pad.pixel()),
            base,
        }
    }
}

/// `tilezero` on the `NA × NB` C tiles of a step.
#[inline(always)]
unsafe fn zero_c<T: Tiles, const NA: usize, const NB: usize>(tiles: &mut T) {
    for ai in 0..NA {
        for bi in 0..NB {
            tiles.zero(CTile::nth(2 * ai + bi));
        }
    }
}

/// `tdpbusd` of every A tile by every B tile of a step into its C tile.
#[inline(always)]
unsafe fn dot_all<T: Tiles, const NA: usize, const NB: usize>(tiles: &mut T) {
    for ai in 0..NA {
        for bi in 0..NB {
            tiles.dpbusd(CTile::nth(2 * ai + bi), ATile::nth(ai), BTile::nth(bi));
        }
    }
}

/// Stores the C tiles of a step (pixels `f..f + np`, blocks `b..b + NB` of group `g`) through
/// `c` and requantizes each valid pixel's valid channels into `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue<T: Tiles, L: Lanes, const NA: usize, const NB: usize>(
    tiles: &mut T,
    c: &mut [i32; TILE_PIXELS * LANES],
    pk: &VnniPack,
    r: &VnniRun,
    out: *mut u8,
    g: usize,
    b: usize,
    (f, np): (usize, usize),
) {
    for ai in 0..NA {
        let rows = (np - ai * TILE_PIXELS).min(TILE_PIXELS);
        for bi in 0..NB {
            tiles.store(CTile::nth(2 * ai + bi), c.as_mut_ptr() as *mut u8, 4 * LANES);
            let c0 = (b + bi) * LANES;
            let (rq, n) = (pk.requant(g, b + bi), (pk.cog - c0).min(LANES));
            for p in 0..rows {
                let at = (f + ai * TILE_PIXELS + p) * r.out_c + g * pk.cog + c0;
                let acc = L::load_acc(c.as_ptr().add(p * LANES));
                match &r.residual {
                    None => L::store(acc, rq, out.add(at), n),
                    Some((add, res)) => L::store_add(acc, rq, add, res.0.add(at), out.add(at), n),
                }
            }
        }
    }
}

/// One per-tap step: pixels `f..f + np` (`np <= 16 · NA`, more than `16 · (NA - 1)`) times
/// blocks `b..b + NB` of group `g`, in `NA × NB` C tiles; `NA` and `NB` are 1 or 2, constants so
/// that the tile registers of each instruction are known when it is compiled.
///
/// # Safety
/// As [`conv_range`]; `tiles` configured with [`config`]`(pk)`; not [`im2col`]`(pk)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn step_taps<T: Tiles, L: Lanes, const NA: usize, const NB: usize>(
    tiles: &mut T,
    s: &mut Scratch,
    pk: &VnniPack,
    r: &VnniRun,
    (xpad, out): (*const u8, *mut u8),
    g: usize,
    b: usize,
    (f, np): (usize, usize),
) {
    let kq = chunk_quads(pk);
    let (chunks, row_bytes) = (pk.quads / kq, 4 * kq);
    let a_rows: [ARows; NA] =
        std::array::from_fn(|ai| ARows::new(r, g, f + ai * TILE_PIXELS, (np - ai * TILE_PIXELS).min(TILE_PIXELS)));
    zero_c::<T, NA, NB>(tiles);
    for i in 0..r.kh {
        for j in 0..r.kw {
            let t = i * r.kw + j;
            let tap = r.tap_offset(i, j);
            for ch in 0..chunks {
                let at = tap + ch * row_bytes;
                for (ai, a) in a_rows.iter().enumerate() {
                    match a.stride {
                        Some(stride) => tiles.load(ATile::nth(ai).tmm(), xpad.add(a.base[0] + at), stride),
                        None => {
                            let dst = s.a[ai].as_mut_ptr();
                            for p in 0..a.rows {
                                copy_quads(xpad.add(a.base[p] + at), dst.add(p * 64), row_bytes);
                            }
                            tiles.load(ATile::nth(ai).tmm(), dst, 64);
                        }
                    }
                }
                for bi in 0..NB {
                    let w = pk.weights(g, b + bi, t).add(ch * kq * QUAD_BYTES);
                    tiles.load(BTile::nth(bi).tmm(), w as *const u8, QUAD_BYTES);
                }
                dot_all::<T, NA, NB>(tiles);
            }
        }
    }
    epilogue::<T, L, NA, NB>(tiles, &mut s.c, pk, r, out, g, b, (f, np));
}

/// One im2col step: as [`step_taps`], the A rows gathered at `rows` (`stride` bytes apart, pixel
/// `f + p` at row `p`, zeros after the last tap's quads).
///
/// # Safety
/// As [`step_taps`], for [`im2col`]`(pk)`; `rows` holds 32 rows of `stride` bytes, `stride` a
/// whole number of chunks covering the taps' quads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn step_im2col<T: Tiles, L: Lanes, const NA: usize, const NB: usize>(
    tiles: &mut T,
    c: &mut [i32; TILE_PIXELS * LANES],
    pk: &VnniPack,
    r: &VnniRun,
    (rows, stride, out): (*const u8, usize, *mut u8),
    g: usize,
    b: usize,
    (f, np): (usize, usize),
) {
    let kq = chunk_quads(pk);
    let chunks = (pk.taps * pk.quads).div_ceil(kq);
    zero_c::<T, NA, NB>(tiles);
    for ch in 0..chunks {
        for ai in 0..NA {
            let a = rows.add(ai * TILE_PIXELS * stride + ch * 4 * kq);
            tiles.load(ATile::nth(ai).tmm(), a, stride);
        }
        for bi in 0..NB {
            // The last chunk may run into the next block (or the pack's slack): those rows meet
            // the zeros after the taps' quads in every A row.
            let w = pk.weights(g, b + bi, 0).add(ch * kq * QUAD_BYTES);
            tiles.load(BTile::nth(bi).tmm(), w as *const u8, QUAD_BYTES);
        }
        dot_all::<T, NA, NB>(tiles);
    }
    epilogue::<T, L, NA, NB>(tiles, c, pk, r, out, g, b, (f, np));
}

/// Copies `n` bytes (a multiple of 4) from `src` to `dst` in 8- and 4-byte words, inline (the
/// gathers copy short runs, a call to `memcpy` each would cost more than the copy).
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes, not overlapping.
#[inline(always)]
unsafe fn copy_quads(src: *const u8, dst: *mut u8, n: usize) {
    let mut k = 0;
    while k + 8 <= n {
        std::ptr::write_unaligned(
            dst.add(k) as *mut u64,
            std::ptr::read_unaligned(src.add(k) as *const u64),
        );
        k += 8;
    }
    if k < n {
        std::ptr::write_unaligned(
            dst.add(k) as *mut u32,
            std::ptr::read_unaligned(src.add(k) as *const u32),
        );
    }
}

thread_local! {
    /// The im2col rows of a step (per thread, taken out while in use).
    static IM2COL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pixels `f0..f1` of blocks `b0..b1` of group `g`, in steps of up to 32 pixels × 2 blocks:
/// configures the tiles, runs the steps (per tap, or on im2col rows gathered once per step for
/// all the blocks, see [`im2col`]), releases the tiles.
///
/// # Safety
/// `T`'s and `L`'s instructions present (for AMX: permission granted); `xpad` the padded input
/// of `r` (with `vnni::conv::SLACK` bytes after it), `out` the whole output; the pixels and
/// blocks exist. (`pk` packed with [`quad_align`]`(pk.cig)` runs per tap where that pays; any
/// other alignment runs on im2col rows.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_range<T: Tiles, L: Lanes>(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    (b0, b1): (usize, usize),
    (f0, f1): (usize, usize),
) {
    let mut tiles = T::default();
    tiles.configure(&config(pk));
    let mut s = Scratch {
        a: [[0; TILE_PIXELS * 64]; 2],
        c: [0; TILE_PIXELS * LANES],
    };
    if im2col(pk) {
        let kq = chunk_quads(pk);
        let stride = (pk.taps * pk.quads).div_ceil(kq) * 4 * kq;
        let cgp = r.pad.cgp;
        // One group, dilation 1: a kernel row's taps are one run of the padded input.
        let kernel_rows_contiguous = r.dw == 1 && r.pad.pixel() == cgp;
        let mut buf = IM2COL.with(|b| std::mem::take(&mut *b.borrow_mut()));
        buf.clear();
        buf.resize(STEP_PIXELS * stride, 0);
        let mut f = f0;
        while f < f1 {
            let np = (f1 - f).min(STEP_PIXELS);
            for p in 0..np {
                let base = xpad.add(r.pixel_offset(f + p) + g * cgp);
                let row = buf.as_mut_ptr().add(p * stride);
                for i in 0..r.kh {
                    if kernel_rows_contiguous {
                        copy_quads(base.add(r.tap_offset(i, 0)), row.add(i * r.kw * cgp), r.kw * cgp);
                        continue;
                    }
                    for j in 0..r.kw {
                        let t = i * r.kw + j;
                        copy_quads(base.add(r.tap_offset(i, j)), row.add(t * cgp), cgp);
                    }
                }
            }
            let io = (buf.as_ptr(), stride, out);
            let mut b = b0;
            while b < b1 {
                let pair = b + 2 <= b1;
                let (t, c) = (&mut tiles, &mut s.c);
                match (np > TILE_PIXELS, pair) {
                    (true, true) => step_im2col::<T, L, 2, 2>(t, c, pk, r, io, g, b, (f, np)),
                    (true, false) => step_im2col::<T, L, 2, 1>(t, c, pk, r, io, g, b, (f, np)),
                    (false, true) => step_im2col::<T, L, 1, 2>(t, c, pk, r, io, g, b, (f, np)),
                    (false, false) => step_im2col::<T, L, 1, 1>(t, c, pk, r, io, g, b, (f, np)),
                }
                b += if pair { 2 } else { 1 };
            }
            f += np;
        }
        IM2COL.with(|b| *b.borrow_mut() = buf);
    } else {
        let io = (xpad, out);
        let mut b = b0;
        while b < b1 {
            let pair = b + 2 <= b1;
            let mut f = f0;
            while f < f1 {
                let np = (f1 - f).min(STEP_PIXELS);
                let t = (&mut tiles, &mut s);
                match (np > TILE_PIXELS, pair) {
                    (true, true) => step_taps::<T, L, 2, 2>(t.0, t.1, pk, r, io, g, b, (f, np)),
                    (true, false) => step_taps::<T, L, 2, 1>(t.0, t.1, pk, r, io, g, b, (f, np)),
                    (false, true) => step_taps::<T, L, 1, 2>(t.0, t.1, pk, r, io, g, b, (f, np)),
                    (false, false) => step_taps::<T, L, 1, 1>(t.0, t.1, pk, r, io, g, b, (f, np)),
                }
                f += np;
            }
            b += if pair { 2 } else { 1 };
        }
    }
    tiles.release();
}

/// [`conv_range`] on emulated tiles and [`crate::kernels::vnni::Emulated`] lanes: the portable
/// kernel, for tests on any CPU.
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
    conv_range::<super::tiles::Emulated, crate::kernels::vnni::Emulated>(pk, r, xpad, out, g, blocks, pixels)
}

/// [`conv_range`] on the AMX instructions, with the AVX-512 epilogue.
///
/// # Safety
/// `Isa::Amx.check()` is `Ok` (AMX-INT8 with the process's permission, AVX-512 VNNI); as
/// [`conv_range`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn range_amx(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    blocks: (usize, usize),
    pixels: (usize, usize),
) {
    conv_range::<super::tiles::Amx, crate::kernels::vnni::x86::Avx512>(pk, r, xpad, out, g, blocks, pixels)
}
