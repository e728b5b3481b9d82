//! The power-of-two (PACT2-style) fake quantization: values equal the runtime's `fake_quantize`
//! at `pow2_scale(scale)` bit for bit; the gradients are the learnable fake quantization's at
//! that scale, passed straight through to the continuous scale. (Frozen ranges: the optimizer
//! leaves them, `tests/qat.rs`.)

use super::*;
use qc_runtime::quant::{fake_quantize, pow2_scale, QParams, QRange};

/// One per-tensor int8 site over constants `[observer_enabled, fake_quant_enabled, min_val,
/// max_val, scale, zero_point]`, and those constants (the scale trainable when `learnable`).
fn site(scale: f32, learnable: bool) -> (QatPlan, Vec<tch::Tensor>) {
    let consts = vec![
        tch::Tensor::from_slice(&[0i64]),
        tch::Tensor::from_slice(&[1i64]),
        tch::Tensor::from(f32::INFINITY),
        tch::Tensor::from(f32::NEG_INFINITY),
        tch::Tensor::from_slice(&[scale]).set_requires_grad(learnable),
        tch::Tensor::from_slice(&[0i32]),
    ];
    let plan = QatPlan {
        sites: vec![FakeQuantSite {
            name: "x".into(),
            at: FakeQuantAt::Value(0),
            quant_min: -128,
            quant_max: 127,
            per_channel: false,
            symmetric: true,
            averaging_constant: 0.01,
            learnable,
            power_of_two: true,
            observer_enabled: 0,
            fake_quant_enabled: 1,
            min_val: 2,
            max_val: 3,
            scale: 4,
            zero_point: 5,
        }],
    };
    (plan, consts)
}

fn values(t: &tch::Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn values_are_the_runtimes_fake_quantization_at_the_power_of_two_scale() {
    let (plan, consts) = site(0.3, true);
    let pass = QatPass::new(&plan, false, tch::Device::Cpu);
    let mut rng = qc_runtime::tensor::SplitMix64::new(7);
    let mut xs: Vec<f32> = (0..4096).map(|_| rng.uniform(-80.0, 80.0)).collect();
    // Ties at the power-of-two scale 0.5 (half to even) and the range's ends.
    xs.extend([0.25, 0.75, -0.25, -1.25, 63.5, 63.75, -64.0, -64.25]);
    let x = tch::Tensor::from_slice(&xs);
    let y = values(&pass.fake_quant(0, &x, &consts).unwrap());
    assert_eq!(pow2_scale(0.3), 0.5);
    let p = QParams::new(0.5, 0, QRange::I8).unwrap();
    for (v, got) in xs.iter().zip(&y) {
        assert_eq!(got.to_bits(), fake_quantize(*v, &p).to_bits(), "x = {v}");
    }
}

#[test]
fn gradients_pass_straight_through_the_power_of_two() {
    let (plan, consts) = site(0.3, true);
    let x = tch::Tensor::from_slice(&[-70.0f32, -0.3, 0.1, 0.45, 20.0, 63.9, 100.0]).set_requires_grad(true);
    let pass = QatPass::new(&plan, false, tch::Device::Cpu);
    let y = pass.fake_quant(0, &x, &consts).unwrap();
    assert_eq!(values(&y), [-64.0, -0.5, 0.0, 0.5, 20.0, 63.5, 63.5]);
    y.sum(tch::Kind::Float).backward();
    // Inside [-64, 63.5]: straight through; clipped: nothing to the input.
    assert_eq!(values(&x.grad()), [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    // To the scale, LSQ's at 0.5: qmin and qmax where clipped, the rounding error inside,
    // scaled by 1 / sqrt(numel · qmax).
    let inside: f64 = [(-0.3f32, -1.0f32), (0.1, 0.0), (0.45, 1.0), (20.0, 40.0)]
        .iter()
        .map(|&(x, q)| (q - x / 0.5) as f64)
        .sum();
    let want = (-128.0 + 2.0 * 127.0 + inside) / (7.0f64 * 127.0).sqrt();
    let got = values(&consts[4].grad())[0] as f64;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn an_observing_site_keeps_a_continuous_scale_and_quantizes_with_its_power_of_two() {
    let (plan, mut consts) = site(1.0, false);
    consts[0] = tch::Tensor::from_slice(&[1i64]);
    let pass = QatPass::new(&plan, false, tch::Device::Cpu);
    let x = tch::Tensor::from_slice(&[-3.0f32, 0.7, 2.9]);
    let y = values(&pass.fake_quant(0, &x, &consts).unwrap());
    // The first batch sets the range [-3, 2.9]: libtorch's symmetric scale (3 / 128), continuous;
    // it quantizes at 1/32.
    let s = values(&consts[4])[0];
    assert_eq!(s, 3.0 / 128.0);
    assert_eq!(pow2_scale(s), 1.0 / 32.0);
    assert_eq!(y, [-3.0, 0.6875, 2.90625]);
}
