//! The example folders of `examples/` run as their READMEs say: every command of a README's
//! ```` ```console ```` blocks (a line `$ COMMAND`) runs from the repository root with this build's
//! `qc` first on `PATH`, and prints what the README shows under it (stdout and stderr as one
//! stream; a line `...` stands for any number of lines). Outputs go to the git-ignored `out/`;
//! commands of one README run in order (a later one may read what an earlier one wrote).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One `$ COMMAND` of a README and the lines it shows under it.
struct Shown {
    line: usize,
    command: String,
    output: Vec<String>,
}

fn console_blocks(readme: &str) -> Vec<Shown> {
    let mut shown: Vec<Shown> = vec![];
    let mut in_console = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_console = line.trim() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            shown.push(Shown {
                line: i + 1,
                command: command.to_string(),
                output: vec![],
            });
        } else if let Some(last) = shown.last_mut() {
            last.output.push(line.trim_end().to_string());
        }
    }
    shown
}

/// Whether `got` matches `want`, where a `...` line of `want` matches any run of lines.
fn matches(want: &[String], got: &[String]) -> bool {
    match want.split_first() {
        None => got.is_empty(),
        Some((w, rest)) if w == "..." => (0..=got.len()).any(|skip| matches(rest, &got[skip..])),
        Some((w, rest)) => got.first().is_some_and(|g| g == w) && matches(rest, &got[1..]),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs every shown command of `examples/<folder>/README.md` and compares its output.
fn check_readme(folder: &str) {
    let readme_path = repo().join("examples").join(folder).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let shown = console_blocks(&readme);
    assert!(!shown.is_empty(), "{}: no ```console commands", readme_path.display());
    let qc_dir = Path::new(env!("CARGO_BIN_EXE_qc")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(qc_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    std::fs::create_dir_all(repo().join("out")).unwrap();
    for s in shown {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{} 2>&1", s.command))
            .current_dir(repo())
            .env("PATH", &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let got: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        let mut want = s.output.clone();
        while want.last().is_some_and(|l| l.is_empty()) {
            want.pop();
        }
        assert!(
            matches(&want, &got),
            "{}:{}: `{}` printed\n{}\nbut the README shows\n{}",
            readme_path.display(),
            s.line,
            s.command,
            got.join("\n"),
            want.join("\n")
        );
    }
}

#[test]
fn the_ellipsis_matches_any_run_of_lines() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(matches(&v(&["a", "...", "d"]), &v(&["a", "b", "c", "d"])));
    assert!(matches(&v(&["a", "...", "d"]), &v(&["a", "d"])));
    assert!(!matches(&v(&["a", "...", "d"]), &v(&["a", "b"])));
    assert!(!matches(&v(&["a", "b"]), &v(&["a", "b", "c"])));
}

#[test]
fn audio_keys_runs_as_its_readme_says() {
    check_readme("audio-keys");
}

#[test]
fn inception_from_float_runs_as_its_readme_says() {
    check_readme("inception-from-float");
}

#[test]
fn per_layer_qat_runs_as_its_readme_says() {
    check_readme("per-layer-qat");
}

#[test]
fn resnet_table_runs_as_its_readme_says() {
    check_readme("resnet-table");
}

/// The README's commands, then what its `...` lines hide: the int8 model within one step of the
/// fake-quantized one and of ONNX Runtime's run of its export, and ONNX Runtime's run of the QAT
/// export within one step of qc's QAT evaluation (equal but where float sums in another order
/// land on the other side of a halfway point: 99.98% and 100% measured).
#[test]
fn tidl_style_runs_as_its_readme_says_within_one_step() {
    check_readme("tidl-style");
    let images = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    let qc = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qc"))
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ort = Command::new(repo().join(".venv-ort/bin/python"))
        .args([
            "tests/onnx/run_ort.py",
            "out/tidl_style_qat.onnx",
            images,
            "out/tidl_ort_qat.npy",
        ])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(ort.success());
    let checks = [
        (
            vec!["run", "out/tidl_style.qmodel"],
            "out/tidl_fake.npy",
            "100.00% within one step",
        ),
        (
            vec!["run", "out/tidl_style.qmodel"],
            "out/tidl_ort.npy",
            "100.00% within one step",
        ),
        (
            vec![
                "run",
                "examples/tidl-style/converted.qrecipe",
                "--stage",
                "observed",
                "--qat",
            ],
            "out/tidl_ort_qat.npy",
            "100.00% within one step",
        ),
    ];
    for (run, reference, want) in checks {
        let mut args = run.clone();
        args.extend(["--input", images, "--compare", reference]);
        let out = qc(&args);
        let line = out.lines().find(|l| l.starts_with("against ")).unwrap_or_default();
        assert!(line.contains(want), "{}: {line}", args.join(" "));
    }
}
