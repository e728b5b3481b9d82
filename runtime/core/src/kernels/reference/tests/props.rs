//! Property tests of the reference kernels against float oracles (within the fake-quant
//! tolerance) and against each other, plus the adaptive pool, clamp and per-channel
//! requantization rules.

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prop_qconv2d_within_one_step_of_float(
        batch in 1usize..=2, groups in 1usize..=3, cig in 1usize..=3, cog in 1usize..=3,
        in_h in 1usize..=7, in_w in 1usize..=7, ah in axis_strategy(), aw in axis_strategy(),
        act in act_strategy(), has_bias: bool, seed: u64,
    ) {
        let geom = conv_geom([in_h, in_w], [groups * cig, groups * cog], ah, aw, groups);
        let geom = Conv2dGeom { batch, ..geom };
        prop_assume!(geom.out_hw().is_ok());
        let (got, want) = run_conv_case(geom, act, has_bias, seed);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_depthwise_within_one_step_of_float(
        c in 1usize..=9, mult in 1usize..=2, in_h in 1usize..=7, in_w in 1usize..=7,
        ah in axis_strategy(), aw in axis_strategy(), act in act_strategy(), seed: u64,
    ) {
        let geom = conv_geom([in_h, in_w], [c, c * mult], ah, aw, c);
        prop_assume!(geom.out_hw().is_ok());
        let (got, want) = run_conv_case(geom, act, true, seed);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_qconv1d_is_qconv2d_with_h1_and_within_one_step(
        batch in 1usize..=2, groups in 1usize..=3, cig in 1usize..=3, cog in 1usize..=3,
        len in 1usize..=7, a in axis_strategy(), act in act_strategy(), seed: u64,
    ) {
        let geom = Conv2dGeom::conv1d(batch, len, groups * cig, groups * cog, a, groups);
        prop_assume!(geom.out_hw().is_ok());
        let (got, want) = run_conv_case(geom, act, true, seed);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS));
        // qconv1d gives the same bits as qconv2d (it is qconv2d).
        let case = conv_case(seed, geom.input_len(), geom.out_c, geom.reduction_len(), true);
        let p = QConv2d::new(geom, &case.input, &case.w_scales, &case.output, act, RequantRule::Integer).unwrap();
        let (mut o1, mut o2) = (vec![0u8; geom.output_len().unwrap()], vec![0u8; geom.output_len().unwrap()]);
        qconv1d(&p, &case.x, &case.w, case.bias.as_deref(), &mut o1).unwrap();
        qconv2d(&p, &case.x, &case.w, case.bias.as_deref(), &mut o2).unwrap();
        prop_assert_eq!(o1, o2);
    }

    #[test]
    fn prop_qlinear_within_one_step_of_float(
        batch in 1usize..=3, k in 1usize..=64, m in 1usize..=9, act in act_strategy(), has_bias: bool, seed: u64,
    ) {
        let case = conv_case(seed, batch * k, m, k, has_bias);
        let p = QLinear::new(batch, k, &case.input, &case.w_scales, &case.output, act, RequantRule::Integer).unwrap();
        let mut got = vec![0u8; batch * m];
        qlinear(&p, &case.x, &case.w, case.bias.as_deref(), &mut got).unwrap();
        let xf = deq(&case.x, &case.input);
        let mut y = vec![0.0; batch * m];
        for n in 0..batch {
            for j in 0..m {
                let sw = case.w_scales[j] as f64;
                let mut s = case.bias.as_ref().map_or(0, |b| b[j]) as f64 * case.input.scale() as f64 * sw;
                for i in 0..k {
                    s += xf[n * k + i] * case.w[j * k + i] as f64 * sw;
                }
                y[n * m + j] = s;
            }
        }
        let want = requantize_oracle(&y, &case.output, act);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_qlinear_equals_1x1_conv(batch in 1usize..=2, k in 1usize..=9, m in 1usize..=9, seed: u64) {
        let case = conv_case(seed, batch * k, m, k, true);
        let lp = QLinear::new(batch, k, &case.input, &case.w_scales, &case.output, Activation::Relu, RequantRule::Integer).unwrap();
        let a = Axis::new(1, 1, 0, 1);
        let geom = Conv2dGeom { batch, ..conv_geom([1, 1], [k, m], a, a, 1) };
        let cp = QConv2d::new(geom, &case.input, &case.w_scales, &case.output, Activation::Relu, RequantRule::Integer).unwrap();
        let (mut o1, mut o2) = (vec![0u8; batch * m], vec![0u8; batch * m]);
        qlinear(&lp, &case.x, &case.w, case.bias.as_deref(), &mut o1).unwrap();
        qconv2d(&cp, &case.x, &case.w, case.bias.as_deref(), &mut o2).unwrap();
        prop_assert_eq!(o1, o2);
    }

    #[test]
    fn prop_accumulator_never_wraps_up_to_bound(k in 1usize..=65793, zp in prop_oneof![Just(0), Just(255), 0i32..256], seed: u64) {
        // Worst-case data for this zero point: the code farthest from zp, weight -128.
        prop_assume!(accumulator_fits(k as u64, QRange::U8, zp, QRange::I8, 0));
        let mut rng = SplitMix64::new(seed);
        let far = if zp < 128 { 255u8 } else { 0 };
        let x: Vec<u8> = (0..k).map(|_| if rand_below(&mut rng, 4) == 0 { rand_below(&mut rng, 256) as u8 } else { far }).collect();
        let w: Vec<i8> = (0..k).map(|_| if rand_below(&mut rng, 4) == 0 { rand_below(&mut rng, 256) as u8 as i8 } else { -128 }).collect();
        let exact: i64 = x.iter().zip(&w).map(|(&a, &b)| (a as i64 - zp as i64) * b as i64).sum();
        prop_assert!(exact.abs() <= i32::MAX as i64);
        let r = rq(2f64.powi(-24), 128);
        let p = linear_params(1, k, zp, vec![r]);
        let mut out = [0u8; 1];
        qlinear(&p, &x, &w, None, &mut out).unwrap();
        prop_assert_eq!(out[0] as i32, r.apply(exact as i32));
    }

    #[test]
    fn prop_qadd_within_one_step_of_float(
        len in 1usize..=64, relu: bool, seed: u64,
    ) {
        let mut rng = SplitMix64::new(seed);
        let a = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
        let b = qp(a.scale() * log_uniform(&mut rng, 1.0 / 64.0, 64.0), zero_point(&mut rng));
        let o = qp(a.scale().max(b.scale()) * log_uniform(&mut rng, 0.125, 8.0), zero_point(&mut rng));
        let add = QAdd::new(&a, &b, &o).unwrap();
        let add = if relu { add.with_relu() } else { add };
        let qa = data_u8(&mut rng, len, a.zero_point());
        let qb = data_u8(&mut rng, len, b.zero_point());
        let mut got = vec![0u8; len];
        qadd(&add, &qa, &qb, &mut got).unwrap();
        let y: Vec<f64> = deq(&qa, &a).iter().zip(deq(&qb, &b)).map(|(x, y)| x + y).collect();
        let want = requantize_oracle(&y, &o, if relu { Activation::Relu } else { Activation::None });
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_qmaxpool2d_equals_float(
        batch in 1usize..=2, c in 1usize..=9, in_h in 1usize..=7, in_w in 1usize..=7,
        ah in pool_axis_strategy(true), aw in pool_axis_strategy(true), ceil_mode: bool, one_d: bool, seed: u64,
    ) {
        let case = pool_case(batch, c, [in_h, in_w], (ah, aw), ceil_mode, one_d, seed);
        prop_assume!(case.is_some());
        let (g, p, x) = case.unwrap();
        let [oh, ow] = g.out_hw().unwrap();
        let mut out = vec![0u8; g.output_len().unwrap()];
        if one_d {
            qmaxpool1d(&g, &x, &mut out).unwrap();
        } else {
            qmaxpool2d(&g, &x, &mut out).unwrap();
        }
        let nchw = [g.batch, c, g.in_h, g.in_w];
        let y = pool_oracle_nchw(&deq(&to_nchw(&x, [g.batch, g.in_h, g.in_w, c]), &p), nchw, (g.h, g.w), [oh, ow], None);
        let want = requantize_oracle(&y, &p, Activation::None);
        // Max commutes with the monotonic dequantization: exact, not just within a step.
        prop_assert_eq!(to_nchw(&out, [g.batch, oh, ow, c]), want);
    }

    #[test]
    fn prop_qavgpool2d_within_one_step_of_float(
        batch in 1usize..=2, c in 1usize..=9, in_h in 1usize..=7, in_w in 1usize..=7,
        ah in pool_axis_strategy(false), aw in pool_axis_strategy(false), ceil_mode: bool,
        count_include_pad: bool, one_d: bool, seed: u64,
    ) {
        let case = pool_case(batch, c, [in_h, in_w], (ah, aw), ceil_mode, one_d, seed);
        prop_assume!(case.is_some());
        let (g, ip, x) = case.unwrap();
        let p = QAvgPool2d::new(g, count_include_pad, &ip);
        let [oh, ow] = g.out_hw().unwrap();
        let mut out = vec![0u8; g.output_len().unwrap()];
        if one_d {
            qavgpool1d(&p, &x, &mut out).unwrap();
        } else {
            qavgpool2d(&p, &x, &mut out).unwrap();
        }
        let nchw = [g.batch, c, g.in_h, g.in_w];
        let y = pool_oracle_nchw(&deq(&to_nchw(&x, [g.batch, g.in_h, g.in_w, c]), &ip), nchw, (g.h, g.w), [oh, ow], Some(count_include_pad));
        let want = requantize_oracle(&y, &ip, Activation::None);
        let got = to_nchw(&out, [g.batch, oh, ow, c]);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_qglobal_avgpool_within_one_step_of_float(
        batch in 1usize..=2, c in 1usize..=9, h in 1usize..=7, w in 1usize..=7, seed: u64,
    ) {
        let mut rng = SplitMix64::new(seed);
        let ip = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
        let x = data_u8(&mut rng, batch * h * w * c, ip.zero_point());
        let p = QGlobalAvgPool::new(batch, h * w, c, &ip);
        let mut got = vec![0u8; batch * c];
        qglobal_avgpool(&p, &x, &mut got).unwrap();
        let xf = deq(&x, &ip);
        let y: Vec<f64> = (0..batch * c)
            .map(|i| (0..h * w).map(|s| xf[((i / c) * h * w + s) * c + i % c]).sum::<f64>() / (h * w) as f64)
            .collect();
        let want = requantize_oracle(&y, &ip, Activation::None);
        prop_assert!(max_step_diff(&got, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS), "{:?}\n{:?}", got, want);
    }

    #[test]
    fn prop_qconcat_within_one_step_of_float(
        outer in 1usize..=20, channels in prop::collection::vec(1usize..=5, 1..=4), seed: u64,
    ) {
        let mut rng = SplitMix64::new(seed);
        let o = qp(log_uniform(&mut rng, 1e-3, 1.0), zero_point(&mut rng));
        let ins: Vec<QParams> = channels
            .iter()
            .map(|_| {
                // Sometimes exactly the output's parameters (a copy), else scales within 2^±6.
                if rand_below(&mut rng, 4) == 0 { o } else { qp(o.scale() * log_uniform(&mut rng, 1.0 / 64.0, 64.0), zero_point(&mut rng)) }
            })
            .collect();
        let data: Vec<Vec<u8>> = channels.iter().zip(&ins).map(|(&ch, p)| data_u8(&mut rng, outer * ch, p.zero_point())).collect();
        let p = QConcat {
            outer,
            parts: channels.iter().zip(&ins).map(|(&ch, ip)| ConcatPart::new(ch, ip, &o).unwrap()).collect(),
        };
        let total = p.out_channels();
        let mut got = vec![0u8; outer * total];
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        qconcat_channels(&p, &refs, &mut got).unwrap();
        let mut c0 = 0;
        for ((&ch, ip), d) in channels.iter().zip(&ins).zip(&data) {
            for r in 0..outer {
                let y = deq(&d[r * ch..][..ch], ip);
                let want = requantize_oracle(&y, &o, Activation::None);
                let g = &got[r * total + c0..][..ch];
                prop_assert!(max_step_diff(g, &want) <= Some(FAKE_QUANT_TOLERANCE_STEPS));
                if *ip == o {
                    prop_assert_eq!(g, &d[r * ch..][..ch]);
                }
            }
            c0 += ch;
        }
    }
}

#[test]
fn adaptive_avgpool_global_case_is_global_avgpool_and_windows_follow_pytorch() {
    let mut rng = SplitMix64::new(3);
    let ip = qp(0.05, 17);
    let (n, h, w, c) = (2, 5, 7, 3);
    let x = data_u8(&mut rng, n * h * w * c, ip.zero_point());
    let a = QAdaptiveAvgPool2d::new(n, [h, w], [1, 1], c, &ip);
    let (mut o1, mut o2) = (vec![0u8; n * c], vec![0u8; n * c]);
    qadaptive_avgpool2d(&a, &x, &mut o1).unwrap();
    qglobal_avgpool(&QGlobalAvgPool::new(n, h * w, c, &ip), &x, &mut o2).unwrap();
    assert_eq!(o1, o2);
    // 1-D [1, 5, 1] → 3 outputs: windows [0, 2), [1, 4), [3, 5) (PyTorch's start/end rule).
    let x = [10u8, 20, 30, 40, 50];
    let a = QAdaptiveAvgPool2d::new(1, [1, 5], [1, 3], 1, &qp(0.1, 0));
    let mut o = [0u8; 3];
    qadaptive_avgpool2d(&a, &x, &mut o).unwrap();
    assert_eq!(o, [15, 30, 45]);
}

#[test]
fn qclamp_is_the_fake_quant_of_the_float_clamp() {
    let p = qp(0.05, 100);
    let x: Vec<u8> = (0..=255).collect();
    for act in [
        Activation::Relu,
        Activation::Relu6,
        Activation::Clamp { min: -1.0, max: 0.5 },
        Activation::None,
    ] {
        let mut out = vec![0u8; 256];
        qclamp(act, &p, &x, &mut out).unwrap();
        let y: Vec<f64> = deq(&x, &p);
        assert_eq!(out, requantize_oracle(&y, &p, act), "{act:?}");
    }
    assert!(qclamp(Activation::Clamp { min: 1.0, max: 0.0 }, &p, &x, &mut [0u8; 256]).is_err());
}

#[test]
fn requant_per_channel_uses_quant_multipliers() {
    let (i, o) = (qp(0.02, 3), qp(0.1, 128));
    let rs = requant_per_channel(&i, &[0.001, 0.004], &o, Activation::None, RequantRule::Integer).unwrap();
    for (r, sw) in rs.iter().zip([0.001f32, 0.004]) {
        let want = Requant::from_real(crate::quant::requant_multiplier(0.02, sw, 0.1), 128, QRange::U8).unwrap();
        assert_eq!(*r, want);
    }
    // A multiplier outside quant.rs's range is an error, not a silent clamp.
    assert!(requant_per_channel(&i, &[1e-30], &o, Activation::None, RequantRule::Integer).is_err());
}
