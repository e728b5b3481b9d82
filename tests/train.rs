//! Float training through libtorch: the forward it trains with agrees with the reference
//! interpreter, a short run on Fashion-MNIST learns, a NaN in the data stops training naming the
//! epoch and step, runs are reproducible, and `qc train` writes a checkpoint a recipe binds.

use std::path::Path;

use qc_compiler::ir::{Module, Provenance, Stage};
use qc_runtime::{SplitMix64, Tensor, TensorData};
use qc_runtime_host::data::{self, Array, ArrayData};
use qc_runtime_host::torch::{self, LabeledData, TorchError, TrainConfig};

fn float_module(example: &str) -> Module {
    let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    let opts = qc_compiler::RunOptions {
        stop_after: Some(Stage::Float),
        ..Default::default()
    };
    qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).expect("compiles")
}

/// The program, its constants' keys, and the trainable flags `qc train` uses.
fn trainable_program(m: &Module) -> (qc_runtime::program::Program, Vec<Option<String>>, Vec<bool>) {
    let (program, keys) = qc_compiler::lower::lower_with_keys(m).expect("lowers");
    let trainable = qc_compiler::lower::trainable(&keys, None);
    (program, keys, trainable)
}

fn fashion(train: bool, n: usize) -> (Array, Vec<i64>) {
    let dir = Path::new(data::FASHION_MNIST_DIR);
    let images = data::read_idx_images(dir, train).expect("Fashion-MNIST (make setup installs it)");
    let labels = data::read_idx(&data::idx_files(dir, train).1).unwrap();
    let per: usize = images.sample_shape().iter().product();
    let ArrayData::U8(v) = images.data else { unreachable!() };
    let ArrayData::U8(l) = labels.data else { unreachable!() };
    let mut shape = images.shape;
    shape[0] = n;
    (
        Array {
            shape,
            data: ArrayData::U8(v[..n * per].to_vec()),
        },
        l[..n].iter().map(|&c| c as i64).collect(),
    )
}

#[test]
fn lower_with_keys_names_every_float_parameter() {
    let m = float_module("fashion_cnn");
    let (program, keys, trainable) = trainable_program(&m);
    let named: Vec<&str> = keys.iter().flatten().map(|s| s.as_str()).collect();
    // 18 keys less the two num_batches_tracked, which no step reads.
    assert_eq!(named.len(), 16, "{named:?}");
    assert_eq!(keys.len(), program.constants.len());
    for k in &named {
        assert_eq!(
            program.constants[keys.iter().position(|x| x.as_deref() == Some(k)).unwrap()],
            *m.params[*k].value.as_ref().unwrap()
        );
    }
    assert!(named.contains(&"bn2.running_var") && named.contains(&"fc2.bias"));
    assert_eq!(trainable.iter().filter(|t| **t).count(), 12);
}

#[test]
fn torch_forward_matches_the_interpreter_within_1e_4() {
    let mut m = float_module("fashion_cnn");
    let mut rng = SplitMix64::new(3);
    for (key, p) in m.params.iter_mut() {
        if let Some(Tensor {
            data: TensorData::F32(v),
            ..
        }) = &mut p.value
        {
            for x in v.iter_mut() {
                *x = if key.ends_with("running_var") {
                    rng.uniform(0.2, 2.0)
                } else {
                    *x + rng.uniform(-0.1, 0.1)
                };
            }
        }
    }
    let (program, _, _) = trainable_program(&m);
    let n = 4 * 28 * 28;
    let x = Tensor::f32(vec![4, 1, 28, 28], (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect());
    let reference = qc_runtime::interp::run(&program, std::slice::from_ref(&x)).unwrap();
    let got = torch::run_program(&program, &[x], qc_runtime::program::Device::Cpu).unwrap();
    let (r, t) = (reference[0].as_f32().unwrap(), got[0].as_f32().unwrap());
    let scale = r.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    let worst = r.iter().zip(t).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-4 * scale, "differ by {worst} (scale {scale})");
}

#[test]
fn one_epoch_on_2000_images_learns() {
    let m = float_module("fashion_cnn");
    let (program, keys, trainable) = trainable_program(&m);
    let (x, y) = fashion(true, 2000);
    let (tx, ty) = fashion(false, 1000);
    // Measured: loss 0.96, test accuracy 77% (batch 16, the recipe's other settings).
    let config = TrainConfig {
        epochs: 1,
        batch_size: 16,
        lr: 0.01,
        normalize: Some(qc_runtime::normalize::Normalize::new(0.2860, 0.3530)),
        seed: 1,
        ..Default::default()
    };
    let mut seen = vec![];
    let r = torch::train_float(
        &program,
        &trainable,
        &config,
        LabeledData { inputs: &x, labels: &y },
        Some(LabeledData {
            inputs: &tx,
            labels: &ty,
        }),
        &mut |s| seen.push(s.clone()),
    )
    .unwrap();
    assert_eq!(seen, r.epochs);
    assert_eq!(r.steps, 125);
    let e = &r.epochs[0];
    // ln(10) = 2.30 is the loss of a uniform guess.
    assert!(e.loss < 1.6, "mean loss {}", e.loss);
    let acc = e.test_accuracy.unwrap();
    assert!(acc > 0.6, "test accuracy {acc}");
    // Running statistics moved; frozen ones stayed.
    let mean = keys
        .iter()
        .position(|k| k.as_deref() == Some("bn1.running_mean"))
        .unwrap();
    assert_ne!(r.constants[mean], program.constants[mean]);
    assert_eq!(r.constants.len(), program.constants.len());
}

#[test]
fn a_nan_in_the_data_names_epoch_and_step() {
    let m = float_module("fashion_cnn");
    let (program, _, trainable) = trainable_program(&m);
    let (n, bad) = (48, 29);
    let mut rng = SplitMix64::new(5);
    let mut v: Vec<f32> = (0..n * 784).map(|_| rng.uniform(0.0, 1.0)).collect();
    v[bad * 784 + 100] = f32::NAN;
    let x = Array {
        shape: vec![n, 1, 28, 28],
        data: ArrayData::F32(v),
    };
    let y: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 8,
        seed: 9,
        ..Default::default()
    };
    let e = torch::train_float(
        &program,
        &trainable,
        &config,
        LabeledData { inputs: &x, labels: &y },
        None,
        &mut |_| {},
    )
    .unwrap_err();
    let order = torch::epoch_order(n, 9, 0);
    let step = order.iter().position(|&i| i as usize == bad).unwrap() / 8 + 1;
    assert!(
        matches!(e, TorchError::NonFinite { epoch: 1, step: s, steps: 6, .. } if s == step),
        "{e}"
    );
    assert!(e.to_string().contains(&format!("at epoch 1, step {step} of 6")), "{e}");
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let m = float_module("fashion_cnn");
    let (program, _, trainable) = trainable_program(&m);
    let (x, y) = fashion(true, 96);
    let config = TrainConfig {
        batch_size: 32,
        seed: 4,
        optimizer: torch::Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
        },
        lr: 1e-3,
        ..Default::default()
    };
    let run = || {
        torch::train_float(
            &program,
            &trainable,
            &config,
            LabeledData { inputs: &x, labels: &y },
            None,
            &mut |_| {},
        )
        .unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.constants, b.constants);
    assert_eq!(a.epochs[0].loss, b.epochs[0].loss);
}

#[test]
fn qc_train_writes_a_checkpoint_a_recipe_binds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let example = std::fs::canonicalize("examples/fashion_cnn.qrecipe").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["train", example.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--epochs", "1", "--max-samples", "256"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("epoch 1/1  loss"), "{stdout}");
    assert!(stdout.contains("wrote 18 tensors"), "{stdout}");
    let tensors = qc_compiler::checkpoint::read_safetensors(&out).unwrap();
    assert_eq!(tensors["bn1.num_batches_tracked"].data, TensorData::I64(vec![4]));
    let recipe = dir.path().join("trained.qrecipe");
    std::fs::write(
        &recipe,
        format!("include \"{}\"\nweights \"w.safetensors\"\n", example.display()),
    )
    .unwrap();
    let loaded = qc_dsl::load(&recipe).unwrap();
    let opts = qc_compiler::RunOptions {
        stop_after: Some(Stage::Float),
        ..Default::default()
    };
    let m = qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).unwrap();
    let fresh = float_module("fashion_cnn");
    for (key, p) in &m.params {
        assert!(matches!(p.provenance, Provenance::Checkpoint { .. }), "{key}");
        assert_eq!(p.value.as_ref(), Some(&tensors[key]), "{key}");
    }
    assert_ne!(m.params["conv1.weight"].value, fresh.params["conv1.weight"].value);
}
