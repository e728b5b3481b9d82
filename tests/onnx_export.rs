//! `qc export --onnx` against the real ONNX Runtime (pinned in `.venv-ort/` by `scripts/setup.sh`):
//! the exported QDQ graph passes ONNX's full check, ONNX Runtime fuses it into its int8 kernels,
//! and its outputs agree with `qc run`'s in the quantized domain (fashion_cnn on real
//! Fashion-MNIST test images; Inception's concat block, ResNet-18's residual adds and
//! MobileNetV3-Small's squeeze-excite on random inputs). Bad outputs and non-models are refused with a help line.

use std::path::{Path, PathBuf};
use std::process::Command;

use qc_runtime::model::Model;
use qc_runtime::program::{QuantOp, StepOp};

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-ort/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make setup` (scripts/setup.sh)",
        py.display()
    );
    py
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// fashion_cnn with PyTorch's FP32 fixture weights and a short real calibration.
fn fashion_recipe(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("calibrate ") {
                "  calibrate fashion_mnist(split: train) batches: 8\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let weights = std::fs::canonicalize("tests/data/fashion_cnn.fp32.pth").unwrap();
    let path = dir.join("fashion_cnn_fp32.qrecipe");
    std::fs::write(&path, format!("{text}weights \"{}\"\n", weights.display())).unwrap();
    path
}

/// Compiles, exports, runs both, and returns (share of equal elements, largest step difference).
fn agreement(dir: &Path, recipe: &Path, input: &Path) -> (f64, i64) {
    let model = dir.join("m.qmodel");
    ok(qc().arg("compile").arg(recipe).arg("-o").arg(&model).output().unwrap());
    let onnx = dir.join("m.onnx");
    let out = ok(qc()
        .arg("export")
        .arg(&model)
        .arg("--onnx")
        .arg(&onnx)
        .output()
        .unwrap());
    assert!(out.contains("as QDQ ONNX"), "{out}");
    let y_qc = dir.join("y_qc.npy");
    ok(qc()
        .arg("run")
        .arg(&model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&y_qc)
        .output()
        .unwrap());

    // The output's quantization: the parameters of the value its final Dequantize reads.
    let m = Model::load(&model).unwrap();
    let p = m.program();
    let step = p.steps.iter().find(|s| s.output == p.outputs[0]).unwrap();
    assert!(matches!(step.op, StepOp::Quant(QuantOp::Dequantize)));
    let q = p.values[step.inputs[0]].quant.unwrap();

    let out = ok(Command::new(python())
        .arg("tests/onnx/run_ort.py")
        .arg(&onnx)
        .arg(input)
        .arg(dir.join("y_ort.npy"))
        .arg(dir.join("optimized.onnx"))
        .arg(&y_qc)
        .arg(q.scale().to_string())
        .arg(q.zero_point().to_string())
        .arg(q.range().qmin().to_string())
        .arg(q.range().qmax().to_string())
        .output()
        .unwrap());
    println!("{out}");
    // ONNX Runtime ran its int8 kernels, not the float ops between QDQ pairs.
    assert!(out.contains("QLinearConv"), "{out}");
    let line = out.lines().find(|l| l.starts_with("agreement: ")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let equal: f64 = words[1].trim_end_matches('%').parse().unwrap();
    let steps: i64 = words[4].parse().unwrap();
    (equal, steps)
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    std::fs::write(path, qc_runtime_host::data::npy_f32_bytes(shape, data)).unwrap();
}

fn random(shape: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = qc_runtime::SplitMix64::new(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect()
}

/// The first `n` Fashion-MNIST test images (raw pixels in [0, 1]) as `dir/x.npy`.
fn test_images(dir: &Path, n: usize) -> PathBuf {
    let images = qc_runtime_host::data::read_idx_images(Path::new("/usr/share/datasets/fashion-mnist"), false)
        .expect("make setup installs Fashion-MNIST");
    let batch = images.batch_f32(0, n);
    let qc_runtime::TensorData::F32(pixels) = &batch.data else {
        panic!("f32")
    };
    let input = dir.join("x.npy");
    write_npy(&input, &[n, 1, 28, 28], pixels);
    input
}

#[test]
fn fashion_cnn_agrees_with_onnx_runtime_on_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let input = test_images(dir.path(), 256);
    let (equal, steps) = agreement(dir.path(), &fashion_recipe(dir.path()), &input);
    // Measured 100% equal: `requantize: float` (the x86 scheme's) is ONNX Runtime's rule, and the
    // export writes the input quantization and the average pool so that ONNX Runtime computes
    // qc's integers (docs/numerics.md §9). The bound: 99% equal, one step at most.
    assert!(steps <= 1, "{steps} steps apart");
    assert!(equal >= 99.0, "{equal}% equal");
}

/// `requantize: float_bias` (PyTorch's fbgemm) has no ONNX form: the export quantizes each float
/// bias to int32 (as `requantize: float` keeps it), so ONNX Runtime computes the float rule with an
/// int32 bias for those layers, never more than one step from qc's outputs (measured on the first
/// 256 test images: 93.75% of the logits' codes equal, top-1 100% the same).
#[test]
fn a_float_bias_model_exports_with_int32_biases_within_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = fashion_recipe(dir.path());
    let text = std::fs::read_to_string(&recipe).unwrap();
    let text = text.replacen("  scheme    x86\n", "  scheme    x86\n  requantize: float_bias\n", 1);
    assert!(text.contains("requantize: float_bias"));
    std::fs::write(&recipe, text).unwrap();
    let input = test_images(dir.path(), 256);
    let (equal, steps) = agreement(dir.path(), &recipe, &input);
    assert!(steps <= 1, "{steps} steps apart");
    assert!(equal >= 90.0, "{equal}% equal");
}

#[test]
fn inception_concat_block_agrees_with_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, &[2, 3, 299, 299], &random(&[2, 3, 299, 299], 7));
    let (equal, steps) = agreement(dir.path(), Path::new("examples/inception_block.qrecipe"), &input);
    // Measured 100% equal (99.76%, two steps apart at most, with `requantize: integer`).
    assert!(steps <= 1, "{steps} steps apart");
    assert!(equal >= 99.0, "{equal}% equal");
}

#[test]
fn resnet18_residual_adds_agree_with_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, &[2, 3, 224, 224], &random(&[2, 3, 224, 224], 11));
    let (equal, steps) = agreement(dir.path(), Path::new("examples/resnet18.qrecipe"), &input);
    // Measured 100% equal through 20 convolutions and 8 adds (86.20% with `requantize: integer`,
    // whose one-step differences spread to the 1000 logits).
    assert!(steps <= 1, "{steps} steps apart");
    assert!(equal >= 99.0, "{equal}% equal");
}

#[test]
fn mobilenet_v3_small_squeeze_excite_agrees_with_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, &[2, 3, 224, 224], &random(&[2, 3, 224, 224], 13));
    let (equal, steps) = agreement(dir.path(), Path::new("examples/mobilenet_v3_small.qrecipe"), &input);
    // hardswish/hardsigmoid as float ops between QDQ pairs, the squeeze-excite mul fused into
    // QLinearMul. Measured (qc's deterministic initial weights, the recipe's 2 random calibration
    // samples): 100% equal, max 0 steps, top-1 100%.
    assert!(steps <= 1, "{steps} steps apart");
    assert!(equal >= 90.0, "{equal}% equal");
}

#[test]
fn export_refuses_a_bad_model_and_its_own_input() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.qmodel");
    std::fs::write(&bogus, b"not a model").unwrap();
    let out = qc()
        .arg("export")
        .arg(&bogus)
        .arg("--onnx")
        .arg(dir.path().join("o.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: cannot load") && err.contains("help:"), "{err}");

    let out = qc()
        .arg("export")
        .arg(&bogus)
        .arg("--onnx")
        .arg(&bogus)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("help:"), "{err}");
    assert_eq!(std::fs::read(&bogus).unwrap(), b"not a model");

    let out = qc()
        .arg("export")
        .arg(&bogus)
        .arg("--onnx")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("help:"), "{err}");
}

/// `requantize: integer` reaches every conv/linear step of the program (and a `layer` override
/// wins for its layer); ONNX Runtime, which requantizes in float, then agrees within one step
/// only.
#[test]
fn integer_requantization_reaches_the_program() {
    use qc_runtime::quant::RequantRule;
    let dir = tempfile::tempdir().unwrap();
    let recipe = fashion_recipe(dir.path());
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "  scheme    x86\n",
        "  scheme    x86\n  requantize: integer\n  layer fc2 { requantize: float }\n",
    );
    std::fs::write(&recipe, text).unwrap();
    let images = qc_runtime_host::data::read_idx_images(Path::new("/usr/share/datasets/fashion-mnist"), false)
        .expect("make setup installs Fashion-MNIST");
    let batch = images.batch_f32(0, 64);
    let qc_runtime::TensorData::F32(pixels) = &batch.data else {
        panic!("f32")
    };
    let input = dir.path().join("x.npy");
    write_npy(&input, &[64, 1, 28, 28], pixels);
    let (equal, steps) = agreement(dir.path(), &recipe, &input);
    let m = Model::load(&dir.path().join("m.qmodel")).unwrap();
    let p = m.program();
    let rules: Vec<(String, RequantRule)> = p
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            StepOp::Quant(QuantOp::QConv { requantize, .. } | QuantOp::QLinear { requantize, .. }) => {
                Some((p.value_name(s.output).to_string(), *requantize))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rules.len(), 4, "{rules:?}");
    for (name, rule) in &rules {
        let want = if name == "fc2" {
            RequantRule::Float
        } else {
            RequantRule::Integer
        };
        assert_eq!(*rule, want, "{name}");
    }
    println!("requantize: integer against ONNX Runtime: {equal}% equal, {steps} steps apart at most");
    assert!(steps <= 1, "{steps} steps apart");
}

/// ONNX Runtime's agreement line for `onnx` on `input` against qc's `y_qc` in the output's
/// quantization `q` (scale, zero point, qmin, qmax): (share equal, steps).
fn ort_agreement(dir: &Path, onnx: &Path, input: &Path, y_qc: &Path, q: (f32, i64, i64, i64)) -> (f64, i64) {
    let out = ok(Command::new(python())
        .arg("tests/onnx/run_ort.py")
        .arg(onnx)
        .arg(input)
        .arg(dir.join("y_ort.npy"))
        .arg(dir.join("optimized.onnx"))
        .arg(y_qc)
        .arg(q.0.to_string())
        .arg(q.1.to_string())
        .arg(q.2.to_string())
        .arg(q.3.to_string())
        .output()
        .unwrap());
    println!("{out}");
    let line = out.lines().find(|l| l.starts_with("agreement: ")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    (
        words[1].trim_end_matches('%').parse().unwrap(),
        words[4].parse().unwrap(),
    )
}

/// The QAT export: fashion_cnn trained briefly in float, then with QAT (`qc train --qat`), is
/// exported from its recipe with `--qat` (fake quantization as QDQ with the trained scales,
/// batch norm folded, float biases) and run by ONNX Runtime on real test images against qc's
/// fake-quantized evaluation (`qc run --stage observed --qat`).
#[test]
fn qat_export_reproduces_the_fake_quantized_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    let recipe = |name: &str, weights: &Path| {
        let path = d.join(name);
        let w = std::fs::canonicalize(weights).unwrap();
        std::fs::write(&path, format!("{base}\nweights \"{}\"\n", w.display())).unwrap();
        path
    };
    let fp32 = d.join("fp32.safetensors");
    let r0 = recipe("start.qrecipe", Path::new("tests/data/fashion_cnn.fp32.safetensors"));
    let train = |r: &Path, out: &Path, qat: bool| {
        let mut c = qc();
        c.arg("train").arg(r).arg("-o").arg(out);
        if qat {
            c.arg("--qat");
        }
        ok(c.args(["--epochs", "1", "--max-samples", "3000", "--device", "cpu"])
            .output()
            .unwrap());
    };
    train(&r0, &fp32, false);
    let qat = d.join("qat.safetensors");
    train(&recipe("fp32.qrecipe", &fp32), &qat, true);
    let rq = recipe("qat.qrecipe", &qat);

    let onnx = d.join("qat.onnx");
    let out = ok(qc()
        .arg("export")
        .arg(&rq)
        .arg("--qat")
        .arg("--onnx")
        .arg(&onnx)
        .output()
        .unwrap());
    assert!(out.contains("fake-quantized QAT model as QDQ ONNX"), "{out}");
    let images = d.join("x.npy");
    let dir_fm = Path::new(qc_runtime_host::data::FASHION_MNIST_DIR);
    let x = qc_runtime_host::data::read_idx_images(dir_fm, false)
        .expect("Fashion-MNIST (make setup installs it)")
        .batch_f32(0, 256);
    write_npy(&images, &x.shape, x.as_f32().unwrap());
    let y_qc = d.join("y_qc.npy");
    ok(qc()
        .arg("run")
        .arg(&rq)
        .args(["--stage", "observed", "--qat", "--input"])
        .arg(&images)
        .arg("--output")
        .arg(&y_qc)
        .output()
        .unwrap());
    // The output's fake quantization: the trained scale and zero point of `fc2`'s.
    let weights = qc_compiler::checkpoint::read_safetensors(&qat).unwrap();
    let scale = weights["fc2.activation_post_process.scale"].as_f32().unwrap()[0];
    let zp = match &weights["fc2.activation_post_process.zero_point"].data {
        qc_runtime::tensor::TensorData::I32(v) => v[0] as i64,
        qc_runtime::tensor::TensorData::I64(v) => v[0],
        other => panic!("zero point {other:?}"),
    };
    let q = (scale, zp, 0, 127);
    // Measured: 100% equal (the biases are `Add`s of their own: as a Conv's input ONNX Runtime
    // would quantize them to int32, 98.95% equal). The bound: 99%, one step at most.
    let (equal, steps) = ort_agreement(d, &onnx, &images, &y_qc, q);
    assert!(equal >= 99.0 && steps <= 1, "{equal}% equal, {steps} steps");
}

/// `--qat` needs a recipe whose weights hold trained fake-quant state; a compiled model or an
/// untrained recipe is refused with a help line, and nothing is written.
#[test]
fn qat_export_refuses_what_has_no_trained_scales() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("out.onnx");
    let out = qc()
        .args(["export", "examples/fashion_cnn.qrecipe", "--qat", "--onnx"])
        .arg(&onnx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no trained fake-quant state") && err.contains("help: train it first"),
        "{err}"
    );
    let model = dir.path().join("m.qmodel");
    std::fs::write(&model, b"not a model").unwrap();
    let out = qc()
        .arg("export")
        .arg(&model)
        .arg("--qat")
        .arg("--onnx")
        .arg(&onnx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a .qrecipe") && err.contains("help:"), "{err}");
    assert!(!onnx.exists());
}
