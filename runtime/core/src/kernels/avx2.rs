//! AVX2 int8 kernels (x86_64): convolution (direct, im2col-free, on a zero-point-centred `i16`
//! copy of the input, or with `vpmaddubsw` on 7-bit input bytes), depthwise convolution, linear,
//! add, quantize and dequantize, bit for bit equal to [`super::reference`].
//!
//! Everything here is `unsafe` to call: the caller ([`super::fast`]) checks that the CPU has AVX2
//! (`is_x86_feature_detected!("avx2")`) and has already checked every length and parameter with
//! the reference kernels' checks.
//!
//! # Accumulation without saturation
//!
//! The input is converted once to `i16` as `x - zp_x` (in `[-255, 255]`) and the weights to `i16`;
//! products are summed with `vpmaddwd` (`i16·i16 + i16·i16 → i32`), whose pair sum is at most
//! `2 · 255 · 128 = 65280` in magnitude and cannot saturate (`vpmaddwd` saturates only for
//! `-32768 · -32768` twice). Padding is stored as `0 = zp_x - zp_x`, which is exactly the
//! reference's skipped tap. The sums are the reference's `dot_acc` terms in another order; the
//! reference's checks guarantee the i32 accumulator never wraps, so any order gives the same bits.
//!
//! # 7-bit inputs: `vpmaddubsw` ([`conv7_row`])
//!
//! When the input's integer range is `[qmin, qmax]` with `0 <= qmin`, `qmax <= 127` and its zero
//! point `zp_x` in `[0, 127]` (PyTorch's x86 `reduce_range` activations), [`super::fast`] selects
//! a second direct convolution on the raw input bytes (no centring). Per group of 4 input channels,
//! `vpmaddubsw` multiplies the 4 (unsigned) input bytes by 4 (signed) weights of each of 8 output
//! channels and adds adjacent products into `i16`; `vpmaddwd` with a vector of ones adds adjacent
//! `i16` into `i32`; `vpaddd` accumulates.
//!
//! *No saturation.* Every byte `vpmaddubsw` reads as its unsigned operand is an input value, the
//! padding value `zp_x`, or the channel padding `zp_x` (whose weights are 0): all in `[0, 127]`
//! ([`pad_raw7`] checks the input bytes; a run with a byte above 127 is handed to the reference
//! kernels instead). Weights are in `[-128, 127]`. A pair sum `x0·w0 + x1·w1` therefore lies in
//! `[2 · 127 · (-128), 2 · 127 · 127] = [-32512, 32258] ⊂ [-32768, 32767]`: `vpmaddubsw`'s
//! saturation never triggers and each `i16` lane is the exact pair sum. `vpmaddwd` with ones adds
//! two such lanes: `|·| <= 65024`, exact in `i32` (it saturates only for `-32768 · -32768` twice,
//! and a factor is 1). So each `i32` lane gains the exact sum of 4 products `x · w`.
//!
//! *Zero point.* With raw bytes the lanes accumulate `Σ x · w` over all taps, padded taps
//! contributing `zp_x · w`. [`ConvPack7`] folds `-zp_x · Σ w` (per output channel, over all taps
//! and input channels) into the bias at packing time (the zero point is known there: the
//! executor builds its kernels from every value's parameters), so the lane ends as
//! `bias + Σ x·w - zp_x · Σ w = bias + Σ (x - zp_x) · w` (padding contributes
//! `(zp_x - zp_x) · w = 0`, the reference's skipped tap) — the reference's `dot_acc` value. The
//! corrected bias and the sums are computed wrapping in `i32`; equal modulo `2^32` to the
//! reference's accumulator, which the reference's checks keep inside `i32`, they give its exact
//! bits. The epilogue is the same [`requant8`].
//!
//! # Requantization
//!
//! [`requant8`] is [`Requant::apply`] on 8 lanes: the accumulator is first clamped to a per-channel
//! `[alo, ahi]` outside which the output is saturated anyway (so the result fits `i32` later);
//! `vpmuldq` gives the exact `i64` product `acc · m`; AVX2 has no 64-bit arithmetic shift, so
//! (docs/numerics.md §4) it adds `2^62` with the rounding term, shifts logically, and subtracts
//! `2^(62-shift)` in `i32` with the zero point; the output clamp is done in `i32`. Proptested
//! against [`Requant::apply`] below and in `tests/kernels_bitexact.rs`.

use std::arch::x86_64::*;

use crate::quant::{QAdd, Requant, RequantRule, QADD_LEFT_SHIFT};

// ---------------------------------------------------------------------------------------------
// Requantization on 8 lanes
// ---------------------------------------------------------------------------------------------

/// [`Requant`] parameters (and an `i32` bias) of 8 output channels laid out for [`requant8`]:
/// `rnd` and `shift` `[0]` hold the even lanes (channels 0, 2, 4, 6), `[1]` the odd ones.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct RequantLanes {
    m: [i32; 8],
    bias: [i32; 8],
    /// The accumulator clamp `[alo, ahi]` (see [`requant8`]).
    alo: [i32; 8],
    ahi: [i32; 8],
    /// `zp - 2^(62-shift)`, wrapping `i32`.
    off: [i32; 8],
    lo: [i32; 8],
    hi: [i32; 8],
    /// `2^(shift-1) + 2^62`.
    rnd: [[i64; 4]; 2],
    shift: [[i64; 4]; 2],
    /// [`RequantRule::Float`]: `float_bias`, `float_multiplier`, `[qmin - zp, qmax - zp]` as
    /// `f32`, and `zp`.
    fb: [f32; 8],
    fm: [f32; 8],
    flo: [f32; 8],
    fhi: [f32; 8],
    zp: [i32; 8],
    /// The lanes' rule is [`RequantRule::Float`] (one layer's lanes share a rule).
    float: bool,
}

impl RequantLanes {
    /// Lanes `i < r.len()` get `r[i]` and `bias[i]` (0 without bias); the rest copy lane 0 and
    /// are ignored by the caller. `1 <= r.len() <= 8`.
    pub fn new(r: &[Requant], bias: Option<&[i32]>) -> RequantLanes {
        let mut l = RequantLanes {
            m: [0; 8],
            bias: [0; 8],
            alo: [0; 8],
            ahi: [0; 8],
            off: [0; 8],
            lo: [0; 8],
            hi: [0; 8],
            rnd: [[0; 4]; 2],
            shift: [[0; 4]; 2],
            fb: [0.0; 8],
            fm: [0.0; 8],
            flo: [0.0; 8],
            fhi: [0.0; 8],
            zp: [0; 8],
            float: r[0].rule == RequantRule::Float,
        };
        debug_assert!(r.iter().all(|q| q.rule == r[0].rule));
        for i in 0..8 {
            let j = if i < r.len() { i } else { 0 };
            let q = &r[j];
            l.m[i] = q.multiplier;
            l.bias[i] = bias.map_or(0, |b| b[j]);
            (l.alo[i], l.ahi[i]) = super::acc_clamp(q);
            l.off[i] = q.zero_point.wrapping_sub((1i64 << (62 - q.shift)) as i32);
            l.lo[i] = q.qmin;
            l.hi[i] = q.qmax;
            let (h, k) = (i % 2, i / 2);
            l.rnd[h][k] = (1i64 << (q.shift - 1)) + (1i64 << 62);
            l.shift[h][k] = q.shift as i64;
            l.fb[i] = q.float_bias;
            l.fm[i] = q.float_multiplier;
            l.flo[i] = (q.qmin - q.zero_point) as f32;
            l.fhi[i] = (q.qmax - q.zero_point) as f32;
            l.zp[i] = q.zero_point;
        }
        l
    }

    /// The same requantization on all 8 lanes, no bias.
    pub fn splat(r: &Requant) -> RequantLanes {
        RequantLanes::new(std::slice::from_ref(r), None)
    }
}

#[inline(always)]
unsafe fn ld(p: *const i64) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
unsafe fn ld32(p: &[i32; 8]) -> __m256i {
    _mm256_loadu_si256(p.as_ptr() as *const __m256i)
}

/// [`Requant::apply`]`(acc + bias)` on 8 `i32` lanes (the bias added wrapping, as `dot_acc`
/// starts from it). Results are in `[qmin, qmax]`.
///
/// 1. `a = clamp(acc + bias, alo, ahi)`: `apply` is monotonic in its argument, and every `a >=
///    ahi` gives `qmax` (likewise `alo`, `qmin`), so the result is unchanged; and the unclamped
///    `mul_shift_round(a) + zp` now lies in `[f(alo), f(ahi)]`, which is within `i32`: `f` grows
///    by at most `⌈m / 2^shift⌉ <= 2^30` per step (`m < 2^31`, `shift >= 1`), so `f(ahi) <
///    qmax + 2^30 + 1` and `f(alo) > qmin - 2^30 - 1`.
/// 2. `vpmuldq` gives the exact `i64` product `a · m` (`|·| < 2^62`); AVX2 has no 64-bit
///    arithmetic shift, so (docs/numerics.md §4) `2^62` is added with the rounding term, the sum
///    (in `(0, 2^64)`) shifted logically, which gives `mul_shift_round(a) + 2^(62-shift)`.
/// 3. The low 32 bits of the two halves are joined; `zp - 2^(62-shift)` is added wrapping in
///    `i32`: exact, as the true value fits `i32` (1.); then the clamp to `[qmin, qmax]` in `i32`.
///
/// With [`RequantRule::Float`] it is [`crate::quant::requantize_float`] instead: `vcvtdq2ps`
/// (round to nearest even, as Rust's `as f32`), `vaddps` (the float bias), `vmulps`, `vmaxps`/`vminps` with
/// `[qmin - zp, qmax - zp]` (never NaN), `vcvtps2dq` (nearest even under the default MXCSR), plus
/// `zp`: each step one IEEE operation, so the scalar bits.
///
/// # Safety
/// Needs AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn requant8(acc: __m256i, r: &RequantLanes) -> __m256i {
    let acc = _mm256_add_epi32(acc, ld32(&r.bias));
    if r.float {
        let ldf = |p: &[f32; 8]| _mm256_loadu_ps(p.as_ptr());
        let v = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(acc), ldf(&r.fb)), ldf(&r.fm));
        let v = _mm256_min_ps(_mm256_max_ps(v, ldf(&r.flo)), ldf(&r.fhi));
        return _mm256_add_epi32(_mm256_cvtps_epi32(v), ld32(&r.zp));
    }
    let a = _mm256_min_epi32(_mm256_max_epi32(acc, ld32(&r.alo)), ld32(&r.ahi));
    let m = ld32(&r.m);
    let pe = _mm256_mul_epi32(a, m);
    let po = _mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(m, 32));
    let e = _mm256_srlv_epi64(_mm256_add_epi64(pe, ld(r.rnd[0].as_ptr())), ld(r.shift[0].as_ptr()));
    let o = _mm256_srlv_epi64(_mm256_add_epi64(po, ld(r.rnd[1].as_ptr())), ld(r.shift[1].as_ptr()));
    let v = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0b1010_1010);
    let v = _mm256_add_epi32(v, ld32(&r.off));
    _mm256_min_epi32(_mm256_max_epi32(v, ld32(&r.lo)), ld32(&r.hi))
}

/// Writes the low bytes of 8 `i32` lanes holding values in `[0, 255]`: the first `n` of them.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_u8(v: __m256i, dst: *mut u8, n: usize) {
    let p16 = _mm256_packus_epi32(v, v);
    let p8 = _mm256_packus_epi16(p16, p16);
    let lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(p8)) as u32 as u64;
    let hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(p8, 1)) as u32 as u64;
    let b = lo | (hi << 32);
    if n >= 8 {
        std::ptr::write_unaligned(dst as *mut u64, b);
    } else {
        let bytes = b.to_le_bytes();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
    }
}

/// Writes the low bytes of two vectors of 8 `i32` lanes holding values in `[0, 255]` as 16
/// consecutive bytes (`a` then `b`): two saturating packs (exact on such values) and one
/// permutation instead of two [`store_u8`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store16_u8(a: __m256i, b: __m256i, dst: *mut u8) {
    // Per 128-bit lane: [a0..a3, b0..b3] | [a4..a7, b4..b7] as i16, then as bytes (twice).
    let p8 = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_setzero_si256());
    // 32-bit groups a0..a3 (0), b0..b3 (1), a4..a7 (4), b4..b7 (5) into order.
    let v = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 3, 6, 7));
    _mm_storeu_si128(dst as *mut __m128i, _mm256_castsi256_si128(v));
}

/// [`requant8`] then [`store_u8`]: for tests of the epilogue alone.
///
/// # Safety
/// Needs AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn requant_store(acc: &[i32; 8], r: &RequantLanes, out: &mut [u8; 8]) {
    let v = requant8(_mm256_loadu_si256(acc.as_ptr() as *const __m256i), r);
    store_u8(v, out.as_mut_ptr(), 8);
}

// ---------------------------------------------------------------------------------------------
// Centred, padded i16 input
// ---------------------------------------------------------------------------------------------

/// Layout of the centred input copy: `[batch, hp, wp, groups, cgp]` `i16` with `hp = in_h + 2·ph`,
/// `wp = in_w + 2·pw`, `cgp` = channels per group rounded up (to even for `vpmaddwd` pairs).
#[derive(Clone, Copy, Debug)]
pub struct PadGeom {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub groups: usize,
    pub cg: usize,
    pub cgp: usize,
    pub ph: usize,
    pub pw: usize,
}

impl PadGeom {
    pub fn hp(&self) -> usize {
        self.in_h + 2 * self.ph
    }
    pub fn wp(&self) -> usize {
        self.in_w + 2 * self.pw
    }
    pub fn ctot(&self) -> usize {
        self.groups * self.cgp
    }
    /// Elements, plus 16 of slack so 8/16-lane loads at the end stay inside.
    pub fn buffer_len(&self) -> usize {
        self.batch * self.hp() * self.wp() * self.ctot() + 16
    }
}

/// Fills `buf` (resized to `g.buffer_len()`) with `x - zp` in `g`'s layout, 0 in the padding.
///
/// # Safety
/// Needs AVX2 (used for auto-vectorisation only); `x.len() = batch·in_h·in_w·groups·cg`.
#[target_feature(enable = "avx2")]
pub unsafe fn pad_centre(x: &[u8], zp: i32, g: &PadGeom, buf: &mut Vec<i16>) {
    buf.clear();
    buf.resize(g.buffer_len(), 0);
    let zp = zp as i16;
    let (wp, ctot, c) = (g.wp(), g.ctot(), g.groups * g.cg);
    for n in 0..g.batch {
        for h in 0..g.in_h {
            let src = &x[(n * g.in_h + h) * g.in_w * c..][..g.in_w * c];
            let row = ((n * g.hp() + h + g.ph) * wp + g.pw) * ctot;
            let dst = &mut buf[row..row + g.in_w * ctot];
            if ctot == c {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s as i16 - zp;
                }
            } else {
                for (dp, sp) in dst.chunks_exact_mut(g.cgp).zip(src.chunks_exact(g.cg)) {
                    for (d, &s) in dp.iter_mut().zip(sp) {
                        *d = s as i16 - zp;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution (and linear, a 1x1 convolution)
// ---------------------------------------------------------------------------------------------

/// Packs OHWI `w` (`[groups·cog, taps, cig]`, checked by the caller) for a direct kernel that
/// reduces `per` input channels per 32-bit broadcast: for each group, each block of 8 output
/// channels, each tap and each step `s` of `per` input channels, one 32-byte vector
/// `[w[co0+j][tap][per·s..per·s+per]]_{j<8}` (zeros past the group's channels and past `cig`);
/// and per block the requantization lanes with `bias` (`requant.len() = groups·cog`).
fn pack_blocks<T: Copy + Default + From<i8>>(
    w: &[i8],
    (groups, cig, cog, taps): (usize, usize, usize, usize),
    per: usize,
    requant: &[Requant],
    bias: Option<&[i32]>,
) -> (Vec<T>, Vec<RequantLanes>) {
    let steps = cig.div_ceil(per);
    let blocks = cog.div_ceil(8);
    let mut pw = vec![T::default(); groups * blocks * taps * steps * 8 * per];
    let mut rq = Vec::with_capacity(groups * blocks);
    for g in 0..groups {
        for b in 0..blocks {
            let c0 = g * cog + b * 8;
            let nc = (cog - b * 8).min(8);
            rq.push(RequantLanes::new(
                &requant[c0..c0 + nc],
                bias.map(|bs| &bs[c0..c0 + nc]),
            ));
            for j in 0..nc {
                let co = c0 + j;
                for t in 0..taps {
                    for ci in 0..cig {
                        let dst = (((g * blocks + b) * taps + t) * steps + ci / per) * 8 * per + j * per + ci % per;
                        pw[dst] = T::from(w[(co * taps + t) * cig + ci]);
                    }
                }
            }
        }
    }
    (pw, rq)
}

/// OHWI `i8` weights packed for the direct convolution: for each group, each block of 8 output
/// channels, each tap and each input-channel pair `q`, one 16-lane `i16` vector
/// `[w[co0+j][tap][2q], w[co0+j][tap][2q+1]]_{j<8}` (zeros past the group's channels).
#[derive(Clone, Debug)]
pub struct ConvPack {
    pub groups: usize,
    pub cig: usize,
    pub cog: usize,
    pub taps: usize,
    pub pairs: usize,
    pub blocks: usize,
    w: Vec<i16>,
    rq: Vec<RequantLanes>,
}

impl ConvPack {
    /// `w` is OHWI `[groups·cog, taps, cig]` (checked by the caller); `requant.len() = groups·cog`.
    pub fn new(
        w: &[i8],
        groups: usize,
        cig: usize,
        cog: usize,
        taps: usize,
        requant: &[Requant],
        bias: Option<&[i32]>,
    ) -> ConvPack {
        let (w, rq) = pack_blocks(w, (groups, cig, cog, taps), 2, requant, bias);
        ConvPack {
            groups,
            cig,
            cog,
            taps,
            pairs: cig.div_ceil(2),
            blocks: cog.div_ceil(8),
            w,
            rq,
        }
    }
}

/// Where the output row `(n, oh)` reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct ConvRun {
    pub pad: PadGeom,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub out_c: usize,
}

/// What the two direct convolution kernels differ in, for the one tiling driver ([`conv_row`]):
/// the padded input's element, how many input channels one 32-bit broadcast carries (`PER`: an
/// `i16` pair, or a quad of 7-bit bytes) and so how the products are summed (`SEVEN`:
/// `vpmaddubsw` then `vpmaddwd` with ones, else `vpmaddwd`). Both packs hold one 32-byte weight
/// vector per (group, block, tap, step). The accessors are `#[inline(always)]` and the constants
/// compile-time, so each pack gets its own monomorphised kernel, as two hand-written ones would.
pub trait DirectPack {
    /// The padded input's element: `i16` (centred) or `u8` (raw 7-bit).
    type X;
    /// Input channels per 32-bit broadcast (and per weight lane).
    const PER: usize;
    /// `vpmaddubsw` on raw 7-bit bytes (else `vpmaddwd` on `i16`).
    const SEVEN: bool;
    fn groups(&self) -> usize;
    fn cog(&self) -> usize;
    fn taps(&self) -> usize;
    /// Reduction steps per tap: `ceil(cig / PER)`.
    fn steps(&self) -> usize;
    fn blocks(&self) -> usize;
    fn weights(&self) -> *const __m256i;
    fn lanes(&self) -> &[RequantLanes];
}

/// `impl DirectPack` for a pack type: its input element, channels per broadcast, 7-bit or not,
/// and the field holding its reduction steps per tap.
macro_rules! direct_pack {
    ($pack:ty, $x:ty, $per:expr, $seven:expr, $steps:ident) => {
        impl DirectPack for $pack {
            type X = $x;
            const PER: usize = $per;
            const SEVEN: bool = $seven;
            #[inline(always)]
            fn groups(&self) -> usize {
                self.groups
            }
            #[inline(always)]
            fn cog(&self) -> usize {
                self.cog
            }
            #[inline(always)]
            fn taps(&self) -> usize {
                self.taps
            }
            #[inline(always)]
            fn steps(&self) -> usize {
                self.$steps
            }
            #[inline(always)]
            fn blocks(&self) -> usize {
                self.blocks
            }
            #[inline(always)]
            fn weights(&self) -> *const __m256i {
                self.w.as_ptr() as *const __m256i
            }
            #[inline(always)]
            fn lanes(&self) -> &[RequantLanes] {
                &self.rq
            }
        }
    };
}

direct_pack!(ConvPack, i16, 2, false, pairs);
direct_pack!(ConvPack7, u8, 4, true, quads);

const PIX: usize = 4;

/// `P` output pixels `ow0..ow0+P` of row `(n, oh)` times `B` blocks of 8 channels from `blk0`,
/// group `g`. `ximg` points at the padded input's first element of image `n`; `orow` at the
/// output row. Per tap and reduction step: one weight vector per block, one broadcast of `K::PER`
/// input channels per pixel, then `vpmaddwd` (`i16` pairs) or, for 7-bit bytes, `vpmaddubsw` (two
/// products per `i16`) and `vpmaddwd` with ones (four per `i32`).
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_tile<K: DirectPack, const P: usize, const B: usize>(
    pk: &K,
    r: &ConvRun,
    ximg: *const K::X,
    oh: usize,
    ow0: usize,
    g: usize,
    blk0: usize,
    orow: *mut u8,
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); B]; P];
    let (wp, ctot) = (r.pad.wp(), r.pad.ctot());
    let steps = pk.steps();
    let wstride = pk.taps() * steps;
    let wbase = pk.weights().add((g * pk.blocks() + blk0) * wstride);
    let xstep = r.sw * ctot;
    for kh in 0..r.kh {
        let ih = oh * r.sh + kh * r.dh;
        for kw in 0..r.kw {
            let tap = kh * r.kw + kw;
            let x0 = ximg.add((ih * wp + ow0 * r.sw + kw * r.dw) * ctot + g * r.pad.cgp);
            let w0 = wbase.add(tap * steps);
            for q in 0..steps {
                let mut wv = [_mm256_setzero_si256(); B];
                for (b, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_si256(w0.add(b * wstride + q));
                }
                for (p, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32(std::ptr::read_unaligned(x0.add(p * xstep + K::PER * q) as *const i32));
                    for b in 0..B {
                        let prod = if K::SEVEN {
                            _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[b]), ones)
                        } else {
                            _mm256_madd_epi16(xv, wv[b])
                        };
                        a[b] = _mm256_add_epi32(a[b], prod);
                    }
                }
            }
        }
    }
    let (cog, rq) = (pk.cog(), &pk.lanes()[g * pk.blocks() + blk0..]);
    let full2 = B == 2 && cog >= (blk0 + 2) * 8;
    for (p, a) in acc.iter().enumerate() {
        let dst = orow.add((ow0 + p) * r.out_c + g * cog + blk0 * 8);
        if full2 {
            store16_u8(requant8(a[0], &rq[0]), requant8(a[1], &rq[1]), dst);
            continue;
        }
        for (b, &v) in a.iter().enumerate() {
            let nc = (cog - (blk0 + b) * 8).min(8);
            store_u8(requant8(v, &rq[b]), dst.add(b * 8), nc);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_pixels<K: DirectPack, const B: usize>(
    pk: &K,
    r: &ConvRun,
    ximg: *const K::X,
    oh: usize,
    ow0: usize,
    ow1: usize,
    g: usize,
    blk: usize,
    orow: *mut u8,
) {
    let mut ow = ow0;
    while ow + PIX <= ow1 {
        conv_tile::<K, PIX, B>(pk, r, ximg, oh, ow, g, blk, orow);
        ow += PIX;
    }
    match ow1 - ow {
        3 => conv_tile::<K, 3, B>(pk, r, ximg, oh, ow, g, blk, orow),
        2 => conv_tile::<K, 2, B>(pk, r, ximg, oh, ow, g, blk, orow),
        1 => conv_tile::<K, 1, B>(pk, r, ximg, oh, ow, g, blk, orow),
        _ => {}
    }
}

/// Output pixels `[ow0, ow1)` of row `(n, oh)`, channel blocks `[b0, b1)` of every group, for
/// either pack: a [`ConvPack`] on [`pad_centre`]'s buffer, or a [`ConvPack7`] on [`pad_raw7`]'s
/// (also under its old name [`conv7_row`]).
///
/// # Safety
/// Needs AVX2; `xpad` is [`pad_centre`]'s buffer for `r.pad` (a [`ConvPack`]), or [`pad_raw7`]'s
/// buffer for `r.pad` with `pk.zp`, every byte in it at most 127 (`pad_raw7` returned `true`,
/// `pk.zp <= 127`; a [`ConvPack7`]); `out` the whole NHWC output, the geometry checked (every tap
/// inside the padded input).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv_row<K: DirectPack>(
    pk: &K,
    r: &ConvRun,
    xpad: *const K::X,
    out: *mut u8,
    n: usize,
    oh: usize,
    (ow0, ow1): (usize, usize),
    (b0, b1): (usize, usize),
) {
    let ximg = xpad.add(n * r.pad.hp() * r.pad.wp() * r.pad.ctot());
    let orow = out.add((n * r.out_h + oh) * r.out_w * r.out_c);
    for g in 0..pk.groups() {
        let mut b = b0;
        while b + 2 <= b1 {
            conv_pixels::<K, 2>(pk, r, ximg, oh, ow0, ow1, g, b, orow);
            b += 2;
        }
        if b < b1 {
            conv_pixels::<K, 1>(pk, r, ximg, oh, ow0, ow1, g, b, orow);
        }
    }
}

/// [`conv_row`] under the name the 7-bit kernel had: a [`ConvPack7`] on [`pad_raw7`]'s buffer.
pub use self::conv_row as conv7_row;

// ---------------------------------------------------------------------------------------------
// Convolution on 7-bit activations: `vpmaddubsw` on raw u8 input
// ---------------------------------------------------------------------------------------------

/// Fills `buf` (resized to `g.buffer_len()`) with the raw bytes of `x` in `g`'s layout (`cgp` a
/// multiple of 4 for [`conv7_row`], `cgp = cg` for [`im2col7_row`]), `zp` in the spatial padding and in the channel slots past `cg` (whose weights
/// are 0). Returns whether every byte of `x` is at most 127, i.e. whether [`conv7_row`] may run
/// on it (it reads `buf` only; the padding value `zp` is checked by the caller).
///
/// # Safety
/// Needs AVX2 (used for auto-vectorisation only); `x.len() = batch·in_h·in_w·groups·cg`.
#[target_feature(enable = "avx2")]
pub unsafe fn pad_raw7(x: &[u8], zp: u8, g: &PadGeom, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    buf.resize(g.buffer_len(), zp);
    let (wp, ctot, c) = (g.wp(), g.ctot(), g.groups * g.cg);
    let mut high = 0u8;
    for n in 0..g.batch {
        for h in 0..g.in_h {
            let src = &x[(n * g.in_h + h) * g.in_w * c..][..g.in_w * c];
            let row = ((n * g.hp() + h + g.ph) * wp + g.pw) * ctot;
            let dst = &mut buf[row..row + g.in_w * ctot];
            if ctot == c {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s;
                    high |= s;
                }
            } else {
                for (dp, sp) in dst.chunks_exact_mut(g.cgp).zip(src.chunks_exact(g.cg)) {
                    for (d, &s) in dp.iter_mut().zip(sp) {
                        *d = s;
                        high |= s;
                    }
                }
            }
        }
    }
    high < 0x80
}

/// OHWI `i8` weights packed for [`conv7_row`]: for each group, each block of 8 output channels,
/// each tap and each input-channel quad `q`, 32 bytes `[w[co0+j][tap][4q..4q+4]]_{j<8}` (zeros
/// past the group's channels); and the requantization with the bias
/// `bias[c] - zp_x · Σ_{tap, ci} w[c][tap][ci]` (wrapping), which turns `Σ x · w` over raw input
/// bytes into the reference's `bias + Σ (x - zp_x) · w`.
#[derive(Clone, Debug)]
pub struct ConvPack7 {
    pub groups: usize,
    pub cig: usize,
    pub cog: usize,
    pub taps: usize,
    pub quads: usize,
    pub blocks: usize,
    /// The input zero point the bias was corrected for: also the padding value.
    pub zp: u8,
    w: Vec<i8>,
    rq: Vec<RequantLanes>,
}

impl ConvPack7 {
    /// As [`ConvPack::new`]; `zp` is the input zero point, in `[0, 127]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        w: &[i8],
        groups: usize,
        cig: usize,
        cog: usize,
        taps: usize,
        requant: &[Requant],
        bias: Option<&[i32]>,
        zp: u8,
    ) -> ConvPack7 {
        let k = taps * cig;
        let corrected: Vec<i32> = (0..groups * cog)
            .map(|co| {
                let wsum = w[co * k..(co + 1) * k]
                    .iter()
                    .fold(0i32, |s, &v| s.wrapping_add(v as i32));
                bias.map_or(0, |b| b[co]).wrapping_sub((zp as i32).wrapping_mul(wsum))
            })
            .collect();
        let (pw, rq) = pack_blocks(w, (groups, cig, cog, taps), 4, requant, Some(&corrected));
        ConvPack7 {
            groups,
            cig,
            cog,
            taps,
            quads: cig.div_ceil(4),
            blocks: cog.div_ceil(8),
            zp,
            w: pw,
            rq,
        }
    }
}

/// Bytes per output pixel of an im2col row for a reduction of `k` input bytes: `k` rounded up to
/// a multiple of 4 (whole `vpmaddubsw` quads).
pub fn im2col_stride(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Slack after an im2col row buffer: [`im2col7_row`] copies in 16-byte pieces.
pub const IM2COL_SLACK: usize = 16;

/// Gathers output row `(n, oh)`'s windows into `col`: pixel `ow`'s `KH·KW·Cin` input bytes, in OHWI
/// weight order `(kh, kw, ci)`, at `col[ow · kp ..]`, `kp = im2col_stride(KH·KW·Cin)`; with
/// `dw = 1` the `KW·Cin` bytes of one kernel row are contiguous in the padded input and are copied
/// in one piece. Copies move 16 bytes at a time and may overwrite up to 15 bytes past a piece:
/// pieces are written in increasing order, so a later piece (or the next pixel) rewrites them,
/// and what is left in the `kp - KH·KW·Cin` slots after a pixel's last piece are bytes of the
/// padded input (at most 127: [`pad_raw7`]'s check and padding value) that meet zero weights.
///
/// # Safety
/// Needs AVX2; `xpad` is [`pad_raw7`]'s buffer for `r.pad` (one group, `cgp = cg`, 16 bytes of
/// slack); `col` holds `r.out_w · kp + IM2COL_SLACK` bytes.
#[target_feature(enable = "avx2")]
pub unsafe fn im2col7_row(r: &ConvRun, xpad: *const u8, n: usize, oh: usize, col: *mut u8, kp: usize) {
    #[inline(always)]
    unsafe fn copy16(src: *const u8, dst: *mut u8, len: usize) {
        let mut o = 0;
        while o < len {
            _mm_storeu_si128(
                dst.add(o) as *mut __m128i,
                _mm_loadu_si128(src.add(o) as *const __m128i),
            );
            o += 16;
        }
    }
    let (wp, c) = (r.pad.wp(), r.pad.cgp);
    let ximg = xpad.add(n * r.pad.hp() * wp * c);
    for ow in 0..r.out_w {
        let dst = col.add(ow * kp);
        for kh in 0..r.kh {
            let row = ximg.add(((oh * r.sh + kh * r.dh) * wp + ow * r.sw) * c);
            if r.dw == 1 {
                copy16(row, dst.add(kh * r.kw * c), r.kw * c);
            } else {
                for kw in 0..r.kw {
                    copy16(row.add(kw * r.dw * c), dst.add((kh * r.kw + kw) * c), c);
                }
            }
        }
    }
}

/// The [`ConvRun`] of a 1x1 convolution over an im2col row of `out_w` pixels, `kp` bytes each.
pub fn im2col_run(r: &ConvRun, kp: usize) -> ConvRun {
    ConvRun {
        pad: PadGeom {
            batch: 1,
            in_h: 1,
            in_w: r.out_w,
            groups: 1,
            cg: kp,
            cgp: kp,
            ph: 0,
            pw: 0,
        },
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        out_h: 1,
        out_w: r.out_w,
        out_c: r.out_c,
    }
}

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3): 3x3, stride 1, padding 1 convolutions in exact integers
// ---------------------------------------------------------------------------------------------

/// Lavin's `F(2x2, 3x3)` with `G` scaled by 2 so that every transform is an integer one:
/// `Y = Aᵀ [ (2G) g (2G)ᵀ ⊙ Bᵀ d B ] A = 4 · conv(d, g)` for a 4×4 input tile `d` (centred:
/// `x - zp_x`, padding 0) and a 3×3 kernel `g`, where
/// ```text
/// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   2G = [2 0 0; 1 1 1; 1 -1 1; 0 0 2]
/// Aᵀ = [1 1 1 0; 0 1 -1 -1]
/// ```
/// *Bounds.* `|d| <= 255`; a row of `Bᵀ` has two ±1 entries, so `|V| = |Bᵀ d B| <= 4 · 255 =
/// 1020` (exact in `i16`, and the `i16` additions that form it never overflow); a row of `2G` has
/// absolute sum at most 3, so `|U| <= 9 · 128 = 1152` (`i16`). `vpmaddwd` multiplies `U · V`
/// pairwise: `2 · 1152 · 1020 < 2^22`, exact, no saturation (that needs `-32768 · -32768`).
/// The channel sums and the output transform (additions and subtractions) run wrapping in `i32`:
/// they equal the exact integer `4 · Σ (x - zp_x) · w` modulo `2^32`, and [`WinoPack::new`] is
/// only built when `4 · accumulator_bound(9 · Cin) <= i32::MAX`, so the `i32` lane *is* that
/// integer, and the arithmetic shift by 2 gives the reference's `Σ (x - zp_x) · w` exactly; the
/// bias is added wrapping by [`requant8`] as `dot_acc` starts from it.
#[derive(Clone, Debug)]
pub struct WinoPack {
    pub cin: usize,
    /// `cin` rounded up to 16 (one `i16` vector).
    pub cinp: usize,
    pub cout: usize,
    pub blocks: usize,
    /// `[16 positions][blocks][cinp / 2 pairs][16 lanes: 8 channels × 2 input channels]`.
    w: Vec<i16>,
    rq: Vec<RequantLanes>,
}

/// `2G`, see [`WinoPack`].
const G2: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];

impl WinoPack {
    /// `w` is OHWI `[cout, 3, 3, cin]`, one group.
    #[allow(clippy::needless_range_loop)]
    pub fn new(w: &[i8], cin: usize, cout: usize, requant: &[Requant], bias: Option<&[i32]>) -> WinoPack {
        let cinp = cin.div_ceil(16) * 16;
        let blocks = cout.div_ceil(8);
        let pairs = cinp / 2;
        let mut pw = vec![0i16; 16 * blocks * pairs * 16];
        for co in 0..cout {
            let (b, j) = (co / 8, co % 8);
            for ci in 0..cin {
                let g = |i: usize, k: usize| w[((co * 3 + i) * 3 + k) * cin + ci] as i32;
                for a in 0..4 {
                    for bb in 0..4 {
                        let mut u = 0;
                        for i in 0..3 {
                            for k in 0..3 {
                                u += G2[a][i] * g(i, k) * G2[bb][k];
                            }
                        }
                        let pos = a * 4 + bb;
                        pw[((pos * blocks + b) * pairs + ci / 2) * 16 + j * 2 + ci % 2] = u as i16;
                    }
                }
            }
        }
        let rq = (0..blocks)
            .map(|b| {
                let (c0, nc) = (b * 8, (cout - b * 8).min(8));
                RequantLanes::new(&requant[c0..c0 + nc], bias.map(|bs| &bs[c0..c0 + nc]))
            })
            .collect();
        WinoPack {
            cin,
            cinp,
            cout,
            blocks,
            w: pw,
            rq,
        }
    }
}

/// The padded, centred input of a Winograd convolution: `[batch, hp, wp, cinp]` `i16`,
/// `x - zp` at `[n, 1 + h, 1 + w, c]`, 0 elsewhere; `hp = 2·⌈H/2⌉ + 2`, `wp = 2·⌈W/2⌉ + 2`
/// (every 4×4 tile of a 2×2 output tile lies inside).
#[derive(Clone, Copy, Debug)]
pub struct WinoGeom {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub cin: usize,
    pub cinp: usize,
    pub cout: usize,
}

impl WinoGeom {
    pub fn tiles_h(&self) -> usize {
        self.in_h.div_ceil(2)
    }
    pub fn tiles_w(&self) -> usize {
        self.in_w.div_ceil(2)
    }
    pub fn hp(&self) -> usize {
        2 * self.tiles_h() + 2
    }
    pub fn wp(&self) -> usize {
        2 * self.tiles_w() + 2
    }
    pub fn buffer_len(&self) -> usize {
        self.batch * self.hp() * self.wp() * self.cinp
    }
    /// Output tiles (2×2 pixels) over the whole batch.
    pub fn tiles(&self) -> usize {
        self.batch * self.tiles_h() * self.tiles_w()
    }
    /// `i16` elements of the transformed input of `tiles` tiles, then `i32` elements of their
    /// products: [`wino_tiles`]'s scratch.
    pub fn scratch_len(&self, tiles: usize) -> (usize, usize) {
        (16 * tiles * self.cinp, 16 * tiles * self.cout.div_ceil(8) * 8)
    }
}

/// Fills `buf` with [`WinoGeom`]'s padded, centred input.
///
/// # Safety
/// Needs AVX2 (auto-vectorisation only); `x.len() = batch·in_h·in_w·cin`.
#[target_feature(enable = "avx2")]
pub unsafe fn wino_pad(x: &[u8], zp: i32, g: &WinoGeom, buf: &mut Vec<i16>) {
    buf.clear();
    buf.resize(g.buffer_len(), 0);
    let zp = zp as i16;
    let (hp, wp, c, cp) = (g.hp(), g.wp(), g.cin, g.cinp);
    for n in 0..g.batch {
        for h in 0..g.in_h {
            let src = &x[(n * g.in_h + h) * g.in_w * c..][..g.in_w * c];
            let row = ((n * hp + h + 1) * wp + 1) * cp;
            let dst = &mut buf[row..row + g.in_w * cp];
            for (dp, sp) in dst.chunks_exact_mut(cp).zip(src.chunks_exact(c)) {
                for (d, &s) in dp.iter_mut().zip(sp) {
                    *d = s as i16 - zp;
                }
            }
        }
    }
}

/// Output tiles `[t0, t1)` (tiles numbered over `(n, tile row, tile column)`): input transform
/// into `v` (`[t1 - t0][16][cinp]`), one `[tiles × cinp] × [cinp × cout]` product per position
/// into `m` (`[t1 - t0][16][cout rounded up to 8]`; tile-major, so that the 16 positions of a
/// tile are 16 consecutive rows and not 16 rows a power of two apart, which share an L1 set),
/// output transform, `>> 2`,
/// requantize, store (the pixels inside the output).
///
/// # Safety
/// Needs AVX2; `xpad` is [`wino_pad`]'s buffer for `g`; `v`, `m` hold `g.scratch_len(t1 - t0)`
/// elements; `out` is the whole NHWC output `[batch, in_h, in_w, cout]`; `t1 <= g.tiles()`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub unsafe fn wino_tiles(
    pk: &WinoPack,
    g: &WinoGeom,
    xpad: *const i16,
    out: *mut u8,
    t0: usize,
    t1: usize,
    v: *mut i16,
    m: *mut i32,
) {
    let (th, tw, wp, cp) = (g.tiles_h(), g.tiles_w(), g.wp(), g.cinp);
    let nt = t1 - t0;
    let cvec = cp / 16;
    let at = |tile: usize| (tile / (th * tw), tile / tw % th, tile % tw);
    // Input transform: V[pos][j][c] = (Bᵀ d B)[pos], d = the 4×4 tile at padded (2·tr, 2·t).
    for j in 0..nt {
        let (n, tr, t) = at(t0 + j);
        let base = xpad.add(((n * g.hp() + 2 * tr) * wp + 2 * t) * cp);
        for cv in 0..cvec {
            macro_rules! ld {
                ($r:expr, $s:expr) => {
                    _mm256_loadu_si256(base.add(($r * wp + $s) * cp + cv * 16) as *const __m256i)
                };
            }
            let mut tt = [[_mm256_setzero_si256(); 4]; 4];
            for s in 0..4 {
                let col = [ld!(0, s), ld!(1, s), ld!(2, s), ld!(3, s)];
                tt[0][s] = _mm256_sub_epi16(col[0], col[2]);
                tt[1][s] = _mm256_add_epi16(col[1], col[2]);
                tt[2][s] = _mm256_sub_epi16(col[2], col[1]);
                tt[3][s] = _mm256_sub_epi16(col[1], col[3]);
            }
            for (r, row) in tt.iter().enumerate() {
                let vv = [
                    _mm256_sub_epi16(row[0], row[2]),
                    _mm256_add_epi16(row[1], row[2]),
                    _mm256_sub_epi16(row[2], row[1]),
                    _mm256_sub_epi16(row[1], row[3]),
                ];
                for (s, x) in vv.into_iter().enumerate() {
                    let pos = r * 4 + s;
                    _mm256_storeu_si256(v.add((j * 16 + pos) * cp + cv * 16) as *mut __m256i, x);
                }
            }
        }
    }
    // Products per position: 2 tiles × 4 blocks of 8 output channels per register tile (8
    // accumulators, 4 weight vectors, 2 broadcasts per input-channel pair: 2 + 8 + 8 vector
    // operations for 8 `vpmaddwd`, fewer issue slots per product than 4 tiles × 2 blocks).
    let coutp = pk.blocks * 8;
    let pairs = cp / 2;
    for pos in 0..16 {
        let vpos = v.add(pos * cp);
        let mpos = m.add(pos * coutp);
        let wpos = pk.w.as_ptr().add(pos * pk.blocks * pairs * 16);
        let mut b = 0;
        while b < pk.blocks {
            let nb = (pk.blocks - b).min(4);
            let mut t = 0;
            while t < nt {
                let np = (nt - t).min(2);
                macro_rules! gemm {
                    ($p:literal, $b:literal) => {
                        wino_gemm::<$p, $b>(vpos, wpos, mpos, t, b, 16 * cp, pairs, 16 * coutp)
                    };
                }
                match (np, nb) {
                    (2, 4) => gemm!(2, 4),
                    (2, 3) => gemm!(2, 3),
                    (2, 2) => gemm!(2, 2),
                    (2, _) => gemm!(2, 1),
                    (_, 4) => gemm!(1, 4),
                    (_, 3) => gemm!(1, 3),
                    (_, 2) => gemm!(1, 2),
                    _ => gemm!(1, 1),
                }
                t += np;
            }
            b += nb;
        }
    }
    // Output transform, requantization, store.
    let (oh, ow) = (g.in_h, g.in_w);
    for jt in 0..nt {
        let (n, tr, tc) = at(t0 + jt);
        for b in 0..pk.blocks {
            macro_rules! ldm {
                ($pos:expr) => {
                    _mm256_loadu_si256(m.add((jt * 16 + $pos) * coutp + b * 8) as *const __m256i)
                };
            }
            let mut tt = [[_mm256_setzero_si256(); 4]; 2];
            for s in 0..4 {
                let (m0, m1, m2, m3) = (ldm!(s), ldm!(4 + s), ldm!(8 + s), ldm!(12 + s));
                tt[0][s] = _mm256_add_epi32(_mm256_add_epi32(m0, m1), m2);
                tt[1][s] = _mm256_sub_epi32(_mm256_sub_epi32(m1, m2), m3);
            }
            let nc = (pk.cout - b * 8).min(8);
            for (r, row) in tt.iter().enumerate() {
                let y0 = _mm256_add_epi32(_mm256_add_epi32(row[0], row[1]), row[2]);
                let y1 = _mm256_sub_epi32(_mm256_sub_epi32(row[1], row[2]), row[3]);
                let (h, w0) = (2 * tr + r, 2 * tc);
                if h >= oh {
                    continue;
                }
                let orow = out.add(((n * oh + h) * ow) * pk.cout + b * 8);
                let y = requant8(_mm256_srai_epi32(y0, 2), &pk.rq[b]);
                store_u8(y, orow.add(w0 * pk.cout), nc);
                if w0 + 1 < ow {
                    let y = requant8(_mm256_srai_epi32(y1, 2), &pk.rq[b]);
                    store_u8(y, orow.add((w0 + 1) * pk.cout), nc);
                }
            }
        }
    }
}

/// `m[t + p][b + j] = Σ_c V[t + p][c] · U[c][b + j]` for `p < P`, blocks `b..b + B` (8 channels
/// each): per input-channel pair one broadcast of two `i16` per tile, `vpmaddwd` per block. Tile
/// `t` of `v` starts at `v + t · vs`, of `m` at `m + t · ms`.
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn wino_gemm<const P: usize, const B: usize>(
    v: *const i16,
    w: *const i16,
    m: *mut i32,
    t: usize,
    b: usize,
    vs: usize,
    pairs: usize,
    ms: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); B]; P];
    for q in 0..pairs {
        let mut wv = [_mm256_setzero_si256(); B];
        for (j, x) in wv.iter_mut().enumerate() {
            *x = _mm256_loadu_si256(w.add(((b + j) * pairs + q) * 16) as *const __m256i);
        }
        for (p, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_set1_epi32(std::ptr::read_unaligned(v.add((t + p) * vs + 2 * q) as *const i32));
            for j in 0..B {
                a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(xv, wv[j]));
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (j, &x) in a.iter().enumerate() {
            _mm256_storeu_si256(m.add((t + p) * ms + (b + j) * 8) as *mut __m256i, x);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution (groups = in_c = out_c)
// ---------------------------------------------------------------------------------------------

/// Depthwise weights `[taps, C rounded up to 8]` as `i32`, and per-8-channel requantization.
#[derive(Clone, Debug)]
pub struct DwPack {
    pub channels: usize,
    pub taps: usize,
    cpad: usize,
    w: Vec<i32>,
    rq: Vec<RequantLanes>,
}

impl DwPack {
    /// `w` is OHWI `[C, taps, 1]`.
    pub fn new(w: &[i8], channels: usize, taps: usize, requant: &[Requant], bias: Option<&[i32]>) -> DwPack {
        let cpad = channels.div_ceil(8) * 8;
        let mut pw = vec![0i32; taps * cpad];
        for c in 0..channels {
            for t in 0..taps {
                pw[t * cpad + c] = w[c * taps + t] as i32;
            }
        }
        let rq = (0..channels)
            .step_by(8)
            .map(|c0| {
                let nc = (channels - c0).min(8);
                RequantLanes::new(&requant[c0..c0 + nc], bias.map(|b| &b[c0..c0 + nc]))
            })
            .collect();
        DwPack {
            channels,
            taps,
            cpad,
            w: pw,
            rq,
        }
    }
}

/// Depthwise output row `(n, oh)`, all pixels and channels. `r.pad` has `groups = C`, `cgp = 1`.
///
/// # Safety
/// As [`conv_row`].
#[target_feature(enable = "avx2")]
pub unsafe fn dw_row(pk: &DwPack, r: &ConvRun, xpad: *const i16, out: *mut u8, n: usize, oh: usize) {
    let (wp, c) = (r.pad.wp(), pk.channels);
    let ximg = xpad.add(n * r.pad.hp() * wp * c);
    let orow = out.add((n * r.out_h + oh) * r.out_w * c);
    for ow in 0..r.out_w {
        for (bi, c0) in (0..c).step_by(8).enumerate() {
            let mut acc = _mm256_setzero_si256();
            for kh in 0..r.kh {
                let ih = oh * r.sh + kh * r.dh;
                for kw in 0..r.kw {
                    let iw = ow * r.sw + kw * r.dw;
                    let xv =
                        _mm256_cvtepi16_epi32(_mm_loadu_si128(ximg.add((ih * wp + iw) * c + c0) as *const __m128i));
                    let wv = _mm256_loadu_si256(pk.w.as_ptr().add((kh * r.kw + kw) * pk.cpad + c0) as *const __m256i);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
                }
            }
            let y = requant8(acc, &pk.rq[bi]);
            store_u8(y, orow.add(ow * c + c0), (c - c0).min(8));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise add, quantize, dequantize
// ---------------------------------------------------------------------------------------------

/// `mul_shift_round(v, m, shift)` on 8 `i32` lanes whose exact result fits `i32` (as in
/// [`QAdd::apply`]: `|v| < 2^28`, multiplier `<= 0.5`), returned as 8 `i32` lanes.
#[inline(always)]
pub(crate) unsafe fn msr_i32(v: __m256i, m: __m256i, rnd: __m256i, shift: __m128i, off: __m256i) -> __m256i {
    let pe = _mm256_mul_epi32(v, m);
    let po = _mm256_mul_epi32(_mm256_srli_epi64(v, 32), m);
    let e = _mm256_add_epi64(_mm256_srl_epi64(_mm256_add_epi64(pe, rnd), shift), off);
    let o = _mm256_add_epi64(_mm256_srl_epi64(_mm256_add_epi64(po, rnd), shift), off);
    _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0b1010_1010)
}

/// [`QAdd::apply`] element for element; `out.len() = a.len() = b.len()`.
///
/// # Safety
/// Needs AVX2; the parameters checked as by the reference `qadd` (u8 zero points and range).
#[target_feature(enable = "avx2")]
pub unsafe fn qadd(p: &QAdd, a: &[u8], b: &[u8], out: &mut [u8]) {
    let side = |zp: i32, m: i32, s: u32| {
        (
            _mm256_set1_epi32(zp),
            _mm256_set1_epi64x(m as i64),
            _mm256_set1_epi64x((1i64 << (s - 1)) + (1i64 << 62)),
            _mm_set_epi64x(0, s as i64),
            _mm256_set1_epi64x(-(1i64 << (62 - s))),
        )
    };
    let (za, ma, ra, sa, oa) = side(p.a_zero_point, p.a_multiplier, p.a_shift);
    let (zb, mb, rb, sb, ob) = side(p.b_zero_point, p.b_multiplier, p.b_shift);
    let rl = RequantLanes::splat(&p.out);
    let n = a.len();
    let mut i = 0;
    while i + 8 <= n {
        let va = _mm256_cvtepu8_epi32(_mm_loadl_epi64(a.as_ptr().add(i) as *const __m128i));
        let vb = _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.as_ptr().add(i) as *const __m128i));
        let da = _mm256_slli_epi32(_mm256_sub_epi32(va, za), QADD_LEFT_SHIFT as i32);
        let db = _mm256_slli_epi32(_mm256_sub_epi32(vb, zb), QADD_LEFT_SHIFT as i32);
        let s = _mm256_add_epi32(msr_i32(da, ma, ra, sa, oa), msr_i32(db, mb, rb, sb, ob));
        store_u8(requant8(s, &rl), out.as_mut_ptr().add(i), 8);
        i += 8;
    }
    for j in i..n {
        out[j] = p.apply(a[j] as i32, b[j] as i32) as u8;
    }
}

/// [`crate::quant::quantize`] to u8 element for element (`qmin >= 0`, `qmax <= 255`):
/// `rint(x · inv)` (`vroundps`, ties to even), NaN → 0 before the zero point is added, then the
/// clamp. Clamping the rounded value to `[-512, 512]` first is the reference's saturating cast for
/// every result that can survive the final clamp.
///
/// # Safety
/// Needs AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_u8(x: &[f32], inv_scale: f32, zp: i32, range: crate::quant::QRange, out: &mut [u8]) {
    let (qmin, qmax) = (range.qmin(), range.qmax());
    let (vinv, vzp) = (_mm256_set1_ps(inv_scale), _mm256_set1_epi32(zp));
    let (lo, hi) = (_mm256_set1_epi32(qmin), _mm256_set1_epi32(qmax));
    let (flo, fhi) = (_mm256_set1_ps(-512.0), _mm256_set1_ps(512.0));
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let p = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vinv);
        let r = _mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let nan = _mm256_cmp_ps(r, r, _CMP_UNORD_Q);
        let r = _mm256_andnot_ps(nan, r);
        let r = _mm256_min_ps(_mm256_max_ps(r, flo), fhi);
        let q = _mm256_add_epi32(_mm256_cvtps_epi32(r), vzp);
        let q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
        store_u8(q, out.as_mut_ptr().add(i), 8);
        i += 8;
    }
    for j in i..n {
        out[j] = crate::quant::quantize(x[j], inv_scale, zp, range) as u8;
    }
}

/// [`crate::quant::dequantize`] of u8 codes: `(q - zp) as f32 · scale`, both steps exact as in
/// the scalar code (the difference converts exactly, one f32 multiplication).
///
/// # Safety
/// Needs AVX2; `out.len() = q.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn dequantize_u8(q: &[u8], scale: f32, zp: i32, out: &mut [f32]) {
    let (vs, vzp) = (_mm256_set1_ps(scale), _mm256_set1_epi32(zp));
    let n = q.len();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.as_ptr().add(i) as *const __m128i));
        let f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, vzp)), vs);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), f);
        i += 8;
    }
    for j in i..n {
        out[j] = crate::quant::dequantize(q[j] as i32, scale, zp);
    }
}

// ---------------------------------------------------------------------------------------------
// Byte transpose (layout changes NCHW <-> NHWC)
// ---------------------------------------------------------------------------------------------

/// `dst[c · rows + r] = src[r · cols + c]` for `r < rows`, `c < cols`: 8×8 byte tiles transposed
/// in registers (three rounds of unpacks), inside 64×64 blocks so that both sides stay in the L1
/// cache; the edges of fewer than 8 rows or columns byte by byte. Moves bytes only.
///
/// # Safety
/// Needs AVX2; `src.len()` and `dst.len()` are at least `rows · cols`.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_u8(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    const BLOCK: usize = 64;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for rb in (0..r8).step_by(BLOCK) {
        let rb1 = (rb + BLOCK).min(r8);
        for cb in (0..c8).step_by(BLOCK) {
            let cb1 = (cb + BLOCK).min(c8);
            for r in (rb..rb1).step_by(8) {
                for c in (cb..cb1).step_by(8) {
                    let ld = |i: usize| _mm_loadl_epi64(sp.add((r + i) * cols + c) as *const __m128i);
                    let a0 = _mm_unpacklo_epi8(ld(0), ld(1));
                    let a1 = _mm_unpacklo_epi8(ld(2), ld(3));
                    let a2 = _mm_unpacklo_epi8(ld(4), ld(5));
                    let a3 = _mm_unpacklo_epi8(ld(6), ld(7));
                    let b0 = _mm_unpacklo_epi16(a0, a1);
                    let b1 = _mm_unpackhi_epi16(a0, a1);
                    let b2 = _mm_unpacklo_epi16(a2, a3);
                    let b3 = _mm_unpackhi_epi16(a2, a3);
                    for (j, v) in [
                        _mm_unpacklo_epi32(b0, b2),
                        _mm_unpackhi_epi32(b0, b2),
                        _mm_unpacklo_epi32(b1, b3),
                        _mm_unpackhi_epi32(b1, b3),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let d = dp.add((c + 2 * j) * rows + r);
                        _mm_storel_epi64(d as *mut __m128i, v);
                        _mm_storel_epi64(d.add(rows) as *mut __m128i, _mm_unpackhi_epi64(v, v));
                    }
                }
            }
        }
    }
    // Edges: the last `cols - c8` columns of the tiled rows, then the last `rows - r8` rows.
    for r in 0..r8 {
        for c in c8..cols {
            *dp.add(c * rows + r) = *sp.add(r * cols + c);
        }
    }
    for r in r8..rows {
        for c in 0..cols {
            *dp.add(c * rows + r) = *sp.add(r * cols + c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling (plain loops compiled for AVX2: the compiler vectorises them over channels)
// ---------------------------------------------------------------------------------------------

/// [`super::reference::qmaxpool2d`] on output rows `[r0, r1)` (rows numbered over `(n, oh)`):
/// per output pixel the input offsets of its window's taps inside the input (the reference's
/// `input_index` skips), then `vpmaxub` over 32 channels at a time, 16, then one by one. Every
/// window holds at least one tap (`out_hw`'s check); the reference starts from 0, which no `u8`
/// maximum is below.
///
/// # Safety
/// Needs AVX2; geometry and lengths checked (`[oh_n, ow_n]` from `g.out_hw()`); `out` the whole
/// output.
#[target_feature(enable = "avx2")]
pub unsafe fn maxpool_rows(
    g: &super::Pool2dGeom,
    [oh_n, ow_n]: [usize; 2],
    x: &[u8],
    out: *mut u8,
    r0: usize,
    r1: usize,
) {
    let c_n = g.channels;
    let xp = x.as_ptr();
    let mut offs: Vec<usize> = Vec::with_capacity(g.h.kernel * g.w.kernel);
    for row in r0..r1 {
        let (n, oh) = (row / oh_n, row % oh_n);
        for ow in 0..ow_n {
            offs.clear();
            for kh in 0..g.h.kernel {
                let Some(ih) = g.h.input_index(oh, kh, g.in_h) else {
                    continue;
                };
                for kw in 0..g.w.kernel {
                    let Some(iw) = g.w.input_index(ow, kw, g.in_w) else {
                        continue;
                    };
                    offs.push(((n * g.in_h + ih) * g.in_w + iw) * c_n);
                }
            }
            let o = out.add((row * ow_n + ow) * c_n);
            let Some((&first, rest)) = offs.split_first() else {
                std::ptr::write_bytes(o, 0, c_n);
                continue;
            };
            let mut c = 0;
            while c + 32 <= c_n {
                let mut m = _mm256_loadu_si256(xp.add(first + c) as *const __m256i);
                for &off in rest {
                    m = _mm256_max_epu8(m, _mm256_loadu_si256(xp.add(off + c) as *const __m256i));
                }
                _mm256_storeu_si256(o.add(c) as *mut __m256i, m);
                c += 32;
            }
            if c + 16 <= c_n {
                let mut m = _mm_loadu_si128(xp.add(first + c) as *const __m128i);
                for &off in rest {
                    m = _mm_max_epu8(m, _mm_loadu_si128(xp.add(off + c) as *const __m128i));
                }
                _mm_storeu_si128(o.add(c) as *mut __m128i, m);
                c += 16;
            }
            while c < c_n {
                let mut m = *xp.add(first + c);
                for &off in rest {
                    m = m.max(*xp.add(off + c));
                }
                *o.add(c) = m;
                c += 1;
            }
        }
    }
}

/// [`super::reference::qglobal_avgpool`] with the per-channel sums accumulated position by
/// position (contiguous, vectorised) instead of channel by channel; the sums are exact integers,
/// so the order does not matter. `sums` is scratch.
///
/// # Safety
/// Needs AVX2; parameters and lengths checked as by the reference.
#[target_feature(enable = "avx2")]
pub unsafe fn global_avgpool(p: &super::QGlobalAvgPool, x: &[u8], out: &mut [u8]) {
    let (s_n, c_n) = (p.spatial, p.channels);
    let mut sums = vec![0i32; c_n];
    for (xs, os) in x.chunks_exact(s_n * c_n).zip(out.chunks_exact_mut(c_n)) {
        sums.fill(0);
        for px in xs.chunks_exact(c_n) {
            for (s, &v) in sums.iter_mut().zip(px) {
                *s += v as i32;
            }
        }
        for (o, &s) in os.iter_mut().zip(&sums) {
            *o = crate::quant::avg_pool_out(s, s_n as i32, s_n as i32, p.zero_point, p.range) as u8;
        }
    }
}

/// [`super::reference::qavgpool2d`] with the window's per-channel sums accumulated pixel by pixel
/// (contiguous channels, vectorised) instead of channel by channel: exact integers, so the order
/// does not matter; the same [`crate::quant::avg_pool_out`] per output.
///
/// # Safety
/// Needs AVX2; parameters, geometry and lengths checked as by the reference (`[oh_n, ow_n]` from
/// `g.out_hw()`).
#[target_feature(enable = "avx2")]
pub unsafe fn avgpool(p: &super::QAvgPool2d, [oh_n, ow_n]: [usize; 2], x: &[u8], out: &mut [u8]) {
    let g = &p.geom;
    let c_n = g.channels;
    let mut sums = vec![0i32; c_n];
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
                sums.fill(0);
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        let px = &x[((n * g.in_h + ih) * g.in_w + iw) * c_n..][..c_n];
                        for (s, &v) in sums.iter_mut().zip(px) {
                            *s += v as i32;
                        }
                    }
                }
                let o = &mut out[((n * oh_n + oh) * ow_n + ow) * c_n..][..c_n];
                for (o, &s) in o.iter_mut().zip(&sums) {
                    *o = crate::quant::avg_pool_out(s, elems, divisor, p.zero_point, p.range) as u8;
                }
            }
        }
    }
}

/// [`super::reference::qadaptive_avgpool2d`] with per-channel sums accumulated pixel by pixel (as
/// [`avgpool`]).
///
/// # Safety
/// Needs AVX2; parameters and lengths checked as by the reference.
#[target_feature(enable = "avx2")]
pub unsafe fn adaptive_avgpool(p: &super::QAdaptiveAvgPool2d, x: &[u8], out: &mut [u8]) {
    let ([h_n, w_n], [oh_n, ow_n], c_n) = (p.in_hw, p.out_hw, p.channels);
    let mut sums = vec![0i32; c_n];
    for n in 0..p.batch {
        for oy in 0..oh_n {
            let (h0, h1) = (oy * h_n / oh_n, ((oy + 1) * h_n).div_ceil(oh_n));
            for ox in 0..ow_n {
                let (w0, w1) = (ox * w_n / ow_n, ((ox + 1) * w_n).div_ceil(ow_n));
                let elems = ((h1 - h0) * (w1 - w0)) as i32;
                sums.fill(0);
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        let px = &x[((n * h_n + ih) * w_n + iw) * c_n..][..c_n];
                        for (s, &v) in sums.iter_mut().zip(px) {
                            *s += v as i32;
                        }
                    }
                }
                let o = &mut out[((n * oh_n + oy) * ow_n + ox) * c_n..][..c_n];
                for (o, &s) in o.iter_mut().zip(&sums) {
                    *o = crate::quant::avg_pool_out(s, elems, elems, p.zero_point, p.range) as u8;
                }
            }
        }
    }
}

/// `out = clamp(q, lo, hi)` element for element (`vpmaxub`/`vpminub`), [`super::reference::qclamp`]
/// once its bounds are known; `0 <= lo <= hi <= 255`.
///
/// # Safety
/// Needs AVX2; `out.len() = x.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn clamp_u8(x: &[u8], lo: u8, hi: u8, out: &mut [u8]) {
    for (o, &q) in out.iter_mut().zip(x) {
        *o = q.max(lo).min(hi);
    }
}

/// One part of [`super::reference::qconcat_channels`]: `out[o · total + c0 + c] =
/// r.apply(x[o · c_n + c] - zp)` for every row `o`, 8 channels at a time with [`requant8`] (the
/// same [`Requant::apply`] bits), a plain copy when `r` is the identity (multiplier 1, `zp` kept,
/// the full u8 range).
///
/// # Safety
/// Needs AVX2; `x.len() = outer · c_n`, `out.len() = outer · total`, `c0 + c_n <= total`, the
/// requantization's range within u8.
#[target_feature(enable = "avx2")]
pub unsafe fn concat_part(r: &Requant, zp: i32, x: &[u8], c_n: usize, out: &mut [u8], total: usize, c0: usize) {
    if c_n == 0 {
        return;
    }
    let identity = r.multiplier == 1 << 30 && r.shift == 30 && r.zero_point == zp && r.qmin == 0 && r.qmax == 255;
    let rl = RequantLanes::splat(r);
    let vzp = _mm256_set1_epi32(zp);
    for (src, dst) in x.chunks_exact(c_n).zip(out.chunks_exact_mut(total)) {
        let dst = &mut dst[c0..c0 + c_n];
        if identity {
            dst.copy_from_slice(src);
            continue;
        }
        let mut c = 0;
        while c + 8 <= c_n {
            let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr().add(c) as *const __m128i));
            store_u8(requant8(_mm256_sub_epi32(v, vzp), &rl), dst.as_mut_ptr().add(c), 8);
            c += 8;
        }
        for k in c..c_n {
            dst[k] = r.apply(src[k] as i32 - zp) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requant_strategy() -> impl Strategy<Value = Requant> {
        (
            1i32 << 30..i32::MAX,
            1u32..=62,
            0i32..=255,
            0i32..=255,
            0i32..=255,
            0u32..6,
        )
            .prop_map(|(m, s, a, b, c, t)| {
                let mut v = [a, b, c];
                v.sort();
                // Half the time few low multiplier bits: `acc · m` then often hits a rounding tie.
                let tz = (s as i64 - 1 - t as i64).clamp(0, 29) as u32;
                let m = if t < 3 { (m >> tz) << tz } else { m };
                Requant {
                    multiplier: m,
                    shift: s,
                    float_multiplier: (m as f64 * 0.5f64.powi(s as i32)) as f32,
                    float_bias: 0.0,
                    rule: RequantRule::Integer,
                    zero_point: v[1],
                    qmin: v[0],
                    qmax: v[2],
                }
            })
    }

    /// [`RequantRule::Float`] parameters: multipliers from `2^-24` to `2^4` (saturating and
    /// exact-tie cases: `f32(acc) · 0.5`, `· 0.25` land on halves), any zero point and range,
    /// and a float bias half the time (quarters, whose sums with small accumulators are ties too).
    fn float_requant_strategy() -> impl Strategy<Value = Requant> {
        (
            requant_strategy(),
            -24i32..4,
            0u32..(1 << 23),
            0u8..4,
            -4000i32..4000,
            any::<bool>(),
        )
            .prop_map(|(q, e, frac, kind, b, quarters)| {
                let mantissa = if kind == 0 { 0 } else { frac };
                let m = f32::from_bits(((127 + e) as u32) << 23 | mantissa);
                let float_bias = match (kind, quarters) {
                    (0, _) => 0.0,
                    (_, true) => b as f32 * 0.25,
                    (_, false) => b as f32 * 0.37 + frac as f32,
                };
                Requant {
                    float_multiplier: m,
                    float_bias,
                    rule: RequantRule::Float,
                    ..q
                }
            })
    }

    /// The accumulator clamp's edges: `alo`/`ahi` and their neighbours, `i32`'s ends, for
    /// multipliers up to `2^30` (shift 1), zero multipliers, and one-value output ranges.
    #[test]
    fn requant8_at_the_accumulator_clamp_edges() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = crate::tensor::SplitMix64::new(5);
        for case in 0..3000u32 {
            let shift = 1 + (r.next_u64() % 62) as u32;
            let multiplier = match case % 4 {
                0 => i32::MAX,
                1 => 0,
                _ => (r.next_u64() >> 33) as i32,
            };
            let mut v = [0, 1, 2].map(|_| (r.next_u64() % 256) as i32);
            v.sort();
            if case % 5 == 0 {
                v = [v[1]; 3];
            }
            let q = Requant {
                multiplier,
                shift,
                float_multiplier: 0.0,
                float_bias: 0.0,
                rule: RequantRule::Integer,
                zero_point: v[1],
                qmin: v[0],
                qmax: v[2],
            };
            let (alo, ahi) = crate::kernels::acc_clamp(&q);
            let lanes = RequantLanes::splat(&q);
            let accs = [
                alo,
                ahi,
                i32::MIN,
                i32::MAX,
                0,
                -1,
                1,
                alo.wrapping_add(1),
                ahi.wrapping_sub(1),
            ];
            for acc in accs.into_iter().chain([alo.wrapping_sub(1), ahi.wrapping_add(1)]) {
                let mut out = [0u8; 8];
                unsafe { requant_store(&[acc; 8], &lanes, &mut out) };
                assert_eq!(out[0] as i32, q.apply(acc), "{q:?} acc {acc} [{alo}, {ahi}]");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn requant8_is_requant_apply(
            r in proptest::collection::vec(requant_strategy(), 1..=8),
            acc in proptest::array::uniform8(any::<i32>()),
            bias in proptest::array::uniform8(-1000i32..1000),
            edge in 0u8..4,
        ) {
            if !is_x86_feature_detected!("avx2") { return Ok(()); }
            let mut acc = acc;
            if edge == 1 { acc[0] = i32::MIN; acc[1] = i32::MAX; acc[2] = 0; acc[3] = -1; }
            // The bias is added wrapping, like dot_acc starting from it.
            let lanes = RequantLanes::new(&r, Some(&bias[..r.len()]));
            let mut out = [0u8; 8];
            unsafe { requant_store(&acc, &lanes, &mut out) };
            for i in 0..r.len() {
                let want = r[i].apply(acc[i].wrapping_add(bias[i]));
                prop_assert_eq!(out[i] as i32, want, "lane {} {:?} acc {}", i, r[i], acc[i]);
            }
        }

        /// The float rule's lanes (one rule per layer): `requantize_float` bit for bit, on
        /// random, extreme and half-way accumulators.
        #[test]
        fn requant8_float_is_requant_apply(
            r in proptest::collection::vec(float_requant_strategy(), 1..=8),
            acc in proptest::array::uniform8(any::<i32>()),
            small in proptest::array::uniform8(-3000i32..3000),
            bias in proptest::array::uniform8(-1000i32..1000),
            edge in 0u8..4,
        ) {
            if !is_x86_feature_detected!("avx2") { return Ok(()); }
            let mut acc = if edge >= 2 { small } else { acc };
            if edge == 1 { acc[0] = i32::MIN; acc[1] = i32::MAX; acc[2] = 0; acc[3] = -1; }
            let lanes = RequantLanes::new(&r, Some(&bias[..r.len()]));
            let mut out = [0u8; 8];
            unsafe { requant_store(&acc, &lanes, &mut out) };
            for i in 0..r.len() {
                let want = r[i].apply(acc[i].wrapping_add(bias[i]));
                prop_assert_eq!(out[i] as i32, want, "lane {} {:?} acc {}", i, r[i], acc[i]);
            }
        }
    }
}
