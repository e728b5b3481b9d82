//! The verifier: invariants every pass must keep. A failure is a compiler bug, reported with
//! the pass that broke it.

use std::collections::HashSet;

use crate::ir::{Module, Provenance, Stage};
use crate::ops::Op;

/// Every broken invariant, as sentences; empty when the module is sound.
pub fn verify(module: &Module) -> Vec<String> {
    let g = &module.graph;
    let mut errors = vec![];
    let order = g.topo_order();
    if order.len() != g.node_count() {
        errors.push(format!(
            "the graph has a cycle ({} of {} nodes ordered)",
            order.len(),
            g.node_count()
        ));
    }
    let mut names = HashSet::new();
    for &id in &order {
        let n = g.node(id);
        if !names.insert(n.name.as_str()) {
            errors.push(format!("two nodes are named `{}`", n.name));
        }
        let inputs = g.inputs_of(id);
        if !n.op.arity().accepts(inputs.len()) {
            errors.push(format!(
                "`{}` ({}) has {} inputs, wants {}",
                n.name,
                n.op.name(),
                inputs.len(),
                n.op.arity().describe()
            ));
        }
        let want: Vec<&str> = n.op.param_names();
        let have: Vec<&str> = n.params.iter().map(|(r, _)| *r).collect();
        if want != have {
            errors.push(format!("`{}` owns parameters {have:?}, its op needs {want:?}", n.name));
        }
        for (_, key) in &n.params {
            match module.params.get(key) {
                None => errors.push(format!(
                    "`{}` refers to parameter `{key}`, which is not in the store",
                    n.name
                )),
                Some(p) if p.owner != n.name => errors.push(format!(
                    "parameter `{key}` names `{}` as owner, not `{}`",
                    p.owner, n.name
                )),
                Some(_) => {}
            }
        }
        if (module.stage >= Stage::Float || matches!(n.op, Op::Input { .. })) && n.ty.is_none() {
            errors.push(format!("`{}` has no type", n.name));
        }
    }
    for (name, id) in &g.outputs {
        if !g.g.contains_node(*id) {
            errors.push(format!("output `{name}` refers to a removed node"));
        }
    }
    for (key, p) in &module.params {
        if g.find(&p.owner).is_none() {
            errors.push(format!(
                "parameter `{key}` is owned by `{}`, which is not in the graph",
                p.owner
            ));
        }
        if module.stage >= Stage::Float {
            match &p.value {
                None => errors.push(format!("parameter `{key}` has no value")),
                Some(v) if v.shape != p.shape || v.dtype() != p.dtype => errors.push(format!(
                    "parameter `{key}` is declared {} {:?} but holds {} {:?}",
                    p.dtype,
                    p.shape,
                    v.dtype(),
                    v.shape
                )),
                Some(_) => {}
            }
            if matches!(p.provenance, Provenance::Declared) {
                errors.push(format!("parameter `{key}` has no provenance"));
            }
        }
    }
    errors
}
