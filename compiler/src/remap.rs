//! The `weights` line's key remapping (`{ strip: "module.", rename: "fc" -> "head" }`) applied
//! to a checkpoint's keys before any stage binds them, and the `weights` line a help suggests.
//! The rules are in `docs/recipe-language.md`, "Weights".

use indexmap::IndexMap;
use qc_dsl::diag::closest;
use qc_dsl::sections::KeyRemap;
use qc_dsl::Diagnostic;

const STRIP: &str = "qc::weights-strip";
const RENAME: &str = "qc::weights-rename";
const COLLISION: &str = "qc::weights-collision";

/// `key` under `from` (equal, or `from.` and more) with that part replaced by `to`.
fn renamed(key: &str, from: &str, to: &str) -> Option<String> {
    if key == from {
        return Some(to.to_string());
    }
    key.strip_prefix(from)
        .filter(|rest| rest.starts_with('.'))
        .map(|rest| format!("{to}{rest}"))
}

/// `a.b.c` → `a`, `a.b`, `a.b.c`: the module paths (and the key) a key lies under.
fn paths_of(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('.')
        .map(|(i, _)| &key[..i])
        .chain(std::iter::once(key))
}

fn first_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let shown: Vec<String> = keys.take(3).map(|k| format!("`{k}`")).collect();
    shown.join(", ")
}

/// The checkpoint's own name of each remapped key (new name → name in the file), for
/// provenance; keys the remap left alone are not in it.
pub type Origins = IndexMap<String, String>;

/// Applies `remap` to a checkpoint's keys, keeping their order; returns the remapped values and
/// their [`Origins`]. Every option must do something: a prefix no key has, a rename whose old name
/// matches no key, and two keys remapped onto one name are errors at the option.
pub fn apply<V>(
    values: IndexMap<String, V>,
    remap: &KeyRemap,
    file: &str,
) -> Result<(IndexMap<String, V>, Origins), Vec<Diagnostic>> {
    if remap.is_empty() {
        return Ok((values, Origins::new()));
    }
    let mut diags = vec![];
    // Each key: its name after the remap, and the rename (index) that gave it, if any.
    let mut names: Vec<(String, Option<usize>)> = values.keys().map(|k| (k.clone(), None)).collect();
    if let Some(strip) = &remap.strip {
        let mut any = false;
        for (name, _) in names.iter_mut() {
            if let Some(rest) = name.strip_prefix(strip.value.as_str()) {
                *name = rest.to_string();
                any = true;
            }
        }
        if !any {
            diags.push(
                Diagnostic::new(
                    STRIP,
                    strip.span,
                    format!("no key of `{file}` starts with `{}`", strip.value),
                )
                .label("strips nothing")
                .help(format!(
                    "the keys start like {}: remove this `strip`, or write the prefix they have",
                    first_keys(values.keys())
                )),
            );
        }
    }
    let stripped: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    for (name, by) in names.iter_mut() {
        let best = remap
            .renames
            .iter()
            .enumerate()
            .filter_map(|(i, r)| renamed(name, &r.from.value, &r.to.value).map(|n| (r.from.value.len(), i, n)))
            .max_by_key(|(len, _, _)| *len);
        if let Some((_, i, n)) = best {
            *name = n;
            *by = Some(i);
        }
    }
    for (i, r) in remap.renames.iter().enumerate() {
        if names.iter().any(|(_, by)| *by == Some(i)) {
            continue;
        }
        let matches_any = stripped.iter().any(|k| renamed(k, &r.from.value, "").is_some());
        let after = if remap.strip.is_some() { " (after `strip`)" } else { "" };
        let help = if matches_any {
            "a longer `rename` takes every key it matches: drop this one".to_string()
        } else {
            let paths: Vec<&str> = {
                let mut p: Vec<&str> = stripped.iter().flat_map(|k| paths_of(k)).collect();
                p.sort_unstable();
                p.dedup();
                p
            };
            match closest(&r.from.value, paths.iter().copied()) {
                Some(c) => format!("the checkpoint has `{c}`{after}: did you mean it?"),
                None => format!(
                    "the checkpoint's keys{after} start like {}: write a module path or key it has",
                    first_keys(stripped.iter())
                ),
            }
        };
        diags.push(
            Diagnostic::new(
                RENAME,
                r.from.span,
                format!("no key of `{file}`{after} is `{0}` or starts with `{0}.`", r.from.value),
            )
            .label("renames nothing")
            .help(help),
        );
    }
    // Two keys onto one name.
    let mut first_of: IndexMap<&str, usize> = IndexMap::new();
    for (j, (name, by)) in names.iter().enumerate() {
        let Some(&i) = first_of.get(name.as_str()) else {
            first_of.insert(name, j);
            continue;
        };
        let originals: Vec<&String> = values.keys().collect();
        let (a, b) = (originals[i], originals[j]);
        let span_of = |by: Option<usize>| match by {
            Some(r) => remap.renames[r].span,
            None => remap.strip.as_ref().map(|s| s.span).unwrap_or_default(),
        };
        let (span, other) = match (by, names[i].1) {
            (Some(_), _) => (span_of(*by), names[i].1),
            (None, Some(_)) => (span_of(names[i].1), None),
            (None, None) => (span_of(None), None),
        };
        let mut d = Diagnostic::new(
            COLLISION,
            span,
            format!("`{a}` and `{b}` of `{file}` both become `{name}`"),
        )
        .label("remapped onto one name")
        .help("a key can be bound once: change the `rename` (or `strip`) so that each key gets its own name");
        if let Some(o) = other.filter(|o| Some(*o) != *by) {
            d = d.note(remap.renames[o].span, format!("`{a}` is renamed by this"));
        }
        diags.push(d);
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let origins: Origins = names
        .iter()
        .zip(values.keys())
        .filter(|((new, _), old)| new != *old)
        .map(|((new, _), old)| (new.clone(), old.clone()))
        .collect();
    Ok((
        names.into_iter().map(|(n, _)| n).zip(values.into_values()).collect(),
        origins,
    ))
}

/// A string as the recipe writes it, in quotes.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a help adds to a `weights` line.
pub enum Addition<'a> {
    /// Strip this prefix (after the line's own `strip`, which it then extends).
    Strip(&'a str),
    /// Rename (after the line's own remapping).
    Rename(&'a str, &'a str),
}

/// The `weights` line with its options and `add`: `weights "w.pth" { strip: "module.", rename:
/// "fc" -> "head" }`.
pub fn weights_line(file: &str, remap: &KeyRemap, add: Addition) -> String {
    let mut strip = remap.strip.as_ref().map(|s| s.value.clone());
    let mut renames: Vec<(String, String)> = remap
        .renames
        .iter()
        .map(|r| (r.from.value.clone(), r.to.value.clone()))
        .collect();
    match add {
        Addition::Strip(p) => strip = Some(format!("{}{p}", strip.unwrap_or_default())),
        Addition::Rename(from, to) => renames.push((from.to_string(), to.to_string())),
    }
    let mut options: Vec<String> = strip.iter().map(|s| format!("strip: {}", quoted(s))).collect();
    options.extend(
        renames
            .iter()
            .map(|(f, t)| format!("rename: {} -> {}", quoted(f), quoted(t))),
    );
    format!("weights {} {{ {} }}", quoted(file), options.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_dsl::sections::{Rename, Spanned};
    use qc_dsl::Span;

    fn s(v: &str) -> Spanned<String> {
        Spanned::new(v.to_string(), Span::default())
    }

    fn remap(strip: Option<&str>, renames: &[(&str, &str)]) -> KeyRemap {
        KeyRemap {
            strip: strip.map(s),
            renames: renames
                .iter()
                .map(|(f, t)| Rename {
                    from: s(f),
                    to: s(t),
                    span: Span::default(),
                })
                .collect(),
        }
    }

    fn keys(ks: &[&str]) -> IndexMap<String, usize> {
        ks.iter().enumerate().map(|(i, k)| (k.to_string(), i)).collect()
    }

    #[test]
    fn strip_then_the_longest_rename_in_order() {
        let out = apply(
            keys(&[
                "module.fc.weight",
                "module.fc.bias",
                "module.fc2.weight",
                "module.fc.x.y",
                "other",
            ]),
            &remap(Some("module."), &[("fc", "head"), ("fc.x", "z")]),
            "w",
        )
        .unwrap();
        assert_eq!(out.1.get("head.weight").map(String::as_str), Some("module.fc.weight"));
        assert!(!out.1.contains_key("other"));
        let got: Vec<(&str, usize)> = out.0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            [
                ("head.weight", 0),
                ("head.bias", 1),
                ("fc2.weight", 2),
                ("z.y", 3),
                ("other", 4)
            ]
        );
    }

    #[test]
    fn options_that_do_nothing_or_collide_are_errors() {
        let d = apply(keys(&["conv1.weight"]), &remap(Some("module."), &[]), "w").unwrap_err();
        assert_eq!(d[0].code, STRIP);
        assert!(d[0].help.contains("`conv1.weight`"), "{}", d[0].help);
        let d = apply(keys(&["conv1.weight"]), &remap(None, &[("conv", "x")]), "w").unwrap_err();
        assert_eq!(d[0].code, RENAME);
        assert!(d[0].help.contains("`conv1`"), "{}", d[0].help);
        let d = apply(keys(&["a.w", "b.w"]), &remap(None, &[("a", "c"), ("b", "c")]), "w").unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].code, COLLISION);
        assert_eq!(d[0].message, "`a.w` and `b.w` of `w` both become `c.w`");
        let d = apply(keys(&["a.w", "b.w"]), &remap(None, &[("a", "b")]), "w").unwrap_err();
        assert_eq!(d[0].message, "`a.w` and `b.w` of `w` both become `b.w`");
    }

    #[test]
    fn the_suggested_line_keeps_the_options_written() {
        let r = remap(Some("module."), &[("fc", "head")]);
        assert_eq!(
            weights_line("w \"1\".pth", &r, Addition::Rename("a", "b")),
            r#"weights "w \"1\".pth" { strip: "module.", rename: "fc" -> "head", rename: "a" -> "b" }"#
        );
        assert_eq!(
            weights_line("w.pth", &KeyRemap::default(), Addition::Strip("module.")),
            r#"weights "w.pth" { strip: "module." }"#
        );
    }
}
