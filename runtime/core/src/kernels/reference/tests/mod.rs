//! Tests of the reference kernels: random-data generators with the saturation edges
//! over-represented, float oracles (NCHW convolution and pooling in f64, fake-quant
//! requantization), shared by the hand-computed cases ([`by_hand`]) and the property tests
//! ([`props`]).

mod by_hand;
mod props;

use super::super::{
    requant_per_channel, Activation, Axis, ConcatPart, Conv2dGeom, KernelError, Pool2dGeom, QAdaptiveAvgPool2d,
    QAvgPool2d, QConcat, QConv2d, QGlobalAvgPool, QLinear,
};
use super::*;
use crate::quant::{
    accumulator_fits, max_step_diff, quantize_bias, QAdd, QElem, QParams, QRange, Requant, RequantRule,
    FAKE_QUANT_TOLERANCE_STEPS,
};
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
                                let v = xp[((b * c + g * cig + ci) * hp + oy * sh + ky * dh) * wp + ox * sw + kx * dw];
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
    let p = QConv2d::new(g, &case.input, &case.w_scales, &case.output, act, RequantRule::Integer).unwrap();
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

/// A pooling case: the geometry (1-D along the width when `one_d`), input parameters and random
/// codes drawn from `seed`; `None` when the geometry has no output.
fn pool_case(
    batch: usize,
    c: usize,
    in_hw: [usize; 2],
    (ah, aw): (Axis, Axis),
    ceil_mode: bool,
    one_d: bool,
    seed: u64,
) -> Option<(Pool2dGeom, QParams, Vec<u8>)> {
    let g = if one_d {
        Pool2dGeom::pool1d(batch, in_hw[1], c, aw, ceil_mode)
    } else {
        Pool2dGeom {
            batch,
            ..pool_geom(in_hw, c, ah, ceil_mode)
        }
    };
    let g = Pool2dGeom { w: aw, ..g };
    g.out_hw().ok()?;
    let mut rng = SplitMix64::new(seed);
    let p = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
    let x = data_u8(&mut rng, g.input_len(), p.zero_point());
    Some((g, p, x))
}
