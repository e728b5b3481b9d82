//! `qc eval` on fashion_cnn, trained briefly (one epoch on 3,000 images, QAT likewise) and
//! scored on 1,000 test images: the table's rows, the per-layer report worst first with finite
//! SQNRs, `--report`'s page and plots (SVG and PNG), the trained weights reused by a second run,
//! and `--bits 16` far above 8 bits; and the command's refusals.

use std::path::Path;
use std::process::{Command, Output};

fn qc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .output()
        .expect("qc runs")
}

fn stdout_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qc eval failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The top-1 accuracy of a row of the accuracy table, in percent.
fn top1(stdout: &str, row: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{row} ")))
        .unwrap_or_else(|| panic!("no `{row}` row in:\n{stdout}"));
    line[row.len()..]
        .split_whitespace()
        .next()
        .and_then(|a| a.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in `{line}`"))
}

/// The per-layer rows: (node, tensor, SQNR in dB).
fn layer_rows(stdout: &str) -> Vec<(String, String, f64)> {
    let start = stdout.find("per layer, worst first").expect("the per-layer report");
    stdout[start..]
        .lines()
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sqnr = f[2].parse().unwrap_or_else(|_| panic!("no SQNR in `{l}`"));
            assert_eq!(f[3], "dB", "{l}");
            (f[0].to_string(), f[1].to_string(), sqnr)
        })
        .collect()
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

#[test]
fn eval_prints_the_table_the_layers_worst_first_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights");
    let report = dir.path().join("report");
    let common = [
        "eval",
        "examples/fashion_cnn.qrecipe",
        "--weights-dir",
        weights.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-samples",
        "3000",
        "--limit",
        "1000",
        "--layer-samples",
        "64",
    ];
    let mut args = common.to_vec();
    args.extend(["--report", report.to_str().unwrap()]);
    let out = qc(&args);
    let stdout = stdout_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eval: training fashion_cnn"), "{stderr}");

    // The table: FP32, INT8-PTQ and INT8-QAT (the recipe has a `qat` section), 10 classes so no top-5.
    assert!(stdout.starts_with("fashion_cnn: accuracy on 1000 samples"), "{stdout}");
    let (fp32, ptq, qat) = (
        top1(&stdout, "FP32"),
        top1(&stdout, "INT8-PTQ"),
        top1(&stdout, "INT8-QAT"),
    );
    assert!(fp32 > 60.0, "{stdout}");
    assert!((ptq - fp32).abs() < 5.0, "{stdout}");
    assert!(qat > fp32 - 5.0, "{stdout}");
    assert!(!stdout.contains("top-5"), "{stdout}");
    let ptq_line = stdout.lines().find(|l| l.starts_with("INT8-PTQ ")).unwrap();
    assert!(
        ptq_line.contains(" ms ") && ptq_line.contains("KiB") && ptq_line.contains("qc CPU runtime"),
        "{ptq_line}"
    );

    // Per layer: every quantized activation and weight, worst first, finite SQNRs.
    let rows = layer_rows(&stdout);
    for node in ["conv1", "conv2", "fc1", "fc2"] {
        assert!(
            rows.iter().any(|r| r.0 == node && r.1 == "activation"),
            "{node} activation in:\n{stdout}"
        );
        assert!(
            rows.iter().any(|r| r.0 == node && r.1 == "weight"),
            "{node} weight in:\n{stdout}"
        );
    }
    assert!(rows.iter().all(|r| r.2.is_finite() && r.2 > 0.0), "{stdout}");
    assert!(rows.windows(2).all(|w| w[0].2 <= w[1].2), "not worst first:\n{stdout}");
    // What decided each setting, as `qc plan` says it.
    assert!(
        stdout.contains("histogram(bins: 2048)") && stdout.contains("fashion_cnn.qrecipe:43"),
        "{stdout}"
    );

    // The report: a self-contained page, and every plot as SVG and PNG.
    let html = std::fs::read_to_string(report.join("report.html")).expect("report.html");
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("conv1"),
        "{html}"
    );
    assert!(!html.contains("<?xml"), "the SVGs are inlined as elements");
    let mut svgs = 0;
    for entry in std::fs::read_dir(&report).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.contains("<svg") && text.trim_end().ends_with("</svg>"),
                    "{}",
                    path.display()
                );
                assert!(text.contains("<text"), "{} has no labels", path.display());
                let png = path.with_extension("png");
                let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("{} is missing", png.display()));
                assert!(
                    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
                    "{}",
                    png.display()
                );
                svgs += 1;
            }
            Some("png") | Some("html") => {}
            _ => panic!("unexpected file {}", path.display()),
        }
    }
    assert!(svgs >= 3, "{svgs} plots");
    assert!(report.join("sqnr.svg").is_file() && report.join("hist-conv1.png").is_file());

    // A second run reuses the trained weights; at 16 bits every layer is far closer to float.
    let mut args = common.to_vec();
    args.extend(["--bits", "16", "--no-qat"]);
    let out16 = qc(&args);
    let stdout16 = stdout_of(&out16);
    assert!(
        stdout16.contains("float weights: the recipe's `train` section, reused from"),
        "{stdout16}"
    );
    assert!(!String::from_utf8_lossy(&out16.stderr).contains("eval: training"));
    let int16 = top1(&stdout16, "INT16 (simulated)");
    assert!((int16 - fp32).abs() <= 1.0, "{stdout16}");
    assert!(
        stdout16.contains("verdict: at 16 bits the model keeps FP32's accuracy"),
        "{stdout16}"
    );
    let rows16 = layer_rows(&stdout16);
    assert!(rows16.len() >= 9, "{stdout16}");
    let mut pairs = vec![];
    for r16 in &rows16 {
        let r8 = rows
            .iter()
            .find(|r| r.0 == r16.0 && r.1 == r16.1)
            .unwrap_or_else(|| panic!("{} {} has no 8-bit row", r16.0, r16.1));
        assert!(
            r16.2 > r8.2,
            "{} {}: {} dB at 16 bits, {} dB at 8",
            r16.0,
            r16.1,
            r16.2,
            r8.2
        );
        pairs.push((r8.2, r16.2));
    }
    let (m8, m16) = (
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
    );
    assert!(
        m16 > m8 + 30.0,
        "median SQNR {m8:.1} dB at 8 bits, {m16:.1} dB at 16 bits"
    );
}

#[test]
fn eval_refuses_bad_data_and_a_report_path_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let out = qc(&[
        "eval",
        "examples/fashion_cnn.qrecipe",
        "--report",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a file, not a folder") && stderr.contains("help:"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    let no_weights = dir.path().join("w");
    let recipe = Path::new("tests/data/why_not.qrecipe");
    let out = qc(&[
        "eval",
        recipe.to_str().unwrap(),
        "--data",
        "nowhere.csv",
        "--weights-dir",
        no_weights.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`--data nowhere.csv`") && stderr.contains("help:"),
        "{stderr}"
    );
}
