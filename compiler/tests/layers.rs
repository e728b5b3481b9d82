//! The compiler reads bottom-up: every module imports only modules on lower floors of the table
//! in `compiler/src/lib.rs` (its `//! | N | ...` rows), never one on its own floor or above, and
//! never the crate root. Imports are `crate::X` paths anywhere in a module's code (a `use` line,
//! `crate::X::f(..)` inline, or `use crate::{X, Y}`) and `super::` paths that leave the module;
//! `#[cfg(test)]` items and comments are skipped. Every `pub mod` of lib.rs has one floor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Floor of each top-level module, from the `//!` table in lib.rs.
fn floors(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let mut cells = row.split('|');
        let Some(Ok(floor)) = cells.next().map(|c| c.trim().parse::<usize>()) else {
            continue;
        };
        let names = cells.next().unwrap_or_default();
        for name in names.split('`').skip(1).step_by(2) {
            assert!(
                out.insert(name.to_string(), floor).is_none(),
                "`{name}` has two floors in lib.rs"
            );
        }
    }
    out
}

/// The code of a file without comments and without `#[cfg(test)]` items; also the names of the
/// `#[cfg(test)] mod NAME;` declarations (files that hold tests only).
fn code(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = vec![];
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if t == "#[cfg(test)]" {
            i += 1;
            // Skip further attributes, then the item.
            while i < lines.len() && lines[i].trim_start().starts_with("#[") {
                i += 1;
            }
            let Some(first) = lines.get(i) else { break };
            let ft = first.trim();
            if ft.ends_with(';') {
                if let Some(name) = ft.strip_prefix("mod ").or_else(|| ft.strip_prefix("pub mod ")) {
                    test_mods.push(name.trim_end_matches(';').trim().to_string());
                }
                i += 1;
                continue;
            }
            let mut depth = 0i64;
            let mut opened = false;
            while i < lines.len() {
                depth += braces(lines[i]);
                opened |= lines[i].contains('{');
                i += 1;
                if opened && depth <= 0 {
                    break;
                }
            }
            assert!(depth <= 0, "unbalanced `#[cfg(test)]` item");
            continue;
        }
        if !t.starts_with("//") {
            out.push_str(strip_strings(line).split("//").next().unwrap_or_default());
            out.push('\n');
        }
        i += 1;
    }
    (out, test_mods)
}

/// A line with string and char literals blanked out.
fn strip_strings(line: &str) -> String {
    let c: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
                i += 1;
            }
            '\'' if i + 2 < c.len() && c[i + 1] != '\\' && c[i + 2] == '\'' => {
                out.push_str("' '");
                i += 3;
            }
            '\'' if i + 3 < c.len() && c[i + 1] == '\\' && c[i + 3] == '\'' => {
                out.push_str("' '");
                i += 4;
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

fn braces(line: &str) -> i64 {
    let s = strip_strings(line);
    let s = s.split("//").next().unwrap_or_default();
    s.matches('{').count() as i64 - s.matches('}').count() as i64
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Top-level modules (or "" for the crate root) that `code` of module path `path` names.
fn imports(code: &str, path: &[String]) -> Vec<String> {
    let mut out = vec![];
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `qc_crate::` and the like
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        out.push(ident(&group[k..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if at >= "super::".len() && code[..at].ends_with("super::") {
            continue; // counted from the first `super::`
        }
        let mut rest = &code[at..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        // `up` steps from module path `path`: fewer than its length stay inside the top-level
        // module; exactly its length reach the crate root, where the next name is what is used.
        if up == path.len() {
            out.push(ident(rest));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `ops/shape.rs` is `[ops, shape]`, `ops/mod.rs` is `[ops]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts
}

#[test]
fn modules_import_only_lower_floors() {
    let root = src();
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let floors = floors(&lib);
    assert!(floors.len() > 10, "the floor table in lib.rs is missing: {floors:?}");
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')) {
            assert!(
                floors.contains_key(name),
                "module `{name}` has no floor in lib.rs's table"
            );
        }
    }
    for name in floors.keys() {
        assert!(
            lib.contains(&format!("pub mod {name};")) || lib.contains(&format!("mod {name};")),
            "lib.rs's table names `{name}`, which is no module"
        );
    }

    let mut files = vec![];
    rust_files(&root, &mut files);
    files.sort();
    let mut test_files = vec![];
    let mut texts = vec![];
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_path_buf();
        if rel == Path::new("lib.rs") {
            continue;
        }
        let (code, test_mods) = code(&std::fs::read_to_string(f).unwrap());
        let dir = if rel.file_name().unwrap() == "mod.rs" {
            rel.parent().unwrap().to_path_buf()
        } else {
            rel.with_extension("")
        };
        for m in test_mods {
            test_files.push(dir.join(format!("{m}.rs")));
            test_files.push(dir.join(m).join("mod.rs"));
        }
        texts.push((rel, code));
    }

    let mut violations = vec![];
    let mut checked = 0;
    for (rel, code) in &texts {
        if test_files.contains(rel) {
            continue;
        }
        let path = module_path(rel);
        let me = &path[0];
        let Some(&my_floor) = floors.get(me) else {
            violations.push(format!("{}: module `{me}` has no floor", rel.display()));
            continue;
        };
        checked += 1;
        for other in imports(code, &path) {
            if &other == me {
                continue;
            }
            match floors.get(&other) {
                Some(&f) if f < my_floor => {}
                Some(&f) => violations.push(format!(
                    "{}: `{me}` (floor {my_floor}) imports `{other}` (floor {f})",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: `{me}` imports the crate root (`crate::{other}`): lib.rs is above every floor",
                    rel.display()
                )),
            }
        }
    }
    assert!(checked >= floors.len(), "checked only {checked} files");
    assert!(
        violations.is_empty(),
        "imports against the floors:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_imports() {
    let path = vec!["float".to_string()];
    let (c, _) = code(
        "use crate::ir::{Module, Node};\nuse crate::{ops, types::Dim};\n// crate::keys in a comment\nfn f() { crate::pass::x(\"crate::lower\"); }\n#[cfg(test)]\nmod tests {\n    use crate::convert;\n}\n",
    );
    let mut got = imports(&c, &path);
    got.sort();
    assert_eq!(got, ["ir", "ops", "pass", "types"]);
    let sub = vec!["pth".to_string(), "zip".to_string()];
    assert_eq!(
        imports("use super::PthError;\nuse super::super::ir::Node;\n", &sub),
        ["ir"]
    );
    assert_eq!(imports("use super::ir;\n", &path), ["ir"]);
}
