//! The weight pack and the padded input that the `vpdpbusd` kernels ([`super::conv`]) and the AMX
//! kernels (`tdpbusd`) share: weights in "VNNI layout" (for each block of 16 output channels, each
//! tap and each quad of 4 input channels, 64 bytes: 16 channels × 4 bytes), the zero-point term
//! folded into the bias, and [`Requant16`], the per-channel requantization of 16 lanes.

use crate::kernels::Conv2dGeom;
use crate::quant::{mul_shift_round, QAdd, Requant, RequantRule, QADD_LEFT_SHIFT};

/// Output channels per block: one 512-bit `i32` accumulator, one AMX tile's columns.
pub const LANES: usize = 16;
/// Bytes of one block's weights for one quad of input channels (16 channels × 4 bytes).
pub const QUAD_BYTES: usize = LANES * 4;
/// Zero bytes after the packed weights: an AMX B tile (16 quads) that starts within the last
/// block may run up to 15 quads past its end (the im2col K-chunks of `amx::conv`).
pub const PACK_SLACK: usize = 16 * QUAD_BYTES;

/// [`Requant`] parameters of 16 output channels, in the lane form the SIMD epilogues use
/// ([`Requant16::apply`] is that form in scalar code; it equals [`Requant::apply`] on every lane,
/// see its tests).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct Requant16 {
    /// `bias[c] - zp_in · Σ w[c]` (wrapping): the raw `Σ x · w` plus this is `dot_acc`.
    pub bias: [i32; LANES],
    /// The accumulator clamp: every `a >= ahi` requantizes to `qmax`, every `a <= alo` to `qmin`.
    pub alo: [i32; LANES],
    pub ahi: [i32; LANES],
    pub m: [i32; LANES],
    pub zp: [i32; LANES],
    pub lo: [i32; LANES],
    pub hi: [i32; LANES],
    /// `2^(shift-1)`, the rounding term, as `i64` lanes (even channels first, then odd ones:
    /// the order of `vpmuldq`'s even-lane products and of the odd lanes shifted down).
    pub rnd: [i64; LANES],
    /// `shift`, same order as `rnd`.
    pub shift: [i64; LANES],
    /// [`RequantRule::Float`]: `float_bias`, `float_multiplier` and `[qmin - zp, qmax - zp]` as
    /// `f32`.
    pub fb: [f32; LANES],
    pub fm: [f32; LANES],
    pub flo: [f32; LANES],
    pub fhi: [f32; LANES],
    /// The lanes' rule is [`RequantRule::Float`] (one layer's lanes share a rule).
    pub float: bool,
}

impl Requant16 {
    /// Lanes `i < r.len()` get `r[i]` and `bias[i]`; the rest copy lane 0 and are never stored.
    /// `1 <= r.len() <= 16`.
    pub fn new(r: &[Requant], bias: &[i32]) -> Requant16 {
        let mut l = Requant16 {
            bias: [0; LANES],
            alo: [0; LANES],
            ahi: [0; LANES],
            m: [0; LANES],
            zp: [0; LANES],
            lo: [0; LANES],
            hi: [0; LANES],
            rnd: [0; LANES],
            shift: [0; LANES],
            fb: [0.0; LANES],
            fm: [0.0; LANES],
            flo: [0.0; LANES],
            fhi: [0.0; LANES],
            float: r[0].rule == RequantRule::Float,
        };
        debug_assert!(r.iter().all(|q| q.rule == r[0].rule));
        for i in 0..LANES {
            let j = if i < r.len() { i } else { 0 };
            let q = &r[j];
            l.bias[i] = bias[j];
            (l.alo[i], l.ahi[i]) = crate::kernels::acc_clamp(q);
            l.m[i] = q.multiplier;
            l.zp[i] = q.zero_point;
            l.lo[i] = q.qmin;
            l.hi[i] = q.qmax;
            let k = Self::i64_lane(i);
            l.rnd[k] = 1i64 << (q.shift - 1);
            l.shift[k] = q.shift as i64;
            l.fb[i] = q.float_bias;
            l.fm[i] = q.float_multiplier;
            l.flo[i] = (q.qmin - q.zero_point) as f32;
            l.fhi[i] = (q.qmax - q.zero_point) as f32;
        }
        l
    }

    /// Where channel `i`'s `i64` parameters sit: even channels in `0..8`, odd ones in `8..16`.
    pub fn i64_lane(i: usize) -> usize {
        (i % 2) * 8 + i / 2
    }

    /// Lane `i` of the epilogue, as the SIMD code computes it: `a = clamp(acc + bias, alo, ahi)`,
    /// `(a · m + rnd) >> shift` in `i64` (arithmetic), its low 32 bits plus `zp`, clamped to
    /// `[lo, hi]`. The clamp to `[alo, ahi]` keeps the `i32` sum exact (the value then lies within
    /// `2^30 + 1` of `[qmin, qmax]`, see `acc_clamp`). `max` then `min`, as `vpmaxsd` /
    /// `vpminsd`: when `qmin = qmax`, `alo` may exceed `ahi`, and every `a` gives that one value.
    ///
    /// With [`RequantRule::Float`]: `(f32(acc + bias) + fb) · fm`, `max` `flo`, `min` `fhi`,
    /// rounded to nearest even, plus `zp` ([`crate::quant::requantize_float`], as `vcvtdq2ps`,
    /// `vaddps`, `vmulps`, `vmaxps`, `vminps`, `vcvtps2dq` compute it).
    #[inline(always)]
    pub fn apply(&self, i: usize, acc: i32) -> u8 {
        if self.float {
            let v = ((acc.wrapping_add(self.bias[i]) as f32 + self.fb[i]) * self.fm[i])
                .max(self.flo[i])
                .min(self.fhi[i]);
            return (v.round_ties_even() as i32 + self.zp[i]) as u8;
        }
        let a = acc.wrapping_add(self.bias[i]).max(self.alo[i]).min(self.ahi[i]);
        let k = Self::i64_lane(i);
        let v = ((a as i64 * self.m[i] as i64 + self.rnd[k]) >> self.shift[k]) as i32;
        v.wrapping_add(self.zp[i]).clamp(self.lo[i], self.hi[i]) as u8
    }
}

/// A residual add fused into the epilogue: the convolution's requantized `u8` output `qa` and the
/// residual's byte `qb` added as [`QAdd::apply`] does, in the lane form the SIMD epilogues use
/// ([`AddLanes::apply`]). The convolution is the add's first input (addition commutes: the two
/// sides of a [`QAdd`] may be swapped with its inputs).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct AddLanes {
    /// The add's requantization of `a' + b'`, on every lane (bias 0).
    pub out: Requant16,
    pub a_zero_point: i32,
    pub a_multiplier: i32,
    pub a_shift: u32,
    pub b_zero_point: i32,
    pub b_multiplier: i32,
    pub b_shift: u32,
}

impl AddLanes {
    /// `add` with the convolution as its first input `a`.
    pub fn new(add: &QAdd) -> AddLanes {
        AddLanes {
            out: Requant16::new(std::slice::from_ref(&add.out), &[0]),
            a_zero_point: add.a_zero_point,
            a_multiplier: add.a_multiplier,
            a_shift: add.a_shift,
            b_zero_point: add.b_zero_point,
            b_multiplier: add.b_multiplier,
            b_shift: add.b_shift,
        }
    }

    /// [`QAdd::apply`]`(qa, qb)` as the SIMD epilogues compute it: both sides' `mul_shift_round`
    /// (exact in `i64`, the results below `2^28` in magnitude), their `i32` sum through
    /// [`Requant16::apply`] of lane 0.
    #[inline(always)]
    pub fn apply(&self, qa: u8, qb: u8) -> u8 {
        let a = mul_shift_round(
            (qa as i32 - self.a_zero_point) << QADD_LEFT_SHIFT,
            self.a_multiplier,
            self.a_shift,
        );
        let b = mul_shift_round(
            (qb as i32 - self.b_zero_point) << QADD_LEFT_SHIFT,
            self.b_multiplier,
            self.b_shift,
        );
        self.out.apply(0, (a + b) as i32)
    }
}

/// OHWI `i8` weights (`[groups·cog, taps, cig]`) in VNNI layout: for each group `g`, block `b`
/// of 16 output channels, tap `t` and quad `q` of input channels, 64 bytes
/// `[w[g·cog + 16b + j][t][4q + i]]_{j<16, i<4}` (zeros past the group's channels and past
/// `cig`). A tap has `quads` quads (`ceil(cig / 4)` rounded up to a multiple of the pack's
/// alignment: 1 for `vpdpbusd`, up to 16 for an AMX tile of 16 rows). The quads of one
/// (group, block, tap) are contiguous: with `quads` a multiple of 16 each run of 16 quads is one
/// AMX B tile (16 rows of 64 bytes). [`PACK_SLACK`] zero bytes follow the last block.
#[derive(Clone, Debug)]
pub struct VnniPack {
    pub groups: usize,
    pub cig: usize,
    pub cog: usize,
    pub taps: usize,
    /// Quads per tap (see the struct's docs).
    pub quads: usize,
    /// Blocks of 16 output channels per group.
    pub blocks: usize,
    /// The input's zero point (the padding value).
    pub zp: u8,
    w: Vec<i8>,
    rq: Vec<Requant16>,
}

impl VnniPack {
    /// Packs `w` (OHWI, length checked by the caller) of a convolution with `groups` groups of
    /// `cig` input and `cog` output channels and `taps` kernel taps, `quad_align` quads per tap
    /// alignment; `requant.len() = groups·cog` (checked by the caller, as is `bias`); `zp` is the
    /// input's zero point.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        w: &[i8],
        (groups, cig, cog, taps): (usize, usize, usize, usize),
        quad_align: usize,
        requant: &[Requant],
        bias: Option<&[i32]>,
        zp: u8,
    ) -> VnniPack {
        let quads = cig.div_ceil(4).next_multiple_of(quad_align.max(1));
        let blocks = cog.div_ceil(LANES);
        let mut pw = vec![0i8; groups * blocks * taps * quads * QUAD_BYTES + PACK_SLACK];
        let mut rq = Vec::with_capacity(groups * blocks);
        let k = taps * cig;
        for g in 0..groups {
            for b in 0..blocks {
                let c0 = g * cog + b * LANES;
                let nc = (cog - b * LANES).min(LANES);
                let adj: Vec<i32> = (c0..c0 + nc)
                    .map(|co| {
                        let sum: i32 = w[co * k..(co + 1) * k].iter().map(|&v| v as i32).sum();
                        bias.map_or(0, |bs| bs[co]).wrapping_sub((zp as i32).wrapping_mul(sum))
                    })
                    .collect();
                rq.push(Requant16::new(&requant[c0..c0 + nc], &adj));
                for j in 0..nc {
                    let co = c0 + j;
                    for t in 0..taps {
                        for ci in 0..cig {
                            let at = (((g * blocks + b) * taps + t) * quads + ci / 4) * QUAD_BYTES + j * 4 + ci % 4;
                            pw[at] = w[(co * taps + t) * cig + ci];
                        }
                    }
                }
            }
        }
        VnniPack {
            groups,
            cig,
            cog,
            taps,
            quads,
            blocks,
            zp,
            w: pw,
            rq,
        }
    }

    /// The 64-byte rows of block `b` of group `g` at tap `t`: `quads` of them.
    #[inline(always)]
    pub fn weights(&self, g: usize, b: usize, t: usize) -> *const i8 {
        // SAFETY of the callers' reads: in bounds for g < groups, b < blocks, t < taps.
        self.w[(((g * self.blocks + b) * self.taps + t) * self.quads) * QUAD_BYTES..].as_ptr()
    }

    /// The epilogue of block `b` of group `g`.
    #[inline(always)]
    pub fn requant(&self, g: usize, b: usize) -> &Requant16 {
        &self.rq[g * self.blocks + b]
    }

    /// Bytes per padded pixel: `groups · 4 · quads`.
    pub fn pixel_bytes(&self) -> usize {
        self.groups * 4 * self.quads
    }
}

/// The padded copy of an NHWC `u8` input the VNNI and AMX kernels read:
/// `[batch, in_h + 2·ph, in_w + 2·pw, groups, 4·quads]` bytes, the input's zero point in the
/// spatial padding (real 0, so padded taps add nothing once the folded bias subtracts
/// `zp · Σ w`), 0 in the channel padding (whose weights are 0), and `slack` bytes after the end
/// for loads that run past the last pixel into weights that are zero.
#[derive(Clone, Copy, Debug)]
pub struct PaddedInput {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub groups: usize,
    pub cig: usize,
    /// Bytes per group per pixel (`4 · quads`).
    pub cgp: usize,
    pub ph: usize,
    pub pw: usize,
}

impl PaddedInput {
    /// The padded input of `g` for `pk`.
    pub fn new(g: &Conv2dGeom, pk: &VnniPack) -> PaddedInput {
        PaddedInput {
            batch: g.batch,
            in_h: g.in_h,
            in_w: g.in_w,
            groups: g.groups,
            cig: pk.cig,
            cgp: 4 * pk.quads,
            ph: g.h.padding,
            pw: g.w.padding,
        }
    }
    pub fn hp(&self) -> usize {
        self.in_h + 2 * self.ph
    }
    pub fn wp(&self) -> usize {
        self.in_w + 2 * self.pw
    }
    /// Bytes per padded pixel.
    pub fn pixel(&self) -> usize {
        self.groups * self.cgp
    }
    /// Bytes per padded row.
    pub fn row(&self) -> usize {
        self.wp() * self.pixel()
    }
    /// Bytes per padded image.
    pub fn image(&self) -> usize {
        self.hp() * self.row()
    }

    /// Fills `buf` with the padded copy of `x` (`batch·in_h·in_w·groups·cig` bytes, checked by the
    /// caller), `slack` bytes of 0 after it. `zp` is written where the window leaves the image.
    pub fn fill(&self, x: &[u8], zp: u8, slack: usize, buf: &mut Vec<u8>) {
        buf.clear();
        buf.resize(self.batch * self.image() + slack, 0);
        let (pix, c) = (self.pixel(), self.groups * self.cig);
        for n in 0..self.batch {
            let img = &mut buf[n * self.image()..(n + 1) * self.image()];
            for (hp, row) in img.chunks_exact_mut(self.row()).enumerate() {
                let inside_h = hp >= self.ph && hp < self.ph + self.in_h;
                for (wp, px) in row.chunks_exact_mut(pix).enumerate() {
                    if !inside_h || wp < self.pw || wp >= self.pw + self.in_w {
                        for grp in px.chunks_exact_mut(self.cgp) {
                            grp[..self.cig].fill(zp);
                        }
                        continue;
                    }
                    let src = &x[((n * self.in_h + hp - self.ph) * self.in_w + wp - self.pw) * c..][..c];
                    if self.cgp == self.cig {
                        px.copy_from_slice(src);
                    } else {
                        for (grp, s) in px.chunks_exact_mut(self.cgp).zip(src.chunks_exact(self.cig)) {
                            grp[..self.cig].copy_from_slice(s);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QRange;
    use crate::SplitMix64;

    /// Requantizations over the whole multiplier range (shift 1..=62), narrowed output ranges
    /// (one value wide included), and accumulators at the `i32` extremes as well as near the
    /// rounding ties.
    fn cases(r: &mut SplitMix64) -> Vec<(Requant, i32, i32)> {
        (0..20_000)
            .map(|_| {
                let (multiplier, shift) = if r.next_u64().is_multiple_of(2) {
                    (
                        ((1u64 << 30) + r.next_u64() % (1 << 30)) as i32,
                        1 + (r.next_u64() % 62) as u32,
                    )
                } else {
                    // Few multiplier bits and a small shift: `acc · m` often lands on a tie.
                    let t = (r.next_u64() % 4) as u32;
                    let m = ((1u64 << 30) + r.next_u64() % (1 << 30)) as i32;
                    ((m >> (30 - t)) << (30 - t), 31 + (r.next_u64() % 10) as u32)
                };
                let zero_point = (r.next_u64() % 256) as i32;
                let qmin = (r.next_u64() % (zero_point as u64 + 1)) as i32;
                let qmax = zero_point + (r.next_u64() % (256 - zero_point as u64)) as i32;
                // A third use the float rule, with the same multiplier in f32 (or a power of
                // two, whose products of small accumulators land on exact ties).
                let float = r.next_u64().is_multiple_of(3);
                let real = (multiplier as f64 * 0.5f64.powi(shift as i32)) as f32;
                let float_multiplier = match r.next_u64() % 3 {
                    0 => 0.5f32.powi((r.next_u64() % 20) as i32),
                    _ if real.is_normal() => real,
                    _ => 1e-3,
                };
                // The float rule's bias half the time: quarters (ties with small accumulators).
                let float_bias = match r.next_u64() % 4 {
                    0 | 1 => 0.0,
                    2 => (r.next_u64() % 8001) as f32 * 0.25 - 1000.0,
                    _ => (r.next_u64() as i32 >> (r.next_u64() % 31)) as f32 * 0.37,
                };
                let q = Requant {
                    multiplier,
                    shift,
                    float_multiplier,
                    float_bias,
                    rule: if float {
                        RequantRule::Float
                    } else {
                        RequantRule::Integer
                    },
                    zero_point,
                    qmin,
                    qmax,
                };
                let acc = match r.next_u64() % 4 {
                    0 => [i32::MIN, i32::MAX, 0, -1, 1][(r.next_u64() % 5) as usize],
                    1 => (r.next_u64() % 2048) as i32 - 1024,
                    _ => r.next_u64() as i32 >> (r.next_u64() % 31),
                };
                (q, acc, r.next_u64() as i32 >> (r.next_u64() % 31))
            })
            .collect()
    }

    #[test]
    fn lanes_equal_requant_apply() {
        let r = &mut SplitMix64::new(3);
        for (q, acc, bias) in cases(r) {
            let l = Requant16::new(&[q], &[bias]);
            for i in [0, 1, 15] {
                assert_eq!(
                    l.apply(i, acc) as i32,
                    q.apply(acc.wrapping_add(bias)),
                    "{q:?} {acc} {bias}"
                );
            }
        }
        // One value wide: `alo` may exceed `ahi`.
        let q = Requant {
            qmin: 7,
            qmax: 7,
            ..Requant::from_real(0.01, 7, QRange::U8).unwrap()
        };
        let l = Requant16::new(&[q], &[0]);
        assert!([i32::MIN, 0, i32::MAX].iter().all(|&a| l.apply(0, a) == 7));
    }

    /// The comparison above catches a rounding off by one (ties rounded down), so a kernel test
    /// that compares against the reference catches it too.
    #[test]
    fn broken_rounding_is_caught() {
        let r = &mut SplitMix64::new(4);
        let differ = cases(r)
            .into_iter()
            .filter(|&(q, acc, bias)| {
                let mut l = Requant16::new(&[q], &[bias]);
                l.rnd[0] -= 1;
                l.apply(0, acc) as i32 != q.apply(acc.wrapping_add(bias))
            })
            .count();
        assert!(differ > 0);
    }

    #[test]
    fn add_lanes_equal_qadd_apply() {
        use crate::quant::QParams;
        let r = &mut SplitMix64::new(5);
        for _ in 0..2000 {
            let mut q = || {
                let scale = 2f32.powf(r.uniform(-10.0, 2.0));
                QParams::new(scale, (r.next_u64() % 256) as i32, QRange::U8).unwrap()
            };
            let (a, b, o) = (q(), q(), q());
            let Ok(add) = QAdd::new(&a, &b, &o) else { continue };
            let add = if r.next_u64().is_multiple_of(2) {
                add.with_relu()
            } else {
                add
            };
            let lanes = AddLanes::new(&add);
            for _ in 0..20 {
                let (qa, qb) = (r.next_u64() as u8, r.next_u64() as u8);
                assert_eq!(
                    lanes.apply(qa, qb) as i32,
                    add.apply(qa as i32, qb as i32),
                    "{add:?} {qa} {qb}"
                );
            }
        }
    }

    #[test]
    fn pack_layout_and_folded_bias() {
        // 2 groups of 5 input and 17 output channels, 2 taps: blocks of 16 and 1.
        let (groups, cig, cog, taps) = (2, 5, 17, 2);
        let w: Vec<i8> = (0..groups * cog * taps * cig).map(|i| (i % 251) as i8).collect();
        let q = Requant::from_real(0.01, 0, QRange::U8).unwrap();
        let requant = vec![q; groups * cog];
        let bias: Vec<i32> = (0..groups * cog).map(|c| 1000 * c as i32).collect();
        let pk = VnniPack::new(&w, (groups, cig, cog, taps), 1, &requant, Some(&bias), 9);
        assert_eq!((pk.quads, pk.blocks, pk.pixel_bytes()), (2, 2, 16));
        for g in 0..groups {
            for b in 0..pk.blocks {
                for t in 0..taps {
                    let rows = unsafe { std::slice::from_raw_parts(pk.weights(g, b, t), pk.quads * QUAD_BYTES) };
                    for q in 0..pk.quads {
                        for j in 0..LANES {
                            for i in 0..4 {
                                let (co, ci) = (g * cog + b * LANES + j, 4 * q + i);
                                let want = if b * LANES + j < cog && ci < cig {
                                    w[(co * taps + t) * cig + ci]
                                } else {
                                    0
                                };
                                assert_eq!(rows[q * QUAD_BYTES + 4 * j + i], want);
                            }
                        }
                    }
                }
            }
            let co = g * cog + 16;
            let sum: i32 = w[co * taps * cig..(co + 1) * taps * cig]
                .iter()
                .map(|&v| v as i32)
                .sum();
            assert_eq!(pk.requant(g, 1).bias[0], bias[co] - 9 * sum);
        }
        // AMX alignment: quads rounded up to 16.
        let pk16 = VnniPack::new(&w, (groups, cig, cog, taps), 16, &requant, Some(&bias), 9);
        assert_eq!(pk16.quads, 16);
    }

    #[test]
    fn padded_input_holds_zero_point_around_and_zero_in_channel_padding() {
        // 1 image 2x3, 2 groups of 3 channels, padding 1 both ways, quads of 4 bytes.
        let x: Vec<u8> = (1..=36).collect();
        let p = PaddedInput {
            batch: 1,
            in_h: 2,
            in_w: 3,
            groups: 2,
            cig: 3,
            cgp: 4,
            ph: 1,
            pw: 1,
        };
        let mut buf = Vec::new();
        p.fill(&x, 200, 8, &mut buf);
        assert_eq!(buf.len(), 4 * 5 * 8 + 8);
        // Corner (padding): zp in the channels, 0 in the channel padding.
        assert_eq!(&buf[..8], &[200, 200, 200, 0, 200, 200, 200, 0]);
        // Pixel (0, 0) of the image sits at padded (1, 1).
        let at = p.row() + p.pixel();
        assert_eq!(&buf[at..at + 8], &[1, 2, 3, 0, 4, 5, 6, 0]);
        assert!(buf[buf.len() - 8..].iter().all(|&b| b == 0));
    }
}
