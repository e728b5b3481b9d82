//! The optimised kernels ([`qc_runtime::kernels::fast`], AVX2 where the CPU has it) against the
//! scalar reference, bit for bit, on random shapes and parameters: zero points over 0..=255,
//! per-channel requantization, outputs saturating at 0 and 255 and at fused ReLU/ReLU6 bounds,
//! channel counts that leave SIMD tails, strides 1-3, padding, dilation, groups and depthwise;
//! and the 7-bit (`vpmaddubsw`) convolution and linear paths, chosen by an input range within
//! `[0, 127]`, on inputs and zero points in that range.

use proptest::prelude::*;
use qc_runtime::kernels::fast::{self, Isa, PackedConv, PackedLinear};
use qc_runtime::kernels::{
    reference, Activation, Axis, ConcatPart, Conv2dGeom, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d, QConcat, QConv2d,
    QGlobalAvgPool, QLinear,
};
use qc_runtime::quant::{accumulator_fits, QAdd, QParams, QRange, Requant};
use qc_runtime::SplitMix64;

const CASES: u32 = 1000;

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
        zero_point,
        qmin,
        qmax,
    }
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

fn check_conv(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let depthwise = below(r, 4) == 0;
    let groups = if depthwise { 0 } else { pick(r, &[1, 1, 1, 2, 3]) };
    let tails = [1, 2, 3, 4, 7, 8, 16, 17, 33, 65];
    let (in_c, out_c, groups) = if depthwise {
        let c = pick(r, &tails);
        (c, c, c)
    } else {
        let cig = pick(r, &tails[..9]);
        let cog = pick(r, &[1, 3, 7, 8, 9, 16, 17, 24]);
        (cig * groups, cog * groups, groups)
    };
    let one_d = below(r, 6) == 0;
    let axis = |r: &mut SplitMix64| {
        let kernel = 1 + below(r, 3) as usize;
        let stride = 1 + below(r, 3) as usize;
        let dilation = 1 + below(r, 2) as usize;
        let padding = below(r, kernel as u64 + 1) as usize;
        Axis::new(kernel, stride, padding, dilation)
    };
    let (h, w) = (axis(r), axis(r));
    let h = if one_d { Axis::new(1, 1, 0, 1) } else { h };
    let in_len = |r: &mut SplitMix64, a: &Axis| (a.span().saturating_sub(2 * a.padding)).max(1) + below(r, 7) as usize;
    let in_h = if one_d { 1 } else { in_len(r, &h) };
    let in_w = in_len(r, &w);
    let geom = Conv2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h,
        in_w,
        in_c,
        out_c,
        h,
        w,
        groups,
    };
    let Ok([oh, ow]) = geom.out_hw() else {
        return Ok(());
    };
    let k = geom.reduction_len();
    let zp = below(r, 256) as i32;
    let p = QConv2d {
        geom,
        input_zero_point: zp,
        requant: (0..out_c).map(|_| requant(r, k)).collect(),
    };
    let x = u8s(r, geom.input_len());
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let n_out = geom.batch * oh * ow * out_c;
    let mut want = vec![0u8; n_out];
    reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
    let packed = PackedConv::new(&p, &wt, b.as_deref()).unwrap();
    let mut got = vec![0u8; n_out];
    packed.run(&geom, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?} isa {:?}", geom, packed.isa());
    Ok(())
}

fn check_linear(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let batch = pick(r, &[1, 1, 2, 3, 5, 8]);
    let k = pick(r, &[1, 2, 3, 7, 16, 17, 33, 64, 65, 130]);
    let m = pick(r, &[1, 3, 7, 8, 9, 16, 17, 33, 65]);
    let zp = below(r, 256) as i32;
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: (0..m).map(|_| requant(r, k)).collect(),
    };
    let x = u8s(r, batch * k);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let mut want = vec![0u8; batch * m];
    reference::qlinear(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
    let packed = PackedLinear::new(&p, &wt, b.as_deref()).unwrap();
    let mut got = vec![0u8; batch * m];
    packed.run(batch, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "batch {} k {} m {}", batch, k, m);
    Ok(())
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
    let mut want = vec![0u8; n];
    reference::qadd(&add, &xa, &xb, &mut want).unwrap();
    let mut got = vec![0u8; n];
    fast::qadd(&add, &xa, &xb, &mut got).unwrap();
    prop_assert_eq!(got, want, "{:?}", add);
    Ok(())
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
    let mut want = vec![0u8; n];
    reference::quantize_u8(&x, &p, &mut want).unwrap();
    let mut got = vec![0u8; n];
    fast::quantize_u8(&x, &p, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?} {:?}", p, x);
    let mut fw = vec![0f32; n];
    reference::dequantize_u8(&want, &p, &mut fw).unwrap();
    let mut fg = vec![0f32; n];
    fast::dequantize_u8(&want, &p, &mut fg).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&fg), bits(&fw));
    Ok(())
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
    let mut want = vec![0u8; x.len()];
    let mut got = vec![1u8; x.len()];
    reference::nchw_to_nhwc(&x, [n, c, h, w], &mut want).unwrap();
    fast::nchw_to_nhwc(&x, [n, c, h, w], &mut got).unwrap();
    prop_assert_eq!(&got, &want, "nchw_to_nhwc {:?}", [n, c, h, w]);
    reference::nhwc_to_nchw(&x, [n, h, w, c], &mut want).unwrap();
    fast::nhwc_to_nchw(&x, [n, h, w, c], &mut got).unwrap();
    prop_assert_eq!(&got, &want, "nhwc_to_nchw {:?}", [n, h, w, c]);
    let xf: Vec<f32> = x.iter().map(|&v| v as f32 - 0.5).collect();
    let (mut wf, mut gf) = (vec![0f32; x.len()], vec![1f32; x.len()]);
    reference::nhwc_to_nchw(&xf, [n, h, w, c], &mut wf).unwrap();
    fast::nhwc_to_nchw(&xf, [n, h, w, c], &mut gf).unwrap();
    prop_assert_eq!(gf, wf);
    prop_assert!(fast::nchw_to_nhwc(&x, [n, c, h, w + 1], &mut got).is_err());
    Ok(())
}

fn check_pools(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let channels = pick(r, &[1, 3, 7, 17, 31, 32, 33, 65]);
    let axis = |r: &mut SplitMix64| {
        let kernel = 1 + below(r, 3) as usize;
        Axis::new(
            kernel,
            1 + below(r, 3) as usize,
            below(r, kernel as u64 / 2 + 1) as usize,
            1 + below(r, 2) as usize,
        )
    };
    let g = Pool2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h: 1 + below(r, 7) as usize,
        in_w: 1 + below(r, 7) as usize,
        channels,
        h: axis(r),
        w: axis(r),
        ceil_mode: below(r, 2) == 0,
    };
    let x = u8s(r, g.input_len());
    if let Ok(n) = g.output_len() {
        let mut want = vec![0u8; n];
        reference::qmaxpool2d(&g, &x, &mut want).unwrap();
        let mut got = vec![1u8; n];
        fast::qmaxpool2d(&g, &x, &mut got).unwrap();
        prop_assert_eq!(&got, &want, "{:?}", g);
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
    let mut want = vec![0u8; g.batch * channels];
    reference::qglobal_avgpool(&gp, &x, &mut want).unwrap();
    let mut got = vec![1u8; g.batch * channels];
    fast::qglobal_avgpool(&gp, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?}", gp);
    Ok(())
}

/// Average, adaptive average pooling, standalone clamp and channel concatenation on the AVX2
/// kernels (the reference's loops reordered and vectorised): padding, `ceil_mode`,
/// `count_include_pad`, channel tails, adaptive windows that overlap, all four activations, parts
/// with equal parameters (a copy) and with other ones (a requantization), on odd sizes.
fn check_avg_clamp_concat(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let channels = pick(r, &[1, 3, 7, 8, 17, 31, 32, 33, 65]);
    let axis = |r: &mut SplitMix64| {
        let kernel = 1 + below(r, 4) as usize;
        Axis::new(
            kernel,
            1 + below(r, 3) as usize,
            below(r, kernel as u64 / 2 + 1) as usize,
            1,
        )
    };
    let g = Pool2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h: 1 + below(r, 9) as usize,
        in_w: 1 + below(r, 9) as usize,
        channels,
        h: axis(r),
        w: axis(r),
        ceil_mode: below(r, 2) == 0,
    };
    let q = qparams(r);
    let x = u8s(r, g.input_len());
    if let Ok(n) = g.output_len() {
        let p = QAvgPool2d::new(g, below(r, 2) == 0, &q);
        let mut want = vec![0u8; n];
        reference::qavgpool2d(&p, &x, &mut want).unwrap();
        let mut got = vec![1u8; n];
        fast::qavgpool2d(&p, &x, &mut got).unwrap();
        prop_assert_eq!(&got, &want, "{:?}", p);
    }
    let out_hw = [
        1 + below(r, g.in_h as u64 + 2) as usize,
        1 + below(r, g.in_w as u64 + 2) as usize,
    ];
    let p = QAdaptiveAvgPool2d::new(g.batch, [g.in_h, g.in_w], out_hw, channels, &q);
    let n = g.batch * out_hw[0] * out_hw[1] * channels;
    let mut want = vec![0u8; n];
    reference::qadaptive_avgpool2d(&p, &x, &mut want).unwrap();
    let mut got = vec![1u8; n];
    fast::qadaptive_avgpool2d(&p, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?}", p);

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
    let mut want = vec![0u8; x.len()];
    reference::qclamp(act, &q, &x, &mut want).unwrap();
    let mut got = vec![1u8; x.len()];
    fast::qclamp(act, &q, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?} {:?}", act, q);

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
    let mut want = vec![0u8; n];
    reference::qconcat_channels(&cp, &refs, &mut want).unwrap();
    let mut got = vec![1u8; n];
    fast::qconcat_channels(&cp, &refs, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?}", cp);
    Ok(())
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

fn check_conv7(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let groups = pick(r, &[1, 1, 1, 2, 3]);
    let tails = [1, 3, 4, 7, 8, 17, 33, 65];
    let cig = pick(r, &tails);
    let cog = pick(r, &[1, 3, 7, 8, 9, 16, 17, 24, 33]);
    let (in_c, out_c) = (cig * groups, cog * groups);
    let one_d = below(r, 6) == 0;
    let axis = |r: &mut SplitMix64| {
        let kernel = 1 + below(r, 3) as usize;
        let stride = 1 + below(r, 3) as usize;
        let dilation = 1 + below(r, 2) as usize;
        let padding = below(r, kernel as u64 + 1) as usize;
        Axis::new(kernel, stride, padding, dilation)
    };
    let (h, w) = (axis(r), axis(r));
    let h = if one_d { Axis::new(1, 1, 0, 1) } else { h };
    let in_len = |r: &mut SplitMix64, a: &Axis| (a.span().saturating_sub(2 * a.padding)).max(1) + below(r, 7) as usize;
    let in_h = if one_d { 1 } else { in_len(r, &h) };
    let in_w = in_len(r, &w);
    let geom = Conv2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h,
        in_w,
        in_c,
        out_c,
        h,
        w,
        groups,
    };
    let Ok([oh, ow]) = geom.out_hw() else {
        return Ok(());
    };
    let k = geom.reduction_len();
    let (range, zp) = range7(r);
    let p = QConv2d {
        geom,
        input_zero_point: zp,
        requant: (0..out_c).map(|_| requant(r, k)).collect(),
    };
    let x = u7s(r, geom.input_len(), range);
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let n_out = geom.batch * oh * ow * out_c;
    let mut want = vec![0u8; n_out];
    reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
    let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), fast::detected(), range).unwrap();
    // One input and one output channel per group is the depthwise kernel's case.
    prop_assert_eq!(
        packed.seven_bit(),
        fast::detected() == Isa::Avx2 && (cig, cog) != (1, 1)
    );
    let mut got = vec![0u8; n_out];
    packed.run(&geom, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?} {:?} zp {}", geom, range, zp);
    Ok(())
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
    let axis = |r: &mut SplitMix64| {
        if stem {
            return Axis::new(7, 2, 3, 1);
        }
        let kernel = 1 + below(r, 7) as usize;
        let stride = 1 + below(r, 3) as usize;
        let dilation = 1 + below(r, 2) as usize;
        let padding = below(r, kernel as u64 + 1) as usize;
        Axis::new(kernel, stride, padding, dilation)
    };
    let (h, w) = (axis(r), axis(r));
    let one_d = !stem && below(r, 6) == 0;
    let h = if one_d { Axis::new(1, 1, 0, 1) } else { h };
    let in_len = |r: &mut SplitMix64, a: &Axis| (a.span().saturating_sub(2 * a.padding)).max(1) + below(r, 12) as usize;
    let in_h = if one_d { 1 } else { in_len(r, &h) };
    let in_w = in_len(r, &w);
    let geom = Conv2dGeom {
        batch: 1 + below(r, 2) as usize,
        in_h,
        in_w,
        in_c: cig,
        out_c,
        h,
        w,
        groups: 1,
    };
    let Ok([oh, ow]) = geom.out_hw() else {
        return Ok(());
    };
    let k = geom.reduction_len();
    let (range, zp) = range7(r);
    let p = QConv2d {
        geom,
        input_zero_point: zp,
        requant: (0..out_c).map(|_| requant(r, k)).collect(),
    };
    let x = u7s(r, geom.input_len(), range);
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let n_out = geom.batch * oh * ow * out_c;
    let mut want = vec![0u8; n_out];
    reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
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
    let mut got = vec![1u8; n_out];
    packed.run(&geom, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "{:?} {:?} zp {}", geom, range, zp);
    Ok(())
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
    let p = QConv2d {
        geom,
        input_zero_point: zp,
        requant: (0..out_c).map(|_| requant(r, k)).collect(),
    };
    let wt = i8s(r, geom.weight_len());
    let b = bias(r, out_c, k, zp);
    let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), fast::detected(), range).unwrap();
    prop_assert_eq!(packed.winograd(), fast::detected() == Isa::Avx2);
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
        let Ok(n_out) = g.output_len() else { continue };
        let mut want = vec![0u8; n_out];
        reference::qconv2d(&QConv2d { geom: g, ..p.clone() }, &x, &wt, b.as_deref(), &mut want).unwrap();
        let mut got = vec![1u8; n_out];
        packed.run(&g, &x, &mut got).unwrap();
        prop_assert_eq!(&got, &want, "{:?} {:?} zp {}", g, range, zp);
    }
    Ok(())
}

fn check_linear7(seed: u64) -> Result<(), TestCaseError> {
    let r = &mut SplitMix64::new(seed);
    let batch = pick(r, &[1, 1, 2, 3, 5, 8]);
    let k = pick(r, &[1, 3, 4, 7, 17, 33, 64, 65, 130]);
    let m = pick(r, &[1, 3, 7, 8, 9, 16, 17, 33, 65]);
    let (range, zp) = range7(r);
    let p = QLinear {
        batch,
        in_features: k,
        out_features: m,
        input_zero_point: zp,
        requant: (0..m).map(|_| requant(r, k)).collect(),
    };
    let x = u7s(r, batch * k, range);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let mut want = vec![0u8; batch * m];
    reference::qlinear(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
    let packed = PackedLinear::with_input_range(&p, &wt, b.as_deref(), fast::detected(), range).unwrap();
    prop_assert_eq!(packed.seven_bit(), fast::detected() == Isa::Avx2 && (k, m) != (1, 1));
    let mut got = vec![0u8; batch * m];
    packed.run(batch, &x, &mut got).unwrap();
    prop_assert_eq!(&got, &want, "batch {} k {} m {} {:?} zp {}", batch, k, m, range, zp);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn pools_match_reference(seed in any::<u64>()) {
        check_pools(seed)?;
    }

    #[test]
    fn avgpool_clamp_concat_match_reference(seed in any::<u64>()) {
        check_avg_clamp_concat(seed)?;
    }

    #[test]
    fn qconv2d_matches_reference(seed in any::<u64>()) {
        check_conv(seed)?;
    }

    #[test]
    fn qlinear_matches_reference(seed in any::<u64>()) {
        check_linear(seed)?;
    }

    #[test]
    fn qconv2d_7bit_matches_reference(seed in any::<u64>()) {
        check_conv7(seed)?;
    }

    #[test]
    fn qconv2d_7bit_im2col_matches_reference(seed in any::<u64>()) {
        check_conv7_im2col(seed)?;
    }

    #[test]
    fn qconv2d_winograd_matches_reference(seed in any::<u64>()) {
        check_winograd(seed)?;
    }

    #[test]
    fn qlinear_7bit_matches_reference(seed in any::<u64>()) {
        check_linear7(seed)?;
    }

    #[test]
    fn qadd_matches_reference(seed in any::<u64>()) {
        check_add(seed)?;
    }

    #[test]
    fn relayouts_match_reference(seed in any::<u64>()) {
        check_relayout(seed)?;
    }

    #[test]
    fn quantize_dequantize_match_reference(seed in any::<u64>()) {
        check_quantize(seed)?;
    }
}

#[test]
fn avx2_is_used_where_available() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert_eq!(fast::detected(), Isa::Avx2);
        return;
    }
    assert_eq!(fast::detected(), Isa::Scalar);
}

/// A convolution big enough to take the multi-threaded path, with every pixel tile and block tail.
#[test]
fn large_conv_matches_reference() {
    let r = &mut SplitMix64::new(7);
    for (in_c, out_c, groups, hw, kernel) in [(64, 72, 1, 30, 3), (40, 40, 40, 61, 3), (24, 48, 2, 23, 1)] {
        let a = Axis::new(kernel, 1, kernel / 2, 1);
        let geom = Conv2dGeom {
            batch: 2,
            in_h: hw,
            in_w: hw,
            in_c,
            out_c,
            h: a,
            w: a,
            groups,
        };
        let k = geom.reduction_len();
        let zp = 77;
        let p = QConv2d {
            geom,
            input_zero_point: zp,
            requant: (0..out_c).map(|_| requant(r, k)).collect(),
        };
        let x = u8s(r, geom.input_len());
        let wt = i8s(r, geom.weight_len());
        let b = bias(r, out_c, k, zp);
        let n = geom.output_len().unwrap();
        let mut want = vec![0u8; n];
        reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
        let mut got = vec![1u8; n];
        PackedConv::new(&p, &wt, b.as_deref())
            .unwrap()
            .run(&geom, &x, &mut got)
            .unwrap();
        assert_eq!(got, want, "{geom:?}");
        let scalar = PackedConv::with_isa(&p, &wt, b.as_deref(), Isa::Scalar).unwrap();
        assert_eq!(scalar.isa(), Isa::Scalar);
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
        requant: (0..m).map(|_| requant(r, k)).collect(),
    };
    let x = u8s(r, batch * k);
    let wt = i8s(r, m * k);
    let b = bias(r, m, k, zp);
    let mut want = vec![0u8; batch * m];
    reference::qlinear(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
    let mut got = vec![0u8; batch * m];
    fast::qlinear(&p, &x, &wt, b.as_deref(), &mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn packed_conv_refuses_other_geometry() {
    let a = Axis::new(3, 1, 1, 1);
    let geom = Conv2dGeom {
        batch: 1,
        in_h: 4,
        in_w: 4,
        in_c: 2,
        out_c: 2,
        h: a,
        w: a,
        groups: 1,
    };
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
    let a = Axis::new(3, 1, 1, 1);
    let geom = Conv2dGeom {
        batch: 1,
        in_h: 9,
        in_w: 11,
        in_c: 20,
        out_c: 24,
        h: a,
        w: a,
        groups: 1,
    };
    let k = geom.reduction_len();
    let p = QConv2d {
        geom,
        input_zero_point: 60,
        requant: (0..24).map(|_| requant(r, k)).collect(),
    };
    let wt = i8s(r, geom.weight_len());
    let avx2 = fast::detected() == Isa::Avx2;
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
    let n = geom.output_len().unwrap();
    for x in [u7s(r, geom.input_len(), r7), u8s(r, geom.input_len())] {
        let mut want = vec![0u8; n];
        reference::qconv2d(&p, &x, &wt, None, &mut want).unwrap();
        let mut got = vec![1u8; n];
        packed.run(&geom, &x, &mut got).unwrap();
        assert_eq!(got, want);
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
        let a = Axis::new(kernel, 1, kernel / 2, 1);
        let geom = Conv2dGeom {
            batch: 2,
            in_h: hw,
            in_w: hw,
            in_c,
            out_c,
            h: a,
            w: a,
            groups,
        };
        let k = geom.reduction_len();
        for (zp, x) in [(0, vec![127u8; geom.input_len()]), (127, u7s(r, geom.input_len(), r7))] {
            let p = QConv2d {
                geom,
                input_zero_point: zp,
                requant: (0..out_c).map(|_| requant(r, k)).collect(),
            };
            let wt = vec![wv; geom.weight_len()];
            let b = bias(r, out_c, k, zp);
            let n = geom.output_len().unwrap();
            let mut want = vec![0u8; n];
            reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
            let mut got = vec![1u8; n];
            let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, r7).unwrap();
            packed.run(&geom, &x, &mut got).unwrap();
            assert_eq!(got, want, "{geom:?} zp {zp}");
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
    let a = Axis::new(7, 2, 3, 1);
    let geom = Conv2dGeom {
        batch: 2,
        in_h: 64,
        in_w: 67,
        in_c: 3,
        out_c: 64,
        h: a,
        w: a,
        groups: 1,
    };
    let k = geom.reduction_len();
    for (zp, x, wt) in [
        (0, vec![127u8; geom.input_len()], vec![-128i8; geom.weight_len()]),
        (127, vec![127u8; geom.input_len()], vec![127i8; geom.weight_len()]),
        (0, u7s(r, geom.input_len(), r7), vec![127i8; geom.weight_len()]),
        (37, u7s(r, geom.input_len(), r7), i8s(r, geom.weight_len())),
    ] {
        let p = QConv2d {
            geom,
            input_zero_point: zp,
            requant: (0..64).map(|_| requant(r, k)).collect(),
        };
        let b = bias(r, 64, k, zp);
        let n = geom.output_len().unwrap();
        let mut want = vec![0u8; n];
        reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
        let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, r7).unwrap();
        assert_eq!(packed.im2col(), fast::detected() == Isa::Avx2);
        let mut got = vec![1u8; n];
        packed.run(&geom, &x, &mut got).unwrap();
        assert_eq!(got, want, "zp {zp}");
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
        let (mut want, mut got) = (vec![0u8; n], vec![1u8; n]);
        reference::quantize_u8(&x, &p, &mut want).unwrap();
        pool.install(|| fast::quantize_u8(&x, &p, &mut got)).unwrap();
        assert_eq!(got, want);
        let (mut fw, mut fg) = (vec![0f32; n], vec![1f32; n]);
        reference::dequantize_u8(&want, &p, &mut fw).unwrap();
        pool.install(|| fast::dequantize_u8(&want, &p, &mut fg)).unwrap();
        assert!(fw.iter().zip(&fg).all(|(a, b)| a.to_bits() == b.to_bits()));
        let (a, b, o) = (qparams(r), qparams(r), qparams(r));
        let Ok(add) = QAdd::new(&a, &b, &o) else { continue };
        let (xa, xb) = (u8s(r, n), u8s(r, n));
        reference::qadd(&add, &xa, &xb, &mut want).unwrap();
        pool.install(|| fast::qadd(&add, &xa, &xb, &mut got)).unwrap();
        assert_eq!(got, want);
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
        let a = Axis::new(3, stride, 1, 1);
        let geom = Conv2dGeom {
            batch: 2,
            in_h: hw,
            in_w: hw + 2,
            in_c,
            out_c,
            h: a,
            w: a,
            groups: 1,
        };
        let k = geom.reduction_len();
        for (range, zp) in [(QRange::U8, 131), (r7, 64)] {
            let p = QConv2d {
                geom,
                input_zero_point: zp,
                requant: (0..out_c).map(|_| requant(r, k)).collect(),
            };
            let x = u7s(r, geom.input_len(), range);
            let wt = i8s(r, geom.weight_len());
            let b = bias(r, out_c, k, zp);
            let n = geom.output_len().unwrap();
            let mut want = vec![0u8; n];
            reference::qconv2d(&p, &x, &wt, b.as_deref(), &mut want).unwrap();
            let packed = PackedConv::with_input_range(&p, &wt, b.as_deref(), Isa::Avx2, range)
                .unwrap()
                .direct_only();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut got = vec![1u8; n];
                pool.install(|| packed.run(&geom, &x, &mut got)).unwrap();
                assert_eq!(got, want, "{geom:?} zp {zp} threads {threads}");
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
    let mut want = vec![0u8; n];
    reference::qmaxpool2d(&g, &x, &mut want).unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut got = vec![1u8; n];
        pool.install(|| fast::qmaxpool2d(&g, &x, &mut got)).unwrap();
        assert_eq!(got, want, "threads {threads}");
    }
}
