//! PyTorch module paths for the layers: from the initializer names (state_dict keys), the
//! TorchScript exporter's node names (`/layer1/layer1.0/conv1/Conv`) and the dynamo exporter's
//! `pkg.torch.onnx.name_scopes` metadata; unique, valid recipe names.

use std::collections::{HashMap, HashSet};

use super::graph::{Attr, Layer, Param, ParamSource};
use crate::proto::NodeProto;

fn meta<'a>(node: &'a NodeProto, key: &str) -> Option<&'a str> {
    node.metadata_props.iter().find(|p| p.key() == key).map(|p| p.value())
}

/// A Python list of strings as the dynamo exporter writes it: `['', 'layer1', 'layer1.0']`.
fn py_list(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.trim().is_empty() {
        return vec![];
    }
    inner
        .split(", ")
        .map(|e| e.trim().trim_matches('\'').trim_matches('"').to_string())
        .collect()
}

/// The module path of the node's scope ("" for the model itself) and the class of each scope
/// level (dynamo only), outermost first.
pub fn scope_of(node: &NodeProto) -> (Option<String>, Vec<(String, String)>) {
    if let Some(scopes) = meta(node, "pkg.torch.onnx.name_scopes") {
        // Full module paths, then the aten op's own name last.
        let names = py_list(scopes);
        let classes = meta(node, "pkg.torch.onnx.class_hierarchy")
            .map(py_list)
            .unwrap_or_default();
        if names.len() < 2 {
            return (Some(String::new()), vec![]);
        }
        let levels: Vec<(String, String)> = names[1..names.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), classes.get(i + 1).cloned().unwrap_or_default()))
            .collect();
        return (Some(names[names.len() - 2].clone()), levels);
    }
    let name = node.name();
    if let Some(rest) = name.strip_prefix('/') {
        // TorchScript: each segment is an attribute name, a Sequential's child written as
        // `<sequential>.<index>`; the last segment is the op.
        let segments: Vec<&str> = rest.split('/').collect();
        let mut path = String::new();
        let mut prev = "";
        for seg in &segments[..segments.len().saturating_sub(1)] {
            let child = seg
                .strip_prefix(prev)
                .and_then(|s| s.strip_prefix('.'))
                .filter(|_| !prev.is_empty());
            let part = child.unwrap_or(seg);
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            prev = seg;
        }
        return (Some(path), vec![]);
    }
    (None, vec![])
}

/// Every name component a valid recipe path component: letters, digits, `_`; no keyword.
fn sanitize(path: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "model", "block", "input", "output", "if", "else", "and", "or", "not", "true", "false",
    ];
    path.split('.')
        .filter(|c| !c.is_empty())
        .enumerate()
        .map(|(i, c)| {
            let mut s: String = c
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        ch
                    } else {
                        '_'
                    }
                })
                .collect();
            // After a dot keywords are plain components (`features.1.block.0`); only the first
            // component must be an identifier.
            if i == 0 && (KEYWORDS.contains(&s.as_str()) || s.starts_with(|ch: char| ch.is_ascii_digit())) {
                s = format!("{s}_")
                    .trim_start_matches(|ch: char| ch.is_ascii_digit())
                    .to_string();
                if s.is_empty() || s == "_" {
                    s = format!("m{c}");
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The layer's module path: a state_dict key's, else its scope's.
fn module(layer: &Layer) -> Option<&str> {
    layer.key_path.as_deref().or(layer.scope.as_deref())
}

/// Whether the exporter folded a batch norm into this convolution (dynamo: the node's scope is
/// the BatchNorm module).
pub fn folded_bn(layer: &Layer) -> bool {
    layer.op.starts_with("conv") && layer.classes.last().is_some_and(|(_, c)| c.contains("BatchNorm"))
}

/// Names every layer: parameterized layers by their module path, a parameter-free layer by its
/// scope when the scope is its own module (`layer1.0.relu`), else `<scope>.<op>`
/// (`layer1.0.add`); repeats get `_2`, `_3`. Convolutions that absorbed a batch norm whose
/// folded bias the exporter dropped (all zeros) get that bias back, so that every folded
/// convolution has one.
pub fn assign(layers: &mut [Layer]) {
    let mut by_module: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        if let Some(m) = module(l) {
            by_module.entry(m.to_string()).or_default().push(i);
        }
    }
    let prefixes: HashSet<String> = layers
        .iter()
        .filter_map(module)
        .flat_map(|m| {
            let parts: Vec<&str> = m.split('.').collect();
            (1..parts.len()).map(move |k| parts[..k].join("."))
        })
        .collect();
    let mut taken: HashSet<String> = HashSet::new();
    for i in 0..layers.len() {
        let l = &layers[i];
        let base = if !l.params.is_empty() {
            module(l).map(str::to_string).unwrap_or_else(|| l.op.to_string())
        } else {
            match l.scope.as_deref() {
                Some(s) if !s.is_empty() => {
                    let owners = &by_module[s];
                    let own = !prefixes.contains(s)
                        && owners
                            .iter()
                            .all(|&j| layers[j].params.is_empty() && layers[j].op == l.op);
                    if own {
                        s.to_string()
                    } else {
                        format!("{s}.{}", l.op)
                    }
                }
                _ => l.op.to_string(),
            }
        };
        let base = sanitize(&base);
        let mut name = base.clone();
        let mut k = 2;
        while taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        taken.insert(name.clone());
        layers[i].name = name;
    }
    for l in layers.iter_mut() {
        if folded_bn(l) && !l.params.iter().any(|p| p.suffix == "bias") {
            l.params.push(Param {
                suffix: "bias",
                source: ParamSource::Zeros,
            });
            for a in l.attrs.iter_mut().filter(|a| a.0 == "bias") {
                a.1 = Attr::Bool(true);
            }
        }
    }
}
