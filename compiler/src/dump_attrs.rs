//! A node's attributes as an IR dump shows them, and back: a quantization spec as one attribute
//! (`w: int8 per_channel symmetric minmax` on a weighted op, `q: uint7 per_tensor affine
//! histogram(2048)` on `observe`/`fake_quant`), and every other attribute left out where the
//! op's builder gives the same op without it (`stride: [1, 1]`, `groups: 1`, `bias: true`, ...).
//!
//! A spec reads `[u]intBITS per_channel|per_tensor symmetric|affine [pow2] OBSERVER [fake]`, with
//! OBSERVER one of `minmax`, `moving_average_minmax(MOMENTUM)`, `histogram(BINS)`,
//! `percentile(P)`; `fake` (weights only) marks QAT's fake-quantized weights.

use std::collections::BTreeMap;

use crate::ops::{Attr, Op};

/// The two spec attributes: the printed key and the prefix of the attributes it stands for.
const SPECS: &[(&str, &str)] = &[("w", "w_"), ("q", "")];

/// Observers whose spec token carries an argument, and the attribute (after the prefix) it is.
const OBSERVER_ARGS: &[(&str, &str)] = &[
    ("histogram", "bins"),
    ("moving_average_minmax", "momentum"),
    ("percentile", "p"),
];

/// `[1, 2]` as integers.
pub fn parse_list(s: &str) -> Result<Vec<i64>, String> {
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list, found `{s}`"))?;
    if inner.trim().is_empty() {
        return Ok(vec![]);
    }
    inner
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i64>()
                .map_err(|_| format!("expected an integer, found `{p}`"))
        })
        .collect()
}

/// One attribute value as printed by `Attr`'s `Display`.
pub fn parse_attr(v: &str) -> Result<Attr, String> {
    let v = v.trim();
    Ok(match v {
        "true" => Attr::Bool(true),
        "false" => Attr::Bool(false),
        _ if v.starts_with('[') => Attr::Ints(parse_list(v)?),
        _ if v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !matches!(v, "inf" | "nan" | "NaN") =>
        {
            Attr::Name(v.to_string())
        }
        _ => match v.parse::<i64>() {
            Ok(x) => Attr::Int(x),
            Err(_) => Attr::Float(v.parse::<f64>().map_err(|_| format!("bad attribute value `{v}`"))?),
        },
    })
}

/// The spec text of the attributes under `prefix`, if they are all there.
fn spec_text(m: &BTreeMap<&'static str, Attr>, prefix: &str) -> Option<String> {
    let get = |k: &str| m.get(format!("{prefix}{k}").as_str());
    let (
        Some(Attr::Int(bits)),
        Some(Attr::Bool(signed)),
        Some(Attr::Bool(per_channel)),
        Some(Attr::Bool(symmetric)),
        Some(Attr::Bool(pow2)),
        Some(Attr::Name(observer)),
    ) = (
        get("bits"),
        get("signed"),
        get("per_channel"),
        get("symmetric"),
        get("pow2"),
        get("observer"),
    )
    else {
        return None;
    };
    let mut parts = vec![
        format!("{}int{bits}", if *signed { "" } else { "u" }),
        if *per_channel { "per_channel" } else { "per_tensor" }.to_string(),
        if *symmetric { "symmetric" } else { "affine" }.to_string(),
    ];
    if *pow2 {
        parts.push("pow2".into());
    }
    match OBSERVER_ARGS.iter().find(|(name, _)| name == observer) {
        Some((name, arg)) => parts.push(format!("{name}({})", get(arg)?)),
        None => parts.push(observer.clone()),
    }
    if prefix == "w_" && get("fake") == Some(&Attr::Bool(true)) {
        parts.push("fake".into());
    }
    Some(parts.join(" "))
}

/// The attributes a spec stands for (the inverse of [`spec_text`]).
fn expand_spec(prefix: &str, text: &str) -> Result<Vec<(String, Attr)>, String> {
    let bad = |why: &str| format!("{why} in the spec `{text}` (expected e.g. `int8 per_channel symmetric minmax`)");
    let mut tokens = text.split_whitespace().peekable();
    let key = |k: &str| format!("{prefix}{k}");
    let mut out = vec![];
    let ty = tokens.next().ok_or_else(|| bad("no type"))?;
    let (signed, bits) = match ty.strip_prefix("uint") {
        Some(b) => (false, b),
        None => (true, ty.strip_prefix("int").ok_or_else(|| bad("no `intN`/`uintN`"))?),
    };
    let bits: i64 = bits.parse().map_err(|_| bad("bad bit count"))?;
    out.push((key("bits"), Attr::Int(bits)));
    out.push((key("signed"), Attr::Bool(signed)));
    let per_channel = match tokens.next() {
        Some("per_channel") => true,
        Some("per_tensor") => false,
        _ => return Err(bad("no `per_channel`/`per_tensor`")),
    };
    out.push((key("per_channel"), Attr::Bool(per_channel)));
    let symmetric = match tokens.next() {
        Some("symmetric") => true,
        Some("affine") => false,
        _ => return Err(bad("no `symmetric`/`affine`")),
    };
    out.push((key("symmetric"), Attr::Bool(symmetric)));
    let pow2 = tokens.next_if_eq(&"pow2").is_some();
    out.push((key("pow2"), Attr::Bool(pow2)));
    let observer = tokens.next().ok_or_else(|| bad("no observer"))?;
    match observer.split_once('(') {
        Some((name, arg)) => {
            let (_, arg_key) = OBSERVER_ARGS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| bad("an observer that takes no argument"))?;
            let arg = arg.strip_suffix(')').ok_or_else(|| bad("unclosed `(`"))?;
            out.push((key("observer"), Attr::Name(name.to_string())));
            out.push((key(arg_key), parse_attr(arg)?));
        }
        None => out.push((key("observer"), Attr::Name(observer.to_string()))),
    }
    if prefix == "w_" {
        let fake = tokens.next_if_eq(&"fake").is_some();
        out.push((key("fake"), Attr::Bool(fake)));
    }
    match tokens.next() {
        Some(extra) => Err(bad(&format!("unexpected `{extra}`"))),
        None => Ok(out),
    }
}

/// The builder's attributes of one printed `key: value`.
pub fn expand(key: &str, value: &str) -> Result<Vec<(String, Attr)>, String> {
    match SPECS.iter().find(|(k, _)| *k == key) {
        Some((_, prefix)) => expand_spec(prefix, value),
        None => Ok(vec![(key.to_string(), parse_attr(value)?)]),
    }
}

fn expand_all(items: &[(String, String)]) -> Result<Vec<(String, Attr)>, String> {
    let mut out = vec![];
    for (k, v) in items {
        out.extend(expand(k, v)?);
    }
    Ok(out)
}

/// Whether the printed attributes build back exactly `op`.
fn builds(op: &Op, items: &[(String, String)]) -> bool {
    let Ok(attrs) = expand_all(items) else {
        return false;
    };
    matches!(Op::build_ir(op.name(), &attrs), Some(Ok(built)) if built == *op)
}

/// The attributes of `op` as a dump prints them, sorted by key: specs grouped, attributes the
/// builder defaults to left out. Falls back to every attribute where the short form would not
/// build the same op.
pub fn short_attrs(op: &Op) -> Vec<(String, String)> {
    let full = op.attrs();
    let every: Vec<(String, String)> = full.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut grouped: BTreeMap<String, String> = BTreeMap::new();
    let mut specs = vec![];
    for (key, prefix) in SPECS {
        if let Some(text) = spec_text(&full, prefix) {
            grouped.insert(key.to_string(), text);
            specs.push(*key);
        }
    }
    for (k, v) in &every {
        let in_spec = SPECS.iter().any(|(key, prefix)| {
            specs.contains(key)
                && k.strip_prefix(prefix).is_some_and(|rest| {
                    ["bits", "signed", "per_channel", "symmetric", "pow2", "observer"].contains(&rest)
                        || OBSERVER_ARGS.iter().any(|(_, arg)| *arg == rest)
                        || (*prefix == "w_" && rest == "fake")
                })
        });
        if !in_spec {
            grouped.insert(k.clone(), v.clone());
        }
    }
    let mut items: Vec<(String, String)> = grouped.into_iter().collect();
    if !builds(op, &items) {
        return every;
    }
    let mut i = 0;
    while i < items.len() {
        if specs.contains(&items[i].0.as_str()) {
            i += 1;
            continue;
        }
        let mut trial = items.clone();
        trial.remove(i);
        if builds(op, &trial) {
            items = trial;
        } else {
            i += 1;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, attrs: &[(&str, Attr)]) -> Op {
        let attrs: Vec<(String, Attr)> = attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Op::build_ir(name, &attrs).unwrap().unwrap()
    }

    #[test]
    fn weight_specs_group_and_defaults_drop() {
        let conv = op(
            "qconv2d",
            &[
                ("out", Attr::Int(16)),
                ("kernel", Attr::Ints(vec![3, 3])),
                ("pad", Attr::Ints(vec![1, 1])),
                ("w_bits", Attr::Int(8)),
                ("w_per_channel", Attr::Bool(true)),
                ("requantize", Attr::Name("float".into())),
            ],
        );
        let short = short_attrs(&conv);
        let text: Vec<String> = short.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        assert_eq!(
            text,
            [
                "kernel: [3, 3]",
                "out: 16",
                "pad: [1, 1]",
                "requantize: float",
                "w: int8 per_channel symmetric minmax"
            ]
        );
        assert!(builds(&conv, &short));
    }

    #[test]
    fn observer_specs_round_trip() {
        for (observer, arg) in [
            ("histogram", Some(("bins", Attr::Int(512)))),
            ("percentile", Some(("p", Attr::Float(99.9)))),
            ("moving_average_minmax", Some(("momentum", Attr::Float(0.01)))),
            ("minmax", None),
        ] {
            let mut attrs = vec![
                ("bits", Attr::Int(7)),
                ("signed", Attr::Bool(false)),
                ("symmetric", Attr::Bool(false)),
                ("pow2", Attr::Bool(true)),
                ("observer", Attr::Name(observer.into())),
            ];
            attrs.extend(arg);
            let observe = op("observe", &attrs);
            let short = short_attrs(&observe);
            assert_eq!(short.len(), 1, "{short:?}");
            assert!(short[0].1.starts_with("uint7 per_tensor affine pow2 "), "{short:?}");
            assert!(builds(&observe, &short));
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(expand("w", "int8 per_channel").is_err());
        assert!(expand("w", "int8 per_channel symmetric minmax extra").is_err());
        assert!(expand("q", "int8 per_tensor affine minmax(3)").is_err());
        assert!(expand("w", "float8 per_tensor affine minmax").is_err());
    }
}
