//! The libtorch int8 path (`torch::Int8Session`, `_int_mm`) against the CPU executor
//! (`exec::run`): hand-built programs covering every int8 op (odd shapes, zero points, 7-bit and
//! 8-bit activations, groups and depthwise with multipliers, stride/padding/dilation, conv1d,
//! ceil_mode pools, i8 quantize/dequantize, NaN and infinities, batches below and above
//! `_int_mm`'s 17 rows) must give the same bits for **every** value, on the CPU device (always)
//! and on CUDA (when present; otherwise the CUDA test says it skipped). Built with the `torch`
//! feature only.

#![cfg(feature = "torch")]

#[path = "../../core/tests/common/mod.rs"]
mod common;

use common::*;
use qc_runtime::kernels::Activation;
use qc_runtime::program::Device;
use qc_runtime::program::{FloatOp, Layout, Program, QuantOp, Step, StepOp, ValueInfo};
use qc_runtime::quant::{Curve, QParams, QRange, RequantRule};
use qc_runtime::{DType, Tensor, TensorData};
use qc_runtime_host::torch::{self, Int8Session};

const CL: Layout = Layout::ChannelsLast;
const T: Layout = Layout::Torch;

/// `p` with every step's output as a program output (in step order, so that the first
/// difference reported is the first value that differs).
fn every_value(p: &Program) -> Program {
    let outputs = p.steps.iter().map(|s| s.output).collect();
    Program { outputs, ..p.clone() }
}

/// Bits of a tensor's elements (f32 by their bit patterns), for exact comparison (NaN too).
fn bits(t: &Tensor) -> Vec<u64> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as u64).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8 as u64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as u32 as u64).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

/// Runs `p` (every value an output) on the CPU executor and on `device`; every value computed by
/// an int8 step (or a float step fed only by them) must be equal bit for bit.
fn assert_same_bits(p: &Program, inputs: &[Tensor], device: Device, what: &str) {
    let p = every_value(p);
    let want = qc_runtime::exec::run(&p, inputs).unwrap_or_else(|e| panic!("{what}: CPU executor: {e}"));
    let session = Int8Session::new(p.clone(), device).unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = session.run(inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    for ((w, g), &id) in want.iter().zip(&got).zip(&p.outputs) {
        let name = &p.values[id].name;
        assert_eq!(w.shape, g.shape, "{what}: `{name}` shape");
        assert_eq!(w.dtype(), g.dtype(), "{what}: `{name}` dtype");
        let (wb, gb) = (bits(w), bits(g));
        if wb != gb {
            let i = wb.iter().zip(&gb).position(|(a, b)| a != b).unwrap();
            let diff = wb.iter().zip(&gb).filter(|(a, b)| a != b).count();
            panic!(
                "{what}: `{name}` differs at {diff} of {} elements, first at {i}: CPU {} vs libtorch {}",
                wb.len(),
                wb[i],
                gb[i]
            );
        }
    }
}

/// 2-D: quantize (NCHW → NHWC) → conv 3×3 pad 1 (relu) → grouped conv (2 groups of 3, stride
/// 2, dilation 2, pad 2) → depthwise ×2 (relu6) → depthwise ×1 (clamp) → qadd (relu) with a
/// 1×1 branch → concat of three differently scaled inputs → max pool (ceil, dilation) → avg
/// pool (ceil, padding counted or not) → adaptive (3, 2) → global → clamp → flatten → linear
/// (relu) → linear → dequantize. Odd sizes everywhere.
fn net_2d(seed: u64, batch: usize, range: QRange, include_pad: bool) -> (Program, Vec<Tensor>) {
    let mut b = builder(seed);
    b.act_range = range;
    let mut x = random(&mut b.rng, vec![batch, 3, 11, 9], -1.5, 1.2);
    let xi = b.input("x", x.clone());
    let xq = b.quantize("x.q", xi, CL);
    let c1 = b.qconv(
        "conv1",
        xq,
        window(&[3, 3], &[1, 1], &[1, 1], &[1, 1], false),
        1,
        Activation::Relu,
        (vec![6, 3, 3, 3], 0.02, Some(0.5)),
    );
    let c2 = b.qconv(
        "grouped",
        c1,
        window(&[3, 3], &[2, 2], &[2, 2], &[2, 2], false),
        2,
        Activation::None,
        (vec![4, 3, 3, 3], 0.03, Some(0.2)),
    );
    let c3 = b.qconv(
        "dw2",
        c2,
        window(&[3, 3], &[1, 2], &[1, 1], &[1, 1], false),
        4,
        Activation::Relu6,
        (vec![8, 3, 3, 1], 0.05, Some(0.3)),
    );
    let c4 = b.qconv(
        "dw1",
        c3,
        window(&[3, 2], &[1, 1], &[1, 1], &[1, 2], false),
        8,
        Activation::Clamp { min: -0.3, max: 2.0 },
        (vec![8, 3, 2, 1], 0.05, None),
    );
    let c5 = b.qconv(
        "branch",
        c3,
        window(&[1, 1], &[1, 1], &[0, 0], &[1, 1], false),
        1,
        Activation::None,
        (vec![8, 1, 1, 8], 0.04, Some(0.1)),
    );
    let add = b.step("add", QuantOp::QAdd { relu: true }, vec![c4, c5], CL, None);
    let cat_q = QParams::new(b.params(add).scale() * 1.3, 37, range).unwrap();
    let cat = b.step("cat", QuantOp::QConcat, vec![add, c5, c4], CL, Some(cat_q));
    let mp = b.maxpool("maxpool", cat, window(&[2, 2], &[2, 1], &[1, 0], &[1, 2], true));
    let ap = b.avgpool(
        "avgpool",
        mp,
        window(&[3, 2], &[2, 2], &[1, 1], &[1, 1], true),
        include_pad,
    );
    let ad = b.adaptive("adaptive", mp, &[3, 2]);
    let gap = b.adaptive("gap", ad, &[1, 1]);
    let clamp = b.step("clamp", QuantOp::QClamp { act: Activation::Relu6 }, vec![ap], CL, None);
    let fl = b.flatten("flat", clamp);
    let fc1 = b.qlinear("fc1", fl, 13, 0.02, Some(0.4), Activation::Relu);
    let fc2 = b.qlinear("fc2", fc1, 5, 0.05, None, Activation::None);
    let gfl = b.flatten("gap.flat", gap);
    let out = b.dequantize("out", fc2);
    let out2 = b.dequantize("gap.out", gfl);
    b.output(out);
    b.output(out2);
    // Saturation, infinities and NaN in the input (NaN quantizes to the zero point).
    if let TensorData::F32(v) = &mut x.data {
        v[0] = f32::NAN;
        v[1] = f32::INFINITY;
        v[2] = f32::NEG_INFINITY;
        v[3] = 1e30;
        v[4] = -7.0;
    }
    (b.p, vec![x])
}

/// 1-D: quantize (NCL → NLC) → conv1d (groups 2, stride 2, pad 2) → conv1d dilated → depthwise
/// 1-D → max pool (dilation) → avg pool (ceil, padding counted) → adaptive (3) → flatten (NLC →
/// PyTorch order) → linear → dequantize.
fn net_1d(seed: u64, batch: usize, range: QRange) -> (Program, Vec<Tensor>) {
    let mut b = builder(seed);
    b.act_range = range;
    let x = random(&mut b.rng, vec![batch, 4, 23], -1.0, 1.0);
    let xi = b.input("x", x.clone());
    let xq = b.quantize("x.q", xi, CL);
    let c1 = b.qconv(
        "conv1",
        xq,
        window(&[5], &[2], &[2], &[1], false),
        2,
        Activation::Relu,
        (vec![6, 5, 2], 0.03, Some(0.2)),
    );
    let c2 = b.qconv(
        "conv2",
        c1,
        window(&[3], &[1], &[1], &[3], false),
        1,
        Activation::None,
        (vec![5, 3, 6], 0.03, Some(0.2)),
    );
    let c3 = b.qconv(
        "dw",
        c2,
        window(&[3], &[1], &[1], &[1], false),
        5,
        Activation::Relu,
        (vec![5, 3, 1], 0.05, None),
    );
    let mp = b.maxpool("mp", c3, window(&[3], &[2], &[1], &[2], false));
    let ap = b.avgpool("ap", mp, window(&[2], &[2], &[1], &[1], true), true);
    let ad = b.adaptive("ad", ap, &[3]);
    let fl = b.flatten("fl", ad);
    let fc = b.qlinear("fc", fl, 3, 0.02, Some(0.1), Activation::Relu);
    let out = b.dequantize("fc.dq", fc);
    b.output(out);
    (b.p, vec![x])
}

/// `i8` quantize and dequantize (signed range, a layout kept and one changed), and float steps
/// around them: float conv → quantize i8 → dequantize → float relu. The float steps run on
/// libtorch in f32, so only values computed from int8 steps are compared exactly: the input of
/// the quantize is the program input itself.
fn i8_and_float(seed: u64, batch: usize) -> (Program, Vec<Tensor>) {
    let mut b = builder(seed);
    let x = random(&mut b.rng, vec![batch, 3, 5, 4], -2.0, 2.0);
    let xi = b.input("x", x.clone());
    let q = QParams::new(0.017, -3, QRange::new(8, true).unwrap()).unwrap();
    let xq = b.step("x.q", QuantOp::Quantize, vec![xi], CL, Some(q));
    b.p.values[xq].dtype = DType::I8;
    let xq2 = b.step("x.q2", QuantOp::Quantize, vec![xi], T, Some(q));
    b.p.values[xq2].dtype = DType::I8;
    let dq = b.step("x.dq", QuantOp::Dequantize, vec![xq], T, None);
    let dq2 = b.step("x.dq2", QuantOp::Dequantize, vec![xq2], T, None);
    b.p.values.push(ValueInfo::float("relu", b.p.values[dq].shape.clone()));
    let relu = b.p.values.len() - 1;
    b.p.steps.push(Step {
        op: StepOp::Float(FloatOp::Relu),
        inputs: vec![dq],
        output: relu,
    });
    b.output(relu);
    b.output(dq2);
    (b.p, vec![x])
}

/// Squeeze-excite: quantize → hardswish table → global average pool → 1×1 conv (relu) → 1×1
/// conv → hardsigmoid or sigmoid table → `qmul` of `[N, H, W, C]` by `[N, 1, 1, C]` (both
/// orders) → same-shape `qmul` → dequantize; `range` for the calibrated activations.
fn squeeze_excite(seed: u64, batch: usize, range: QRange) -> (Program, Vec<Tensor>) {
    let mut b = builder(seed);
    b.act_range = range;
    let x = random(&mut b.rng, vec![batch, 6, 5, 3], -4.0, 4.0);
    let xi = b.input("x", x.clone());
    let xq = b.quantize("x.q", xi, CL);
    let hs = b.step("hs", QuantOp::QLut(Curve::HardSwish), vec![xq], CL, None);
    let pooled = b.step(
        "avgpool",
        QuantOp::QAdaptiveAvgPool { output: vec![1, 1] },
        vec![hs],
        CL,
        None,
    );
    let one = window(&[1, 1], &[1, 1], &[0, 0], &[1, 1], false);
    let fc1 = b.qconv(
        "fc1",
        pooled,
        one.clone(),
        1,
        Activation::Relu,
        (vec![8, 1, 1, 6], 0.1, Some(0.2)),
    );
    let fc2 = b.qconv("fc2", fc1, one, 1, Activation::None, (vec![6, 1, 1, 8], 0.2, Some(0.5)));
    let curve = if seed.is_multiple_of(2) {
        Curve::HardSigmoid
    } else {
        Curve::Sigmoid
    };
    let gate = b.step("gate", QuantOp::QLut(curve), vec![fc2], CL, None);
    let m1 = b.step("mul", QuantOp::QMul, vec![hs, gate], CL, None);
    let m2 = b.step("mul2", QuantOp::QMul, vec![gate, m1], CL, None);
    let m3 = b.step("square", QuantOp::QMul, vec![m2, m2], CL, None);
    let out = b.dequantize("out", m3);
    b.output(out);
    (b.p, vec![x])
}

/// A program builder whose conv/linear steps requantize by seed: the integer rule, the float rule,
/// or the float rule with `f32` biases (`requantize: float_bias`), in turn.
fn builder(seed: u64) -> Builder {
    let mut b = Builder::new(seed);
    if !seed.is_multiple_of(3) {
        b.requantize = RequantRule::Float;
        b.float_bias = seed % 3 == 2;
    }
    b
}

fn r7() -> QRange {
    QRange::custom(0, 127).unwrap()
}

fn every_program() -> Vec<(String, Program, Vec<Tensor>)> {
    let mut all = vec![];
    for (i, &(batch, range, pad)) in [
        (2, QRange::U8, false),
        (1, r7(), true),
        (3, QRange::U8, true),
        (2, r7(), false),
    ]
    .iter()
    .enumerate()
    {
        let (p, x) = net_2d(10 + i as u64, batch, range, pad);
        all.push((format!("2-D net, seed {i}, batch {batch}, {range:?}"), p, x));
    }
    // 20 rows: _int_mm without row padding for the linear layers.
    let (p, x) = net_2d(20, 20, QRange::U8, true);
    all.push(("2-D net, batch 20".into(), p, x));
    for (i, &(batch, range)) in [(1, QRange::U8), (3, r7()), (2, QRange::U8)].iter().enumerate() {
        let (p, x) = net_1d(30 + i as u64, batch, range);
        all.push((format!("1-D net, seed {i}, batch {batch}, {range:?}"), p, x));
    }
    for (i, &(batch, range)) in [(2, QRange::U8), (1, r7()), (3, QRange::U8)].iter().enumerate() {
        let (p, x) = squeeze_excite(50 + i as u64, batch, range);
        all.push((format!("squeeze-excite, seed {i}, batch {batch}, {range:?}"), p, x));
    }
    let (p, x) = i8_and_float(40, 2);
    all.push(("i8 quantize and float steps".into(), p, x));
    all
}

#[test]
fn libtorch_int8_on_the_cpu_equals_the_cpu_executor_bit_for_bit() {
    for (what, p, x) in every_program() {
        assert_same_bits(&p, &x, Device::Cpu, &what);
    }
}

/// The same comparison on the GPU; skipped (and said so) where libtorch sees none. The CPU test
/// above covers every line of logic; this one checks the CUDA kernels' arithmetic.
#[test]
fn libtorch_int8_on_cuda_equals_the_cpu_executor_bit_for_bit() {
    let info = torch::info().expect("libtorch");
    if !info.cuda_available {
        println!("skipped: no CUDA device (libtorch {} sees none)", info.version);
        return;
    }
    for (what, p, x) in every_program() {
        assert_same_bits(&p, &x, Device::Cuda, &what);
    }
}

/// Quantize at exact ties (`x · (1/s)` = k + 0.5 with a power-of-two scale: ties to even), the
/// fbgemm example where `x · (1/s)` and `x / s` round differently, saturation, and the
/// dequantized codes, in both layout directions.
#[test]
fn quantize_ties_and_saturation_are_the_cpu_executor_s() {
    let mut b = Builder::new(1);
    let mut v: Vec<f32> = (-40..40).map(|k| k as f32 * 0.125).collect();
    v.extend([0.273_939_94, -0.273_939_94, 1e9, -1e9, f32::MAX, f32::MIN_POSITIVE]);
    let n = v.len();
    let x = Tensor::f32(vec![1, 2, n / 2], v);
    let xi = b.input("x", x.clone());
    for (name, q) in [
        ("pow2", QParams::new(0.25, 7, QRange::U8).unwrap()),
        ("fbgemm", QParams::new(0.002_148_548_6, 0, QRange::U8).unwrap()),
        ("wide", QParams::new(0.25, 128, QRange::U8).unwrap()),
    ] {
        let q1 = b.step(name, QuantOp::Quantize, vec![xi], CL, Some(q));
        let q2 = b.step(&format!("{name}.t"), QuantOp::Quantize, vec![xi], T, Some(q));
        let d = b.step(&format!("{name}.dq"), QuantOp::Dequantize, vec![q1], T, None);
        let d2 = b.step(&format!("{name}.dq.cl"), QuantOp::Dequantize, vec![q2], CL, None);
        b.output(d);
        b.output(d2);
    }
    assert_same_bits(&b.p, &[x], Device::Cpu, "quantize ties");
}

/// A float step that produces an infinity is refused naming it, as the CPU executor does.
#[test]
fn a_non_finite_float_value_is_refused_by_name() {
    let (p, x) = i8_and_float(41, 1);
    let mut p = p;
    let relu = p.values.iter().position(|v| v.name == "relu").unwrap();
    let step = p.steps.iter().position(|s| s.output == relu).unwrap();
    p.steps[step].op = StepOp::Float(FloatOp::Clamp {
        min: f32::INFINITY,
        max: f32::INFINITY,
    });
    assert!(qc_runtime::exec::run(&p, &x).is_err());
    let e = torch::run_program_int8(&p, &x, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("`relu`"), "{e}");
}

/// Any batch size on one session, and a second run gives the same bits.
#[test]
fn one_session_runs_any_batch_size() {
    let (p, _) = net_2d(3, 2, QRange::U8, false);
    let session = Int8Session::new(p.clone(), Device::Cpu).unwrap();
    for batch in [1, 4, 18] {
        let x = random(
            &mut qc_runtime::SplitMix64::new(batch as u64),
            vec![batch, 3, 11, 9],
            -1.0,
            1.0,
        );
        let want = qc_runtime::exec::run(&p, std::slice::from_ref(&x)).unwrap();
        assert_eq!(session.run(std::slice::from_ref(&x)).unwrap(), want, "batch {batch}");
        assert_eq!(session.run(&[x]).unwrap(), want, "batch {batch}, again");
    }
}

/// What the session refuses names the step: a program whose requantization cannot be
/// represented, and inputs of the wrong shape.
#[test]
fn refusals_name_the_step() {
    let (mut p, x) = net_1d(5, 1, QRange::U8);
    let fc = p.values.iter().position(|v| v.name == "fc").unwrap();
    let q = p.values[fc].quant.unwrap();
    // Output scale so small that s_in·s_w/s_out ≥ 2^30.
    p.values[fc].quant = Some(QParams::new(1e-30, q.zero_point(), q.range()).unwrap());
    let e = Int8Session::new(p, Device::Cpu).err().expect("refused").to_string();
    assert!(e.contains("`fc` (qlinear)") && e.contains("requantization"), "{e}");
    let (p, _) = net_1d(5, 1, QRange::U8);
    let session = Int8Session::new(p, Device::Cpu).unwrap();
    let bad = Tensor::f32(vec![1, 4, 2], vec![0.0; 8]);
    assert!(session.run(&[bad]).is_err());
    let _ = x;
}
