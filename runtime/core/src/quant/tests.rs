//! Tests of the numerics: every formula of docs/numerics.md by hand, against PyTorch's rules,
//! and as properties.

use super::*;
use crate::tensor::SplitMix64;
use proptest::prelude::*;

fn qp(scale: f32, zp: i32, range: QRange) -> QParams {
    QParams::new(scale, zp, range).unwrap()
}

// ----- ranges -----

#[test]
fn ranges_from_bits() {
    assert_eq!(QRange::new(8, false).unwrap(), QRange::U8);
    assert_eq!(QRange::new(8, true).unwrap(), QRange::I8);
    let r4 = QRange::new(4, true).unwrap();
    assert_eq!((r4.qmin(), r4.qmax()), (-8, 7));
    let r2 = QRange::new(2, false).unwrap();
    assert_eq!((r2.qmin(), r2.qmax()), (0, 3));
    assert_eq!(QRange::new(1, true), Err(QuantError::BadBits { bits: 1 }));
    assert_eq!(QRange::new(9, false), Err(QuantError::BadBits { bits: 9 }));
    assert!(QRange::custom(-127, 127).is_ok());
    assert!(QRange::custom(0, 256).is_err());
    assert!(QRange::custom(-129, 127).is_err());
    assert!(QRange::custom(1, 10).is_err());
    assert!(QParams::new(0.0, 0, QRange::U8).is_err());
    assert!(QParams::new(f32::NAN, 0, QRange::U8).is_err());
    assert!(QParams::new(1e-40, 0, QRange::U8).is_err()); // subnormal
    assert!(QParams::new(1.0, 256, QRange::U8).is_err());
}

// ----- 1. quantize / dequantize -----

#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    let p = qp(1.0, 10, QRange::U8);
    let cases = [
        (0.5, 10),
        (1.5, 12),
        (2.5, 12),
        (-0.5, 10),
        (-1.5, 8),
        (-2.5, 8),
        (0.49, 10),
        (0.51, 11),
    ];
    for (x, q) in cases {
        assert_eq!(p.quantize(x), q, "x = {x}");
    }
    assert_eq!(p.quantize(1e9), 255);
    assert_eq!(p.quantize(-1e9), 0);
    assert_eq!(p.quantize(f32::INFINITY), 255);
    assert_eq!(p.quantize(f32::NEG_INFINITY), 0);
    assert_eq!(p.quantize(f32::MAX), 255);
    let s = qp(0.1, 0, QRange::I8);
    assert_eq!(s.quantize(100.0), 127);
    assert_eq!(s.quantize(-100.0), -128);
}

#[test]
fn quantize_maps_nan_to_zero_point() {
    for (zp, range) in [(0, QRange::I8), (37, QRange::U8), (255, QRange::U8), (-128, QRange::I8)] {
        let p = qp(0.25, zp, range);
        assert_eq!(p.quantize(f32::NAN), zp);
        assert_eq!(p.quantize(-f32::NAN), zp);
    }
}

#[test]
fn quantize_multiplies_by_inverse_scale_not_divides() {
    // fbgemm's example: x * (1/s) lands on 127.5 (→ 128), x / s on 127.49999 (→ 127).
    let (s, x) = (0.002_148_548_6f32, 0.273_939_94f32);
    assert_eq!(x * (1.0 / s), 127.5);
    assert!(x / s < 127.5);
    let p = qp(s, 0, QRange::U8);
    assert_eq!(p.quantize(x), 128);
}

#[test]
fn dequantize_formula() {
    assert_eq!(dequantize(200, 0.5, 100), 50.0);
    assert_eq!(dequantize(-128, 0.25, 0), -32.0);
    assert_eq!(dequantize(0, 0.1, 0), 0.0);
    let p = qp(0.1, 3, QRange::U8);
    assert_eq!(fake_quantize(0.26, &p), dequantize(p.quantize(0.26), 0.1, 3));
    assert_eq!(fake_quantize(f32::NAN, &p), 0.0);
}

#[test]
fn slice_functions_check_shapes() {
    let p = qp(0.5, 0, QRange::I8);
    let mut out = [0i8; 3];
    assert_eq!(
        quantize_per_tensor(&[1.0, 2.0], &p, &mut out),
        Err(QuantError::LengthMismatch { expected: 2, got: 3 })
    );
    let mut u = [0u8; 2];
    assert!(matches!(
        quantize_per_tensor(&[1.0, 2.0], &p, &mut u),
        Err(QuantError::RangeDoesNotFit { .. })
    ));
    let params = [p, p];
    let mut out5 = [0i8; 5];
    assert!(quantize_per_channel(&[0.0; 5], &params, 2, &mut out5).is_err());
    let mut out8 = [0i8; 8];
    quantize_per_channel(&[1.0; 8], &params, 2, &mut out8).unwrap();
    assert_eq!(out8, [2; 8]);
    let mut f = [0.0f32; 8];
    dequantize_per_channel(&out8, &params, 2, &mut f).unwrap();
    assert_eq!(f, [1.0; 8]);
    let mut f2 = [0.0f32; 2];
    dequantize_per_tensor(&[4i8, -4], &p, &mut f2).unwrap();
    assert_eq!(f2, [2.0, -2.0]);
}

// ----- 2. choosing parameters -----

#[test]
fn affine_params_match_pytorch_formula() {
    let p = qparams_affine(-1.0, 3.0, QRange::U8, false).unwrap();
    assert_eq!(p.scale(), 4.0 / 255.0);
    assert_eq!(p.zero_point(), 64); // 0 - rint(-1 / (4/255)) = rint(63.75)
    assert_eq!(p.quantize(0.0), 64); // 0 is exact
                                     // min clamped to <= 0, max to >= 0.
    let q = qparams_affine(2.0, 6.0, QRange::U8, false).unwrap();
    assert_eq!((q.scale(), q.zero_point()), (6.0 / 255.0, 0));
    let n = qparams_affine(-6.0, -2.0, QRange::U8, false).unwrap();
    assert_eq!((n.scale(), n.zero_point()), (6.0 / 255.0, 255));
    // Degenerate range: PyTorch's eps, zero point qmin - 0.
    let z = qparams_affine(0.0, 0.0, QRange::U8, false).unwrap();
    assert_eq!((z.scale(), z.zero_point()), (f32::EPSILON, 0));
    assert_eq!(z.quantize(0.0), 0);
    let zs = qparams_affine(0.0, 0.0, QRange::I8, false).unwrap();
    assert_eq!(zs.zero_point(), -128);
    assert!(matches!(
        qparams_affine(f32::NAN, 1.0, QRange::U8, false),
        Err(QuantError::NonFiniteRange { .. })
    ));
    assert!(matches!(
        qparams_affine(1.0, f32::INFINITY, QRange::U8, false),
        Err(QuantError::NonFiniteRange { .. })
    ));
    assert!(matches!(
        qparams_affine(-f32::MAX, f32::MAX, QRange::U8, false),
        Err(QuantError::NonFiniteRange { .. })
    ));
    assert!(matches!(
        qparams_affine(2.0, 1.0, QRange::U8, false),
        Err(QuantError::InvertedRange { .. })
    ));
}

#[test]
fn symmetric_params_use_half_the_levels() {
    let p = qparams_symmetric(-0.5, 1.275, QRange::I8, false).unwrap();
    assert_eq!(p.scale(), 1.275f32 / 127.5);
    assert_eq!(p.zero_point(), 0);
    assert_eq!(p.quantize(1.275), 127); // 127.5 saturates
    assert_eq!(p.quantize(-1.275), -128);
    let u = qparams_symmetric(-1.0, 1.0, QRange::U8, false).unwrap();
    assert_eq!(u.zero_point(), 128);
    let u4 = qparams_symmetric(-1.0, 1.0, QRange::new(4, false).unwrap(), false).unwrap();
    assert_eq!(u4.zero_point(), 8);
    let narrow = qparams_symmetric(-2.54, 0.0, QRange::custom(-127, 127).unwrap(), false).unwrap();
    assert_eq!(narrow.scale(), 2.54f32 / 127.0);
    let z = qparams_symmetric(0.0, 0.0, QRange::I8, false).unwrap();
    assert_eq!((z.scale(), z.zero_point()), (f32::EPSILON, 0));
}

#[test]
fn pow2_scales() {
    assert_eq!(pow2_scale(0.3), 0.5);
    assert_eq!(pow2_scale(0.25), 0.25);
    assert_eq!(pow2_scale(1.0), 1.0);
    assert_eq!(pow2_scale(3.0), 4.0);
    assert_eq!(pow2_scale(4.000_001), 8.0);
    assert_eq!(pow2_scale(f32::EPSILON), f32::EPSILON);
    assert_eq!(pow2_scale(f32::MIN_POSITIVE * 1.5), f32::MIN_POSITIVE * 2.0);
    let p = qparams_symmetric(-1.0, 1.0, QRange::I8, true).unwrap();
    assert_eq!(p.scale(), 1.0 / 64.0); // 1/127.5 → 2^-6
    let a = qparams_affine(-1.0, 3.0, QRange::U8, true).unwrap();
    assert_eq!((a.scale(), a.zero_point()), (1.0 / 32.0, 32));
}

// ----- 3. requantization -----

#[test]
fn multiplier_representation() {
    assert_eq!(quantize_multiplier(0.5), Ok((1 << 30, 31)));
    assert_eq!(quantize_multiplier(1.0), Ok((1 << 30, 30)));
    assert_eq!(quantize_multiplier(0.75), Ok((3 << 29, 31)));
    assert_eq!(quantize_multiplier(0.1), Ok((1_717_986_918, 34)));
    assert_eq!(quantize_multiplier(MIN_MULTIPLIER), Ok((1 << 30, 62)));
    assert_eq!(quantize_multiplier(MAX_MULTIPLIER / 2.0), Ok((1 << 30, 1)));
    // Rounds up to 2^31 → renormalised.
    assert_eq!(quantize_multiplier(1.0 - 1e-12), Ok((1 << 30, 30)));
    for bad in [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        MIN_MULTIPLIER / 4.0,
        MAX_MULTIPLIER,
        1e-300,
    ] {
        assert!(quantize_multiplier(bad).is_err(), "{bad}");
    }
    let (m, s) = quantize_multiplier(1.0e-3).unwrap();
    assert!((1 << 30..=i32::MAX).contains(&m));
    let real = m as f64 * 0.5f64.powi(s as i32);
    assert!((real - 1.0e-3).abs() <= 1.0e-3 * 2f64.powi(-31));
}

#[test]
fn requant_hand_picked() {
    let wide = QRange::I8;
    let r = Requant::from_real(0.25, 0, wide).unwrap();
    // Ties go toward +inf.
    let cases = [
        (2, 1),
        (-2, 0),
        (6, 2),
        (-6, -1),
        (-7, -2),
        (5, 1),
        (-5, -1),
        (0, 0),
        (1, 0),
        (-1, 0),
    ];
    for (acc, want) in cases {
        assert_eq!(r.apply(acc), want, "acc = {acc}");
    }
    // 0.1 is stored slightly below 0.1, so 5 * 0.1 = 0.5 rounds down.
    let t = Requant::from_real(0.1, 0, wide).unwrap();
    assert!(t.real() < 0.1);
    assert_eq!((t.apply(5), t.apply(15), t.apply(-15), t.apply(1000)), (0, 1, -1, 100));
    let z = Requant::from_real(0.5, 100, QRange::U8).unwrap();
    assert_eq!((z.apply(0), z.apply(1), z.apply(-1), z.apply(-3)), (100, 101, 100, 99));
    // M >= 1.
    let big = Requant::from_real(3.0, 0, wide).unwrap();
    assert_eq!((big.apply(10), big.apply(-42), big.apply(43)), (30, -126, 127));
    assert!(Requant::from_real(0.5, 300, QRange::U8).is_err());
    assert!(Requant::from_real(0.0, 0, QRange::U8).is_err());
}

#[test]
fn requant_saturates_at_both_ends_and_extremes_do_not_overflow() {
    let r = Requant::from_real(1.0, 0, QRange::U8).unwrap();
    assert_eq!(
        (r.apply(1000), r.apply(-1000), r.apply(255), r.apply(256)),
        (255, 0, 255, 255)
    );
    for m in [MIN_MULTIPLIER, 1e-6, 0.999_999, 1.0, 7.5, MAX_MULTIPLIER * 0.999] {
        let r = Requant::from_real(m, 0, QRange::I8).unwrap();
        for acc in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX] {
            let want = (acc as f64 * m).round().clamp(-128.0, 127.0) as i32;
            assert!(r.apply(acc).abs_diff(want) <= 1, "m {m} acc {acc}");
        }
    }
    let relu = Requant::from_real(1.0, 10, QRange::U8).unwrap().with_relu();
    assert_eq!((relu.apply(-5), relu.apply(5)), (10, 15));
}

#[test]
fn mul_shift_round_is_floor_of_half_up() {
    let mut rng = SplitMix64::new(3);
    for _ in 0..20_000 {
        let x = rng.next_u64() as i32;
        let m = (rng.next_u64() >> 33) as i32;
        let shift = 1 + (rng.next_u64() % 62) as u32;
        let num = x as i128 * m as i128 + (1i128 << (shift - 1));
        let want = num.div_euclid(1i128 << shift) as i64;
        assert_eq!(mul_shift_round(x, m, shift), want);
    }
}

#[test]
fn requant_multiplier_in_f64() {
    assert_eq!(requant_multiplier(0.5, 0.25, 0.125), 1.0);
    let (a, b, c) = (0.1f32, 0.3f32, 0.7f32);
    assert_eq!(requant_multiplier(a, b, c), (a as f64 * b as f64) / c as f64);
}

// ----- 4. bias and accumulation -----

#[test]
fn bias_quantization() {
    assert_eq!(
        quantize_bias(1.0, 0.5, 0.25).unwrap(),
        QuantizedBias {
            value: 8,
            saturated: false
        }
    );
    assert_eq!(quantize_bias(0.0625, 0.5, 0.25).unwrap().value, 0); // 0.5 → 0 (even)
    assert_eq!(quantize_bias(0.1875, 0.5, 0.25).unwrap().value, 2); // 1.5 → 2
    assert_eq!(quantize_bias(-0.1875, 0.5, 0.25).unwrap().value, -2);
    assert_eq!(
        quantize_bias(1e9, 1e-3, 1e-3).unwrap(),
        QuantizedBias {
            value: i32::MAX,
            saturated: true
        }
    );
    assert_eq!(
        quantize_bias(-1e9, 1e-3, 1e-3).unwrap(),
        QuantizedBias {
            value: i32::MIN,
            saturated: true
        }
    );
    assert!(quantize_bias(f32::INFINITY, 1.0, 1.0).unwrap().saturated);
    assert!(matches!(
        quantize_bias(f32::NAN, 1.0, 1.0),
        Err(QuantError::NanBias { .. })
    ));
    assert!(matches!(quantize_bias(1.0, 0.0, 1.0), Err(QuantError::BadScale { .. })));
}

#[test]
fn accumulation_and_bounds() {
    let x: [u8; 3] = [0, 128, 255];
    let w: [i8; 3] = [-128, 1, 127];
    let want = 7 + (-128) * (-128) + 127 * 127; // middle term: (128 - 128) * 1 = 0
    assert_eq!(dot_acc(&x, 128, &w, 7).unwrap(), want);
    assert!(dot_acc(&x, 0, &w[..2], 0).is_err());
    // Wrapping: the split form agrees bit for bit even past i32.
    let xs = vec![255u8; 70_000];
    let ws = vec![-128i8; 70_000];
    let direct = dot_acc(&xs, 0, &ws, 0).unwrap();
    let split = xs
        .iter()
        .zip(&ws)
        .fold(0i32, |a, (&x, &w)| a.wrapping_add(x as i32 * w as i32));
    assert_eq!(direct, split);
    assert_eq!(accumulator_bound(1, QRange::U8, 0, QRange::I8), 255 * 128);
    assert_eq!(accumulator_bound(1, QRange::U8, 200, QRange::I8), 200 * 128);
    assert!(accumulator_fits(65_793, QRange::U8, 0, QRange::I8, 0));
    assert!(!accumulator_fits(65_794, QRange::U8, 0, QRange::I8, 0));
    assert!(!accumulator_fits(65_793, QRange::U8, 0, QRange::I8, 1 << 20));
}

// ----- 5. average pooling -----

#[test]
fn avg_round_hand_picked() {
    let cases = [
        (2, 4, 0),
        (6, 4, 2),
        (10, 4, 2),
        (-2, 4, 0),
        (-6, 4, -2),
        (-10, 4, -2),
        (7, 4, 2),
        (-7, 4, -2),
        (5, 4, 1),
        (-5, 4, -1),
        (3, 2, 2),
        (1, 2, 0),
        (24, 49, 0),
        (25, 49, 1),
        (i32::MAX, 1, i32::MAX),
        (i32::MIN, 1, i32::MIN),
        (i32::MAX, 2, 1 << 30),
        (i32::MIN, 3, -715_827_883),
    ];
    for (sum, count, want) in cases {
        assert_eq!(avg_round(sum, count), want, "{sum} / {count}");
    }
}

#[test]
fn avg_pool_out_centres_on_zero_point() {
    // zp 1: Σ(q - zp) = 2 over 4 → 0.5 → 0 (even), + 1.
    assert_eq!(avg_pool_out(6, 4, 4, 1, QRange::U8), 1);
    // Padding counted in the divisor pulls toward real 0 (the zero point).
    assert_eq!(avg_pool_out(4 * 200, 4, 9, 100, QRange::U8), 144);
    assert_eq!(avg_pool_out(255, 1, 1, 0, QRange::U8), 255);
    assert_eq!(avg_pool_out(-128 * 4, 4, 4, 0, QRange::I8), -128);
}

#[test]
fn avg_round_matches_pytorch_float_rule_for_power_of_two_counts() {
    let mut rng = SplitMix64::new(11);
    for _ in 0..50_000 {
        let count = 1 << (rng.next_u64() % 12);
        let sum = (rng.next_u64() % (1 << 24)) as i32 - (1 << 23);
        let pt = (sum as f32 * (1.0f32 / count as f32)).round_ties_even() as i32;
        assert_eq!(avg_round(sum, count), pt);
    }
}

// ----- 6. add -----

#[test]
fn qadd_hand_picked() {
    let a = qp(0.5, 10, QRange::U8);
    let b = qp(0.25, 0, QRange::U8);
    let out = qp(1.0, 5, QRange::U8);
    let add = QAdd::new(&a, &b, &out).unwrap();
    // (20 - 10) * 0.5 + 8 * 0.25 = 7 → 12.
    assert_eq!(add.apply(20, 8), 12);
    assert_eq!(add.apply(10, 0), 5);
    assert_eq!(add.apply(255, 255), 191); // 122.5 + 63.75 = 186.25 → 186 + 5
    assert_eq!(
        QAdd::new(&a, &b, &qp(0.25, 5, QRange::U8)).unwrap().apply(255, 255),
        255
    );
    assert_eq!(add.apply(0, 0), 0); // -5 + 5 = 0 → exactly qmin
                                    // A tie: 1 * 0.5 + 0 = 0.5 → +inf rounding gives 6, f32 reference gives even 5 + 0 = 5.
    assert_eq!(add.apply(11, 0), 6);
    assert_eq!(qadd_f32_reference(11, 0, &a, &b, &out), 5);
    let relu = QAdd::new(&a, &b, &qp(1.0, 50, QRange::U8)).unwrap().with_relu();
    assert_eq!(relu.apply(0, 0), 50);
    assert!(QAdd::new(&a, &qp(1e-20, 0, QRange::U8), &out).is_err());
}

#[test]
fn qadd_rarely_differs_from_f32_reference() {
    let mut rng = SplitMix64::new(5);
    let (mut n, mut differ) = (0, 0);
    for _ in 0..200 {
        let a = qp(rng.uniform(0.001, 0.1), (rng.next_u64() % 256) as i32, QRange::U8);
        let b = qp(rng.uniform(0.001, 0.1), (rng.next_u64() % 256) as i32, QRange::U8);
        let o = qp(rng.uniform(0.01, 0.2), (rng.next_u64() % 256) as i32, QRange::U8);
        let add = QAdd::new(&a, &b, &o).unwrap();
        for _ in 0..500 {
            let (qa, qb) = ((rng.next_u64() % 256) as i32, (rng.next_u64() % 256) as i32);
            let (x, y) = (add.apply(qa, qb), qadd_f32_reference(qa, qb, &a, &b, &o));
            assert!(x.abs_diff(y) <= 1);
            n += 1;
            differ += (x != y) as u32;
        }
    }
    assert!(differ * 1000 < n, "{differ} of {n} differ");
}

// ----- 7. tolerances -----

#[test]
fn tolerance_helpers() {
    assert_eq!(max_step_diff(&[1u8, 5, 9], &[2u8, 5, 7]), Some(2));
    assert_eq!(max_step_diff::<i8>(&[], &[]), Some(0));
    assert_eq!(max_step_diff(&[1u8], &[]), None);
    assert!(float_rewrite_close(&[100.0, 1.0], &[100.005, 1.009]));
    assert!(!float_rewrite_close(&[100.0, 1.0], &[100.0, 1.011]));
    assert!(!float_rewrite_close(&[1.0], &[f32::NAN]));
    assert!(!float_rewrite_close(&[1.0], &[1.0, 1.0]));
    assert!(float_rewrite_close(&[0.0, 0.0], &[0.0, 0.0]));
}

/// Batch-norm folding on a 3x3x512 reduction: the folded form stays inside the float-rewrite
/// tolerance, a wrong fold (mean not subtracted) does not.
#[test]
fn bn_folding_stays_within_float_rewrite_tolerance() {
    let mut rng = SplitMix64::new(17);
    let (k, ch, n) = (4608, 8, 16);
    let mut worst = 0.0f32;
    for _ in 0..ch {
        let w: Vec<f32> = (0..k).map(|_| rng.uniform(-0.05, 0.05)).collect();
        let (bias, gamma, beta) = (rng.uniform(-1.0, 1.0), rng.uniform(0.5, 2.0), rng.uniform(-1.0, 1.0));
        let (mean, var) = (rng.uniform(-1.0, 1.0), rng.uniform(0.01, 4.0));
        let inv_std = gamma / (var + 1e-5).sqrt();
        let wf: Vec<f32> = w.iter().map(|v| v * inv_std).collect();
        let bf = (bias - mean) * inv_std + beta;
        let (mut reference, mut folded, mut wrong) = (vec![], vec![], vec![]);
        for _ in 0..n {
            let x: Vec<f32> = (0..k).map(|_| rng.uniform(-3.0, 3.0)).collect();
            let conv: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bias;
            reference.push((conv - mean) * inv_std + beta);
            folded.push(wf.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bf);
            wrong.push(folded.last().unwrap() + mean * inv_std);
        }
        let m = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in reference.iter().zip(&folded) {
            worst = worst.max((a - b).abs() / m);
        }
        assert!(float_rewrite_close(&reference, &folded));
        assert!(!float_rewrite_close(&reference, &wrong) || mean.abs() * inv_std < FLOAT_REWRITE_RTOL * m);
    }
    // The tolerance leaves at least a 10x margin over what f32 actually does here.
    assert!(worst * 10.0 < FLOAT_REWRITE_RTOL, "worst relative error {worst}");
}

// ----- properties -----

fn qparams_strategy() -> impl Strategy<Value = QParams> {
    (1e-4f32..10.0, any::<bool>(), 0i32..256).prop_map(|(s, signed, z)| {
        if signed {
            qp(s, z - 128, QRange::I8)
        } else {
            qp(s, z, QRange::U8)
        }
    })
}

/// A linear output computed the fake-quant way (f32 simulation, float bias) and the int8 way.
fn fake_vs_int(x: &[f32], w: &[f32], bias: f32, k: usize) -> (u8, u8) {
    let (xmin, xmax) = x.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let (wmin, wmax) = w.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let px = qparams_affine(xmin, xmax, QRange::U8, false).unwrap();
    let pw = qparams_symmetric(wmin, wmax, QRange::I8, false).unwrap();
    let xf: Vec<f32> = x.iter().map(|&v| fake_quantize(v, &px)).collect();
    let wf: Vec<f32> = w.iter().map(|&v| fake_quantize(v, &pw)).collect();
    let y: f32 = xf.iter().zip(&wf).map(|(a, b)| a * b).sum::<f32>() + bias;
    let amax = (k as f32).sqrt() * xmax.abs().max(xmin.abs()) * wmax.abs().max(wmin.abs()) + bias.abs();
    let po = qparams_affine(-amax, amax * 0.7, QRange::U8, false).unwrap();
    let fake = po.quantize(y) as u8;

    let mut xq = vec![0u8; k];
    let mut wq = vec![0i8; k];
    quantize_per_tensor(x, &px, &mut xq).unwrap();
    quantize_per_tensor(w, &pw, &mut wq).unwrap();
    let bq = quantize_bias(bias, px.scale(), pw.scale()).unwrap();
    assert!(!bq.saturated);
    let acc = dot_acc(&xq, px.zero_point(), &wq, bq.value).unwrap();
    let m = requant_multiplier(px.scale(), pw.scale(), po.scale());
    let int = Requant::from_real(m, po.zero_point(), QRange::U8).unwrap().apply(acc) as u8;
    (fake, int)
}

/// `requantize: float` by hand: ties go to even, the clamp bounds are the integer range, the
/// multiplier is `(s_in · s_w) / s_out` rounded in f32 at each step.
#[test]
fn requantize_float_by_hand() {
    // 10 · 0.25 = 2.5 → 2 (even); 14 · 0.25 = 3.5 → 4; -4 · 0.125 = -0.5 → -0 → zp.
    assert_eq!(requantize_float(10, 0.0, 0.25, 10, 0, 255), 12);
    assert_eq!(requantize_float(14, 0.0, 0.25, 10, 0, 255), 14);
    assert_eq!(requantize_float(-4, 0.0, 0.125, 10, 0, 255), 10);
    // Saturation at both ends, and a narrowed (ReLU) range.
    assert_eq!(requantize_float(i32::MAX, 0.0, 4.0, 3, 0, 255), 255);
    assert_eq!(requantize_float(i32::MIN, 0.0, 4.0, 3, 0, 255), 0);
    assert_eq!(requantize_float(-100, 0.0, 0.5, 20, 20, 127), 20);
    // f32(acc) rounds first: 2^24 + 1 is not an f32.
    assert_eq!(requantize_float((1 << 24) + 1, 0.0, 2f32.powi(-24), 0, 0, 255), 1);
    let (s_in, s_w, s_out) = (0.1f32, 0.003f32, 0.07f32);
    assert_eq!(float_requant_multiplier(s_in, s_w, s_out), (s_in * s_w) / s_out);
    let r = Requant::from_scales(RequantRule::Float, s_in, s_w, s_out, 5, QRange::U8).unwrap();
    assert_eq!(r.float_multiplier, (s_in * s_w) / s_out);
    for acc in [-5000, -1, 0, 1, 233, 234, 5000] {
        assert_eq!(r.apply(acc), requantize_float(acc, 0.0, r.float_multiplier, 5, 0, 255));
    }
    // `requantize: float_bias`: the bias in accumulator units, added to f32(acc) before the
    // multiply; 10 + 0.5 = 10.5, · 0.25 = 2.625 → 3, where the bias rounded into the accumulator
    // first (10 + rint(0.5) = 10) gives 2.5 → 2.
    assert_eq!(requantize_float(10, 0.5, 0.25, 10, 0, 255), 13);
    assert_eq!(requantize_float(10, 0.0, 0.25, 10, 0, 255), 12);
    let b = 0.0123f32;
    let fb = r.with_float_bias(b, s_in, s_w).unwrap();
    assert_eq!(fb.float_bias, b / (s_in * s_w));
    for acc in [-5000, -1, 0, 1, 233, 234, 5000] {
        let want = ((acc as f32 + b / (s_in * s_w)) * r.float_multiplier).round_ties_even() as i32 + 5;
        assert_eq!(fb.apply(acc), want.clamp(0, 255));
    }
    // Only with the float rule, and only finite.
    let i = Requant::from_scales(RequantRule::Integer, s_in, s_w, s_out, 5, QRange::U8).unwrap();
    assert!(i.with_float_bias(b, s_in, s_w).is_err());
    assert!(r.with_float_bias(f32::INFINITY, s_in, s_w).is_err());
    assert!(r.with_float_bias(f32::NAN, s_in, s_w).is_err());
    // The integer form of the same scales stays within one step.
    let i = Requant::from_scales(RequantRule::Integer, s_in, s_w, s_out, 5, QRange::U8).unwrap();
    for acc in -20_000..20_000 {
        assert!(r.apply(acc).abs_diff(i.apply(acc)) <= 1, "{acc}");
    }
}

proptest! {
    #[test]
    fn prop_round_trip_within_half_step(p in qparams_strategy(), t in 0.0f32..1.0) {
        let lo = dequantize(p.range().qmin(), p.scale(), p.zero_point());
        let hi = dequantize(p.range().qmax(), p.scale(), p.zero_point());
        let x = lo + (hi - lo) * t;
        let back = p.dequantize(p.quantize(x));
        let tol = p.scale() * 0.5 + 4.0 * f32::EPSILON * x.abs().max(p.scale());
        prop_assert!((back - x).abs() <= tol, "x {} back {} p {:?}", x, back, p);
    }

    #[test]
    fn prop_quantize_is_monotonic(p in qparams_strategy(), a in -1e4f32..1e4, b in -1e4f32..1e4) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.quantize(lo) <= p.quantize(hi));
    }

    #[test]
    fn prop_per_channel_equals_per_tensor(
        params in prop::collection::vec(qparams_strategy(), 1..5),
        inner in 1usize..4,
        outer in 1usize..4,
        seed in any::<u64>(),
    ) {
        // One element type for all channels: force them into i8's range when any is signed.
        let params: Vec<QParams> = params.iter().map(|p| qp(p.scale(), p.zero_point().clamp(-128, 127), QRange::I8)).collect();
        let c = params.len();
        let mut rng = SplitMix64::new(seed);
        let x: Vec<f32> = (0..outer * c * inner).map(|_| rng.uniform(-300.0, 300.0)).collect();
        let mut all = vec![0i8; x.len()];
        quantize_per_channel(&x, &params, inner, &mut all).unwrap();
        for (ch, p) in params.iter().enumerate() {
            let idx: Vec<usize> = (0..outer).flat_map(|o| (0..inner).map(move |i| (o * c + ch) * inner + i)).collect();
            let xs: Vec<f32> = idx.iter().map(|&i| x[i]).collect();
            let mut one = vec![0i8; xs.len()];
            quantize_per_tensor(&xs, p, &mut one).unwrap();
            for (j, &i) in idx.iter().enumerate() {
                prop_assert_eq!(all[i], one[j]);
            }
        }
    }

    #[test]
    fn prop_symmetric_unsigned_is_signed_shifted(min in -100f32..0.0, max in 0f32..100.0, bits in 2u32..=8) {
        let s = qparams_symmetric(min, max, QRange::new(bits, true).unwrap(), false).unwrap();
        let u = qparams_symmetric(min, max, QRange::new(bits, false).unwrap(), false).unwrap();
        prop_assert_eq!(s.scale(), u.scale());
        prop_assert_eq!(u.zero_point(), 1 << (bits - 1));
        for t in [-1.3f32, -0.5, 0.0, 0.2, 0.77, 1.5] {
            let x = t * max.max(-min);
            prop_assert_eq!(u.quantize(x), s.quantize(x) + (1 << (bits - 1)));
        }
    }

    #[test]
    fn prop_affine_range_is_covered(min in -100f32..100.0, width in 0f32..200.0, bits in 2u32..=8, signed: bool, pow2: bool) {
        let range = QRange::new(bits, signed).unwrap();
        let p = qparams_affine(min, min + width, range, pow2).unwrap();
        prop_assert_eq!(p.quantize(0.0), p.zero_point()); // 0 exact
        prop_assert_eq!(p.dequantize(p.zero_point()), 0.0);
        // The ends of the range quantize within half a step (no clipping beyond rounding).
        for x in [min.min(0.0), (min + width).max(0.0)] {
            let back = p.dequantize(p.quantize(x));
            prop_assert!((back - x).abs() <= p.scale() * 0.5 + 1e-4 * x.abs().max(p.scale()), "{} {}", x, back);
        }
        if pow2 {
            prop_assert_eq!(pow2_scale(p.scale()), p.scale());
        }
    }

    #[test]
    fn prop_requant_within_one_of_exact(acc in any::<i32>(), log2m in -32.0f64..29.9, zp in 0i32..256) {
        let m = 2f64.powf(log2m);
        let r = Requant::from_real(m, zp, QRange::U8).unwrap();
        let exact = ((acc as f64 * m).round_ties_even() + zp as f64).clamp(0.0, 255.0) as i32;
        prop_assert!(r.apply(acc).abs_diff(exact) <= 1, "acc {} m {} got {} want {}", acc, m, r.apply(acc), exact);
    }

    #[test]
    fn prop_requant_small_acc_exact_unless_near_tie(acc in -100_000i32..100_000, log2m in -20.0f64..0.0) {
        let m = 2f64.powf(log2m);
        let r = Requant::from_real(m, 0, QRange::custom(-128, 127).unwrap()).unwrap();
        let real = acc as f64 * m;
        let exact = real.round_ties_even().clamp(-128.0, 127.0) as i32;
        if (real - real.floor() - 0.5).abs() > 1e-4 {
            prop_assert_eq!(r.apply(acc), exact);
        }
    }

    #[test]
    fn prop_requant_monotonic(a in any::<i32>(), b in any::<i32>(), log2m in -32.0f64..29.9, zp in 0i32..256) {
        let r = Requant::from_real(2f64.powf(log2m), zp, QRange::U8).unwrap();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(r.apply(lo) <= r.apply(hi));
    }

    #[test]
    fn prop_qadd_within_one_of_f32(
        a in qparams_strategy(), b in qparams_strategy(), o in qparams_strategy(),
        ta in 0u8.., tb in 0u8..,
    ) {
        // Output scale at most 2^13 times the larger input scale (QAdd::new's bound).
        prop_assume!(a.scale().max(b.scale()) / o.scale() >= 1.0 / 8192.0);
        let add = QAdd::new(&a, &b, &o).unwrap();
        let qa = a.range().qmin() + ta as i32;
        let qb = b.range().qmin() + tb as i32;
        let got = add.apply(qa, qb);
        let want = qadd_f32_reference(qa, qb, &a, &b, &o);
        prop_assert!(got.abs_diff(want) <= 1, "got {} want {}", got, want);
        prop_assert!(o.range().contains(got));
    }

    #[test]
    fn prop_avg_round_is_nearest_even(sum in any::<i32>(), count in 1i32..100_000) {
        let want = (sum as f64 / count as f64).round_ties_even() as i32;
        prop_assert_eq!(avg_round(sum, count), want);
    }

    #[test]
    fn prop_fake_quant_within_one_step_of_int8(k in 1usize..300, seed in any::<u64>(), bias in -2.0f32..2.0) {
        let mut rng = SplitMix64::new(seed);
        let x: Vec<f32> = (0..k).map(|_| rng.uniform(-1.0, 3.0)).collect();
        let w: Vec<f32> = (0..k).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let (fake, int) = fake_vs_int(&x, &w, bias, k);
        prop_assert!(max_step_diff(&[fake], &[int]) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{} vs {}", fake, int);
    }
}

// ----- §10 pointwise curves, §11 mul -----

#[test]
fn curves_by_hand() {
    let hs = |x| Curve::HardSwish.eval(x);
    let hsig = |x| Curve::HardSigmoid.eval(x);
    // hardswish: 0 below -3, x above 3, x(x+3)/6 between.
    assert_eq!(hs(-4.0), 0.0);
    assert_eq!(hs(-3.0), 0.0);
    assert_eq!(hs(3.0), 3.0);
    assert_eq!(hs(10.0), 10.0);
    assert_eq!(hs(1.0), 4.0 / 6.0);
    assert_eq!(hs(-1.5), -0.375);
    // hardsigmoid: 0, 1 and (x+3)/6.
    assert_eq!(hsig(-3.5), 0.0);
    assert_eq!(hsig(3.5), 1.0);
    assert_eq!(hsig(0.0), 0.5);
    assert_eq!(hsig(1.5), 0.75);
    assert_eq!(Curve::Sigmoid.eval(0.0), 0.5);
    assert!((Curve::Sigmoid.eval(2.0) - 0.880_797_1).abs() < 1e-7);
    assert_eq!(Curve::Sigmoid.eval(-200.0), 0.0);
    assert_eq!(Curve::Sigmoid.eval(200.0), 1.0);
    assert!(Curve::HardSwish.eval(f32::NAN).is_nan());
    for c in Curve::ALL {
        assert_eq!(Curve::from_name(c.name()), Some(c));
    }
}

#[test]
fn lut_tables_are_fake_quantization_of_the_curve() {
    // Input u8 scale 0.05, zp 128: codes 0..=255 are -6.4..6.35.
    let input = qp(0.05, 128, QRange::U8);
    let out = qp(6.35 / 255.0 * 1.5, 40, QRange::U8);
    let t = lut_table(Curve::HardSwish, &input, &out);
    for q in 0..=255i32 {
        let want = out.quantize(Curve::HardSwish.eval(input.dequantize(q)));
        assert_eq!(t[q as usize] as i32, want, "code {q}");
    }
    // By hand: code 128 is 0.0 → zp; code 0 is -6.4 → hardswish 0 → zp; code 188 is 3.0 → 3.0.
    assert_eq!(t[128], 40);
    assert_eq!(t[0], 40);
    assert_eq!(t[188] as i32, out.quantize(3.0));
    // Hardsigmoid into [0, 1] with scale 1/255, zp 0: -3 → 0, 0 → 0.5 (127.5 give or take the
    // f32 scale), 3 → 255.
    let unit = qp(1.0 / 255.0, 0, QRange::U8);
    let t = lut_table(Curve::HardSigmoid, &input, &unit);
    assert_eq!((t[68], t[188]), (0, 255));
    assert!((127..=128).contains(&t[128]));
    // Saturation: sigmoid's outputs above the output range clamp to qmax.
    let small = qp(0.001, 0, QRange::U8);
    assert_eq!(lut_table(Curve::Sigmoid, &input, &small)[200], 255);
    // An i8 input indexes by its code's bits.
    let signed = qp(0.05, 0, QRange::I8);
    let t = lut_table(Curve::HardSigmoid, &signed, &unit);
    assert_eq!(t[(-60i8) as u8 as usize], 0); // -3.0
    assert_eq!(t[60], 255); // 3.0
}

#[test]
fn qmul_by_hand_and_against_the_float_formula() {
    let a = qp(0.1, 10, QRange::U8);
    let b = qp(0.02, 0, QRange::U8);
    let out = qp(0.05, 3, QRange::U8);
    let m = QMul::new(&a, &b, &out).unwrap();
    // (30 - 10)·0.1 = 2.0 times 50·0.02 = 1.0 → 2.0 / 0.05 = 40 → 43.
    assert_eq!(m.apply(30, 50), 43);
    // Below zero saturates at qmin: (0 - 10)·0.1 · 1.0 = -1.0 → -20 + 3 < 0.
    assert_eq!(m.apply(0, 50), 0);
    // Half-up on an exact tie: M = 0.5, acc = 3 → 1.5 → 2.
    let half = QMul::new(
        &qp(0.5, 0, QRange::U8),
        &qp(1.0, 0, QRange::U8),
        &qp(1.0, 0, QRange::U8),
    )
    .unwrap();
    assert_eq!(half.apply(3, 1), 2);
    // Within one step of quantize(dequantize(a) · dequantize(b)) everywhere, mostly equal.
    let mut rng = SplitMix64::new(77);
    let mut equal = 0;
    for _ in 0..20_000 {
        let pa = qp(rng.uniform(0.001, 0.2), (rng.next_u64() % 256) as i32, QRange::U8);
        let pb = qp(rng.uniform(0.001, 0.2), (rng.next_u64() % 256) as i32, QRange::U8);
        let po = qp(rng.uniform(0.001, 2.0), (rng.next_u64() % 256) as i32, QRange::U8);
        let Ok(m) = QMul::new(&pa, &pb, &po) else { continue };
        let (qa, qb) = ((rng.next_u64() % 256) as i32, (rng.next_u64() % 256) as i32);
        let got = m.apply(qa, qb);
        let want = qmul_f32_reference(qa, qb, &pa, &pb, &po);
        assert!(
            (got - want).abs() <= 1,
            "{qa} {qb} {pa:?} {pb:?} {po:?}: {got} vs {want}"
        );
        equal += (got == want) as usize;
    }
    assert!(equal > 19_900, "{equal}");
    // Multipliers out of range are refused.
    assert!(QMul::new(&qp(1e-20, 0, QRange::U8), &qp(1e-20, 0, QRange::U8), &out).is_err());
}
