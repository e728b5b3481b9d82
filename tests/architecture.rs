//! ARCHITECTURE.md stays true: its per-crate tables name every source file of each crate (under
//! the crate's `src/`), and every file they name exists. A file added, moved or removed without
//! the map changing fails here with the path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files a source tree holds, relative to it (`sections/mod.rs`).
fn files_under(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "pest" | "qrecipe")
        ) {
            let rel = path.strip_prefix(root).expect("under root");
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Per crate heading (`### `runtime/core/` — …`), the file names of its table (the first
/// backticked cell of each row that names a source file).
fn tables(map: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = vec![];
    for line in map.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            let dir = rest.split('`').next().unwrap_or_default().to_string();
            out.push((dir, BTreeSet::new()));
            continue;
        }
        if line.starts_with("## ") {
            out.push((String::new(), BTreeSet::new()));
            continue;
        }
        let Some((_, names)) = out.last_mut() else {
            continue;
        };
        if !line.starts_with('|') {
            continue;
        }
        for cell in line.split('|') {
            let cell = cell.trim();
            if let Some(name) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                if [".rs", ".pest", ".qrecipe"].iter().any(|e| name.ends_with(e)) {
                    names.insert(name.to_string());
                }
            }
        }
    }
    out.retain(|(dir, _)| !dir.is_empty());
    out
}

#[test]
fn the_code_map_names_every_source_file() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(repo.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let tables = tables(&map);
    let dirs: Vec<&str> = tables.iter().map(|(d, _)| d.as_str()).collect();
    for crate_dir in [
        "dsl/",
        "compiler/",
        "runtime/core/",
        "runtime/host/",
        "runtime/python/",
        "onnx/",
        "src/",
    ] {
        assert!(
            dirs.contains(&crate_dir),
            "ARCHITECTURE.md has no table for `{crate_dir}`"
        );
    }
    let mut problems = vec![];
    for (dir, named) in &tables {
        let src = if dir == "src/" {
            repo.join("src")
        } else {
            repo.join(dir).join("src")
        };
        let mut actual = BTreeSet::new();
        files_under(&src, &src, &mut actual);
        for f in actual.difference(named) {
            problems.push(format!("{dir}src/{f} is missing from ARCHITECTURE.md's `{dir}` table"));
        }
        for f in named.difference(&actual) {
            problems.push(format!(
                "ARCHITECTURE.md's `{dir}` table names {f}, which does not exist"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_where_to_find_paths_exist() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(repo.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = map
        .split("## Where to find")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a `Where to find` section");
    let mut missing = vec![];
    for path in section.split('`').skip(1).step_by(2) {
        if path.contains('/') && !path.contains(' ') && !repo.join(path).exists() {
            missing.push(path.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md points at paths that do not exist: {missing:?}"
    );
}
