//! Nothing a user asks qc to write destroys a file: an output that is one of the command's inputs
//! (by any path or link) is refused before any work, so is anything but a regular file (a link,
//! a device), and an output in a folder that does not exist; every refusal exits 1 with a help
//! line and leaves every file as it was. `qc run` range-checks its numeric options and refuses
//! inputs with NaN or infinite values unless told to run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

/// `qc compile RECIPE -o OUT`.
fn compile_to(recipe: &Path, out: &Path) -> Output {
    qc().arg("compile").arg(recipe).arg("-o").arg(out).output().unwrap()
}

/// `qc run MODEL --input INPUT EXTRA...`.
fn run_with(model: &Path, input: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    qc().arg("run")
        .arg(model)
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A refusal: exit 1, an `error:` naming `what`, a `help:` line.
fn assert_refused(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: ") && err.contains(what), "{err}");
    assert!(err.contains("help: "), "{err}");
}

/// fashion_cnn binding `weights.safetensors` (exported from its deterministic initialiser) and
/// calibrating on one random batch: quick to compile.
fn recipe_with_weights(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string("examples/fashion_cnn.qrecipe").unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("calibrate ") {
                "  calibrate random(batches: 1)\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let bare = dir.join("bare.qrecipe");
    std::fs::write(&bare, &text).unwrap();
    let weights = dir.join("weights.safetensors");
    let out = qc()
        .args(["export-weights"])
        .arg(&bare)
        .args(["--stage", "float", "-o"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recipe = dir.join("model.qrecipe");
    std::fs::write(&recipe, format!("{text}weights \"weights.safetensors\"\n")).unwrap();
    (recipe, weights)
}

#[test]
fn compile_and_export_refuse_to_write_over_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, weights) = recipe_with_weights(dir.path());
    let recipe_before = std::fs::read(&recipe).unwrap();
    let weights_before = std::fs::read(&weights).unwrap();

    let out = compile_to(&recipe, &recipe);
    assert_refused(&out, "the same file as the input");
    // Through another spelling of the same path.
    let other = dir.path().join(".").join("model.qrecipe");
    let out = compile_to(&recipe, &other);
    assert_refused(&out, "the same file as the input");
    let out = compile_to(&recipe, &weights);
    assert_refused(&out, "weights.safetensors");
    let out = qc()
        .arg("export-weights")
        .arg(&recipe)
        .args(["--stage", "float", "-o"])
        .arg(&weights)
        .output()
        .unwrap();
    assert_refused(&out, "the same file as the input");

    assert_eq!(std::fs::read(&recipe).unwrap(), recipe_before);
    assert_eq!(std::fs::read(&weights).unwrap(), weights_before);
}

#[test]
fn links_devices_and_missing_folders_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, weights) = recipe_with_weights(dir.path());
    let link = dir.path().join("link.qmodel");
    std::os::unix::fs::symlink(&weights, &link).unwrap();
    let out = compile_to(&recipe, &link);
    assert_refused(&out, "the same file as the input");
    let elsewhere = dir.path().join("elsewhere.bin");
    std::fs::write(&elsewhere, b"keep").unwrap();
    let link2 = dir.path().join("link2.qmodel");
    std::os::unix::fs::symlink(&elsewhere, &link2).unwrap();
    let out = compile_to(&recipe, &link2);
    assert_refused(&out, "a symbolic link");
    assert!(std::fs::symlink_metadata(&link2).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");

    let out = compile_to(&recipe, Path::new("/dev/null"));
    assert_refused(&out, "a device");

    let missing = dir.path().join("no").join("such").join("m.qmodel");
    let out = compile_to(&recipe, &missing);
    assert_refused(&out, "does not exist");
    let out = qc()
        .arg("train")
        .arg(&recipe)
        .arg("-o")
        .arg(dir.path().join("missing").join("w.safetensors"))
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert_refused(&out, "does not exist");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("epoch"),
        "refused before training"
    );
}

#[test]
fn qc_run_guards_its_output_options_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, _) = recipe_with_weights(dir.path());
    let model = dir.path().join("m.qmodel");
    let out = compile_to(&recipe, &model);
    assert!(out.status.success(), "{}", stderr(&out));
    let model_before = std::fs::read(&model).unwrap();

    let n = 2usize;
    let mut x = vec![0.5f32; n * 28 * 28];
    let input = dir.path().join("x.npy");
    std::fs::write(&input, qc_runtime_host::data::npy_f32_bytes(&[n, 1, 28, 28], &x)).unwrap();

    let out = run_with(&model, &input, &["--output".as_ref(), model.as_os_str()]);
    assert_refused(&out, "the same file as the input");
    let out = run_with(&model, &input, &["--output".as_ref(), input.as_os_str()]);
    assert_refused(&out, "x.npy");
    assert_eq!(std::fs::read(&model).unwrap(), model_before);

    // Out-of-range options are usage errors, refused by the parser.
    for (flag, value) in [("--threads", "100000"), ("--threads", "0"), ("--bench", "0")] {
        let out = run_with(&model, &input, &[flag.as_ref(), value.as_ref()]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }

    // A NaN in the input names the input, the element and the sample.
    x[28 * 28 + 5] = f32::NAN;
    std::fs::write(&input, qc_runtime_host::data::npy_f32_bytes(&[n, 1, 28, 28], &x)).unwrap();
    let out = run_with(&model, &input, &[]);
    assert_refused(&out, "holds NaN at element 789 (sample 1)");
    assert!(stderr(&out).contains("--allow-non-finite"), "{}", stderr(&out));
    let out = run_with(&model, &input, &["--allow-non-finite".as_ref()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `qc check BAD 2>&1 | head -1`: a reader of stderr that goes away ends qc quietly (141, as
/// SIGPIPE would), never with a panic report (exit 70 or 101).
#[test]
fn a_closed_stderr_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.qrecipe");
    let many: String = (0..2000)
        .map(|i| format!("model m{i} {{ y = nosuchop(x) }}\n"))
        .collect();
    std::fs::write(&bad, many).unwrap();
    let mut child = qc()
        .arg("check")
        .arg(&bad)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(141) | Some(1)), "{status:?}");
}

/// `qc compile -o` killed with SIGKILL at 20 points spread over its run leaves the old model or a
/// complete new one, never a part; the next run removes the killed runs' temporary files.
#[test]
fn a_killed_compile_leaves_the_old_model_or_a_whole_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, _) = recipe_with_weights(dir.path());
    let model = dir.path().join("m.qmodel");
    let compile = || {
        let mut c = qc();
        c.arg("compile").arg(&recipe).arg("-o").arg(&model);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let started = std::time::Instant::now();
    assert!(compile().status().unwrap().success());
    let whole = started.elapsed();
    let mut rng = qc_runtime::SplitMix64::new(7);
    for round in 0..20u32 {
        // Spread the kills over the run, the last few right around the write at its end.
        let at = whole.mul_f64((round as f64 + (rng.next_u64() % 1000) as f64 / 1000.0) / 20.0 * 1.1);
        let mut child = compile().spawn().unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        let loaded = qc_runtime::model::Model::load(&model);
        assert!(
            loaded.is_ok(),
            "round {round} (killed after {at:?}): {:?}",
            loaded.err()
        );
    }
    assert!(compile().status().unwrap().success());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
