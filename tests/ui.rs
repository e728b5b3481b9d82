//! UI tests: every `tests/ui/*.qrecipe` is a broken recipe, checked with the real `qc` binary.
//!
//! For each case, `qc check tests/ui/NAME.qrecipe` runs from the repository root and must
//!   - exit with 1 (a user error),
//!   - print, for every error, a `╭─[FILE:LINE:COL]` location (FILE is the case, or a file it
//!     includes) and a `help:` line,
//!   - end with `error: N problem(s) found` where N is the number of errors printed,
//!   - report every location listed in the file's `// @error LINE:COL ...` header line(s) (a
//!     location in another file is written `data/other.qrecipe:LINE:COL`, relative to tests/ui),
//!   - match its insta snapshot `tests/snapshots/ui__NAME.snap` (stderr, exactly).
//!
//! To add a case: write `tests/ui/NAME.qrecipe` (a header comment saying what is wrong and an
//! `// @error LINE:COL` line per expected error), run `INSTA_UPDATE=always cargo test --test ui`
//! (or `cargo insta review`), and read the new snapshot: is the message, the caret and the help
//! right for a user?
//!
//! Checkpoints used by the cases live in `tests/ui/data/` (small real safetensors files).

#[path = "support/redact.rs"]
mod redact;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every case, sorted, as paths relative to the repository root.
fn cases() -> Vec<String> {
    let dir = root().join("tests/ui");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qrecipe"))
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("tests/ui/{n}")).collect()
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn qc_check(path: &str) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["check", path])
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .env("NO_COLOR", "1")
        .output()
        .expect("run qc");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Replaces the absolute repository root (some messages carry resolved paths) with `[ROOT]`.
fn normalize(stderr: &str) -> String {
    redact::redact(stderr, &redact::path_and_canonical(&root(), "[ROOT]"))
}

/// The `FILE:LINE:COL` of a `╭─[FILE:LINE:COL]` snippet header, with FILE relative to the
/// repository root (an absolute path under the root is made relative).
fn location(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("╭─[")?;
    let (loc, _) = rest.split_once(']')?;
    let mut parts = loc.rsplitn(3, ':');
    let number = |p: Option<&str>| {
        p.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
    };
    let (col, line, file) = (number(parts.next())?, number(parts.next())?, parts.next()?);
    let root = root().display().to_string();
    let file = file
        .strip_prefix(root.as_str())
        .map(|f| f.trim_start_matches('/'))
        .unwrap_or(file);
    Some(format!("{file}:{line}:{col}"))
}

/// The `// @error LINE:COL ...` locations a case expects (in its header comment).
fn expected_locations(source: &str) -> Vec<String> {
    source
        .lines()
        .take_while(|l| l.starts_with("//"))
        .filter_map(|l| l.strip_prefix("// @error"))
        .flat_map(|rest| rest.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Runs one case; returns what is wrong with its output (empty when it is right). The snapshot
/// comparison panics on a mismatch (insta's way); the caller catches that.
fn check(path: &str, out: &Output) -> Vec<String> {
    let mut problems = vec![];
    let source = std::fs::read_to_string(root().join(path)).expect("read the case");
    let header_ok = source.starts_with("//");
    if !header_ok {
        problems.push("the file does not start with a header comment saying what is wrong".to_string());
    }
    let expected = expected_locations(&source);
    if expected.is_empty() {
        problems.push("no `// @error LINE:COL` line in the header".to_string());
    }

    if out.code != Some(1) {
        problems.push(format!(
            "exit code {:?}, expected 1 (stdout: {:?})",
            out.code, out.stdout
        ));
    }
    if out.stderr.contains("panicked at") {
        problems.push("qc panicked".to_string());
    }

    // One chunk per diagnostic: from its `qc::code` line to the next.
    let lines: Vec<&str> = out.stderr.lines().collect();
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("qc::")).collect();
    if starts.is_empty() {
        problems.push("no diagnostic (`qc::code` line) in stderr".to_string());
    }
    let mut locations = vec![];
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let chunk = &lines[s..end];
        let code = lines[s];
        let errors = chunk.iter().filter(|l| l.starts_with("  × ")).count();
        if errors != 1 {
            problems.push(format!(
                "diagnostic {code} (#{}) has {errors} `×` message lines, expected 1",
                k + 1
            ));
        }
        let locs: Vec<String> = chunk.iter().filter_map(|l| location(l)).collect();
        if locs.is_empty() {
            problems.push(format!(
                "diagnostic {code} (#{}) has no `╭─[FILE:LINE:COL]` location",
                k + 1
            ));
        }
        locations.extend(locs);
        let helps = chunk.iter().filter(|l| l.trim_start().starts_with("help:")).count();
        if helps != 1 {
            problems.push(format!(
                "diagnostic {code} (#{}) has {helps} `help:` lines, expected 1",
                k + 1
            ));
        } else if chunk.iter().any(|l| l.trim() == "help:") {
            problems.push(format!("diagnostic {code} (#{}) has an empty `help:`", k + 1));
        }
    }
    let n = starts.len();
    let summary = format!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
    if lines.last().copied() != Some(summary.as_str()) {
        problems.push(format!("the last line is {:?}, expected {summary:?}", lines.last()));
    }
    // Every expected location is printed (as often as it is listed).
    let mut remaining = locations.clone();
    for want in &expected {
        let want = if want.contains(".qrecipe:") {
            format!("tests/ui/{want}")
        } else {
            format!("{path}:{want}")
        };
        match remaining.iter().position(|l| *l == want) {
            Some(i) => {
                remaining.remove(i);
            }
            None => problems.push(format!(
                "no error reported at {want} (printed locations: {locations:?})"
            )),
        }
    }
    if n < expected.len() {
        problems.push(format!(
            "{n} errors reported, the header expects at least {}",
            expected.len()
        ));
    }

    let name = Path::new(path)
        .file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let stderr = normalize(&out.stderr);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(true);
    settings.set_omit_expression(true);
    settings.set_description(format!("qc check {path}"));
    settings.bind(|| insta::assert_snapshot!(name.as_str(), stderr));
    problems
}

#[test]
fn ui_cases() {
    let cases = cases();
    assert!(
        cases.len() >= 20,
        "expected at least 20 cases in tests/ui, found {}",
        cases.len()
    );
    // `qc` starts slowly (it loads libtorch), so the cases run in parallel; the checks and
    // snapshots then go in order.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut outputs: Vec<Option<Output>> = cases.iter().map(|_| None).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = cases.get(i) else { break done };
                        done.push((i, qc_check(path)));
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, out) in h.join().expect("a worker") {
                outputs[i] = Some(out);
            }
        }
    });
    let mut failures = vec![];
    for (path, out) in cases.iter().zip(&outputs) {
        let out = out.as_ref().expect("every case ran");
        let result = std::panic::catch_unwind(|| check(path, out));
        match result {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => failures.push(format!("{path}:\n    {}", problems.join("\n    "))),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = msg.lines().next().unwrap_or("").to_string();
                failures.push(format!(
                    "{path}:\n    {first}\n    (a new or changed snapshot: read tests/snapshots/ui__*.snap.new, then \
                     accept with `INSTA_UPDATE=always cargo test --test ui` or `cargo insta review`)"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ui cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A sound recipe: exit 0, one line on stdout, nothing on stderr.
#[test]
fn fashion_cnn_checks_clean() {
    let out = qc_check("examples/fashion_cnn.qrecipe");
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(out.stderr, "", "a sound recipe prints nothing on stderr");
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "expected exactly one line, got:\n{}",
        out.stdout
    );
    assert!(out.stdout.ends_with('\n'));
    assert!(
        out.stdout
            .starts_with("ok: examples/fashion_cnn.qrecipe — model `fashion_cnn`"),
        "unexpected summary: {}",
        out.stdout
    );
}
