//! Replays every committed regression input (`fuzz/regressions/<target>/*`) and every seed of
//! the committed corpora (`fuzz/corpus/<target>/*`) through its target: each must return
//! without a panic. A crash the fuzzer found stays fixed.

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading a fuzz folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for target in qc_fuzz_harness::TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            eprintln!("{target}: {}", file.display());
            assert!(qc_fuzz_harness::run(target, &data), "unknown target {target}");
            n += 1;
        }
    }
    n
}

#[test]
fn every_regression_input_returns() {
    let n = replay("regressions");
    assert!(n > 0, "fuzz/regressions/ holds no inputs");
}

#[test]
fn every_seed_returns() {
    let n = replay("corpus");
    assert!(n >= qc_fuzz_harness::TARGETS.len(), "fuzz/corpus/ holds {n} seeds");
}

#[test]
fn every_target_has_a_fuzz_target_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for target in qc_fuzz_harness::TARGETS {
        let source = root.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        assert!(!inputs("corpus", target).is_empty(), "fuzz/corpus/{target}/ is empty");
    }
    assert!(!qc_fuzz_harness::run("no-such-target", b""));
}
