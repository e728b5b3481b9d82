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
    let loaded = qc_dsl::load(path).unwrap();
    let mut stages = vec![];
    let r = qc_compiler::compile(
        &loaded,
        &RunOptions::default(),
        &mut |m| stages.push(m.stage),
        &mut |_, _| {},
    );
    (r, stages, loaded)
}

#[test]
fn a_nan_in_the_data_names_observer_batch_statistic_and_element() {
    let dir = tempfile::tempdir().unwrap();
    let mut x: Vec<f32> = (0..4 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
    x[784 + 3 * 28 + 3] = f32::NAN; // sample 1, pixel (3, 3)
    std::fs::write(
        dir.path().join("nan.npy"),
        qc_runtime::data::npy_f32_bytes(&[4, 1, 28, 28], &x),
    )
    .unwrap();
    let recipe = fashion_cnn_with(dir.path(), Some("calibrate \"nan.npy\" batches: 2 batch_size: 2"));
    let (r, stages, loaded) = compile(&recipe);
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
