//! Input normalization is declared once, on the model's `input` line, and every path applies it:
//! a recipe with only a `quantize` section calibrates and evaluates exactly as the full example
//! (which trains too), where the same recipe without `normalize` loses most of its accuracy; a
//! per-channel declaration reaches calibration, the `.qmodel` and `Model::run`; `qc run` warns
//! when its float input looks normalized already or holds raw 0..255 pixels, and only then.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qc_compiler::ir::{Module, Stage};
use qc_runtime::model::Model;
use qc_runtime::{Tensor, TensorData};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";
const DECLARED: &str = " normalize(mean: 0.2860, std: 0.3530)";

fn qc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc")).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn f32s(t: &Tensor) -> &[f32] {
    let TensorData::F32(v) = &t.data else { panic!("f32") };
    v
}

/// fashion_cnn with float weights trained by `qc train` on 4,000 images (once per test folder),
/// and a short calibration, in `dir`: the whole example (`full`), its model and `quantize` section
/// only (`quantize_only`), and that without the input's `normalize` (`plain`).
fn recipe(dir: &Path, kind: &str) -> PathBuf {
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    assert!(
        text.contains(DECLARED),
        "the example declares its normalization on its input"
    );
    let mut text = text.replace(
        "calibrate fashion_mnist(split: train) batches: 32",
        "calibrate fashion_mnist(split: train) batches: 4",
    );
    if kind != "full" {
        text.truncate(text.find("// Float training from scratch").unwrap());
    }
    if kind == "plain" {
        text = text.replace(DECLARED, "");
    }
    let weights = dir.join("fp32.safetensors");
    if !weights.exists() {
        ok(&qc(&[
            "train",
            "examples/fashion_cnn.qrecipe",
            "-o",
            weights.to_str().unwrap(),
            "--epochs",
            "1",
            "--max-samples",
            "4000",
            "--device",
            "cpu",
        ]));
    }
    let sub = dir.join(kind);
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("fashion_cnn.qrecipe");
    std::fs::write(&path, format!("{text}weights \"{}\"\n", weights.display())).unwrap();
    path
}

fn calibrated(recipe: &Path) -> (Module, String) {
    let loaded = qc_dsl::load(recipe).unwrap();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let opts = qc_compiler::RunOptions {
        stop_after: Some(Stage::Calibrated),
        ..Default::default()
    };
    let m = qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).unwrap();
    let dump = qc_compiler::printer::print(&m, &loaded.sources);
    (m, dump)
}

fn scalar(m: &Module, key: &str) -> f32 {
    f32s(m.params[key].value.as_ref().unwrap())[0]
}

/// The first `n` test images as raw f32 in [0, 1] (`[n, 1, 28, 28]`), written to `path`.
fn raw_images(n: usize, path: &Path, map: impl Fn(f32) -> f32) -> Tensor {
    let images =
        qc_runtime_host::data::read_idx_images(Path::new(FASHION), false).expect("make setup installs Fashion-MNIST");
    let t = images.batch_f32(0, n);
    let v: Vec<f32> = f32s(&t).iter().map(|&x| map(x)).collect();
    let shape = vec![n, 1, 28, 28];
    std::fs::write(path, qc_runtime_host::data::npy_f32_bytes(&shape, &v)).unwrap();
    Tensor::f32(shape, v)
}

fn accuracy(stdout: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with("accuracy: ")).expect(stdout);
    line["accuracy: ".len()..line.find('%').unwrap()].parse().unwrap()
}

#[test]
fn a_quantize_only_recipe_calibrates_and_evaluates_with_the_input_normalization() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (full, full_dump) = calibrated(&recipe(d, "full"));
    let (only, only_dump) = calibrated(&recipe(d, "quantize_only"));
    let (plain, _) = calibrated(&recipe(d, "plain"));
    // Without `train` and `qat`, calibration is the same to the bit: same ranges, same scales.
    assert_eq!(only_dump, full_dump);
    assert!(only_dump.contains("input x: f32[N, 1, 28, 28] normalize(mean: 0.286, std: 0.353)"));
    // The input observer saw normalized data: the smallest pixel, 0, became -0.286 / 0.353.
    let key = "quant.activation_post_process.min_val";
    assert_eq!(scalar(&only, key), ((0.0f64 - 0.2860) / 0.3530) as f32);
    assert_eq!(scalar(&full, key), scalar(&only, key));
    assert_eq!(
        scalar(&plain, key),
        0.0,
        "without normalize the raw pixels are calibrated"
    );

    // Evaluation: `qc run` on raw test images with labels.
    let images = d.join("x.npy");
    raw_images(2000, &images, |x| x);
    let labels = format!("{FASHION}/t10k-labels-idx1-ubyte.gz");
    let mut acc = vec![];
    for kind in ["full", "quantize_only", "plain"] {
        let model = d.join(format!("{kind}.qmodel"));
        let r = d.join(kind).join("fashion_cnn.qrecipe");
        ok(&qc(&["compile", r.to_str().unwrap(), "-o", model.to_str().unwrap()]));
        let out = qc(&[
            "run",
            model.to_str().unwrap(),
            "--input",
            images.to_str().unwrap(),
            "--labels",
            &labels,
        ]);
        acc.push(accuracy(&ok(&out)));
    }
    // Measured on these 2,000 images: 74.85% with the normalization (either recipe), 17.90%
    // for the recipe that does not declare it (the 77% against 11%, on less training).
    eprintln!(
        "accuracy: full {}%, quantize only {}%, plain {}%",
        acc[0], acc[1], acc[2]
    );
    assert_eq!(acc[0], acc[1]);
    assert!(acc[1] > 65.0 && acc[2] < acc[1] - 30.0, "{acc:?}");
}

#[test]
fn per_channel_normalization_reaches_calibration_the_qmodel_and_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mean, std) = ([0.5f64, 0.25, 0.0], [0.5f64, 0.25, 2.0]);
    std::fs::write(
        d.join("tiny.qrecipe"),
        "model tiny {\n  input x: f32[N, 3, 4, 4] normalize(mean: [0.5, 0.25, 0], std: [0.5, 0.25, 2])\n  \
         c = conv2d(x, out: 2, kernel: 3, pad: 1)\n  r = relu(c)\n  f = flatten(r)\n  fc = linear(f, out: 3)\n  \
         output fc\n}\nquantize {\n  scheme x86\n  observe activations: minmax\n  calibrate \"x.npy\" batches: 1\n}\n",
    )
    .unwrap();
    let mut rng = qc_runtime::SplitMix64::new(3);
    let x: Vec<f32> = (0..8 * 48).map(|_| (rng.next_u64() % 1000) as f32 / 999.0).collect();
    std::fs::write(d.join("x.npy"), qc_runtime_host::data::npy_f32_bytes(&[8, 3, 4, 4], &x)).unwrap();
    let by_hand: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / 16) % 3;
            ((v as f64 - mean[c]) / std[c]) as f32
        })
        .collect();
    let (m, dump) = calibrated(&d.join("tiny.qrecipe"));
    assert!(
        dump.contains("input x: f32[N, 3, 4, 4] normalize(mean: [0.5, 0.25, 0], std: [0.5, 0.25, 2])"),
        "{dump}"
    );
    let lo = by_hand.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = by_hand.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(scalar(&m, "quant.activation_post_process.min_val"), lo);
    assert_eq!(scalar(&m, "quant.activation_post_process.max_val"), hi);

    let model_path = d.join("tiny.qmodel");
    ok(&qc(&[
        "compile",
        d.join("tiny.qrecipe").to_str().unwrap(),
        "-o",
        model_path.to_str().unwrap(),
    ]));
    let model = Model::load(&model_path).unwrap();
    let n = &model.meta().input_normalize["x"];
    assert_eq!((n.mean.as_slice(), n.std.as_slice()), (&mean[..], &std[..]));
    let raw = Tensor::f32(vec![8, 3, 4, 4], x);
    assert_eq!(
        model.run(std::slice::from_ref(&raw)).unwrap(),
        model.executor().run(&[Tensor::f32(vec![8, 3, 4, 4], by_hand)]).unwrap()
    );
    let out = ok(&qc(&[
        "run",
        model_path.to_str().unwrap(),
        "--input",
        d.join("x.npy").to_str().unwrap(),
    ]));
    assert!(
        out.contains("input `x` is normalized by the model: normalize(mean: [0.5, 0.25, 0], std: [0.5, 0.25, 2])"),
        "{out}"
    );
}

#[test]
fn qc_run_warns_when_the_input_does_not_fit_the_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |kind: &str, input: &Path| {
        let model = d.join(format!("{kind}.qmodel"));
        if !model.exists() {
            let r = recipe(d, kind);
            ok(&qc(&["compile", r.to_str().unwrap(), "-o", model.to_str().unwrap()]));
        }
        let out = qc(&["run", model.to_str().unwrap(), "--input", input.to_str().unwrap()]);
        ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let raw = d.join("raw.npy");
    raw_images(64, &raw, |x| x);
    let normalized = d.join("normalized.npy");
    raw_images(64, &normalized, |x| ((x as f64 - 0.2860) / 0.3530) as f32);
    let bytes = d.join("bytes.npy");
    raw_images(64, &bytes, |x| (x * 255.0).round());

    // The model normalizes; raw samples are right, normalized ones are normalized twice.
    assert_eq!(run("quantize_only", &raw), "");
    let e = run("quantize_only", &normalized);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].starts_with("warning: input `x` looks normalized already (mean ")
            && lines[0].contains("the model normalizes it itself with `normalize(mean: 0.286, std: 0.353)`"),
        "{e}"
    );
    assert!(lines[1].starts_with("help: pass raw samples"), "{e}");
    let e = run("quantize_only", &bytes);
    assert!(e.starts_with("warning: input `x` holds whole numbers up to 255"), "{e}");
    assert!(
        e.contains("is for values in [0, 1]") && e.contains("\nhelp: divide the pixels by 255"),
        "{e}"
    );

    // The model takes its input as given: [0, 1] and normalized data are its business, raw
    // 0..255 pixels are not.
    assert_eq!(run("plain", &raw), "");
    assert_eq!(run("plain", &normalized), "");
    let e = run("plain", &bytes);
    assert!(
        e.starts_with(
            "warning: input `x` holds whole numbers up to 255 (raw 8-bit pixels?), but the model takes it as given"
        ),
        "{e}"
    );
    assert!(e.contains("\nhelp: "), "{e}");
    // IDX bytes are scaled to [0, 1] by `qc run` itself: no warning.
    let model = d.join("quantize_only.qmodel");
    let out = qc(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &format!("{FASHION}/t10k-images-idx3-ubyte.gz"),
    ]);
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
