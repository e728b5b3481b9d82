//! [`Lanes`] on x86_64: AVX-512 VNNI (`vpdpbusd` on one zmm per block of 16 channels) and
//! AVX-VNNI (`vpdpbusd` on two ymm), and the target-feature entry points that instantiate
//! [`conv_range`] for each. Their epilogues compute [`Requant16::apply`] lane for lane.

use std::arch::x86_64::*;

use super::conv::{conv_range, VnniRun};
use super::lanes::Lanes;
use super::pack::{AddLanes, Requant16, VnniPack};
use crate::kernels::avx2::msr_i32;
use crate::quant::QADD_LEFT_SHIFT;

/// AVX-512 F/BW/VL + VNNI.
#[derive(Clone, Copy, Debug)]
pub struct Avx512;

#[inline(always)]
unsafe fn ld512<T>(p: *const T) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

impl Lanes for Avx512 {
    type Acc = __m512i;
    type W = __m512i;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn load_acc(p: *const i32) -> __m512i {
        ld512(p)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn load_w(w: *const i8) -> __m512i {
        ld512(w)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dot(acc: __m512i, x: *const u8, w: __m512i) -> __m512i {
        let xb = _mm512_set1_epi32(std::ptr::read_unaligned(x as *const i32));
        _mm512_dpbusd_epi32(acc, xb, w)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn store(acc: __m512i, r: &Requant16, out: *mut u8, n: usize) {
        _mm512_mask_cvtepi32_storeu_epi8(out as *mut i8, first(n), requant_zmm(acc, r));
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn store_add(acc: __m512i, r: &Requant16, add: &AddLanes, residual: *const u8, out: *mut u8, n: usize) {
        let qa = requant_zmm(acc, r);
        let qb = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(first(n), residual as *const i8));
        let side = |q: __m512i, zp: i32, m: i32, shift: u32| {
            msr_zmm(
                _mm512_slli_epi32(_mm512_sub_epi32(q, _mm512_set1_epi32(zp)), QADD_LEFT_SHIFT),
                m,
                shift,
            )
        };
        let s = _mm512_add_epi32(
            side(qa, add.a_zero_point, add.a_multiplier, add.a_shift),
            side(qb, add.b_zero_point, add.b_multiplier, add.b_shift),
        );
        _mm512_mask_cvtepi32_storeu_epi8(out as *mut i8, first(n), requant_zmm(s, &add.out));
    }
}

/// The mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn first(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// [`Requant16::apply`] on 16 lanes, as `i32` lanes in `[0, 255]`:
/// 1. clamp `acc + bias` to `[alo, ahi]`;
/// 2. `vpmuldq` on the even lanes and on the odd lanes shifted down: the exact `i64` products;
/// 3. plus the rounding term, arithmetic shift (`vpsravq`);
/// 4. the low halves joined, plus `zp`, clamped.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn requant_zmm(acc: __m512i, r: &Requant16) -> __m512i {
    let a = _mm512_add_epi32(acc, ld512(r.bias.as_ptr()));
    if r.float {
        // RequantRule::Float: convert, add the float bias, multiply, clamp in f32, round to nearest even, plus zp.
        let ldf = |p: &[f32; 16]| _mm512_loadu_ps(p.as_ptr());
        let v = _mm512_add_ps(_mm512_cvtepi32_ps(a), ldf(&r.fb));
        let v = _mm512_mul_ps(v, ldf(&r.fm));
        let v = _mm512_min_ps(_mm512_max_ps(v, ldf(&r.flo)), ldf(&r.fhi));
        return _mm512_add_epi32(_mm512_cvtps_epi32(v), ld512(r.zp.as_ptr()));
    }
    let a = _mm512_min_epi32(_mm512_max_epi32(a, ld512(r.alo.as_ptr())), ld512(r.ahi.as_ptr()));
    let m = ld512(r.m.as_ptr());
    let pe = _mm512_mul_epi32(a, m);
    let po = _mm512_mul_epi32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(m, 32));
    let e = _mm512_srav_epi64(_mm512_add_epi64(pe, ld512(r.rnd.as_ptr())), ld512(r.shift.as_ptr()));
    let o = _mm512_srav_epi64(
        _mm512_add_epi64(po, ld512(r.rnd[8..].as_ptr())),
        ld512(r.shift[8..].as_ptr()),
    );
    let v = _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(o, 32));
    let v = _mm512_add_epi32(v, ld512(r.zp.as_ptr()));
    _mm512_min_epi32(_mm512_max_epi32(v, ld512(r.lo.as_ptr())), ld512(r.hi.as_ptr()))
}

/// `mul_shift_round(v, m, shift)` on 16 `i32` lanes whose exact results fit `i32` (as in
/// [`AddLanes::apply`]: `|v| < 2^28`, multiplier `<= 0.5`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn msr_zmm(v: __m512i, m: i32, shift: u32) -> __m512i {
    let mv = _mm512_set1_epi64(m as i64);
    let rnd = _mm512_set1_epi64(1i64 << (shift - 1));
    let count = _mm_cvtsi64_si128(shift as i64);
    let e = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, mv), rnd), count);
    let o = _mm512_sra_epi64(
        _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(v, 32), mv), rnd),
        count,
    );
    _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(o, 32))
}

/// AVX-VNNI (VEX-encoded `vpdpbusd` on ymm) with AVX2: a block of 16 channels is two ymm.
#[derive(Clone, Copy, Debug)]
pub struct AvxVnni;

#[inline(always)]
unsafe fn ld256<T>(p: *const T) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Channels `8h..8h+8` of [`Requant16::apply`] on AVX2: as the zmm epilogue, but AVX2 has no
/// arithmetic 64-bit shift, so `2^62` is added with the rounding term (the sum lies in
/// `(0, 2^63)`), shifted logically, and `2^(62-shift)` subtracted before the low halves are taken.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn requant8_half(acc: __m256i, r: &Requant16, h: usize) -> __m256i {
    let c = 8 * h;
    let a = _mm256_add_epi32(acc, ld256(r.bias[c..].as_ptr()));
    if r.float {
        // RequantRule::Float, as `requant_zmm`.
        let v = _mm256_add_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(r.fb[c..].as_ptr()));
        let v = _mm256_mul_ps(v, _mm256_loadu_ps(r.fm[c..].as_ptr()));
        let v = _mm256_min_ps(
            _mm256_max_ps(v, _mm256_loadu_ps(r.flo[c..].as_ptr())),
            _mm256_loadu_ps(r.fhi[c..].as_ptr()),
        );
        return _mm256_add_epi32(_mm256_cvtps_epi32(v), ld256(r.zp[c..].as_ptr()));
    }
    let a = _mm256_min_epi32(
        _mm256_max_epi32(a, ld256(r.alo[c..].as_ptr())),
        ld256(r.ahi[c..].as_ptr()),
    );
    let m = ld256(r.m[c..].as_ptr());
    // Channels c, c+2, c+4, c+6 sit at i64 lanes c/2.. (even) and 8 + c/2.. (odd).
    let (ke, ko) = (c / 2, 8 + c / 2);
    let big = _mm256_set1_epi64x(1 << 62);
    let one = _mm256_set1_epi64x(1);
    let s62 = _mm256_set1_epi64x(62);
    let half = |p: __m256i, k: usize| {
        let s = ld256(r.shift[k..].as_ptr());
        let v = _mm256_srlv_epi64(
            _mm256_add_epi64(_mm256_add_epi64(p, ld256(r.rnd[k..].as_ptr())), big),
            s,
        );
        _mm256_sub_epi64(v, _mm256_sllv_epi64(one, _mm256_sub_epi64(s62, s)))
    };
    let e = half(_mm256_mul_epi32(a, m), ke);
    let o = half(_mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(m, 32)), ko);
    let v = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0b1010_1010);
    let v = _mm256_add_epi32(v, ld256(r.zp[c..].as_ptr()));
    _mm256_min_epi32(
        _mm256_max_epi32(v, ld256(r.lo[c..].as_ptr())),
        ld256(r.hi[c..].as_ptr()),
    )
}

impl Lanes for AvxVnni {
    type Acc = (__m256i, __m256i);
    type W = (__m256i, __m256i);

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn zero() -> (__m256i, __m256i) {
        (_mm256_setzero_si256(), _mm256_setzero_si256())
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn load_acc(p: *const i32) -> (__m256i, __m256i) {
        (ld256(p), ld256(p.add(8)))
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn load_w(w: *const i8) -> (__m256i, __m256i) {
        (ld256(w), ld256(w.add(32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dot(acc: (__m256i, __m256i), x: *const u8, w: (__m256i, __m256i)) -> (__m256i, __m256i) {
        let xb = _mm256_set1_epi32(std::ptr::read_unaligned(x as *const i32));
        (
            _mm256_dpbusd_avx_epi32(acc.0, xb, w.0),
            _mm256_dpbusd_avx_epi32(acc.1, xb, w.1),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn store(acc: (__m256i, __m256i), r: &Requant16, out: *mut u8, n: usize) {
        store16(requant8_half(acc.0, r, 0), requant8_half(acc.1, r, 1), out, n);
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn store_add(
        acc: (__m256i, __m256i),
        r: &Requant16,
        add: &AddLanes,
        residual: *const u8,
        out: *mut u8,
        n: usize,
    ) {
        let mut res = [0u8; 16];
        std::ptr::copy_nonoverlapping(residual, res.as_mut_ptr(), n.min(16));
        let rb = _mm_loadu_si128(res.as_ptr() as *const __m128i);
        let side = |zp: i32, m: i32, s: u32| {
            (
                _mm256_set1_epi32(zp),
                _mm256_set1_epi64x(m as i64),
                _mm256_set1_epi64x((1i64 << (s - 1)) + (1i64 << 62)),
                _mm_set_epi64x(0, s as i64),
                _mm256_set1_epi64x(-(1i64 << (62 - s))),
            )
        };
        let (za, ma, ra, sa, oa) = side(add.a_zero_point, add.a_multiplier, add.a_shift);
        let (zb, mb, rb_, sb, ob) = side(add.b_zero_point, add.b_multiplier, add.b_shift);
        let half = |qa: __m256i, qb: __m256i| {
            let da = _mm256_slli_epi32(_mm256_sub_epi32(qa, za), QADD_LEFT_SHIFT as i32);
            let db = _mm256_slli_epi32(_mm256_sub_epi32(qb, zb), QADD_LEFT_SHIFT as i32);
            let s = _mm256_add_epi32(msr_i32(da, ma, ra, sa, oa), msr_i32(db, mb, rb_, sb, ob));
            requant8_half(s, &add.out, 0)
        };
        let lo = half(requant8_half(acc.0, r, 0), _mm256_cvtepu8_epi32(rb));
        let hi = half(requant8_half(acc.1, r, 1), _mm256_cvtepu8_epi32(_mm_srli_si128(rb, 8)));
        store16(lo, hi, out, n);
    }
}

/// Writes the first `n` (at most 16) of 16 `i32` lanes holding values in `[0, 255]` (`lo` then
/// `hi`) as bytes. Saturating packs are exact on such values. Per 128-bit lane: `[lo0..3,
/// hi0..3 | lo4..7, hi4..7]` as `i16`, then bytes; the dwords reordered to `lo0..7, hi0..7`.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn store16(lo: __m256i, hi: __m256i, out: *mut u8, n: usize) {
    let p8 = _mm256_packus_epi16(_mm256_packus_epi32(lo, hi), _mm256_setzero_si256());
    let v = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 3, 6, 7));
    let bytes: [u8; 32] = std::mem::transmute(v);
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, n.min(16));
}

/// Whether this CPU runs [`Avx512`].
pub fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU runs [`AvxVnni`].
pub fn has_avx_vnni() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
}

/// [`conv_range`] on [`Avx512`]: tiles of 12 pixels × 2 blocks (24 accumulators, 2 weight
/// vectors and a broadcast in the 32 zmm registers).
///
/// # Safety
/// [`has_avx512_vnni`]; as [`conv_range`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn range_avx512(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    blocks: (usize, usize),
    pixels: (usize, usize),
) {
    conv_range::<Avx512, 12, 2>(pk, r, xpad, out, g, blocks, pixels)
}

/// [`conv_range`] on [`AvxVnni`]: tiles of 6 pixels × 1 block (12 accumulators, 2 weight
/// vectors and a broadcast in the 16 ymm registers).
///
/// # Safety
/// [`has_avx_vnni`]; as [`conv_range`].
#[target_feature(enable = "avx2,avxvnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn range_avx_vnni(
    pk: &VnniPack,
    r: &VnniRun,
    xpad: *const u8,
    out: *mut u8,
    g: usize,
    blocks: (usize, usize),
    pixels: (usize, usize),
) {
    conv_range::<AvxVnni, 6, 1>(pk, r, xpad, out, g, blocks, pixels)
}
