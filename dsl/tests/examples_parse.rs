//! Every recipe in `examples/` parses and passes the section checks without a diagnostic, and
//! describes exactly one model. (Key counts per stage are the compiler's tests, not this one's.)

use std::path::{Path, PathBuf};

/// The recipes every checkout must have; others in `examples/` are checked too.
const EXPECTED: &[&str] = &[
    "fashion_cnn.qrecipe",
    "resnet18.qrecipe",
    "mobilenet_v2.qrecipe",
    "mobilenet_v3_small.qrecipe",
    "inception_block.qrecipe",
    "conv1d_net.qrecipe",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

fn recipes() -> Vec<PathBuf> {
    let dir = examples_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "qrecipe"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn expected_examples_exist() {
    let dir = examples_dir();
    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "missing example recipes in {}: {missing:?}",
        dir.display()
    );
}

#[test]
fn every_example_loads_cleanly() {
    let paths = recipes();
    assert!(!paths.is_empty(), "no .qrecipe files in {}", examples_dir().display());
    let mut failures = String::new();
    for path in &paths {
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        let loaded = match qc_dsl::load(path) {
            Ok(loaded) => loaded,
            Err(e) => {
                failures.push_str(&format!("{name}: {e}\n"));
                continue;
            }
        };
        if !loaded.diagnostics.is_empty() {
            failures.push_str(&format!(
                "{name}: {} diagnostic(s)\n{}\n",
                loaded.diagnostics.len(),
                qc_dsl::diag::render_plain(&loaded.diagnostics, &loaded.sources)
            ));
        }
        let models = &loaded.recipe.models;
        if models.len() != 1 {
            let names: Vec<&str> = models.iter().map(|m| m.name.name.as_str()).collect();
            failures.push_str(&format!(
                "{name}: expected exactly one model, found {}: {names:?}\n",
                models.len()
            ));
        }
    }
    assert!(failures.is_empty(), "example recipes with problems:\n{failures}");
}
