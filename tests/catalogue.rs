//! The bad-input catalogue: every folder in `tests/bad_inputs/` is one thing a user can get wrong,
//! run through the real `qc` binary, with its exact message kept as a snapshot.
//!
//! A case `tests/bad_inputs/NAME/` holds `cmd`, a bash script whose first line is `# ` and one
//! sentence saying what the user did wrong, and any small input files it needs. It runs in a
//! scratch copy of its folder (relative paths name the case's own files), with `qc` on `PATH`,
//! `$ROOT` the repository root (read-only), `fashion.qmodel` (a model compiled from
//! `examples/fashion_cnn.qrecipe`) beside its files, and `$WORK` an empty folder outside the
//! scratch copy for inputs too large to ship, which the script makes first (e.g. a recipe with
//! 300,000 arguments). An optional `exit` file holds the expected exit code when it is not 1. For
//! every case this test checks:
//!   - the exit code, and that qc did not panic;
//!   - stderr carries a `help:` line when the exit code is 1 (a user error);
//!   - no file in the scratch folder changed, appeared or disappeared (no partial output, no
//!     input overwritten);
//!   - it finishes within 60 seconds (no hang);
//!   - exit code, stdout and stderr match `tests/snapshots/catalogue__NAME.snap` exactly (the
//!     scratch folder shown as `[CASE]`, `$WORK` as `[WORK]`, the repository as `[ROOT]`, a
//!     64-bit checksum as `0x[HASH]`).
//!
//! To add a case: make the folder, run `INSTA_UPDATE=always cargo test --test catalogue`, and read
//! the new snapshot: one clear sentence, the right location, a help line that is true.

#[path = "support/redact.rs"]
mod redact;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one case may run before it counts as a hang.
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn catalogue() -> PathBuf {
    root().join("tests/bad_inputs")
}

/// The case names, sorted.
fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(catalogue())
        .expect("list tests/bad_inputs")
        .map(|e| e.expect("directory entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under `dir`, relative to it, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("list a scratch folder").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            let rel = path.strip_prefix(base).expect("under base").display().to_string();
            if kind.is_dir() {
                out.insert(format!("{rel}/"), vec![]);
                walk(base, &path, out);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).expect("read a link");
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).expect("read a scratch file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copies the files of `from` (recursively) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("list a case").flatten() {
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir(&dest).expect("make a folder");
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy a case file");
        }
    }
}

/// A model compiled once from `examples/fashion_cnn.qrecipe`, for the cases that run one.
fn fashion_model() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temp folder");
    let path = dir.path().join("fashion.qmodel");
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .arg("compile")
        .arg(root().join("examples/fashion_cnn.qrecipe"))
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run qc compile");
    assert!(
        out.status.success(),
        "compiling the catalogue's model failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("read the compiled model")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    problems: Vec<String>,
}

/// Runs case `name` in a scratch copy of its folder; returns its output and what is wrong with
/// it other than the snapshot.
fn run_case(name: &str, model: &[u8]) -> Run {
    let case = catalogue().join(name);
    let mut problems = vec![];
    let script = std::fs::read_to_string(case.join("cmd")).unwrap_or_default();
    let says_what = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .is_some_and(|l| l.trim().ends_with('.'));
    if !says_what {
        problems.push("`cmd` must start with `# ` and one sentence saying what is wrong".to_string());
    }
    let expected_code: i32 = match std::fs::read_to_string(case.join("exit")) {
        Ok(text) => text.trim().parse().expect("`exit` holds a number"),
        Err(_) => 1,
    };

    let scratch = tempfile::Builder::new()
        .prefix("qc-case-")
        .tempdir()
        .expect("a scratch folder");
    copy_tree(&case, scratch.path());
    std::fs::write(scratch.path().join("fashion.qmodel"), model).expect("place the model");
    let before = files(scratch.path());
    let work = tempfile::Builder::new()
        .prefix("qc-work-")
        .tempdir()
        .expect("a work folder");

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_qc"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's folder").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("timeout")
        .args(["--kill-after=5", &TIME_LIMIT.as_secs().to_string(), "bash", "cmd"])
        .current_dir(scratch.path())
        .env("PATH", path)
        .env("ROOT", root())
        .env("WORK", work.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run a case");
    let code = out.status.code();
    if code == Some(124) || code == Some(137) {
        problems.push(format!("did not finish within {} s", TIME_LIMIT.as_secs()));
    }
    if code != Some(expected_code) {
        problems.push(format!("exit code {code:?}, expected {expected_code}"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("panicked") || code == Some(70) {
        problems.push("qc panicked or reported a bug".to_string());
    }
    if code == Some(1) && !stderr.contains("help:") {
        problems.push("stderr has no `help:` line".to_string());
    }
    let after = files(scratch.path());
    for (file, bytes) in &before {
        match after.get(file) {
            None => problems.push(format!("{file} was removed")),
            Some(now) if now != bytes => problems.push(format!("{file} was changed")),
            Some(_) => {}
        }
    }
    for file in after.keys().filter(|f| !before.contains_key(*f)) {
        problems.push(format!("{file} was left behind"));
    }

    let mut paths = redact::path_and_canonical(scratch.path(), "[CASE]");
    paths.extend(redact::path_and_canonical(work.path(), "[WORK]"));
    paths.extend(redact::path_and_canonical(&root(), "[ROOT]"));
    Run {
        code,
        stdout: hide_hashes(&redact::redact(&String::from_utf8_lossy(&out.stdout), &paths)),
        stderr: hide_hashes(&redact::redact(&stderr, &paths)),
        problems,
    }
}

/// `text` with each 64-bit hash written `0x` and 16 hex digits (a `.qmodel` checksum, which
/// depends on where the model was compiled from) shown as `0x[HASH]`.
fn hide_hashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        let digits = rest[at + 2..].bytes().take_while(u8::is_ascii_hexdigit).count();
        out.push_str(&rest[..at]);
        if digits == 16 {
            out.push_str("0x[HASH]");
        } else {
            out.push_str(&rest[at..at + 2 + digits]);
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn catalogue_cases() {
    let cases = cases();
    let model = fashion_model();
    // Each case starts qc (which loads libtorch) at least once, so they run in parallel; the
    // checks and snapshots then go in order.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut runs: Vec<Option<Run>> = cases.iter().map(|_| None).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(name) = cases.get(i) else { break done };
                        done.push((i, run_case(name, &model)));
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, run) in h.join().expect("a worker") {
                runs[i] = Some(run);
            }
        }
    });

    let mut failures = vec![];
    for (name, run) in cases.iter().zip(&runs) {
        let run = run.as_ref().expect("every case ran");
        let text = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            run.code.map_or("signal".to_string(), |c| c.to_string()),
            run.stdout,
            run.stderr
        );
        let snapshot = std::panic::catch_unwind(|| {
            let mut settings = insta::Settings::clone_current();
            settings.set_prepend_module_to_snapshot(true);
            settings.set_omit_expression(true);
            settings.set_description(format!("tests/bad_inputs/{name}"));
            settings.bind(|| insta::assert_snapshot!(name.as_str(), text));
        });
        let mut problems = run.problems.clone();
        if snapshot.is_err() {
            problems.push(
                "the output differs from its snapshot: read tests/snapshots/catalogue__NAME.snap.new, then \
                 accept with `INSTA_UPDATE=always cargo test --test catalogue` or `cargo insta review`"
                    .replace("NAME", name),
            );
        }
        if !problems.is_empty() {
            failures.push(format!("{name}:\n    {}", problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} catalogue cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        cases.len() >= 60,
        "the catalogue holds {} cases; it is meant to hold at least 60",
        cases.len()
    );
}
