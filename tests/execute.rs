//! The pre-convert stages run: `float`, `fused` and `observed` (PTQ and QAT; observers and
//! fake-quant nodes are identities here, `tests/qat.rs` runs fake quantization), lowered to the
//! runtime's `Program`, executed by the pure-Rust reference interpreter and by libtorch (CPU),
//! agree within the float tolerance of docs/numerics.md. Parameters are randomised (BN statistics included) so that no op is trivial.

use std::path::Path;

use qc_compiler::ir::{Module, Stage};
use qc_runtime::quant::float_rewrite_close;
use qc_runtime::{SplitMix64, Tensor, TensorData};

fn float_module(loaded: &qc_dsl::Loaded) -> Module {
    module_at(loaded, Stage::Float, false)
}

/// The module at `stage`, its float parameters randomised (BN statistics included).
fn module_at(loaded: &qc_dsl::Loaded, stage: Stage, qat: bool) -> Module {
    let opts = qc_compiler::RunOptions {
        stop_after: Some(stage),
        qat,
        ..Default::default()
    };
    let mut m = qc_compiler::compile(loaded, &opts, &mut |_| {}, &mut |_, _| {}).expect("compiles");
    let mut rng = SplitMix64::new(7);
    for (key, p) in m.params.iter_mut() {
        if let Some(Tensor {
            data: TensorData::F32(v),
            ..
        }) = &mut p.value
        {
            let var = key.ends_with("running_var");
            for x in v.iter_mut() {
                *x = if var {
                    rng.uniform(0.2, 2.0)
                } else {
                    *x + rng.uniform(-0.1, 0.1)
                };
            }
        }
    }
    m
}

fn random_inputs(program: &qc_runtime::program::Program, batch: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = SplitMix64::new(seed);
    program
        .inputs
        .iter()
        .map(|&id| {
            let shape: Vec<usize> = program.values[id].shape.iter().map(|d| d.unwrap_or(batch)).collect();
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect())
        })
        .collect()
}

/// Interpreter and libtorch agree on every output.
fn check(loaded: &qc_dsl::Loaded, batch: usize) {
    check_module(float_module(loaded), batch);
}

fn check_module(module: Module, batch: usize) {
    let program = qc_compiler::lower::lower_float(&module).expect("lowers");
    let inputs = random_inputs(&program, batch, 11);
    let reference = qc_runtime::interp::run(&program, &inputs).expect("interpreter runs");
    let torch = qc_runtime_host::torch::run_program(&program, &inputs, qc_runtime::program::Device::Cpu)
        .expect("libtorch runs");
    assert_eq!(reference.len(), torch.len());
    for (r, t) in reference.iter().zip(&torch) {
        assert_eq!(r.shape, t.shape, "{}", module.name);
        let (r, t) = (r.as_f32().unwrap(), t.as_f32().unwrap());
        let worst = r.iter().zip(t).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(
            float_rewrite_close(r, t),
            "{}: interpreter and libtorch differ by up to {worst}",
            module.name
        );
    }
}

#[test]
fn examples_agree_between_interpreter_and_libtorch() {
    for (example, batch) in [
        ("fashion_cnn", 3),
        ("conv1d_net", 2),
        ("inception_block", 1),
        ("mobilenet_v2", 1),
        ("mobilenet_v3_small", 1),
    ] {
        check(
            &qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap(),
            batch,
        );
    }
}

#[test]
fn the_fused_and_observed_stages_agree_between_interpreter_and_libtorch() {
    for example in ["fashion_cnn", "conv1d_net"] {
        let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
        for (stage, qat) in [
            (Stage::Fused, false),
            (Stage::Fused, true),
            (Stage::Observed, false),
            (Stage::Observed, true),
        ] {
            let m = module_at(&loaded, stage, qat);
            assert_eq!(m.stage, stage);
            check_module(m, 1);
        }
    }
}

#[test]
fn every_pooling_and_window_option_agrees() {
    let recipe = r#"
model pools {
  input x: f32[N, 6, 11, 9]
  input s: f32[N, 4, 13]
  a = max_pool2d(x, kernel: 3, stride: 2, pad: 1, ceil_mode: true)
  b = max_pool2d(x, kernel: [2, 3], stride: [2, 1], dilation: 2)
  c = avg_pool2d(x, kernel: 3, stride: 2, pad: 1, ceil_mode: true, count_include_pad: false)
  d = avg_pool2d(x, kernel: 3, stride: 2, pad: 1, ceil_mode: true)
  e = adaptive_avg_pool2d(x, output: [4, 3])
  f = conv2d(x, out: 6, kernel: 3, stride: 2, pad: 2, dilation: 2, groups: 3)
  g = conv2d(x, out: 12, kernel: [1, 3], pad: [0, 1], groups: 6, bias: false)
  h = hardtanh(g, min: -0.5, max: 0.25)
  i = relu6(f)
  j = concat(flatten(a), flatten(c), flatten(d), dim: 1)
  k = linear(j, out: 5)
  l = max_pool1d(s, kernel: 3, stride: 2, pad: 1, ceil_mode: true)
  m = avg_pool1d(s, kernel: 4, stride: 3, ceil_mode: true)
  n = conv1d(s, out: 8, kernel: 5, stride: 2, pad: 2, dilation: 1)
  o = batch_norm(n)
  p = adaptive_avg_pool1d(o, output: 3)
  q = global_avg_pool(x)
  output b
  output e
  output h
  output i
  output k
  output l
  output m
  output p
  output q
}
"#;
    let loaded = qc_dsl::load_str("pools.qrecipe", Path::new("pools.qrecipe"), recipe.to_string());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    check(&loaded, 2);
}

#[test]
fn a_non_finite_value_names_the_node() {
    let loaded = qc_dsl::load(Path::new("examples/fashion_cnn.qrecipe")).unwrap();
    let program = qc_compiler::lower::lower_float(&float_module(&loaded)).unwrap();
    let mut inputs = random_inputs(&program, 1, 3);
    if let TensorData::F32(v) = &mut inputs[0].data {
        v[5] = f32::NAN;
    }
    match qc_runtime::interp::run(&program, &inputs) {
        Err(qc_runtime::program::RunError::NonFinite { node, .. }) => assert_eq!(node, "conv1"),
        other => panic!("expected a non-finite error at conv1, got {other:?}"),
    }
    let wrong = vec![Tensor::f32(vec![1, 2, 28, 28], vec![0.0; 2 * 28 * 28])];
    assert!(matches!(
        qc_runtime::interp::run(&program, &wrong),
        Err(qc_runtime::program::RunError::InputShape { .. })
    ));
}
