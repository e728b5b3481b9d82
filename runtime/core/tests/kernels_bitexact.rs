//! The optimised kernels ([`qc_runtime::kernels::fast`], AVX2 where the CPU has it) against the
//! scalar reference, bit for bit, on random shapes and parameters: zero points over 0..=255,
//! per-channel requantization, outputs saturating at 0 and 255 and at fused ReLU/ReLU6 bounds,
//! channel counts that leave SIMD tails, strides 1-3, padding, dilation, groups and depthwise;
//! and the 7-bit (`vpmaddubsw`) convolution and linear paths, chosen by an input range within
//! `[0, 127]`, on inputs and zero points in that range.

use proptest::prelude::*;
use qc_runtime::kernels::fast::{self, Isa, PackedConv, PackedLinear};
use qc_runtime::kernels::vnni::AddLanes;
use qc_runtime::kernels::{
    reference, Activation, Axis, ConcatPart, Conv2dGeom, KernelError, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d,
    QConcat, QConv2d, QGlobalAvgPool, QLinear,
};
use qc_runtime::quant::{accumulator_fits, QAdd, QParams, QRange, Requant, RequantRule};
use qc_runtime::SplitMix64;

const CASES: u32 = 1000;

/// The AVX2 path where the CPU has it, else the scalar one: the AVX2 checks below pack for it
/// explicitly, so they test the AVX2 kernels on CPUs whose best path is a VNNI or AMX one too.
fn avx2() -> Isa {
    if Isa::Avx2.check().is_ok() {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

/// Whether this CPU lacks `isa`; the first time for each path, says so on stderr (written
/// directly, so the test harness does not capture it): `skipped: this CPU has no ...`.
fn lacks(isa: Isa) -> bool {
    static SAID: [std::sync::Once; 5] = [const { std::sync::Once::new() }; 5];
    match isa.check() {
        Ok(()) => false,
        Err(why) => {
            SAID[isa as usize].call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "skipped: this CPU has no {} ({why})", isa.name());
            });
            true
        }
    }
}

fn pick<T: Copy>(r: &mut SplitMix64, xs: &[T]) -> T {
    xs[(r.next_u64() % xs.len() as u64) as usize]
}

fn below(r: &mut SplitMix64, n: u64) -> u64 {
    r.next_u64() % n
}

/// A requantization whose multiplier `m · 2^-shift` spreads typical accumulators over and past the
/// u8 range; output range narrowed (fused ReLU / ReLU6 / clamp) half of the time.
fn requant(r: &mut SplitMix64, k: usize) -> Requant {
    let multiplier = ((1u64 << 30) + below(r, 1 << 30)) as i32;
    // M = m · 2^-shift ≈ 2^(30 - shift). Typical |acc| ~ sqrt(k) · 74 · 74 = 2^e: M around 2^-e
    // (± a few octaves) spreads outputs over and past the u8 range.
    let e = ((k as f64).sqrt() * 5500.0).log2() as i64;
    let (multiplier, shift) = if below(r, 3) == 0 {
        // M = m' · 2^-e' with few multiplier bits and e' < e: `acc · m` often lands exactly on a
        // rounding tie (half-up must match), outputs near the zero point or saturated.
        let t = below(r, 4) as u32;
        (
            (multiplier >> (30 - t)) << (30 - t),
            (30 + below(r, e as u64 + 1) as i64) as u32,
        )
    } else {
        (multiplier, (30 + e - 3 + below(r, 8) as i64).clamp(1, 62) as u32)
    };
    let zero_point = below(r, 256) as i32;
    let (qmin, qmax) = match below(r, 4) {
        0 => (0, 255),
        1 => (zero_point, 255),
        2 => (zero_point, (zero_point + below(r, 40) as i32).min(255)),
        _ => (
            below(r, zero_point as u64 + 1) as i32,
            zero_point + below(r, (256 - zero_point) as u64) as i32,
        ),
    };
    Requant {
        multiplier,
        shift,
        // The same multiplier in f32, for the float rule (`requants` picks the rule per layer).
        float_multiplier: (multiplier as f64 * 0.5f64.powi(shift as i32)) as f32,
        float_bias: 0.0,
        rule: RequantRule::Integer,
        zero_point,
        qmin,
        qmax,
    }
}

/// One layer's requantizations (`n` channels): one rule for all, the float rule half the time,
/// and then half the time a float bias (`requantize: float_bias`) in accumulator units: quarters
/// up to ± a few thousand, so that sums with the accumulator land on rounding ties as well.
fn requants(r: &mut SplitMix64, n: usize, k: usize) -> Vec<Requant> {
    let rule = pick(r, &[RequantRule::Integer, RequantRule::Float]);
    let float_bias = rule == RequantRule::Float && below(r, 2) == 0;
    (0..n)
        .map(|_| Requant {
            rule,
            float_bias: if float_bias {
                below(r, 16001) as f32 * 0.25 - 2000.0
            } else {
                0.0
            },
            ..requant(r, k)
        })
        .collect()
}

fn u8s(r: &mut SplitMix64, n: usize) -> Vec<u8> {
    (0..n).map(|_| r.next_u64() as u8).collect()
}

/// Weights, mostly uniform, sometimes all at the extremes -128 / 127.
fn i8s(r: &mut SplitMix64, n: usize) -> Vec<i8> {
    let extreme = below(r, 5) == 0;
    (0..n)
        .map(|_| {
            if extreme {
                pick(r, &[-128i8, 127])
            } else {
                r.next_u64() as i8
            }
        })
        .collect()
}

fn bias(r: &mut SplitMix64, n: usize, k: usize, zp: i32) -> Option<Vec<i32>> {
    (below(r, 4) != 0).then(|| {
        (0..n)
            .map(|_| {
                let b = below(r, 1 << 17) as i32 - (1 << 16);
                if accumulator_fits(k as u64, QRange::U8, zp, QRange::I8, b) {
                    b
                } else {
                    0
                }
            })
            .collect()
    })
}

/// An output element compared bit for bit (an `f32` by its bit pattern, so that `-0.0` and `0.0`
/// differ); `FILL` starts the optimised kernel's buffer, so that an output it never writes shows.
trait Bits: Copy + Default + std::fmt::Debug {
    const FILL: Self;
    fn bits(self) -> u32;
}

impl Bits for u8 {
    const FILL: u8 = 1;
    fn bits(self) -> u32 {
        self as u32
    }
}

impl Bits for f32 {
    const FILL: f32 = 1.0;
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

/// The one harness every op goes through: the reference kernel and the optimised one each write
/// `n` outputs, which must be the same bits; returns the reference's.
fn same_bits<T: Bits>(
    n: usize,
    what: &dyn std::fmt::Debug,
    reference: impl FnOnce(&mut [T]) -> Result<(), KernelError>,
    fast: impl FnOnce(&mut [T]) -> Result<(), KernelError>,
) -> Result<Vec<T>, TestCaseError> {
    let mut want = vec![T::default(); n];
    reference(&mut want).unwrap();
    let mut got = vec![T::FILL; n];
    fast(&mut got).unwrap();
    let bits = |v: &[T]| v.iter().map(|x| x.bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&got), bits(&want), "{:?}", what);
    Ok(want)
}

/// A convolution's per-channel requantizations, drawn for its reduction length.
fn conv_params(r: &mut SplitMix64, geom: Conv2dGeom, zp: i32) -> QConv2d {
    let k = geom.reduction_len();
    QConv2d {
        geom,
        input_zero_point: zp,
        requant: requants(r, geom.out_c, k),
    }
}

/// The reference convolution `p` (run with `geom`, which may differ from the pack's) against
/// `packed`, bit for bit.
fn conv_same_bits(
    p: &QConv2d,
    (x, wt, b): (&[u8], &[i8], Option<&[i32]>),
    packed: &PackedConv,
    geom: Conv2dGeom,
    what: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    let n = geom.output_len().unwrap();
    let p = QConv2d { geom, ..p.clone() };
    let reference = |o: &mut [u8]| reference::qconv2d(&p, x, wt, b, o);
    same_bits(n, what, reference, |o| packed.run(&geom, x, o)).map(drop)
}

/// A random convolution axis: kernel `1..=max_kernel`, stride 1-3, dilation 1-2, padding up to
/// the kernel.
fn conv_axis(r: &mut SplitMix64, max_kernel: u64) -> Axis {
    let kernel = 1 + below(r, max_kernel) as usize;
    let stride = 1 + below(r, 3) as usize;
    let dilation = 1 + below(r, 2) as usize;
    let padding = below(r, kernel as u64 + 1) as usize;
    Axis::new(kernel, stride, padding, dilation)
}

/// A random geometry for `(in_c, out_c, groups)`: both axes `stem`'s, else [`conv_axis`] and a
/// 1-D case (height 1) a sixth of the time; each input side at least one window plus
/// `0..extra`, batch 1-2.
fn conv_geom(
    r: &mut SplitMix64,
    (in_c, out_c, groups): (usize, usize, usize),
    max_kernel: u64,
    extra: u64,
    stem: Option<Axis>,
) -> Conv2dGeom {
    let one_d = stem.is_none() && below(r, 6) == 0;
    let axis = |r: &mut SplitMix64| stem.unwrap_or_else(|| conv_axis(r, max_kernel));
    let (h, w) = (axis(r), axis(r));
    let h = if one_d { Axis::new(1, 1, 0, 1) } else { h };
    let in_len =
        |r: &mut SplitMix64, a: &Axis| (a.span().saturating_sub(2 * a.padding)).max(1) + below(r, extra) as usize;
    let in_h = if one_d { 1 } else { in_len(r, &h) };
    let in_w = in_len(r, &w);
    Conv2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h,
        in_w,
        in_c,
        out_c,
        h,
        w,
        groups,
    }
}

/// A geometry with axis `a` both ways.
fn square(batch: usize, [in_h, in_w]: [usize; 2], (in_c, out_c, groups): (usize, usize, usize), a: Axis) -> Conv2dGeom {
    Conv2dGeom {
        batch,
        in_h,
        in_w,
        in_c,
        out_c,
        h: a,
        w: a,
        groups,
    }
}

/// A random convolution against the reference: 8-bit inputs with any zero point (depthwise a
/// quarter of the time), or (`seven`) a 7-bit input range and zero point, packed for that range.
fn check_conv(seed: u64, seven: bool) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let depthwise = !seven && below(r, 4) == 0;
    let (cig, cog, groups) = if depthwise {
        let c = pick(r, &[1, 2, 3, 4, 7, 8, 16, 17, 33, 65]);
        (1, 1, c)
    } else if seven {
        let groups = pick(r, &[1, 1, 1, 2, 3]);
        (
            pick(r, &[1, 3, 4, 7, 8, 17, 33, 65]),
            pick(r, &[1, 3, 7, 8, 9, 16, 17, 24, 33]),
            groups,
        )
    } else {
        let groups = pick(r, &[1, 1, 1, 2, 3]);
        (
            pick(r, &[1, 2, 3, 4, 7, 8, 16, 17, 33]),
            pick(r, &[1, 3, 7, 8, 9, 16, 17, 24]),
            groups,
        )
    };
    let geom = conv_geom(r, (cig * groups, cog * groups, groups), 3, 7, None);
    if geom.out_hw().is_err() {
        return Ok(());
    }
    let k = geom.reduction_len();
    let (range, zp) = if seven {
        range7(r)
    } else {
        (QRange::U8, below(r, 256) as i32)
    };
    let p = conv_params(r, geom, zp);
    let x = if seven {
        u7s(r, geom.input_len(), range)
    } else {
        u8s(r, geom.input_len())
    };
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, geom.out_c, k, zp);
    let packed = if seven {
        let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), avx2(), range).unwrap();
        // One input and one output channel per group is the depthwise kernel's case.
        prop_assert_eq!(packed.seven_bit(), avx2() == Isa::Avx2 && (cig, cog) != (1, 1));
        packed
    } else {
        PackedConv::with_isa(&p, &wt, b.as_deref(), avx2()).unwrap()
    };
    let what = (geom, range, zp, packed.isa());
    conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &what)
}

/// Which VNNI-layout kernels a check packs for: the emulated lanes (any CPU), or a real path.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Vnni {
    /// [`PackedConv::emulated_vnni`].
    Emulated,
    /// [`PackedConv::emulated_amx`].
    EmulatedAmx,
    On(Isa),
}

impl Vnni {
    /// `true` (after saying so once) when this CPU lacks the path.
    fn skipped(self) -> bool {
        match self {
            Vnni::Emulated | Vnni::EmulatedAmx => false,
            Vnni::On(isa) => lacks(isa),
        }
    }

    /// The kernel name [`PackedConv::kernel`] gives for a non-depthwise convolution.
    fn kernel(self) -> &'static str {
        match self {
            Vnni::Emulated => "emulated vnni",
            Vnni::EmulatedAmx => "emulated amx",
            Vnni::On(isa) => isa.name(),
        }
    }

    fn conv(self, p: &QConv2d, wt: &[i8], b: Option<&[i32]>) -> PackedConv {
        match self {
            Vnni::Emulated => PackedConv::emulated_vnni(p, wt, b).unwrap(),
            Vnni::EmulatedAmx => PackedConv::emulated_amx(p, wt, b).unwrap(),
            Vnni::On(isa) => PackedConv::with_isa(p, wt, b, isa).unwrap(),
        }
    }

    fn linear(self, p: &QLinear, wt: &[i8], b: Option<&[i32]>) -> PackedLinear {
        match self {
            Vnni::Emulated => PackedLinear::emulated_vnni(p, wt, b).unwrap(),
            Vnni::EmulatedAmx => PackedLinear::emulated_amx(p, wt, b).unwrap(),
            Vnni::On(isa) => PackedLinear::with_isa(p, wt, b, isa).unwrap(),
        }
    }
}

/// A random convolution on the VNNI-layout kernels of `path`: groups, channel counts around the
/// 16-lane blocks and 4-byte quads, kernels 1-3 with strides, padding and dilation, 1-D cases,
/// batch 1-2, zero points 0, 255 and any, weights at the extremes; depthwise (which the real
/// paths leave to the AVX2 kernels) through the emulated lanes.
fn check_conv_vnni(seed: u64, path: Vnni) -> Result<(), TestCaseError> {
    if path.skipped() {
        return Ok(());
    }
    let r = &mut SplitMix64::new(seed);
    let groups = pick(r, &[1, 1, 1, 2, 3]);
    let (cig, cog) = (
        pick(r, &[1, 2, 3, 4, 5, 7, 8, 16, 17, 33, 64, 65]),
        pick(r, &[1, 3, 7, 15, 16, 17, 24, 31, 32, 33, 48, 49]),
    );
    let geom = conv_geom(r, (cig * groups, cog * groups, groups), 3, 7, None);
    if geom.out_hw().is_err() {
        return Ok(());
    }
    let any = below(r, 256) as i32;
    let zp = pick(r, &[0, 255, any, any]);
    let p = conv_params(r, geom, zp);
    let x = u8s(r, geom.input_len());
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, geom.out_c, geom.reduction_len(), zp);
    let packed = path.conv(&p, &wt, b.as_deref());
    if (cig, cog) != (1, 1) || matches!(path, Vnni::Emulated | Vnni::EmulatedAmx) {
        prop_assert_eq!(packed.kernel(), path.kernel());
    }
    conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &(geom, zp, path))
}

/// A random convolution with a residual add fused into its epilogue ([`PackedConv::run_add`]) on
/// the VNNI-layout kernels of `path`, against the reference convolution followed by the
/// reference add; ReLU fused into the add half of the time (ResNet's conv → add → relu).
fn check_conv_add_vnni(seed: u64, path: Vnni) -> Result<(), TestCaseError> {
    if path.skipped() {
        return Ok(());
    }
    let r = &mut SplitMix64::new(seed);
    let groups = pick(r, &[1, 1, 2]);
    let (cig, cog) = (pick(r, &[3, 8, 16, 17, 64]), pick(r, &[1, 7, 16, 17, 32, 33]));
    let geom = conv_geom(r, (cig * groups, cog * groups, groups), 3, 5, None);
    let Ok(n) = geom.output_len() else {
        return Ok(());
    };
    let zp = below(r, 256) as i32;
    let p = conv_params(r, geom, zp);
    let x = u8s(r, geom.input_len());
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, geom.out_c, geom.reduction_len(), zp);
    let conv_out = QParams::new(1.0, p.requant[0].zero_point, QRange::U8).unwrap();
    let Ok(add) = QAdd::new(&conv_out, &qparams(r), &qparams(r)) else {
        return Ok(());
    };
    let add = if below(r, 2) == 0 { add.with_relu() } else { add };
    let residual = u8s(r, n);
    let packed = path.conv(&p, &wt, b.as_deref());
    prop_assert!(packed.fuses_add());
    let reference = |o: &mut [u8]| {
        let mut c = vec![0u8; n];
        reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut c)?;
        reference::qadd(&add, &c, &residual, o)
    };
    let lanes = AddLanes::new(&add);
    let fused = |o: &mut [u8]| packed.run_add(&geom, &x, &lanes, &residual, o);
    same_bits(n, &(geom, zp, add, path), reference, fused).map(drop)
}

/// A random linear layer on the VNNI-layout kernels of `path`: batch 1-40 (tiles of 12, 4 and 1
/// pixels), `K` around the quads, `M` around the blocks.
fn check_linear_vnni(seed: u64, path: Vnni) -> Result<(), TestCaseError> {
    if path.skipped() {
        return Ok(());
    }
    let r = &mut SplitMix64::new(seed);
    let batch = 1 + below(r, 40) as usize;
    let k = pick(r, &[1, 2, 3, 4, 5, 7, 16, 17, 63, 64, 65, 130, 300]);
    let m = pick(r, &[1, 3, 7, 15, 16, 17, 32, 33, 65, 70]);
    let any = below(r, 256) as i32;
    let zp = pick(r, &[0, 255, any, any]);
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: requants(r, m, k),
    };
    let x = u8s(r, batch * k);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let packed = path.linear(&p, &wt, b.as_deref());
    // One input and one output feature is a depthwise convolution: the real paths give it to
    // the AVX2 depthwise kernel (the emulated ones are forced).
    if (k, m) != (1, 1) || matches!(path, Vnni::Emulated | Vnni::EmulatedAmx) {
        prop_assert_eq!(packed.kernel(), path.kernel());
    }
    let reference = |o: &mut [u8]| reference::qlinear(&p, &x, &wt, b.as_deref(), o);
    same_bits(batch * m, &(batch, k, m, zp, path), reference, |o| {
        packed.run(batch, &x, o)
    })
    .map(drop)
}

/// Whether this CPU runs the real AMX kernels; otherwise says why, once, and the AMX checks pass
/// without running.
fn amx_runs() -> bool {
    static SAID: std::sync::Once = std::sync::Once::new();
    match Isa::Amx.check() {
        Ok(()) => true,
        Err(why) => {
            SAID.call_once(|| println!("skipped: this CPU has no AMX-INT8 ({why})"));
            false
        }
    }
}

/// A convolution packed for the AMX driver: emulated tiles (`real` false, every CPU) or the
/// instructions (`real`, [`Isa::Amx`]); `None` when `real` and this CPU has no AMX.
fn amx_conv(p: &QConv2d, wt: &[i8], b: Option<&[i32]>, real: bool) -> Option<PackedConv> {
    if real {
        if !amx_runs() {
            return None;
        }
        let packed = PackedConv::with_isa(p, wt, b, Isa::Amx).unwrap();
        assert_eq!(packed.isa(), Isa::Amx);
        return Some(packed);
    }
    #[cfg(target_arch = "x86_64")]
    return Some(PackedConv::emulated_amx(p, wt, b).unwrap());
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// [`amx_conv`] for a linear layer.
fn amx_linear(p: &QLinear, wt: &[i8], b: Option<&[i32]>, real: bool) -> Option<PackedLinear> {
    if real {
        if !amx_runs() {
            return None;
        }
        let packed = PackedLinear::with_isa(p, wt, b, Isa::Amx).unwrap();
        assert_eq!(packed.isa(), Isa::Amx);
        return Some(packed);
    }
    #[cfg(target_arch = "x86_64")]
    return Some(PackedLinear::emulated_amx(p, wt, b).unwrap());
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A random convolution on the AMX driver ([`amx_conv`]): groups 1-3, input channels per group
/// 1-130 (one K-chunk of fewer than 16 quads, exactly 16, or several chunks of 16 with a padded
/// last one), output channels leaving block and pair tails, kernels 1-3 (or, an eighth of the
/// time, ResNet's 7x7 stride-2 stem), strides 1-3, padding, dilation 1-2, 1-D cases, batch 1-3,
/// widths up to ~45 so that output rows of 16 and more pixels load A tiles straight from the
/// padded input while row ends, narrow maps and the last pixels gather; zero points 0, 255 and
/// any; weights sometimes all at -128 / 127 and inputs sometimes all 255.
fn check_conv_amx(seed: u64, real: bool) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let groups = pick(r, &[1, 1, 1, 2, 3]);
    let stem = below(r, 8) == 0;
    let cig = if stem {
        pick(r, &[1, 3, 4])
    } else if below(r, 2) == 0 {
        pick(
            r,
            &[1, 2, 3, 4, 5, 7, 8, 16, 17, 33, 63, 64, 65, 68, 127, 128, 129, 130],
        )
    } else {
        1 + below(r, 130) as usize
    };
    let cog = if below(r, 2) == 0 {
        pick(r, &[1, 3, 7, 15, 16, 17, 24, 31, 32, 33, 48, 49, 64, 70])
    } else {
        1 + below(r, 70) as usize
    };
    let (h, w) = if stem {
        (Axis::new(7, 2, 3, 1), Axis::new(7, 2, 3, 1))
    } else {
        (conv_axis(r, 3), conv_axis(r, 3))
    };
    let one_d = !stem && below(r, 6) == 0;
    let h = if one_d { Axis::new(1, 1, 0, 1) } else { h };
    let side = |a: &Axis, extra: u64, r: &mut SplitMix64| {
        (a.span().saturating_sub(2 * a.padding)).max(1) + below(r, extra) as usize
    };
    let in_h = if one_d { 1 } else { side(&h, 5, r) };
    let in_w = side(&w, 16 * w.stride as u64 + 30, r);
    let geom = Conv2dGeom {
        batch: 1 + below(r, 3) as usize,
        in_h,
        in_w,
        in_c: cig * groups,
        out_c: cog * groups,
        h,
        w,
        groups,
    };
    if geom.out_hw().is_err() {
        return Ok(());
    }
    let any = below(r, 256) as i32;
    let zp = pick(r, &[0, 255, any, any]);
    let p = conv_params(r, geom, zp);
    let x = if below(r, 8) == 0 {
        vec![255; geom.input_len()]
    } else {
        u8s(r, geom.input_len())
    };
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, geom.out_c, geom.reduction_len(), zp);
    let Some(packed) = amx_conv(&p, &wt, b.as_deref(), real) else {
        return Ok(());
    };
    // Depthwise (one input and one output channel per group) takes the AVX2 kernel on real AMX.
    if (cig, cog) != (1, 1) || !real {
        prop_assert_eq!(packed.kernel(), if real { "amx" } else { "emulated amx" });
    }
    conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &(geom, zp))
}

/// A random linear layer on the AMX driver: batch 1-40 (the pixels of one output row: 16 and 32
/// load straight, the rest gather), K 1-300, M 1-70, zero points 0, 255 and any.
fn check_linear_amx(seed: u64, real: bool) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let batch = if below(r, 2) == 0 {
        pick(r, &[1, 15, 16, 17, 31, 32, 33, 40])
    } else {
        1 + below(r, 40) as usize
    };
    let k = if below(r, 2) == 0 {
        pick(r, &[1, 3, 4, 63, 64, 65, 128, 129, 300])
    } else {
        1 + below(r, 300) as usize
    };
    let m = 1 + below(r, 70) as usize;
    let any = below(r, 256) as i32;
    let zp = pick(r, &[0, 255, any, any]);
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: requants(r, m, k),
    };
    let x = u8s(r, batch * k);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let Some(packed) = amx_linear(&p, &wt, b.as_deref(), real) else {
        return Ok(());
    };
    // One input and one output feature is depthwise: the AVX2 kernel on real AMX.
    if (k, m) != (1, 1) || !real {
        prop_assert_eq!(packed.kernel(), if real { "amx" } else { "emulated amx" });
    }
    let reference = |o: &mut [u8]| reference::qlinear(&p, &x, &wt, b.as_deref(), o);
    same_bits(batch * m, &(batch, k, m, zp), reference, |o| packed.run(batch, &x, o)).map(drop)
}

/// A random linear layer against the reference: 8-bit inputs with any zero point, or (`seven`) a
/// 7-bit input range and zero point, packed for that range.
fn check_linear(seed: u64, seven: bool) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let batch = pick(r, &[1, 1, 2, 3, 5, 8]);
    let ks: &[usize] = if seven {
        &[1, 3, 4, 7, 17, 33, 64, 65, 130]
    } else {
        &[1, 2, 3, 7, 16, 17, 33, 64, 65, 130]
    };
    let k = pick(r, ks);
    let m = pick(r, &[1, 3, 7, 8, 9, 16, 17, 33, 65]);
    let (range, zp) = if seven {
        range7(r)
    } else {
        (QRange::U8, below(r, 256) as i32)
    };
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: requants(r, m, k),
    };
    let x = if seven {
        u7s(r, batch * k, range)
    } else {
        u8s(r, batch * k)
    };
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let packed = if seven {
        let packed = PackedLinear::with_input_range(&p, &wt, b.as_deref(), avx2(), range).unwrap();
        prop_assert_eq!(packed.seven_bit(), avx2() == Isa::Avx2 && (k, m) != (1, 1));
        packed
    } else {
        PackedLinear::with_isa(&p, &wt, b.as_deref(), avx2()).unwrap()
    };
    let reference = |o: &mut [u8]| reference::qlinear(&p, &x, &wt, b.as_deref(), o);
    let what = (batch, k, m, range, zp);
    same_bits(batch * m, &what, reference, |o| packed.run(batch, &x, o)).map(drop)
}

fn qparams(r: &mut SplitMix64) -> QParams {
    // Half the time a power of two: the add's multipliers are then exact and its results often
    // exact ties.
    let e = r.uniform(-12.0, 4.0);
    let scale = 2f32.powf(if below(r, 2) == 0 { e.round() } else { e });
    QParams::new(scale, below(r, 256) as i32, QRange::U8).unwrap()
}

fn check_add(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let (a, b, o) = (qparams(r), qparams(r), qparams(r));
    let Ok(add) = QAdd::new(&a, &b, &o) else {
        return Ok(());
    };
    let add = if below(r, 2) == 0 { add.with_relu() } else { add };
    let n = below(r, 70) as usize;
    let (xa, xb) = (u8s(r, n), u8s(r, n));
    let reference = |o: &mut [u8]| reference::qadd(&add, &xa, &xb, o);
    same_bits(n, &add, reference, |o| fast::qadd(&add, &xa, &xb, o)).map(drop)
}

fn check_quantize(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let p = qparams(r);
    let n = below(r, 70) as usize;
    let x: Vec<f32> = (0..n)
        .map(|_| match below(r, 12) {
            0 => f32::NAN,
            1 => pick(r, &[f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 0.0, -0.0]),
            // Exact ties x · (1/s) = k + 0.5.
            2 => (below(r, 600) as f32 - 300.0 + 0.5) * p.scale(),
            _ => r.uniform(-300.0, 300.0) * p.scale(),
        })
        .collect();
    let what = (p, &x);
    let want = same_bits(
        n,
        &what,
        |o| reference::quantize_u8(&x, &p, o),
        |o| fast::quantize_u8(&x, &p, o),
    )?;
    let reference = |o: &mut [f32]| reference::dequantize_u8(&want, &p, o);
    same_bits(n, &p, reference, |o| fast::dequantize_u8(&want, &p, o)).map(drop)
}

/// The tiled layout changes move the same elements as the reference's (tile tails: sizes around
/// the 32-element tile, one channel, RGB).
fn check_relayout(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let n = 1 + below(r, 3) as usize;
    let c = pick(r, &[1, 3, 4, 31, 32, 33, 64, 70]);
    let h = 1 + below(r, 40) as usize;
    let w = pick(r, &[1, 7, 31, 32, 33, 56]);
    let x = u8s(r, n * c * h * w);
    let len = x.len();
    let (nchw, nhwc) = ([n, c, h, w], [n, h, w, c]);
    let reference = |o: &mut [u8]| reference::nchw_to_nhwc(&x, nchw, o);
    same_bits(len, &("nchw_to_nhwc", nchw), reference, |o| {
        fast::nchw_to_nhwc(&x, nchw, o)
    })?;
    let reference = |o: &mut [u8]| reference::nhwc_to_nchw(&x, nhwc, o);
    same_bits(len, &("nhwc_to_nchw", nhwc), reference, |o| {
        fast::nhwc_to_nchw(&x, nhwc, o)
    })?;
    let xf: Vec<f32> = x.iter().map(|&v| v as f32 - 0.5).collect();
    let reference = |o: &mut [f32]| reference::nhwc_to_nchw(&xf, nhwc, o);
    same_bits(len, &("nhwc_to_nchw f32", nhwc), reference, |o| {
        fast::nhwc_to_nchw(&xf, nhwc, o)
    })?;
    prop_assert!(fast::nchw_to_nhwc(&x, [n, c, h, w + 1], &mut vec![0u8; len]).is_err());
    Ok(())
}

/// A random pooling geometry: kernels `1..=max_kernel`, strides 1-3, padding up to half the
/// kernel, dilation 1-2 when `dilated`, input sides `1..=max_in`, batch 1-2, `ceil_mode` half the
/// time.
fn pool_geom(r: &mut SplitMix64, channels: usize, max_kernel: u64, max_in: u64, dilated: bool) -> Pool2dGeom {
    let axis = |r: &mut SplitMix64| {
        let kernel = 1 + below(r, max_kernel) as usize;
        let stride = 1 + below(r, 3) as usize;
        let padding = below(r, kernel as u64 / 2 + 1) as usize;
        let dilation = if dilated { 1 + below(r, 2) as usize } else { 1 };
        Axis::new(kernel, stride, padding, dilation)
    };
    Pool2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h: 1 + below(r, max_in) as usize,
        in_w: 1 + below(r, max_in) as usize,
        channels,
        h: axis(r),
        w: axis(r),
        ceil_mode: below(r, 2) == 0,
    }
}

fn check_pools(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let channels = pick(r, &[1, 3, 7, 17, 31, 32, 33, 65]);
    let g = pool_geom(r, channels, 3, 7, true);
    let x = u8s(r, g.input_len());
    if let Ok(n) = g.output_len() {
        same_bits(
            n,
            &g,
            |o| reference::qmaxpool2d(&g, &x, o),
            |o| fast::qmaxpool2d(&g, &x, o),
        )?;
    }
    let p = qparams(r);
    let range = QRange::U8;
    let gp = QGlobalAvgPool {
        batch: g.batch,
        spatial: g.in_h * g.in_w,
        channels,
        zero_point: p.zero_point(),
        range,
    };
    let reference = |o: &mut [u8]| reference::qglobal_avgpool(&gp, &x, o);
    same_bits(g.batch * channels, &gp, reference, |o| {
        fast::qglobal_avgpool(&gp, &x, o)
    })
    .map(drop)
}

/// Average, adaptive average pooling, standalone clamp and channel concatenation on the AVX2
/// kernels (the reference's loops reordered and vectorised): padding, `ceil_mode`,
/// `count_include_pad`, channel tails, adaptive windows that overlap, all four activations, parts
/// with equal parameters (a copy) and with other ones (a requantization), on odd sizes.
fn check_avg_clamp_concat(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let channels = pick(r, &[1, 3, 7, 8, 17, 31, 32, 33, 65]);
    let g = pool_geom(r, channels, 4, 9, false);
    let q = qparams(r);
    let x = u8s(r, g.input_len());
    if let Ok(n) = g.output_len() {
        let p = QAvgPool2d::new(g, below(r, 2) == 0, &q);
        same_bits(
            n,
            &p,
            |o| reference::qavgpool2d(&p, &x, o),
            |o| fast::qavgpool2d(&p, &x, o),
        )?;
    }
    let out_hw = [
        1 + below(r, g.in_h as u64 + 2) as usize,
        1 + below(r, g.in_w as u64 + 2) as usize,
    ];
    let p = QAdaptiveAvgPool2d::new(g.batch, [g.in_h, g.in_w], out_hw, channels, &q);
    let n = g.batch * out_hw[0] * out_hw[1] * channels;
    let reference = |o: &mut [u8]| reference::qadaptive_avgpool2d(&p, &x, o);
    same_bits(n, &p, reference, |o| fast::qadaptive_avgpool2d(&p, &x, o))?;

    let act = match below(r, 4) {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::Relu6,
        _ => {
            let a = r.uniform(-300.0, 300.0) * q.scale();
            let b = r.uniform(-300.0, 300.0) * q.scale();
            Activation::Clamp {
                min: a.min(b),
                max: a.max(b),
            }
        }
    };
    let reference = |o: &mut [u8]| reference::qclamp(act, &q, &x, o);
    same_bits(x.len(), &(act, q), reference, |o| fast::qclamp(act, &q, &x, o))?;

    let outer = 1 + below(r, 40) as usize;
    let out_q = qparams(r);
    let parts: Vec<ConcatPart> = (0..1 + below(r, 3))
        .map(|_| {
            let pq = if below(r, 3) == 0 { out_q } else { qparams(r) };
            ConcatPart::new(pick(r, &[1, 3, 8, 9, 16, 33]), &pq, &out_q).unwrap()
        })
        .collect();
    let datas: Vec<Vec<u8>> = parts.iter().map(|pt| u8s(r, outer * pt.channels)).collect();
    let refs: Vec<&[u8]> = datas.iter().map(|d| d.as_slice()).collect();
    let cp = QConcat { outer, parts };
    let n = outer * cp.out_channels();
    let reference = |o: &mut [u8]| reference::qconcat_channels(&cp, &refs, o);
    same_bits(n, &cp, reference, |o| fast::qconcat_channels(&cp, &refs, o)).map(drop)
}

/// A 7-bit input range `[0, qmax]`, `qmax <= 127` (half the time PyTorch's reduce_range
/// `[0, 127]`; a range always contains 0) and a zero point in it.
fn range7(r: &mut SplitMix64) -> (QRange, i32) {
    let qmax = if below(r, 2) == 0 {
        127
    } else {
        1 + below(r, 127) as i32
    };
    let range = QRange::custom(0, qmax).unwrap();
    let zp = range.qmin() + below(r, (range.qmax() - range.qmin() + 1) as u64) as i32;
    (range, zp)
}

/// Inputs in `range`, some at its ends.
fn u7s(r: &mut SplitMix64, n: usize, range: QRange) -> Vec<u8> {
    let (lo, hi) = (range.qmin() as u64, range.qmax() as u64);
    (0..n)
        .map(|_| match below(r, 8) {
            0 => lo as u8,
            1 => hi as u8,
            _ => (lo + below(r, hi - lo + 1)) as u8,
        })
        .collect()
}

/// The 7-bit im2col path ([`fast::im2col_pays`]): few input channels (ResNet's RGB stem is 3,
/// 7x7, stride 2, padding 3), kernels up to 7x7, strides 1-3, dilation, padding up to the
/// kernel, odd widths, output-channel tails, batch 1-2.
fn check_conv7_im2col(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let stem = below(r, 4) == 0;
    let cig = if stem { 3 } else { pick(r, &[1, 2, 3, 3, 5, 6, 7, 9]) };
    let out_c = if stem {
        pick(r, &[8, 16, 64])
    } else {
        pick(r, &[1, 3, 7, 8, 9, 16, 17, 24, 33])
    };
    let geom = conv_geom(r, (cig, out_c, 1), 7, 12, stem.then(|| Axis::new(7, 2, 3, 1)));
    if geom.out_hw().is_err() {
        return Ok(());
    }
    let k = geom.reduction_len();
    let (range, zp) = range7(r);
    let p = conv_params(r, geom, zp);
    let x = u7s(r, geom.input_len(), range);
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), fast::detected(), range).unwrap();
    let taps = geom.h.kernel * geom.w.kernel;
    let avx2 = fast::detected() == Isa::Avx2;
    prop_assert_eq!(
        packed.im2col(),
        avx2 && fast::im2col_pays(1, cig, taps) && (cig, out_c) != (1, 1)
    );
    if stem {
        prop_assert!(packed.im2col() == avx2);
    }
    conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &(geom, range, zp))
}

/// Winograd `F(2x2, 3x3)` (3x3, stride 1, padding 1, one group, Cin >= 16): odd and even sizes
/// down to 1x1 (tiles cut by the output's edge), input- and output-channel tails, full 8-bit or
/// 7-bit inputs with any zero point, weights and inputs at their extremes a fifth of the time;
/// and the same pack run with another geometry (stride 2, or padding 0) takes the direct kernels.
fn check_winograd(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let in_c = pick(r, &[16, 17, 24, 31, 32, 33, 64, 65]);
    let out_c = pick(r, &[1, 3, 8, 9, 16, 17, 24, 33, 64]);
    let a = Axis::new(3, 1, 1, 1);
    let geom = Conv2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h: 1 + below(r, 12) as usize,
        in_w: 1 + below(r, 12) as usize,
        in_c,
        out_c,
        h: a,
        w: a,
        groups: 1,
    };
    let k = geom.reduction_len();
    let seven = below(r, 2) == 0;
    let (range, zp) = if seven {
        range7(r)
    } else {
        (QRange::U8, below(r, 256) as i32)
    };
    let extreme = below(r, 5) == 0;
    let x = if extreme {
        (0..geom.input_len())
            .map(|_| pick(r, &[range.qmin() as u8, range.qmax() as u8]))
            .collect()
    } else {
        u7s(r, geom.input_len(), range)
    };
    let p = conv_params(r, geom, zp);
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), avx2(), range).unwrap();
    prop_assert_eq!(packed.winograd(), avx2() == Isa::Avx2);
    for g in [
        geom,
        Conv2dGeom {
            h: Axis::new(3, 2, 1, 1),
            ..geom
        },
        Conv2dGeom {
            w: Axis::new(3, 1, 0, 1),
            ..geom
        },
    ] {
        if g.output_len().is_ok() {
            conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, g, &(g, range, zp))?;
        }
    }
    Ok(())
}

/// One proptest per check, each over `CASES` random seeds.
macro_rules! seeded {
    ($($name:ident => $check:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            $(
                #[test]
                fn $name(seed in any::<u64>()) {
                    $check(seed)?;
                }
            )*
        }
    };
}

seeded! {
    pools_match_reference => check_pools;
    avgpool_clamp_concat_match_reference => check_avg_clamp_concat;
    qconv2d_matches_reference => |seed| check_conv(seed, false);
    qlinear_matches_reference => |seed| check_linear(seed, false);
    qconv2d_7bit_matches_reference => |seed| check_conv(seed, true);
    qconv2d_7bit_im2col_matches_reference => check_conv7_im2col;
    qconv2d_winograd_matches_reference => check_winograd;
    qlinear_7bit_matches_reference => |seed| check_linear(seed, true);
    qadd_matches_reference => check_add;
    qconv2d_emulated_vnni_matches_reference => |seed| check_conv_vnni(seed, Vnni::Emulated);
    qlinear_emulated_vnni_matches_reference => |seed| check_linear_vnni(seed, Vnni::Emulated);
    qconv2d_add_emulated_vnni_matches_reference => |seed| check_conv_add_vnni(seed, Vnni::Emulated);
    qconv2d_add_avx512vnni_matches_reference => |seed| check_conv_add_vnni(seed, Vnni::On(Isa::Avx512Vnni));
    qconv2d_add_avxvnni_matches_reference => |seed| check_conv_add_vnni(seed, Vnni::On(Isa::AvxVnni));
    qconv2d_add_emulated_amx_matches_reference => |seed| check_conv_add_vnni(seed, Vnni::EmulatedAmx);
    qconv2d_add_amx_matches_reference => |seed| check_conv_add_vnni(seed, Vnni::On(Isa::Amx));
    qconv2d_avx512vnni_matches_reference => |seed| check_conv_vnni(seed, Vnni::On(Isa::Avx512Vnni));
    qlinear_avx512vnni_matches_reference => |seed| check_linear_vnni(seed, Vnni::On(Isa::Avx512Vnni));
    qconv2d_avxvnni_matches_reference => |seed| check_conv_vnni(seed, Vnni::On(Isa::AvxVnni));
    qlinear_avxvnni_matches_reference => |seed| check_linear_vnni(seed, Vnni::On(Isa::AvxVnni));
    qconv2d_emulated_amx_matches_reference => |seed| check_conv_amx(seed, false);
    qlinear_emulated_amx_matches_reference => |seed| check_linear_amx(seed, false);
    qconv2d_amx_matches_reference => |seed| check_conv_amx(seed, true);
    qlinear_amx_matches_reference => |seed| check_linear_amx(seed, true);
    relayouts_match_reference => check_relayout;
    quantize_dequantize_match_reference => check_quantize;
}

/// The detected path is the best this CPU runs; the scalar one always runs.
#[test]
fn detected_is_the_best_available_path() {
    let best = Isa::ALL.into_iter().rev().find(|i| i.check().is_ok());
    assert_eq!(Some(fast::detected()), best);
    assert!(Isa::Scalar.check().is_ok());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(Isa::Avx2.check().is_ok(), is_x86_feature_detected!("avx2"));
    for isa in Isa::ALL {
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    assert_eq!(Isa::from_name("AVX512VNNI"), Some(Isa::Avx512Vnni));
    assert_eq!(Isa::from_name("sse2"), None);
}

/// A convolution big enough to take the multi-threaded path, with every pixel tile and block tail.
#[test]
fn large_conv_matches_reference() {
    let r = &mut SplitMix64::new(7);
    for (in_c, out_c, groups, hw, kernel) in [(64, 72, 1, 30, 3), (40, 40, 40, 61, 3), (24, 48, 2, 23, 1)] {
        let geom = square(2, [hw, hw], (in_c, out_c, groups), Axis::new(kernel, 1, kernel / 2, 1));
        let zp = 77;
        let p = conv_params(r, geom, zp);
        let x = u8s(r, geom.input_len());
        let wt = i8s(r, geom.weight_len());
        let b = bias(r, out_c, geom.reduction_len(), zp);
        let packed = PackedConv::new(&p, &wt, b.as_deref()).unwrap();
        conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &geom).unwrap();
        let scalar = PackedConv::with_isa(&p, &wt, b.as_deref(), Isa::Scalar).unwrap();
        assert_eq!(scalar.isa(), Isa::Scalar);
    }
}

/// Convolutions big enough for the threaded VNNI-layout path (block pairs outermost, pixel chunks
/// across rows), with block and pixel tails: emulated lanes on every CPU, and each real VNNI path
/// this CPU has.
#[test]
fn large_conv_vnni_matches_reference() {
    let r = &mut SplitMix64::new(9);
    for path in [Vnni::Emulated, Vnni::On(Isa::AvxVnni), Vnni::On(Isa::Avx512Vnni)] {
        if path.skipped() {
            continue;
        }
        for (in_c, out_c, groups, hw, kernel, stride) in [
            (64, 64, 1, 30, 3, 1),
            (256, 256, 1, 14, 3, 1),
            (3, 64, 1, 45, 7, 2),
            (48, 80, 2, 9, 3, 2),
        ] {
            let geom = square(
                2,
                [hw, hw],
                (in_c, out_c, groups),
                Axis::new(kernel, stride, kernel / 2, 1),
            );
            let zp = 131;
            let p = conv_params(r, geom, zp);
            let x = u8s(r, geom.input_len());
            let wt = i8s(r, geom.weight_len());
            let b = bias(r, out_c, geom.reduction_len(), zp);
            let packed = path.conv(&p, &wt, b.as_deref());
            conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &(geom, path)).unwrap();
        }
    }
}

/// A linear layer big enough for the threaded path with one row: split over channel blocks.
#[test]
fn large_linear_matches_reference() {
    let r = &mut SplitMix64::new(8);
    let (batch, k, m) = (3, 1030, 613);
    let zp = 200;
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: requants(r, m, k),
    };
    let x = u8s(r, batch * k);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let reference = |o: &mut [u8]| reference::qlinear(&p, &x, &wt, b.as_deref(), o);
    same_bits(batch * m, &(batch, k, m), reference, |o| {
        fast::qlinear(&p, &x, &wt, b.as_deref(), o)
    })
    .unwrap();
}

#[test]
fn packed_conv_refuses_other_geometry() {
    let geom = square(1, [4, 4], (2, 2, 1), Axis::new(3, 1, 1, 1));
    let p = QConv2d {
        geom,
        input_zero_point: 0,
        requant: vec![Requant::from_real(0.01, 0, QRange::U8).unwrap(); 2],
    };
    let packed = PackedConv::new(&p, &[1; 36], None).unwrap();
    let mut out = vec![0u8; 32];
    assert!(packed.run(&Conv2dGeom { in_c: 4, ..geom }, &[0; 64], &mut out).is_err());
    assert!(packed.run(&geom, &[0; 31], &mut out).is_err());
    assert!(PackedConv::new(&p, &[1; 35], None).is_err());
}

/// The 7-bit path is chosen only for an input range and zero point within `[0, 127]`, never for
/// depthwise; a 7-bit convolution handed bytes above 127 (outside its declared range) still gives
/// the reference's bits (it falls back to the reference kernels).
#[test]
fn seven_bit_selection_and_fallback() {
    let r = &mut SplitMix64::new(9);
    let geom = square(1, [9, 11], (20, 24, 1), Axis::new(3, 1, 1, 1));
    let p = conv_params(r, geom, 60);
    let wt = i8s(r, geom.weight_len());
    // Packed for AVX2 explicitly: the 7-bit kernels wherever AVX2 runs (also on VNNI/AMX CPUs).
    let avx2 = Isa::Avx2.check().is_ok();
    let r7 = QRange::custom(0, 127).unwrap();
    let pack = |p: &QConv2d, range| PackedConv::with_input_range(p, &wt, None, Isa::Avx2, range).unwrap();
    assert_eq!(pack(&p, r7).seven_bit(), avx2);
    assert!(!pack(&p, QRange::custom(0, 128).unwrap()).seven_bit());
    assert!(!pack(&p, QRange::U8).seven_bit());
    assert!(!pack(&p, QRange::custom(-8, 7).unwrap()).seven_bit());
    let zp200 = QConv2d {
        input_zero_point: 200,
        ..p.clone()
    };
    assert!(!pack(&zp200, r7).seven_bit());
    assert!(!PackedConv::with_input_range(&p, &wt, None, Isa::Scalar, r7)
        .unwrap()
        .seven_bit());
    let dw = QConv2d {
        geom: Conv2dGeom {
            in_c: 8,
            out_c: 8,
            groups: 8,
            ..geom
        },
        input_zero_point: 60,
        requant: p.requant[..8].to_vec(),
    };
    let dww = i8s(r, dw.geom.weight_len());
    let dwp = PackedConv::with_input_range(&dw, &dww, None, Isa::Avx2, r7).unwrap();
    assert!(!dwp.seven_bit());

    let packed = pack(&p, r7);
    for x in [u7s(r, geom.input_len(), r7), u8s(r, geom.input_len())] {
        conv_same_bits(&p, (&x, &wt, None), &packed, geom, &geom).unwrap();
    }
}

/// A 7-bit convolution big enough for the threaded path, at the saturation edge of `vpmaddubsw`:
/// every input 127 and every weight -128 (pair sums -32512) or 127.
#[test]
fn large_conv_7bit_extremes_match_reference() {
    let r = &mut SplitMix64::new(10);
    let r7 = QRange::custom(0, 127).unwrap();
    for (in_c, out_c, groups, hw, kernel, wv) in [
        (64, 72, 1, 30, 3, -128i8),
        (33, 40, 1, 17, 3, 127),
        (24, 48, 2, 23, 1, -128),
    ] {
        let geom = square(2, [hw, hw], (in_c, out_c, groups), Axis::new(kernel, 1, kernel / 2, 1));
        for (zp, x) in [(0, vec![127u8; geom.input_len()]), (127, u7s(r, geom.input_len(), r7))] {
            let p = conv_params(r, geom, zp);
            let wt = vec![wv; geom.weight_len()];
            let b = bias(r, out_c, geom.reduction_len(), zp);
            let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, r7).unwrap();
            conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &(geom, zp)).unwrap();
        }
    }
}

/// ResNet's stem (3 → 64, 7x7, stride 2, padding 3) on the im2col path, big enough for the threaded
/// path, at the saturation edge of `vpmaddubsw` (inputs 127, weights -128 or 127) and on random
/// 7-bit inputs, with an odd width.
#[test]
fn large_stem_7bit_im2col_matches_reference() {
    let r = &mut SplitMix64::new(11);
    let r7 = QRange::custom(0, 127).unwrap();
    let geom = square(2, [64, 67], (3, 64, 1), Axis::new(7, 2, 3, 1));
    let k = geom.reduction_len();
    for (zp, x, wt) in [
        (0, vec![127u8; geom.input_len()], vec![-128i8; geom.weight_len()]),
        (127, vec![127u8; geom.input_len()], vec![127i8; geom.weight_len()]),
        (0, u7s(r, geom.input_len(), r7), vec![127i8; geom.weight_len()]),
        (37, u7s(r, geom.input_len(), r7), i8s(r, geom.weight_len())),
    ] {
        let p = conv_params(r, geom, zp);
        let b = bias(r, 64, k, zp);
        let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, r7).unwrap();
        assert_eq!(packed.im2col(), avx2() == Isa::Avx2);
        conv_same_bits(&p, (&x, &wt, b.as_deref()), &packed, geom, &zp).unwrap();
    }
}

/// Quantize, dequantize and add big enough to be split over threads (3 threads: chunk borders
/// that are not multiples of 8), against the reference.
#[test]
fn large_elementwise_split_over_threads_match_reference() {
    let r = &mut SplitMix64::new(12);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for n in [(1 << 16) + 5, 3 * 64 * 56 * 56 + 3] {
        let p = qparams(r);
        let x: Vec<f32> = (0..n).map(|_| r.uniform(-300.0, 300.0) * p.scale()).collect();
        let reference = |o: &mut [u8]| reference::quantize_u8(&x, &p, o);
        let want = same_bits(n, &p, reference, |o| pool.install(|| fast::quantize_u8(&x, &p, o))).unwrap();
        let reference = |o: &mut [f32]| reference::dequantize_u8(&want, &p, o);
        same_bits(n, &p, reference, |o| pool.install(|| fast::dequantize_u8(&want, &p, o))).unwrap();
        let (a, b, o) = (qparams(r), qparams(r), qparams(r));
        let Ok(add) = QAdd::new(&a, &b, &o) else { continue };
        let (xa, xb) = (u8s(r, n), u8s(r, n));
        let reference = |o: &mut [u8]| reference::qadd(&add, &xa, &xb, o);
        same_bits(n, &add, reference, |o| pool.install(|| fast::qadd(&add, &xa, &xb, o))).unwrap();
    }
}

/// Convolutions whose packed weights exceed 128 KiB run block-major (one pair of channel blocks
/// over every output row, then the next): 8-bit and 7-bit inputs, an odd number of blocks, odd
/// sizes, stride 2 (no Winograd), batch 2, on 1 and 2 threads.
#[test]
fn large_weights_block_major_match_reference() {
    let r = &mut SplitMix64::new(13);
    let r7 = QRange::custom(0, 127).unwrap();
    for (in_c, out_c, hw, stride) in [(256, 72, 9, 2), (260, 40, 7, 1), (512, 24, 5, 2)] {
        let geom = square(2, [hw, hw + 2], (in_c, out_c, 1), Axis::new(3, stride, 1, 1));
        for (range, zp) in [(QRange::U8, 131), (r7, 64)] {
            let p = conv_params(r, geom, zp);
            let x = u7s(r, geom.input_len(), range);
            let wt = i8s(r, geom.weight_len());
            let b = bias(r, out_c, geom.reduction_len(), zp);
            let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, range)
                .unwrap()
                .direct_only();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let reference = |o: &mut [u8]| reference::qconv2d(&p, &x, &wt, b.as_deref(), o);
                let fast = |o: &mut [u8]| pool.install(|| packed.run(&geom, &x, o));
                same_bits(geom.output_len().unwrap(), &(geom, zp, threads), reference, fast).unwrap();
            }
        }
    }
}

/// Max pooling big enough to be split over threads by output rows (ResNet's 3x3, stride 2,
/// padding 1, on an odd size, batch 2).
#[test]
fn large_maxpool_split_over_threads_matches_reference() {
    let r = &mut SplitMix64::new(14);
    let a = Axis::new(3, 2, 1, 1);
    let g = Pool2dGeom {
        batch: 2,
        in_h: 57,
        in_w: 55,
        channels: 64,
        h: a,
        w: a,
        ceil_mode: false,
    };
    let x = u8s(r, g.input_len());
    let n = g.output_len().unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let reference = |o: &mut [u8]| reference::qmaxpool2d(&g, &x, o);
        same_bits(n, &threads, reference, |o| pool.install(|| fast::qmaxpool2d(&g, &x, o))).unwrap();
    }
}

/// The emulated `tdpbusd` against a naive triple loop on random tiles of every shape (rows and
/// bytes per row below 16 and 64 included, rows loaded with strides wider than a row): the
/// configured rows and columns of C are `C + A·B` (wrapping), the rest of C stays zero and
/// `tilestored` writes nothing past the configured shape; loads zero what lies outside it.
#[test]
fn emulated_tdpbusd_matches_naive_product() {
    use qc_runtime::kernels::amx::tiles::{ATile, BTile, CTile, Emulated, TileConfig, Tiles, Tmm};
    let r = &mut SplitMix64::new(15);
    for case in 0..400 {
        let (m, kq, n) = match case {
            0 => (16, 16, 16),
            1 => (1, 1, 1),
            _ => (
                1 + below(r, 16) as usize,
                1 + below(r, 16) as usize,
                1 + below(r, 16) as usize,
            ),
        };
        let (c, a, b) = (CTile::nth(case), ATile::nth(case / 4), BTile::nth(case / 8));
        let cfg = TileConfig::new()
            .with(c.tmm(), m, 4 * n)
            .with(a.tmm(), m, 4 * kq)
            .with(b.tmm(), kq, 4 * n);
        assert_eq!((cfg.rows(a.tmm()), cfg.colsb(a.tmm())), (m, 4 * kq));
        assert_eq!(cfg.as_bytes()[0], 1);
        let (sa, sb, sc) = (
            4 * kq + below(r, 9) as usize,
            4 * n + below(r, 9) as usize,
            4 * n + 4 * below(r, 3) as usize,
        );
        let xa = if case == 2 { vec![255u8; m * sa] } else { u8s(r, m * sa) };
        let xb: Vec<u8> = if case == 2 {
            vec![0x80; kq * sb]
        } else {
            u8s(r, kq * sb)
        };
        let c0: Vec<i32> = (0..m * sc / 4)
            .map(|_| if case == 2 { i32::MIN + 5 } else { r.next_u64() as i32 })
            .collect();
        let mut t = Emulated::default();
        let mut got = vec![0x5au8; m * sc];
        // SAFETY: emulated tiles; every pointer covers the configured rows at its stride.
        unsafe {
            t.configure(&cfg);
            t.load(c.tmm(), c0.as_ptr() as *const u8, sc);
            t.load(a.tmm(), xa.as_ptr(), sa);
            t.load(b.tmm(), xb.as_ptr(), sb);
            for row in m..16 {
                assert_eq!(t.row(a.tmm(), row), &[0u8; 64]);
            }
            assert!(t.row(b.tmm(), 0)[4 * n..].iter().all(|&v| v == 0));
            t.dpbusd(c, a, b);
            t.store(c, got.as_mut_ptr(), sc);
            for row in m..16 {
                assert_eq!(t.row(c.tmm(), row), &[0u8; 64]);
            }
        }
        for i in 0..m {
            for j in 0..sc / 4 {
                let cell = &got[i * sc + 4 * j..i * sc + 4 * j + 4];
                if j >= n {
                    assert_eq!(cell, &[0x5a; 4], "case {case}: past the configured columns");
                    continue;
                }
                let mut want = c0[i * sc / 4 + j];
                for k in 0..kq {
                    for q in 0..4 {
                        want = want.wrapping_add(xa[i * sa + 4 * k + q] as i32 * xb[k * sb + 4 * j + q] as i8 as i32);
                    }
                }
                assert_eq!(
                    i32::from_le_bytes(cell.try_into().unwrap()),
                    want,
                    "case {case}: ({m}, {kq}, {n}) at ({i}, {j})"
                );
            }
        }
        // Tile zero then a second product: C = A·B alone.
        let mut again = vec![0u8; m * sc];
        // SAFETY: as above.
        unsafe {
            t.zero(c);
            t.dpbusd(c, a, b);
            t.store(c, again.as_mut_ptr(), sc);
            t.release();
            assert_eq!(t.row(Tmm::T0, 0), &[0u8; 64]);
        }
        for i in 0..m {
            for j in 0..n {
                let want = (0..4 * kq).fold(0i32, |s, e| {
                    s.wrapping_add(xa[i * sa + e] as i32 * xb[(e / 4) * sb + 4 * j + e % 4] as i8 as i32)
                });
                let cell = &again[i * sc + 4 * j..i * sc + 4 * j + 4];
                assert_eq!(i32::from_le_bytes(cell.try_into().unwrap()), want);
            }
        }
    }
}

/// Convolutions big enough for the threaded path (2 and 3 threads) on the AMX driver, emulated
/// and (where the CPU has it) real: 64 → 64 3x3 on 2×30×30, 256 → 256 3x3 on 14×14 (several
/// K-chunks, rows of 14 pixels: every A tile gathered), ResNet's stem 3 → 64 7x7 stride 2 on an
/// odd width (im2col K-chunks across taps), a 130 → 40 1x1 (a padded last K-chunk, a
/// single-block tail), and 2 groups of 20 → 24 3x3 with dilation 2 (im2col, block tails).
#[test]
fn large_conv_amx_matches_reference() {
    let r = &mut SplitMix64::new(16);
    for (batch, (in_c, out_c, groups), hw, axis) in [
        (2, (64, 64, 1), [30, 30], Axis::new(3, 1, 1, 1)),
        (1, (256, 256, 1), [14, 14], Axis::new(3, 1, 1, 1)),
        (2, (3, 64, 1), [40, 45], Axis::new(7, 2, 3, 1)),
        (1, (130, 40, 1), [17, 35], Axis::new(1, 1, 0, 1)),
        (2, (40, 48, 2), [21, 33], Axis::new(3, 1, 2, 2)),
    ] {
        let geom = square(batch, hw, (in_c, out_c, groups), axis);
        let zp = 93;
        let p = conv_params(r, geom, zp);
        let x = u8s(r, geom.input_len());
        let wt = i8s(r, geom.weight_len());
        let b = bias(r, out_c, geom.reduction_len(), zp);
        for real in [false, true] {
            let Some(packed) = amx_conv(&p, &wt, b.as_deref(), real) else {
                continue;
            };
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let reference = |o: &mut [u8]| reference::qconv2d(&p, &x, &wt, b.as_deref(), o);
                let fast = |o: &mut [u8]| pool.install(|| packed.run(&geom, &x, o));
                same_bits(geom.output_len().unwrap(), &(geom, real, threads), reference, fast).unwrap();
            }
        }
    }
}

/// The lane epilogue every VNNI and AMX kernel shares ([`Requant16::apply`]) equals
/// [`Requant::apply`] on every accumulator of the clamp window and a few past it, for small odd
/// multipliers and shifts: every residue of `acc · m` modulo `2^shift` occurs, so a rounding term
/// off by one either way (not only at exact ties) shows.
#[test]
fn requant16_apply_matches_requant_on_every_residue() {
    use qc_runtime::kernels::vnni::Requant16;
    let r = &mut SplitMix64::new(17);
    for case in 0..300 {
        let shift = 1 + below(r, 10) as u32;
        let multiplier = 1 + 2 * below(r, if case % 2 == 0 { 16 } else { 128 }) as i32;
        let mut v = [0, 1, 2].map(|_| below(r, 256) as i32);
        v.sort();
        if case % 3 == 0 {
            (v[0], v[2]) = (0, 255);
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
        let bias = below(r, 2001) as i32 - 1000;
        let lanes = Requant16::new(&[q; 16], &[bias; 16]);
        let lane = case % 16;
        let lo = (lanes.alo[lane] as i64 - bias as i64 - 3).max(-(1 << 22));
        let hi = (lanes.ahi[lane] as i64 - bias as i64 + 3).min(1 << 22);
        for acc in lo..=hi {
            let acc = acc as i32;
            assert_eq!(
                lanes.apply(lane, acc) as i32,
                q.apply(acc + bias),
                "{q:?} bias {bias} acc {acc}"
            );
        }
    }
}
