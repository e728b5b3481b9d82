//! Output made independent of where things live: absolute paths replaced by labels, and the lines
//! miette wrapped because of a path's length joined back.
//!
//! miette wraps a message at 100 columns, so a message holding an absolute path wraps at a place
//! that depends on where the checkout (or a scratch folder) lives; when anything was replaced, the
//! wrapped continuation lines of the `×` message and of the `help:` text are joined back, so that
//! a snapshot does not depend on the location.

/// `text` with every `(path, label)` replaced (longest path first) and wrapped lines joined back.
pub fn redact(text: &str, paths: &[(String, &str)]) -> String {
    let mut paths: Vec<&(String, &str)> = paths.iter().filter(|(p, _)| !p.is_empty()).collect();
    paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut text = text.to_string();
    let mut redacted = false;
    for (path, label) in paths {
        if text.contains(path.as_str()) {
            text = text.replace(path.as_str(), label);
            redacted = true;
        }
    }
    if !redacted {
        return text;
    }
    let mut out: Vec<String> = vec![];
    let mut in_help = false;
    for line in text.lines() {
        let joins_message = line.starts_with("  │ ") && out.last().is_some_and(|l| l.starts_with("  × "));
        let joins_help = in_help && line.starts_with("        ") && !line.trim().is_empty();
        if joins_message || joins_help {
            let last = out.last_mut().expect("a previous line");
            last.push(' ');
            last.push_str(line.trim_start_matches("  │ ").trim_start());
            continue;
        }
        in_help = line.starts_with("  help:");
        out.push(line.to_string());
    }
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    joined
}

/// `path` and, when it differs, its canonical form, each with `label`.
pub fn path_and_canonical(path: &std::path::Path, label: &'static str) -> Vec<(String, &'static str)> {
    let mut out = vec![(path.display().to_string(), label)];
    if let Ok(c) = path.canonicalize() {
        if c != path {
            out.push((c.display().to_string(), label));
        }
    }
    out
}
