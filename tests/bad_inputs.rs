//! Recipes built to hurt the diagnostics: a problem 70,000 columns into a line (miette cannot
//! draw it) and thousands of problems (each would print its source line: output quadratic in the
//! input). Each ends with exit 1, a location and a help line, no panic, and output bounded by the
//! number of problems shown, not by the size of the input.

use std::process::{Command, Output};

fn check(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.qrecipe");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_qc"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn a_problem_far_into_a_wide_line_is_located_not_drawn() {
    let text = format!(
        "model m {{\n  input x: f32[N, 4]\n{}y = nosuchop(x)\n  output y\n}}\n",
        " ".repeat(70_000)
    );
    let out = check(&text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.qrecipe:3:70005"), "{err}");
    assert!(
        err.contains("unknown op or block `nosuchop`") && err.contains("help: "),
        "{err}"
    );
    assert!(err.contains("70015 characters wide; not shown"), "{err}");
    assert!(err.len() < 4_000, "the wide line is not printed ({} bytes)", err.len());
}

#[test]
fn thousands_of_problems_print_the_first_fifty_and_a_count() {
    let text: String = (0..5_000)
        .map(|i| format!("model m{i} {{ y = nosuchop(x) }}\n"))
        .collect();
    let out = check(&text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let shown = err.matches("  × ").count();
    assert_eq!(shown, qc_dsl::diag::MAX_SHOWN, "{shown} shown");
    assert!(
        err.contains("more problems (the first 50 are shown; fix them and check again)"),
        "{err}"
    );
    assert!(err.trim_end().ends_with("problems found"), "the total is still counted");
    assert!(err.len() < 100_000, "{} bytes", err.len());
}

/// `/dev/zero` (a file that never ends) given as a recipe, a model or a checkpoint: refused after
/// a bounded read, exit 1, with what qc reads at most.
#[test]
fn endless_files_are_refused_after_a_bounded_read() {
    let qc = || Command::new(env!("CARGO_BIN_EXE_qc"));
    let out = qc().args(["check", "/dev/zero"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("more than 16 MiB") && err.contains("help: "), "{err}");

    let out = qc()
        .args(["run", "/dev/zero", "--input", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("more than the 256 MiB qc reads from a pipe or device"),
        "{err}"
    );

    let text = "model m {\n  input x: f32[N, 4]\n  y = linear(x, out: 2)\n  output y\n}\nweights \"/dev/zero\"\n";
    let out = check(text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("256 MiB"), "{err}");
}

/// A recipe that is not UTF-8 names the first bad byte.
#[test]
fn a_recipe_that_is_not_text_names_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.qrecipe");
    std::fs::write(&path, b"model m {\n\xff\xfe }").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not UTF-8 text (byte 10 is not valid)"), "{err}");
}
