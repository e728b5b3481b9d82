//! Quantization-aware training through libtorch (`qc train --qat`, `torch::train` with a
//! `QatPlan`): one step equals PyTorch 2.11's eager-mode QAT step on the same state and batch
//! (fixture written by `tests/data/qat_step.py`), a run resumed after an epoch ends exactly where
//! an uninterrupted one does, freezing reaches the checkpoint, the converted int8 model agrees
//! with the fake-quantized one (observed and learned scales), and a NaN in the data stops QAT
//! naming epoch, step and value.

use std::path::{Path, PathBuf};
use std::process::Command;

use indexmap::IndexMap;
use qc_compiler::ir::{Module, Stage};
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::data::{Array, ArrayData};
use qc_runtime_host::torch::{self, LabeledData, QatTraining, TrainConfig, TrainHooks};

const QC: &str = env!("CARGO_BIN_EXE_qc");

/// The fashion_cnn recipe with `extra` lines appended to its `train` section and `weights` bound.
fn recipe(dir: &Path, weights: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    let text = text.replace("  seed: 1\n", &format!("  seed: 1\n{extra}"));
    let weights = std::fs::canonicalize(weights).unwrap();
    let path = dir.join(format!(
        "cnn_{}.qrecipe",
        weights.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, format!("{text}\nweights \"{}\"\n", weights.display())).unwrap();
    path
}

fn observed(recipe: &Path) -> Module {
    let loaded = qc_dsl::load(recipe).unwrap();
    let opts = qc_compiler::RunOptions {
        stop_after: Some(Stage::Observed),
        qat: true,
        ..Default::default()
    };
    qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).expect("compiles")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn read(path: &Path) -> IndexMap<String, Tensor> {
    qc_compiler::checkpoint::read_safetensors(path).unwrap()
}

#[test]
fn one_qat_step_matches_pytorch_eager_qat() {
    let dir = tempfile::tempdir().unwrap();
    let m = observed(&recipe(dir.path(), Path::new("tests/data/fashion_cnn.qat.pth"), ""));
    let (program, keys, plan) = qc_compiler::lower::lower_qat(&m, false).unwrap();
    assert_eq!(plan.sites.len(), 9, "5 activation and 4 weight fake quantizations");
    let fixture = read(Path::new("tests/data/fashion_cnn.qat_step.safetensors"));
    let x = fixture["x"].clone();

    // Evaluation: observers still, running statistics. Within one step of fc2's output scale.
    let logits = torch::run_program_qat(
        &program,
        &plan,
        std::slice::from_ref(&x),
        qc_runtime::program::Device::Cpu,
    )
    .unwrap();
    let step = f32s(&m.params["fc2.activation_post_process.scale"].value.clone().unwrap())[0];
    let (got, want) = (f32s(&logits[0]), f32s(&fixture["eval_logits"]));
    let exact = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() <= 1e-5).count();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst <= step * 1.001, "eval logits differ by {worst} (step {step})");
    assert!(exact * 100 >= got.len() * 95, "{exact} of {} logits equal", got.len());

    // One SGD step on the batch, observers on, batch statistics.
    let TensorData::I64(labels) = &fixture["y"].data else {
        panic!("labels")
    };
    let TensorData::F32(xv) = &x.data else { panic!("x") };
    let inputs = Array {
        shape: x.shape.clone(),
        data: ArrayData::F32(xv.clone()),
    };
    let trainable = qc_compiler::lower::trainable(&keys, Some(&plan));
    let config = TrainConfig {
        epochs: 1,
        batch_size: 8,
        lr: 0.05,
        threads: Some(1),
        ..Default::default()
    };
    let qat = QatTraining {
        plan,
        freeze_bn_after: None,
        freeze_observers_after: None,
        freeze_ranges_after: None,
    };
    let result = torch::train(
        &program,
        &trainable,
        Some(&qat),
        &config,
        LabeledData {
            inputs: &inputs,
            labels,
        },
        None,
        None,
        TrainHooks {
            on_step: &mut |_| {},
            on_epoch: &mut |_, _| Ok(()),
        },
    )
    .unwrap();
    let loss = f32s(&fixture["loss"])[0] as f64;
    assert!(
        (result.epochs[0].loss - loss).abs() < 1e-4,
        "loss {} vs PyTorch {loss}",
        result.epochs[0].loss
    );
    let mut compared = 0;
    for (key, value) in keys.iter().zip(&result.constants) {
        let Some(key) = key else { continue };
        let want = f32s(&fixture[&format!("after.{key}")]);
        let got = f32s(value);
        assert_eq!(got.len(), want.len(), "{key}");
        let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(
            worst <= 2e-3 * scale,
            "{key}: differs from PyTorch by {worst} (max |x| {scale})"
        );
        compared += 1;
    }
    // 16 float parameters and statistics, 9 sites × 6 state tensors.
    assert_eq!(compared, 16 + 9 * 6);
}

fn qc(args: &[&str]) -> std::process::Output {
    Command::new(QC).args(args).output().expect("qc runs")
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "qc failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qat_resumes_exactly_freezes_and_converts_to_a_matching_int8_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = recipe(
        d,
        Path::new("tests/data/fashion_cnn.fp32.safetensors"),
        "  threads: 1\n",
    );
    let r = r.to_str().unwrap();
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let common = ["--qat", "--max-samples", "640", "--device", "cpu"];
    ok(&qc(&[&["train", r, "-o", a, "--epochs", "2"][..], &common].concat()));
    ok(&qc(&[&["train", r, "-o", b, "--epochs", "1"][..], &common].concat()));
    let after_one = read(Path::new(b));
    let resumed = qc(&[&["train", r, "-o", b, "--epochs", "2", "--resume"][..], &common].concat());
    ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resuming after epoch 1"));
    let (ta, tb) = (read(Path::new(a)), read(Path::new(b)));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert_eq!(v, &tb[k], "{k}: the resumed run differs");
    }
    // The second epoch ran: weights moved; the recipe freezes observers after epoch 1.
    assert_ne!(after_one["conv1.weight"], ta["conv1.weight"]);
    assert_eq!(
        f32s(&after_one["conv1.activation_post_process.observer_enabled"]),
        [1.0]
    );
    assert_eq!(f32s(&ta["conv1.activation_post_process.observer_enabled"]), [0.0]);
    assert_eq!(f32s(&ta["conv1.activation_post_process.fake_quant_enabled"]), [1.0]);
    assert_eq!(
        after_one["conv1.activation_post_process.scale"], ta["conv1.activation_post_process.scale"],
        "frozen observers keep the scale"
    );
    // 640 samples / batch 64 = 10 steps per epoch.
    assert_eq!(
        f32s(&ta["conv1.bn.num_batches_tracked"])[0] - f32s(&after_one["conv1.bn.num_batches_tracked"])[0],
        10.0
    );
}

/// A briefly trained float model: one epoch on `samples` images, from the PyTorch fixture.
fn float_trained(d: &Path, samples: &str) -> PathBuf {
    let fp32 = d.join("fp32.safetensors");
    let r = recipe(
        d,
        Path::new("tests/data/fashion_cnn.fp32.safetensors"),
        "  threads: 1\n",
    );
    ok(&qc(&[
        "train",
        r.to_str().unwrap(),
        "-o",
        fp32.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-samples",
        samples,
        "--device",
        "cpu",
    ]));
    fp32
}

/// Converts the QAT checkpoint `rq` binds with `qc compile --qat` and checks the int8 model on
/// `n` test images against the fake-quantized program: at least 99% of the logits within one
/// output step, the mean difference at most half a step. (The int8 average pool rounds to its
/// input's grid where the fake-quantized pool does not, PyTorch's semantics on both sides, so a
/// logit may move by a step.)
fn int8_agrees_with_fake_quant(d: &Path, rq: &Path, n: usize, learnable_scales: bool) {
    let model_path = d.join("m.qmodel");
    ok(&qc(&[
        "compile",
        rq.to_str().unwrap(),
        "--qat",
        "-o",
        model_path.to_str().unwrap(),
    ]));
    // Raw bytes / 255 for the .qmodel (it normalizes), normalized for the fake-quantized program.
    let dir_fm = Path::new(qc_runtime_host::data::FASHION_MNIST_DIR);
    let images = qc_runtime_host::data::read_idx_images(dir_fm, false).expect("Fashion-MNIST (make setup installs it)");
    let raw = images.batch_f32(0, n);
    let (mean, std) = (0.2860f32, 0.3530f32);
    let x = Tensor::f32(raw.shape.clone(), f32s(&raw).iter().map(|v| (v - mean) / std).collect());
    let m = observed(rq);
    let (program, _, plan) = qc_compiler::lower::lower_qat(&m, learnable_scales).unwrap();
    let fake = torch::run_program_qat(
        &program,
        &plan,
        std::slice::from_ref(&x),
        qc_runtime::program::Device::Cpu,
    )
    .unwrap();
    let int8 = qc_runtime::model::Model::load(&model_path)
        .unwrap()
        .run(&[raw])
        .unwrap();
    let step = output_step(&model_path);
    let (f, q) = (f32s(&fake[0]), f32s(&int8[0]));
    let within = f
        .iter()
        .zip(&q)
        .filter(|(a, b)| (*a - *b).abs() <= step * 1.001)
        .count();
    let mean_diff = f.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f32>() / f.len() as f32;
    // Measured (3,000-image float model, one QAT epoch, 256 images): 2,560 of 2,560 within one
    // step, mean 0.10 steps.
    assert!(
        within * 100 >= f.len() * 99,
        "{within} of {} logits within one step {step}",
        f.len()
    );
    assert!(mean_diff <= 0.5 * step, "mean difference {mean_diff} (step {step})");
}

/// The step of the int8 model's output: the scale of the value its final dequantize reads.
fn output_step(model: &Path) -> f32 {
    use qc_runtime::program::{QuantOp, StepOp};
    let m = qc_runtime::model::Model::load(model).unwrap();
    let p = m.program();
    let last = p.steps.iter().find(|s| s.output == p.outputs[0]).unwrap();
    assert!(matches!(last.op, StepOp::Quant(QuantOp::Dequantize)));
    p.values[last.inputs[0]].quant.unwrap().scale()
}

#[test]
fn the_int8_model_converted_after_qat_agrees_with_the_fake_quantized_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fp32 = float_trained(d, "3000");
    let qat = d.join("qat.safetensors");
    let r = recipe(d, &fp32, "  threads: 1\n");
    ok(&qc(&[
        "train",
        r.to_str().unwrap(),
        "--qat",
        "-o",
        qat.to_str().unwrap(),
        "--max-samples",
        "3000",
        "--device",
        "cpu",
    ]));
    int8_agrees_with_fake_quant(d, &recipe(d, &qat, ""), 256, false);
}

#[test]
fn qat_on_nan_data_names_epoch_step_and_value_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut x = vec![0.5f32; 64 * 784];
    x[70 * 7] = f32::NAN;
    let y: Vec<f32> = (0..64).map(|i| (i % 10) as f32).collect();
    let npz = qc_runtime_host::data::npz_f32_bytes(&[("x", &[64, 1, 28, 28], &x), ("labels", &[64], &y)]);
    std::fs::write(d.join("nan.npz"), npz).unwrap();
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe")
        .unwrap()
        .replace(
            "  data: fashion_mnist(split: train)\n  test_data: fashion_mnist(split: test)\n",
            "  data: \"nan.npz\"\n",
        );
    let weights = std::fs::canonicalize("tests/data/fashion_cnn.fp32.safetensors").unwrap();
    let r = d.join("nan.qrecipe");
    std::fs::write(&r, format!("{text}\nweights \"{}\"\n", weights.display())).unwrap();
    let out_path = d.join("qat.safetensors");
    let out = qc(&["train", r.to_str().unwrap(), "--qat", "-o", out_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: training diverged: the loss is NaN at epoch 1, step 1 of 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`x` is the first value with a NaN or an infinity"),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: lower the learning rate (`lr:` in the `qat` section)"),
        "{stderr}"
    );
    assert!(!out_path.exists(), "nothing is written");
}

#[test]
fn learnable_scales_train_once_observers_freeze_and_convert() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fp32 = float_trained(d, "2000");
    let text = std::fs::read_to_string(recipe(d, &fp32, "  threads: 1\n")).unwrap();
    let lsq = d.join("lsq.qrecipe");
    std::fs::write(
        &lsq,
        text.replace(
            "  freeze_observers_after: 1\n",
            "  freeze_observers_after: 1\n  learnable_scales: true\n",
        )
        // LSQ's gradients are scaled down by 1/sqrt(numel · qmax): at the recipe's 1e-4 a scale
        // would not move within f32 precision in one short epoch.
        .replace("  lr: 1e-4\n", "  lr: 0.02\n"),
    )
    .unwrap();
    let (one, two) = (d.join("one.safetensors"), d.join("two.safetensors"));
    let qat = |out: &Path, epochs: &str| {
        ok(&qc(&[
            "train",
            lsq.to_str().unwrap(),
            "--qat",
            "-o",
            out.to_str().unwrap(),
            "--epochs",
            epochs,
            "--max-samples",
            "2000",
            "--device",
            "cpu",
        ]))
    };
    qat(&one, "1");
    qat(&two, "2");
    let (a, b) = (read(&one), read(&two));
    // Epoch 2 has the observers frozen: the ranges stay, the learned scales move.
    for site in [
        "conv1.activation_post_process",
        "fc1.activation_post_process",
        "conv2.weight_fake_quant",
    ] {
        let key = format!("{site}.activation_post_process.min_val");
        assert_eq!(a[&key], b[&key], "{key}: frozen observer");
        let (sa, sb) = (f32s(&a[&format!("{site}.scale")]), f32s(&b[&format!("{site}.scale")]));
        assert_ne!(sa, sb, "{site}: the scale is learned in epoch 2");
        assert!(sb.iter().all(|s| s.is_finite() && *s > 0.0), "{site}: {sb:?}");
    }
    // The learned scales convert, and the int8 model agrees with the fake-quantized one.
    int8_agrees_with_fake_quant(d, &recipe(d, &two, ""), 128, true);
}

/// fashion_cnn the way TI's QAT for TIDL runs (`examples/tidl-style`): power-of-two scales,
/// integer requantization, learned (PACT2-style) ranges, observers for epoch 1, ranges and batch
/// norm frozen after epoch 2; bound to `weights`.
fn power_of_two_recipe(d: &Path, weights: &Path) -> PathBuf {
    let text = std::fs::read_to_string(recipe(d, weights, "  threads: 1\n")).unwrap();
    let text = text
        .replace("  scheme    x86\n", "  scheme    power_of_two\n  requantize: integer\n")
        .replace(
            "  freeze_bn_after: 1\n  freeze_observers_after: 1\n",
            "  freeze_bn_after: 2\n  freeze_observers_after: 1\n  freeze_ranges_after: 2\n  learnable_scales: true\n",
        )
        .replace("  lr: 1e-4\n", "  lr: 0.01\n");
    assert!(text.contains("power_of_two") && text.contains("freeze_ranges_after"));
    let path = d.join(format!(
        "pow2_{}.qrecipe",
        weights.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn power_of_two_qat_learns_ranges_freezes_them_and_converts_within_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fp32 = float_trained(d, "2000");
    let r = power_of_two_recipe(d, &fp32);
    let w = d.join("w.safetensors");
    let epochs = |n: &str, resume: bool| {
        let mut args = vec![
            "train",
            r.to_str().unwrap(),
            "--qat",
            "-o",
            w.to_str().unwrap(),
            "--epochs",
            n,
            "--max-samples",
            "1000",
            "--device",
            "cpu",
        ];
        if resume {
            args.push("--resume");
        }
        let out = qc(&args);
        ok(&out);
        (read(&w), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (one, log) = epochs("1", false);
    assert!(
        log.contains("9 fake quantizations (9 with power-of-two scales, 9 with learned ranges); batch norm frozen after epoch 2, observers frozen after epoch 1, ranges frozen after epoch 2"),
        "{log}"
    );
    let (two, _) = epochs("2", true);
    let (three, _) = epochs("3", true);
    let act = "conv1.activation_post_process";
    // Epoch 2 learns the ranges (observers off), epoch 3 keeps them and batch norm, and trains
    // the weights.
    assert_eq!(f32s(&two[&format!("{act}.observer_enabled")]), [0.0]);
    assert_ne!(
        one[&format!("{act}.scale")],
        two[&format!("{act}.scale")],
        "learned in epoch 2"
    );
    for site in [act, "fc1.activation_post_process", "conv2.weight_fake_quant"] {
        let key = format!("{site}.scale");
        assert_eq!(two[&key], three[&key], "{key}: frozen after epoch 2");
    }
    assert_eq!(
        two["conv1.bn.running_mean"], three["conv1.bn.running_mean"],
        "batch norm frozen"
    );
    assert_ne!(two["conv1.weight"], three["conv1.weight"], "the weights go on training");
    // The trained scales are continuous; the int8 model quantizes with their powers of two.
    let learned = f32s(&three[&format!("{act}.scale")])[0];
    let rq = power_of_two_recipe(d, &w);
    int8_agrees_with_fake_quant(d, &rq, 256, true);
    let model = qc_runtime::model::Model::load(&d.join("m.qmodel")).unwrap();
    let scales: Vec<f32> = model
        .program()
        .values
        .iter()
        .filter_map(|v| v.quant.map(|q| q.scale()))
        .collect();
    assert!(!scales.is_empty());
    for s in &scales {
        assert_eq!(qc_runtime::quant::pow2_scale(*s), *s, "{s} is not a power of two");
    }
    assert!(
        scales.contains(&qc_runtime::quant::pow2_scale(learned)),
        "conv1's output scale is pow2_scale({learned})"
    );
}
