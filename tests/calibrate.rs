//! Calibration refuses what would give meaningless scales, with errors a user can act on: a
//! NaN in the data names the observer, the batch, the statistic and the element; a recipe
//! without calibration data stops before `calibrated` and says what to add; random data is
//! allowed but marks the model as not calibrated for accuracy.

use std::path::{Path, PathBuf};

use qc_compiler::ir::Stage;
use qc_compiler::{CompileError, RunOptions};

/// fashion_cnn with its `calibrate` line replaced by `calibrate` (or removed when `None`).
fn fashion_cnn_with(dir: &Path, calibrate: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("calibrate ") {
            if let Some(c) = calibrate {
                out.push_str(&format!("  {c}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join("fashion_cnn.qrecipe");
    std::fs::write(&path, out).unwrap();
    path
}

fn compile(path: &Path) -> (Result<qc_compiler::Module, CompileError>, Vec<Stage>, qc_dsl::Loaded) {
    compile_on(path, None)
}

/// Compiles, calibrating through libtorch on `device`, or on the reference interpreter (`None`).
fn compile_on(
    path: &Path,
    device: Option<qc_runtime::program::Device>,
) -> (Result<qc_compiler::Module, CompileError>, Vec<Stage>, qc_dsl::Loaded) {
    let loaded = qc_dsl::load(path).unwrap();
    let mut stages = vec![];
    let r = qc_compiler::compile(
        &loaded,
        &RunOptions {
            calibration_device: device,
            ..Default::default()
        },
        &mut |m| stages.push(m.stage),
        &mut |_, _| {},
    );
    (r, stages, loaded)
}

#[test]
fn a_nan_in_the_data_names_observer_batch_statistic_and_element() {
    for device in [None, Some(qc_runtime::program::Device::Cpu)] {
        nan_in_the_data(device);
    }
}

fn nan_in_the_data(device: Option<qc_runtime::program::Device>) {
    let dir = tempfile::tempdir().unwrap();
    let mut x: Vec<f32> = (0..4 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
    x[784 + 3 * 28 + 3] = f32::NAN; // sample 1, pixel (3, 3)
    std::fs::write(
        dir.path().join("nan.npy"),
        qc_runtime_host::data::npy_f32_bytes(&[4, 1, 28, 28], &x),
    )
    .unwrap();
    let recipe = fashion_cnn_with(dir.path(), Some("calibrate \"nan.npy\" batches: 2 batch_size: 2"));
    let (r, stages, loaded) = compile_on(&recipe, device);
    let Err(CompileError::User(d)) = r else {
        panic!("NaN data must stop calibration")
    };
    assert_eq!(
        stages.last(),
        Some(&Stage::Observed),
        "nothing after `observed` is produced"
    );
    assert_eq!(d.len(), 1);
    let m = &d[0].message;
    assert!(m.contains("batch 1 of 2"), "{m}");
    assert!(m.contains("`quant.activation_post_process`"), "{m}");
    assert!(m.contains("histogram"), "{m}");
    assert!(m.contains("NaN at element 871"), "{m}");
    assert!(!d[0].help.is_empty());
    // The caret is under the data source on the `calibrate` line.
    assert_eq!(loaded.sources.text(d[0].span), "\"nan.npy\"");
}

#[test]
fn no_calibration_data_stops_before_calibrated_and_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stages, _) = compile(&fashion_cnn_with(dir.path(), None));
    let Err(CompileError::User(d)) = r else {
        panic!("a quantize section without data cannot calibrate")
    };
    assert_eq!(stages.last(), Some(&Stage::Observed));
    assert!(d[0].message.contains("no `calibrate` entry"), "{}", d[0].message);
    assert!(
        d[0].help.contains("calibrate fashion_mnist(split: train)"),
        "{}",
        d[0].help
    );
    assert!(d[0].help.contains("calibrate random("), "{}", d[0].help);
}

#[test]
fn random_data_marks_the_model_not_calibrated_for_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, loaded) = compile(&fashion_cnn_with(dir.path(), Some("calibrate random(batches: 1)")));
    let m = r.unwrap();
    assert!(!m.calibrated_for_accuracy);
    let dump = qc_compiler::printer::print(&m, &loaded.sources);
    let header = dump.lines().next().unwrap();
    assert!(
        header.starts_with(
            "module fashion_cnn stage lowered  # not calibrated for accuracy: random data (fashion_cnn.qrecipe:"
        ),
        "{header}"
    );
    let real = compile(&fashion_cnn_with(
        dir.path(),
        Some("calibrate fashion_mnist(split: train) batches: 1"),
    ))
    .0
    .unwrap();
    assert!(real.calibrated_for_accuracy);
}

#[test]
fn calibration_through_libtorch_finds_the_reference_scales() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = fashion_cnn_with(dir.path(), Some("calibrate fashion_mnist(split: train) batches: 4"));
    let scales = |device| {
        let (r, _, _) = compile_on(&recipe, device);
        let m = r.expect("compiles");
        let mut out = vec![];
        for id in m.graph.topo_order() {
            if let Some(q) = m.graph.node(id).ty.as_ref().and_then(|t| t.quant) {
                out.push((m.graph.node(id).name.clone(), q.scale, q.zero_point));
            }
        }
        out
    };
    let (reference, torch) = (scales(None), scales(Some(qc_runtime::program::Device::Cpu)));
    assert!(reference.len() >= 5, "{reference:?}");
    assert_eq!(reference.len(), torch.len());
    for ((n, s, z), (n2, s2, z2)) in reference.iter().zip(&torch) {
        assert_eq!((n, z), (n2, z2));
        // f32 sums in libtorch, f64 in the interpreter: the ranges agree to float precision.
        assert!((s - s2).abs() <= 1e-5 * s.abs(), "{n}: scale {s} vs {s2}");
    }
}
