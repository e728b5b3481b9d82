//! Repeated structures folded into `block`s: module scopes whose layers form the same subgraph
//! (up to attribute values, which become block parameters, an optional sub-module chain such as
//! ResNet's `downsample`, and an optional residual `add`), chosen greedily by how many layers
//! they cover.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use super::graph::{Attr, Graph, Src};
use super::recipe::{attrs_text, call, reference};

/// A reference inside an instance: one of its members (by position) or an external input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ref {
    Local(usize),
    Ext(usize),
}

/// One scope's layers, as a candidate block instance.
#[derive(Debug, Clone)]
struct Cand {
    prefix: String,
    members: Vec<usize>,
    locals: Vec<String>,
    inputs: Vec<Vec<Ref>>,
    externals: Vec<Src>,
    output: usize,
    /// The reduced form: removed member positions, rewired inputs, the output after reduction.
    chain: Option<Chain>,
    residual: Option<Residual>,
    key: String,
}

#[derive(Debug, Clone)]
struct Chain {
    /// The first name component of the chain's members (`downsample`).
    name: String,
    positions: Vec<usize>,
    ext: usize,
    consumer: usize,
    slot: usize,
    signature: String,
}

#[derive(Debug, Clone)]
struct Residual {
    add: usize,
    ext: usize,
    ext_first: bool,
    other: usize,
}

/// One block and where it is used.
#[derive(Debug, Clone)]
pub struct Block {
    pub name: String,
    pub class: Option<String>,
    header: String,
    body: Vec<String>,
    instances: Vec<Instance>,
}

#[derive(Debug, Clone)]
struct Instance {
    prefix: String,
    members: Vec<usize>,
    externals: Vec<Src>,
    output: usize,
    args: Vec<(String, String)>,
}

/// The blocks of a graph and the layers their instances cover.
#[derive(Debug, Clone, Default)]
pub struct Blocks {
    pub list: Vec<Block>,
    first: HashMap<usize, (usize, usize)>,
    covered: HashSet<usize>,
    outputs: HashMap<usize, String>,
}

impl Block {
    /// The instance names.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|i| i.prefix.as_str())
    }
}

impl Blocks {
    /// Whether layer `i` is inside a block instance.
    pub fn member(&self, i: usize) -> bool {
        self.covered.contains(&i)
    }

    /// The instance name when layer `i` is an instance's result.
    pub fn instance_output(&self, i: usize) -> Option<String> {
        self.outputs.get(&i).cloned()
    }

    /// How often each block is used: (name, instances).
    pub fn uses(&self) -> Vec<(String, usize)> {
        self.list.iter().map(|b| (b.name.clone(), b.instances.len())).collect()
    }

    /// The model-level statement of the instance that starts at layer `i`.
    pub fn instance_call(&self, graph: &Graph, i: usize, width: usize) -> Option<String> {
        let &(b, k) = self.first.get(&i)?;
        let block = &self.list[b];
        let inst = &block.instances[k];
        let mut args: Vec<String> = inst.externals.iter().map(|&s| reference(graph, self, s)).collect();
        args.extend(inst.args.iter().map(|(k, v)| format!("{k}: {v}")));
        Some(format!(
            "  {:<width$} = {}({})\n",
            inst.prefix,
            block.name,
            args.join(", ")
        ))
    }

    /// The block's text.
    pub fn render(&self, b: &Block) -> String {
        let mut s = String::new();
        let names: Vec<&str> = b.instances.iter().map(|i| i.prefix.as_str()).collect();
        let shown = if names.len() > 6 {
            format!("{}, ..., {}", names[..4].join(", "), names[names.len() - 1])
        } else {
            names.join(", ")
        };
        s.push_str(&super::recipe::comment(&format!(
            "{}: used {} times ({shown}).",
            b.class.as_deref().unwrap_or("a repeated structure"),
            b.instances.len()
        )));
        let _ = writeln!(s, "{} {{", b.header);
        for line in &b.body {
            let _ = writeln!(s, "  {line}");
        }
        s.push_str("}\n");
        s
    }
}

fn valid_local(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
}

fn candidate(
    graph: &Graph,
    prefix: &str,
    consumers: &HashMap<usize, Vec<usize>>,
    outputs: &HashSet<usize>,
) -> Option<Cand> {
    let dotted = format!("{prefix}.");
    let members: Vec<usize> = (0..graph.layers.len())
        .filter(|&i| graph.layers[i].name.starts_with(&dotted))
        .collect();
    if members.len() < 2 || members.windows(2).any(|w| w[1] != w[0] + 1) {
        return None;
    }
    if graph.layers.iter().any(|l| l.name == prefix) {
        return None;
    }
    let set: HashSet<usize> = members.iter().copied().collect();
    let locals: Vec<String> = members
        .iter()
        .map(|&i| graph.layers[i].name[dotted.len()..].to_string())
        .collect();
    if !locals.iter().all(|l| valid_local(l)) {
        return None;
    }
    let escaping: Vec<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| outputs.contains(m) || consumers.get(m).is_some_and(|c| c.iter().any(|u| !set.contains(u))))
        .map(|(p, _)| p)
        .collect();
    let [output] = escaping[..] else { return None };
    let mut externals: Vec<Src> = vec![];
    let mut inputs = vec![];
    for &m in &members {
        let mut refs = vec![];
        for &src in &graph.layers[m].inputs {
            match src {
                Src::Layer(l) if set.contains(&l) => refs.push(Ref::Local(l - members[0])),
                _ => {
                    let k = externals.iter().position(|&e| e == src).unwrap_or_else(|| {
                        externals.push(src);
                        externals.len() - 1
                    });
                    refs.push(Ref::Ext(k));
                }
            }
        }
        inputs.push(refs);
    }
    let mut c = Cand {
        prefix: prefix.to_string(),
        members,
        locals,
        inputs,
        externals,
        output,
        chain: None,
        residual: None,
        key: String::new(),
    };
    reduce(graph, &mut c);
    Some(c)
}

fn item_sig(graph: &Graph, c: &Cand, p: usize) -> String {
    let l = &graph.layers[c.members[p]];
    let keys: Vec<&str> = l.attrs.iter().map(|a| a.0).collect();
    format!("{}|{}|{}", c.locals[p], l.op, keys.join(","))
}

/// Finds the optional parts and the key of what remains.
fn reduce(graph: &Graph, c: &mut Cand) {
    let n = c.members.len();
    let users = |p: usize| -> Vec<(usize, usize)> {
        (0..n)
            .flat_map(|q| {
                c.inputs[q]
                    .iter()
                    .enumerate()
                    .filter(move |(_, r)| **r == Ref::Local(p))
                    .map(move |(s, _)| (q, s))
            })
            .collect()
    };
    // A chain of members under one sub-module name, from an external to one consumer.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (p, l) in c.locals.iter().enumerate() {
        if let Some((head, _)) = l.split_once('.') {
            groups.entry(head.to_string()).or_default().push(p);
        }
    }
    for (name, pos) in groups {
        let Ref::Ext(ext) = (match c.inputs[pos[0]][..] {
            [r] => r,
            _ => continue,
        }) else {
            continue;
        };
        let linked = pos
            .windows(2)
            .all(|w| c.inputs[w[1]][..] == [Ref::Local(w[0])] && users(w[0]) == [(w[1], 0)]);
        let last = pos[pos.len() - 1];
        let u = users(last);
        if !linked || u.len() != 1 || last == c.output || pos.contains(&u[0].0) {
            continue;
        }
        // The consumer joins the chain with the block's own path (ResNet's `add(bn2, downsample)`),
        // not with the input alone (that would make the whole block optional).
        let joins = c.inputs[u[0].0]
            .iter()
            .enumerate()
            .any(|(s, r)| s != u[0].1 && matches!(r, Ref::Local(q) if !pos.contains(q)));
        if !joins {
            continue;
        }
        let sig: Vec<String> = pos.iter().map(|&p| item_sig(graph, c, p)).collect();
        c.chain = Some(Chain {
            signature: format!("{}>{}:{}", sig.join(";"), c.locals[u[0].0], u[0].1),
            name,
            positions: pos,
            ext,
            consumer: u[0].0,
            slot: u[0].1,
        });
        break;
    }
    // A residual add of an external and a member, as the result.
    let out = &graph.layers[c.members[c.output]];
    if out.op == "add" {
        match c.inputs[c.output][..] {
            [Ref::Ext(e), Ref::Local(o)] => {
                c.residual = Some(Residual {
                    add: c.output,
                    ext: e,
                    ext_first: true,
                    other: o,
                });
            }
            [Ref::Local(o), Ref::Ext(e)] => {
                c.residual = Some(Residual {
                    add: c.output,
                    ext: e,
                    ext_first: false,
                    other: o,
                });
            }
            _ => {}
        }
    }
    let removed: HashSet<usize> = c
        .chain
        .iter()
        .flat_map(|ch| ch.positions.iter().copied())
        .chain(c.residual.iter().map(|r| r.add))
        .collect();
    // The key: remaining items with inputs by local name, externals renumbered by first use.
    let mut ext_map: HashMap<usize, usize> = HashMap::new();
    let mut parts = vec![];
    for p in (0..n).filter(|p| !removed.contains(p)) {
        let mut ins = vec![];
        for (s, r) in c.inputs[p].iter().enumerate() {
            let r = match (&c.chain, r) {
                (Some(ch), _) if ch.consumer == p && ch.slot == s => Ref::Ext(ch.ext),
                _ => *r,
            };
            ins.push(match r {
                Ref::Local(q) => c.locals[q].clone(),
                Ref::Ext(e) => {
                    let k = ext_map.len();
                    format!("${}", ext_map.entry(e).or_insert(k))
                }
            });
        }
        parts.push(format!("{}({})", item_sig(graph, c, p), ins.join(",")));
    }
    let result = c.residual.as_ref().map(|r| r.other).unwrap_or(c.output);
    c.key = format!("{} => {}", parts.join(" "), c.locals[result]);
}

fn snake(class: &str) -> String {
    let short = class.rsplit('.').next().unwrap_or(class);
    let mut s = String::new();
    for (i, ch) in short.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 && !s.ends_with('_') {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else if ch.is_ascii_alphanumeric() {
            s.push(ch);
        } else {
            s.push('_');
        }
    }
    s
}

fn class_of(graph: &Graph, c: &Cand) -> Option<String> {
    c.members.iter().find_map(|&m| {
        graph.layers[m]
            .classes
            .iter()
            .find(|(n, _)| *n == c.prefix)
            .map(|(_, cl)| cl.clone())
    })
}

fn param_name(key: &str) -> &str {
    match key {
        "out" => "ch",
        other => other,
    }
}

/// Finds the blocks of a named graph.
pub fn find(graph: &Graph) -> Blocks {
    let mut consumers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, l) in graph.layers.iter().enumerate() {
        for s in &l.inputs {
            if let Src::Layer(j) = s {
                consumers.entry(*j).or_default().push(i);
            }
        }
    }
    let outputs: HashSet<usize> = graph
        .outputs
        .iter()
        .filter_map(|s| if let Src::Layer(l) = s { Some(*l) } else { None })
        .collect();
    let mut prefixes: Vec<String> = vec![];
    let mut seen = HashSet::new();
    for l in &graph.layers {
        let parts: Vec<&str> = l.name.split('.').collect();
        for k in 1..parts.len() {
            let p = parts[..k].join(".");
            if seen.insert(p.clone()) {
                prefixes.push(p);
            }
        }
    }
    let cands: Vec<Cand> = prefixes
        .iter()
        .filter_map(|p| candidate(graph, p, &consumers, &outputs))
        .collect();
    let mut groups: Vec<Vec<Cand>> = vec![];
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for c in cands {
        match by_key.get(&c.key) {
            Some(&g) => groups[g].push(c),
            None => {
                by_key.insert(c.key.clone(), groups.len());
                groups.push(vec![c]);
            }
        }
    }
    let mut blocks = Blocks::default();
    let mut names: HashSet<String> = graph.layers.iter().map(|l| l.name.clone()).collect();
    loop {
        let best = groups
            .iter()
            .enumerate()
            .map(|(g, cs)| {
                let free: Vec<&Cand> = cs
                    .iter()
                    .filter(|c| c.members.iter().all(|m| !blocks.covered.contains(m)))
                    .collect();
                let consistent = chain_consistent(&free);
                let score: usize = if free.len() >= 2 && consistent {
                    free.iter().map(|c| c.members.len()).sum()
                } else {
                    0
                };
                (
                    score,
                    std::cmp::Reverse(free.first().map(|c| c.members[0]).unwrap_or(usize::MAX)),
                    g,
                )
            })
            .max();
        let Some((score, _, g)) = best else { break };
        if score == 0 {
            break;
        }
        let mut chosen: Vec<Cand> = vec![];
        for c in groups[g].drain(..) {
            let overlaps = c.members.iter().any(|m| blocks.covered.contains(m))
                || chosen.iter().any(|o| o.members.iter().any(|m| c.members.contains(m)));
            if !overlaps {
                chosen.push(c);
            }
        }
        let block = build(graph, &chosen, &mut names);
        let b = blocks.list.len();
        for (k, inst) in block.instances.iter().enumerate() {
            blocks.first.insert(inst.members[0], (b, k));
            blocks.covered.extend(inst.members.iter().copied());
            blocks.outputs.insert(inst.output, inst.prefix.clone());
        }
        blocks.list.push(block);
    }
    blocks
}

fn chain_consistent(cs: &[&Cand]) -> bool {
    let sigs: HashSet<(&str, &str)> = cs
        .iter()
        .filter_map(|c| c.chain.as_ref())
        .map(|ch| (ch.name.as_str(), ch.signature.as_str()))
        .collect();
    let res: HashSet<(bool, &str)> = cs
        .iter()
        .filter_map(|c| c.residual.as_ref().map(|r| (r.ext_first, c.locals[r.add].as_str())))
        .collect();
    sigs.len() <= 1 && res.len() <= 1
}

/// One slot of a block body: a member's attribute, its value in each instance.
struct Slot {
    values: Vec<Option<Attr>>,
}

fn build(graph: &Graph, cs: &[Cand], names: &mut HashSet<String>) -> Block {
    // The template: an instance with the chain and one with the residual, if any has them.
    let with_chain = cs.iter().find(|c| c.chain.is_some());
    let with_res = cs.iter().find(|c| c.residual.is_some());
    let base = with_chain.or(with_res).unwrap_or(&cs[0]);
    let class = cs.iter().find_map(|c| class_of(graph, c));
    let mut name = match &class {
        Some(cl) => snake(cl),
        None => {
            let parent = base.prefix.rsplit_once('.').map(|(p, _)| p).unwrap_or(&base.prefix);
            let stem: String = parent
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '_')
                .replace('.', "_");
            format!("{}_block", if stem.is_empty() { "repeated" } else { &stem })
        }
    };
    if !valid_local(&name) {
        name = format!("b_{name}");
    }
    let stem = name.clone();
    let mut k = 2;
    while names.contains(&name) {
        name = format!("{stem}_{k}");
        k += 1;
    }
    names.insert(name.clone());

    // Slots by (local name, attribute key), in template order; chain members from `with_chain`.
    let mut order: Vec<(String, &'static str)> = vec![];
    let mut slot_of: HashMap<(String, &'static str), usize> = HashMap::new();
    let mut slots: Vec<Slot> = vec![];
    let template_items = |c: &Cand| -> Vec<usize> { (0..c.members.len()).collect() };
    for src in [Some(base), with_chain, with_res].into_iter().flatten() {
        for p in template_items(src) {
            for (key, _, _) in &graph.layers[src.members[p]].attrs {
                let id = (src.locals[p].clone(), *key);
                if !slot_of.contains_key(&id) {
                    slot_of.insert(id.clone(), slots.len());
                    order.push(id);
                    slots.push(Slot {
                        values: vec![None; cs.len()],
                    });
                }
            }
        }
    }
    for (ci, c) in cs.iter().enumerate() {
        for (p, &m) in c.members.iter().enumerate() {
            for (key, v, _) in &graph.layers[m].attrs {
                if let Some(&s) = slot_of.get(&(c.locals[p].clone(), *key)) {
                    slots[s].values[ci] = Some(v.clone());
                }
            }
        }
    }
    // Parameters: slots whose value differs between instances, merged when compatible.
    let mut params: Vec<(String, Vec<Option<Attr>>, &'static str)> = vec![];
    let mut slot_param: HashMap<usize, usize> = HashMap::new();
    for (s, slot) in slots.iter().enumerate() {
        let some: Vec<&Attr> = slot.values.iter().flatten().collect();
        let key = order[s].1;
        // A slot of every instance shares a parameter whose values it equals (a depthwise
        // conv's `groups` and `out`); a slot of an optional part (absent from some instances)
        // one of the same attribute that it fits (`downsample.0`'s `out`). A constant slot stays
        // a literal, unless it is optional and fits a parameter.
        let partial = slot.values.iter().any(Option::is_none);
        let found = params.iter().position(|(_, vals, k)| {
            if partial {
                *k == key
                    && vals
                        .iter()
                        .zip(&slot.values)
                        .all(|(a, b)| a.is_none() || b.is_none() || a == b)
            } else {
                vals == &slot.values
            }
        });
        if some.windows(2).all(|w| w[0] == w[1]) && !(partial && found.is_some()) {
            continue;
        }
        let id = match found {
            Some(p) => {
                for (a, b) in params[p].1.iter_mut().zip(&slot.values) {
                    if a.is_none() {
                        *a = b.clone();
                    }
                }
                p
            }
            None => {
                let stem = param_name(key).to_string();
                let mut pname = stem.clone();
                let mut k = 2;
                while params.iter().any(|p| p.0 == pname) {
                    pname = format!("{stem}{k}");
                    k += 1;
                }
                params.push((pname, slot.values.clone(), key));
                params.len() - 1
            }
        };
        slot_param.insert(s, id);
    }
    let most_common = |vals: &[Option<Attr>]| -> Option<Attr> {
        let mut counts: Vec<(Attr, usize)> = vec![];
        for v in vals.iter().flatten() {
            match counts.iter_mut().find(|(a, _)| a == v) {
                Some(c) => c.1 += 1,
                None => counts.push((v.clone(), 1)),
            }
        }
        counts.iter().max_by_key(|(_, n)| *n).map(|(a, _)| a.clone())
    };
    // Defaults only for window geometry (stride, pad, dilation, groups: the most common value);
    // every other parameter (channels, kernels) is passed by each instance.
    let defaults: Vec<Option<Attr>> = params
        .iter()
        .map(|(_, vals, key)| {
            if ["stride", "pad", "dilation", "groups"].contains(key) {
                most_common(vals)
            } else {
                None
            }
        })
        .collect();

    let n_ext = base.externals.len();
    let ext_name = |k: usize| if k == 0 { "x".to_string() } else { format!("x{}", k + 1) };
    let mut header_params: Vec<String> = (0..n_ext).map(ext_name).collect();
    for (p, (pname, _, _)) in params.iter().enumerate() {
        match &defaults[p] {
            Some(d) => header_params.push(format!("{pname}: {d}")),
            None => header_params.push(pname.clone()),
        }
    }
    let chain_name = with_chain.and_then(|c| c.chain.as_ref()).map(|ch| ch.name.clone());
    if let Some(cn) = &chain_name {
        header_params.push(format!("{cn}: false"));
    }
    if with_res.is_some() {
        header_params.push("residual: false".into());
    }
    let header = format!("block {name}({})", header_params.join(", "));

    // The body, rendered from the template instance.
    let attrs_of = |c: &Cand, p: usize| -> Vec<(&'static str, String)> {
        let layer = &graph.layers[c.members[p]];
        let mut out = vec![];
        for (key, v, d) in &layer.attrs {
            let s = slot_of[&(c.locals[p].clone(), *key)];
            match slot_param.get(&s) {
                Some(&pi) => out.push((*key, params[pi].0.clone())),
                None if d.as_ref() == Some(v) => {}
                None => out.push((*key, v.to_string())),
            }
        }
        out
    };
    let _ = attrs_text;
    let taken: HashSet<&str> = base.locals.iter().map(String::as_str).collect();
    let alias = ["identity", "skip", "shortcut"]
        .into_iter()
        .find(|a| !taken.contains(a))
        .unwrap_or("identity_");
    let mut body = vec![];
    let render_ref = |c: &Cand, r: Ref| match r {
        Ref::Local(q) => c.locals[q].clone(),
        Ref::Ext(e) => ext_name(e),
    };
    let width = base.locals.iter().map(|l| l.len()).max().unwrap_or(0).min(16);
    // Externals of `base` numbered by first use: the chain's may come first in `base` order,
    // which matches the template's rendering order of inputs.
    for p in 0..base.members.len() {
        if base.chain.as_ref().is_some_and(|ch| ch.positions.contains(&p)) {
            continue;
        }
        if base.residual.as_ref().is_some_and(|r| r.add == p) {
            continue;
        }
        if let Some(c) = with_chain {
            let ch = c.chain.clone();
            if let Some(ch) = ch {
                // The chain goes right before its consumer.
                let consumer_local = &c.locals[ch.consumer];
                if *consumer_local == base.locals[p] {
                    let mut expr = ext_name(ch.ext);
                    for &q in &ch.positions {
                        let l = &graph.layers[c.members[q]];
                        expr = format!("{} = {}", c.locals[q], call(l.op, &[expr], &attrs_of(c, q)));
                    }
                    body.push(format!(
                        "{alias:<width$} = if {} {{ {expr} }} else {{ {} }}",
                        ch.name,
                        ext_name(ch.ext)
                    ));
                }
            }
        }
        let layer = &graph.layers[base.members[p]];
        let mut args: Vec<String> = base.inputs[p].iter().map(|&r| render_ref(base, r)).collect();
        if let Some(ch) = with_chain.and_then(|c| c.chain.as_ref().map(|ch| (c, ch))) {
            if ch.0.locals[ch.1.consumer] == base.locals[p] {
                args[ch.1.slot] = alias.to_string();
            }
        }
        body.push(format!(
            "{:<width$} = {}",
            base.locals[p],
            call(layer.op, &args, &attrs_of(base, p))
        ));
    }
    if let Some(c) = with_res {
        let r = c.residual.clone();
        if let Some(r) = r {
            let other = c.locals[r.other].clone();
            let x = ext_name(r.ext);
            let args = if r.ext_first {
                vec![x, other.clone()]
            } else {
                vec![other.clone(), x]
            };
            body.push(format!(
                "{:<width$} = if residual {{ {} }} else {{ {other} }}",
                c.locals[r.add],
                call("add", &args, &[])
            ));
        }
    } else {
        let result = &base.locals[base.output];
        if body
            .last()
            .is_some_and(|l| !l.starts_with(&format!("{result} ")) && !l.starts_with(&format!("{result}=")))
        {
            body.push(format!("output {result}"));
        }
    }

    let instances = cs
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let mut args = vec![];
            for (p, (pname, vals, _)) in params.iter().enumerate() {
                let v = vals[ci].clone().or_else(|| most_common(vals));
                match (&v, &defaults[p]) {
                    (Some(v), Some(d)) if v == d => {}
                    (Some(v), _) => args.push((pname.clone(), v.to_string())),
                    (None, _) => {}
                }
            }
            if let (Some(cn), Some(_)) = (&chain_name, &c.chain) {
                args.push((cn.clone(), "true".into()));
            }
            if c.residual.is_some() {
                args.push(("residual".into(), "true".into()));
            }
            // Externals in the block's order: `base`'s numbering by first use.
            Instance {
                prefix: c.prefix.clone(),
                members: c.members.clone(),
                externals: order_externals(c, base),
                output: c.members[c.output],
                args,
            }
        })
        .collect();
    Block {
        name,
        class,
        header,
        body,
        instances,
    }
}

/// An instance's externals in the numbering of the template `base` (first use in `base`'s
/// member order; a chain's input is the same tensor as the consumer slot it replaces).
fn order_externals(c: &Cand, base: &Cand) -> Vec<Src> {
    if c.externals.len() == base.externals.len() {
        return c.externals.clone();
    }
    // Fewer externals than the template cannot happen when the reduced keys are equal; keep
    // what there is.
    c.externals.clone()
}
