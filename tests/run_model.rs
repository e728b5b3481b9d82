//! The compiled model end to end: `qc compile -o` writes a `.qmodel`, `qc run` runs it on a
//! `.npy` input and writes the same outputs as the in-process model; the int8 model of
//! fashion_cnn (PyTorch's FP32 fixture weights, calibrated on Fashion-MNIST) stays close to the
//! float model on real test images; a loaded model runs from several threads at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use qc_runtime::model::Model;
use qc_runtime::{Tensor, TensorData};

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

/// fashion_cnn with PyTorch's FP32 fixture weights and a short real calibration.
fn recipe(dir: &Path) -> PathBuf {
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

fn f32s(t: &Tensor) -> &[f32] {
    let TensorData::F32(v) = &t.data else { panic!("f32") };
    v
}

/// The first `n` Fashion-MNIST test images, `[n, 1, 28, 28]` in [0, 1].
fn test_images(n: usize) -> Tensor {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    let images = qc_runtime_host::data::read_idx_images(dir, false).expect("make setup installs Fashion-MNIST");
    let t = images.batch_f32(0, n);
    Tensor::f32(vec![n, 1, 28, 28], f32s(&t).to_vec())
}

#[test]
fn compile_writes_a_model_that_qc_run_runs() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("fashion_cnn.qmodel");
    let out = qc()
        .args(["compile"])
        .arg(recipe(dir.path()))
        .arg("-o")
        .arg(&model_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stage lowered"), "{stdout}");

    let images = test_images(16);
    let input = dir.path().join("x.npy");
    std::fs::write(
        &input,
        qc_runtime_host::data::npy_f32_bytes(&images.shape, f32s(&images)),
    )
    .unwrap();
    let output = dir.path().join("y.npy");
    let out = qc()
        .arg("run")
        .arg(&model_path)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--threads", "2", "--bench", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bench: 3 rounds, median"), "{stdout}");
    assert!(!stdout.contains("not calibrated for accuracy"), "{stdout}");

    assert!(
        stdout.contains("input `x` is normalized by the model: normalize(mean: 0.286, std: 0.353)"),
        "{stdout}"
    );
    // Raw images in [0, 1] are what the model takes: no warning about their range.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    let written = qc_runtime_host::data::read_npy(&output).unwrap().batch_f32(0, 16);
    let model = Model::load(&model_path).unwrap();
    // The input line's `normalize` travels in the artifact; `run` applies it to raw samples,
    // in f64 rounded once, as calibration and training do.
    let n = &model.meta().input_normalize["x"];
    assert_eq!((n.mean.as_slice(), n.std.as_slice()), (&[0.286][..], &[0.353][..]));
    let by_hand = Tensor::f32(
        images.shape.clone(),
        f32s(&images)
            .iter()
            .map(|&x| ((x as f64 - 0.2860) / 0.3530) as f32)
            .collect(),
    );
    assert_eq!(
        model.executor().run(&[by_hand]).unwrap(),
        model.run(std::slice::from_ref(&images)).unwrap()
    );
    let direct = model.run(std::slice::from_ref(&images)).unwrap();
    assert_eq!(written.shape, vec![16, 10]);
    assert_eq!(
        f32s(&written),
        f32s(&direct[0]),
        "qc run writes what the model computes"
    );

    // Every kernel path this CPU runs, forced with QC_ISA, writes the same bits, and the profile
    // names the path of each int8 step.
    use qc_runtime::kernels::fast::Isa;
    for isa in Isa::ALL.into_iter().filter(|i| i.check().is_ok()) {
        let forced = dir.path().join(format!("y.{}.npy", isa.name()));
        let out = qc()
            .arg("run")
            .arg(&model_path)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&forced)
            .arg("--profile")
            .env("QC_ISA", isa.name())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            std::fs::read(&forced).unwrap(),
            std::fs::read(&output).unwrap(),
            "{isa:?}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conv = stdout
            .lines()
            .find(|l| l.contains("conv2 = qconv"))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(conv.contains(&format!("[{}", isa.name())), "{isa:?}: {conv}");
    }
}

/// `qc run RECIPE --stage S`: the lowered stage writes exactly what the compiled model writes, and
/// the float stage (the reference interpreter on the float module) runs the same input close to it.
#[test]
fn a_recipe_runs_at_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let model_path = dir.path().join("m.qmodel");
    let out = qc()
        .arg("compile")
        .arg(&recipe)
        .arg("-o")
        .arg(&model_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images = test_images(64);
    let input = dir.path().join("x.npy");
    std::fs::write(
        &input,
        qc_runtime_host::data::npy_f32_bytes(&images.shape, f32s(&images)),
    )
    .unwrap();
    let run = |what: &Path, stage: Option<&str>, name: &str| {
        let output = dir.path().join(name);
        let mut cmd = qc();
        cmd.arg("run")
            .arg(what)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output);
        if let Some(s) = stage {
            cmd.args(["--stage", s]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        qc_runtime_host::data::read_npy(&output).unwrap().batch_f32(0, 64)
    };
    let compiled = run(&model_path, None, "compiled.npy");
    let lowered = run(&recipe, Some("lowered"), "lowered.npy");
    assert_eq!(f32s(&lowered), f32s(&compiled));
    let float = run(&recipe, Some("float"), "float.npy");
    let (f, c) = (f32s(&float), f32s(&compiled));
    let top1 = |v: &[f32], i: usize| {
        let row = &v[i * 10..(i + 1) * 10];
        (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
    };
    let agree = (0..64).filter(|&i| top1(f, i) == top1(c, i)).count();
    assert!(agree >= 60, "float and int8 top-1 agree on {agree} of 64");
    assert_ne!(f, c, "the float stage runs float steps");
}

#[test]
fn backends_lists_every_kernel_path() {
    let out = qc().arg("backends").env_remove("QC_ISA").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    use qc_runtime::kernels::fast::{detected, Isa};
    for isa in Isa::ALL {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(isa.name()))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert_eq!(line.contains("not available"), isa.check().is_err(), "{line}");
    }
    let runs = format!("runs: {} (the best this CPU has)", detected().name());
    assert!(stdout.contains(&runs), "{stdout}");
}

#[test]
fn int8_model_stays_close_to_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = qc_dsl::load(&recipe(dir.path())).unwrap();
    let mut float_program = None;
    let lowered = qc_compiler::compile(
        &loaded,
        &qc_compiler::RunOptions::default(),
        &mut |m| {
            if m.stage == qc_compiler::Stage::Float {
                float_program = Some(qc_compiler::lower::lower(m).unwrap());
            }
        },
        &mut |_, _| {},
    )
    .unwrap();
    let meta = qc_runtime::artifact::Meta::new("fashion_cnn", "lowered", true, "test");
    let int8 = Model::from_program(lowered.program.clone().unwrap(), meta.clone()).unwrap();
    let float = Model::from_program(float_program.unwrap(), meta).unwrap();
    let images = test_images(256);
    let a = int8.run(std::slice::from_ref(&images)).unwrap();
    let b = float.run(std::slice::from_ref(&images)).unwrap();
    let (a, b) = (f32s(&a[0]), f32s(&b[0]));
    let out_scale = int8.program().values[int8.program().steps.last().unwrap().inputs[0]]
        .quant
        .unwrap()
        .scale();
    let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs() / out_scale).collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    let top1 = |v: &[f32], i: usize| {
        let row = &v[i * 10..(i + 1) * 10];
        (0..10).fold(0, |best, j| if row[j] > row[best] { j } else { best })
    };
    let agree = (0..256).filter(|&i| top1(a, i) == top1(b, i)).count();
    println!("int8 vs float logits: mean {mean:.3} steps, max {max:.3} steps; top-1 agrees on {agree}/256");
    assert!(mean <= 2.0, "mean difference {mean} output steps");
    assert!(agree >= 240, "top-1 agrees on only {agree}/256 images");
}

/// `Model` is `Send + Sync`: one loaded model serves several threads, each getting the
/// single-threaded answer.
#[test]
fn a_loaded_model_runs_from_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    let dir = tempfile::tempdir().unwrap();
    let loaded = qc_dsl::load(&recipe(dir.path())).unwrap();
    let m = qc_compiler::compile(
        &loaded,
        &qc_compiler::RunOptions::default(),
        &mut |_| {},
        &mut |_, _| {},
    )
    .unwrap();
    let model = Model::from_program(
        m.program.unwrap(),
        qc_runtime::artifact::Meta::new("fashion_cnn", "lowered", true, "test"),
    )
    .unwrap();
    let images = test_images(8);
    let want = model.run(std::slice::from_ref(&images)).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| model.run(std::slice::from_ref(&images)).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}
