//! `qc compile --why-not NODE`: why the fusion rules left a node alone. The rules run on a copy
//! of the module exactly as the `fuse` pass runs them, recording which patch took which nodes
//! and which patches lost a node to another; a node that stayed is then matched against every
//! rule, at every place of its pattern, to find the rule that came closest and what failed.

use qc_dsl::ast::BinaryOp;
use qc_dsl::diag::did_you_mean;
use qc_dsl::{Diagnostic, SourceMap, Span};

use crate::ir::{Module, NodeId};
use crate::ops::Op;
use crate::rewrite::{self, Mode, Patch};
use crate::rules::{class_text, Literal, PArg, Rule, RuleSet, Test};

/// What `--why-not` found out about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub node: String,
    /// The node's op name (`conv2d`).
    pub op: String,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Rules fused the node, in these rounds.
    Fused(Vec<FusedBy>),
    /// No rule fused it: the attempts that matched something, closest first (empty when no
    /// rule has a place for it).
    NotFused(Vec<Attempt>),
}

/// One applied patch that took the node.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedBy {
    pub rule: String,
    /// The chain it fused, one op per class (`conv2d -> batch_norm -> relu`).
    pub chain: String,
    /// The node that became the fused op.
    pub into: String,
    /// Every node of the patch, root first.
    pub nodes: Vec<String>,
    /// 1-based.
    pub round: usize,
}

/// How close one rule came, with the node at one place of its pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub rule: String,
    /// `conv1d|conv2d -> batch_norm`.
    pub chain: String,
    /// Pattern nodes whose op matched.
    pub matched: usize,
    pub size: usize,
    /// Where the node sat in the pattern: "`c` (conv1d|conv2d)".
    pub place: String,
    /// Why the rule did not fuse it, most basic first.
    pub failures: Vec<Failure>,
}

/// One reason a rule did not fuse a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// A pattern node wanted another op.
    Op {
        at: String,
        wanted: String,
        node: String,
        found: String,
    },
    /// The pattern continues above `node`, but nothing reads it there.
    NoUser { at: String, wanted: String, node: String },
    /// `single_use(b)` failed.
    SingleUse {
        binding: String,
        node: String,
        users: Vec<String>,
        output: bool,
    },
    /// An attribute test failed.
    Attr { test: String, node: String, actual: String },
    /// The conv/linear/add cannot take more (an activation, quantized weights, a kept batch norm).
    Absorbed { node: String, why: String },
    /// What the engine requires beyond the rule.
    Engine { why: String },
    /// `fuse off RULE`.
    RuleOff { rule: String, span: Span },
    /// `fuse off MEMBER` turned this chain off.
    MemberOff { member: String, span: Span },
    /// The rule matched, but a patch of a higher-priority rule took `node` in the same round.
    Claimed { node: String, by: String, round: usize },
    /// Every condition holds now: the rewrite stopped at its cap.
    Cap,
}

/// Why `--why-not` could not explain.
#[derive(Clone, Debug, PartialEq)]
pub enum WhyNotError {
    /// No node has that name at stage `float`.
    UnknownNode { name: String, suggestion: Option<String> },
    /// Fusing the module failed (a batch norm that cannot be folded).
    Fuse(Vec<Diagnostic>),
}

/// One patch that matched but was not applied.
struct Lost {
    rule: String,
    nodes: Vec<NodeId>,
    /// The node it shared with the patch that won, and that patch's rule.
    at: NodeId,
    by: String,
    round: usize,
}

/// Explains what the rules did to `node` of `module` (stage `float`, before `fuse`): the
/// rule set and mode are those the `fuse` pass would use.
pub fn why_not(module: &Module, rules: &RuleSet, mode: Mode, node: &str) -> Result<Explanation, WhyNotError> {
    let Some(target) = module.graph.find(node) else {
        let names: Vec<&str> = module
            .graph
            .topo_order()
            .into_iter()
            .map(|id| module.graph.node(id).name.as_str())
            .collect();
        return Err(WhyNotError::UnknownNode {
            name: node.to_string(),
            suggestion: did_you_mean(node, names.iter().copied()),
        });
    };
    let op = module.graph.node(target).op.name().to_string();
    let mut fused = module.clone();
    let (applied, lost) = simulate(&mut fused, rules, mode).map_err(WhyNotError::Fuse)?;
    let name_of = |id: NodeId| module.graph.node(id).name.clone();
    let by: Vec<FusedBy> = applied
        .iter()
        .filter(|(_, p, _)| p.matched.contains(&target))
        .map(|(round, p, chain)| FusedBy {
            rule: p.rule_name.clone(),
            chain: chain.clone(),
            into: name_of(p.replacement.anchor),
            nodes: p.matched.iter().map(|&n| name_of(n)).collect(),
            round: *round,
        })
        .collect();
    if !by.is_empty() {
        return Ok(Explanation {
            node: node.to_string(),
            op,
            verdict: Verdict::Fused(by),
        });
    }
    let mut attempts = vec![];
    let all = rules
        .rules
        .iter()
        .map(|r| (r, None))
        .chain(rules.off.iter().map(|(r, s)| (r, Some(*s))));
    for (rule, off) in all {
        let claimed = lost.iter().find(|l| l.rule == rule.name && l.nodes.contains(&target));
        let attempt = match claimed {
            Some(l) => Some(Attempt {
                rule: rule.name.clone(),
                chain: rule.chain_text(),
                matched: rule.size(),
                size: rule.size(),
                place: String::new(),
                failures: vec![Failure::Claimed {
                    node: name_of(l.at),
                    by: l.by.clone(),
                    round: l.round,
                }],
            }),
            None => closest(&fused, rule, off, target),
        };
        attempts.extend(attempt.filter(|a| a.matched > 0));
    }
    attempts.sort_by_key(rank);
    Ok(Explanation {
        node: node.to_string(),
        op,
        verdict: Verdict::NotFused(attempts),
    })
}

/// Closest first: fewest pattern nodes whose op did not match, then most matched (a bigger
/// pattern), then fewest failures; a sort keeps rule order among equals.
fn rank(a: &Attempt) -> (usize, std::cmp::Reverse<usize>, usize) {
    (a.size - a.matched, std::cmp::Reverse(a.matched), a.failures.len())
}

type Applied = Vec<(usize, Patch, String)>;

/// The `fuse` driver (`rewrite::run`), recording each applied patch with its round and chain,
/// and each patch that lost a node to a higher-priority one. Node ids stay valid: the engine
/// removes nodes and never reuses their ids.
fn simulate(module: &mut Module, rules: &RuleSet, mode: Mode) -> Result<(Applied, Vec<Lost>), Vec<Diagnostic>> {
    let mut applied = vec![];
    let mut lost = vec![];
    for round in 1..=rewrite::MAX_ROUNDS {
        let found = rewrite::find_patches(module, rules);
        let chosen = rewrite::select(found.clone());
        if chosen.is_empty() {
            break;
        }
        for p in found.iter().filter(|p| !chosen.contains(p)) {
            let winner = chosen
                .iter()
                .find_map(|c| p.matched.iter().find(|n| c.matched.contains(n)).map(|n| (*n, c)));
            if let Some((at, c)) = winner {
                lost.push(Lost {
                    rule: p.rule_name.clone(),
                    nodes: p.matched.clone(),
                    at,
                    by: c.rule_name.clone(),
                    round,
                });
            }
        }
        let mut errors = vec![];
        for patch in chosen {
            let rule = &rules.rules[patch.rule];
            let chain = class_text_chain(&rewrite::matched_chain(module, rule, &patch.matched));
            match rewrite::apply(module, &patch, mode) {
                Ok(()) => applied.push((round, patch, chain)),
                Err(d) => errors.push(*d),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok((applied, lost))
}

fn class_text_chain(chain: &[qc_dsl::sections::FuseOp]) -> String {
    chain.iter().map(|k| class_text(&[*k])).collect::<Vec<_>>().join(" -> ")
}

/// The best attempt of `rule` with `target` at any place of its pattern.
fn closest(module: &Module, rule: &Rule, off: Option<Span>, target: NodeId) -> Option<Attempt> {
    let mut best: Option<Attempt> = None;
    for p in 0..rule.nodes.len() {
        // The node itself must fit its place: a rule without a place for its op says nothing.
        let op = &module.graph.node(target).op;
        if !rule.nodes[p].kinds.iter().any(|k| rewrite::kind_matches(*k, op)) {
            continue;
        }
        let mut start = vec![None; rule.nodes.len()];
        start[p] = Some(target);
        for slots in place_upwards(module, rule, p, start) {
            let slots = fill_downwards(module, rule, slots);
            let a = evaluate(module, rule, off, &slots, p);
            let better = best.as_ref().is_none_or(|b| rank(&a) < rank(b));
            if better {
                best = Some(a);
            }
        }
    }
    best
}

/// Every way to assign the pattern nodes above `p` (its parent, grandparent, ...) to users of the
/// nodes below them; a pattern node no user fits stays unassigned, and so do those above it.
fn place_upwards(module: &Module, rule: &Rule, p: usize, slots: Vec<Option<NodeId>>) -> Vec<Vec<Option<NodeId>>> {
    let (Some((parent, port)), Some(id)) = (rule.nodes[p].parent, slots[p]) else {
        return vec![slots];
    };
    let g = &module.graph;
    let users: Vec<NodeId> = g
        .users_of(id)
        .into_iter()
        .filter(|&u| g.inputs_of(u).get(port) == Some(&id))
        .collect();
    if users.is_empty() {
        return vec![slots];
    }
    users
        .into_iter()
        .flat_map(|u| {
            let mut s = slots.clone();
            s[parent] = Some(u);
            place_upwards(module, rule, parent, s)
        })
        .collect()
}

/// Assigns the inputs of assigned pattern nodes (parents come before children in pattern order).
fn fill_downwards(module: &Module, rule: &Rule, mut slots: Vec<Option<NodeId>>) -> Vec<Option<NodeId>> {
    for q in 0..rule.nodes.len() {
        let Some(id) = slots[q] else { continue };
        let inputs = module.graph.inputs_of(id);
        for (port, arg) in rule.nodes[q].args.iter().enumerate() {
            if let PArg::Node(c) = arg {
                if slots[*c].is_none() {
                    slots[*c] = inputs.get(port).copied();
                }
            }
        }
    }
    slots
}

/// "`c = conv1d|conv2d` (input 0 of `b`)".
fn describe(rule: &Rule, q: usize) -> String {
    let n = &rule.nodes[q];
    let name = match &n.binding {
        Some(b) => format!("`{b} = {}`", n.class()),
        None => format!("`{}`", n.class()),
    };
    match n.parent {
        None => format!("{name} (the root)"),
        Some((p, port)) => format!("{name} (input {port} of `{}`)", binding(rule, p)),
    }
}

fn evaluate(module: &Module, rule: &Rule, off: Option<Span>, slots: &[Option<NodeId>], placed: usize) -> Attempt {
    let g = &module.graph;
    let name = |id: NodeId| g.node(id).name.clone();
    let op_matches = |q: usize, id: NodeId| {
        rule.nodes[q]
            .kinds
            .iter()
            .any(|k| rewrite::kind_matches(*k, &g.node(id).op))
    };
    let mut failures = vec![];
    let mut matched = 0;
    for (q, slot) in slots.iter().enumerate() {
        match (slot, rule.nodes[q].parent) {
            (Some(id), _) if op_matches(q, *id) => matched += 1,
            (Some(id), _) => failures.push(Failure::Op {
                at: describe(rule, q),
                wanted: rule.nodes[q].class(),
                node: name(*id),
                found: g.node(*id).op.name().to_string(),
            }),
            // Nothing reads the child there (a missing input cannot happen: ops have their inputs).
            (None, _) => {
                let child = rule.nodes[q].args.iter().find_map(|a| match a {
                    PArg::Node(c) => slots[*c],
                    PArg::Var(_) => None,
                });
                if let Some(id) = child {
                    failures.push(Failure::NoUser {
                        at: describe(rule, q),
                        wanted: rule.nodes[q].class(),
                        node: name(id),
                    });
                }
            }
        }
    }
    if matched == rule.size() {
        let nodes: Vec<NodeId> = slots.iter().flatten().copied().collect();
        conditions(module, rule, &nodes, &mut failures);
        if let Some(span) = off {
            failures.push(Failure::RuleOff {
                rule: rule.name.clone(),
                span,
            });
        } else if let Some(m) = rule.member_off(&rewrite::matched_chain(module, rule, &nodes)) {
            failures.push(Failure::MemberOff {
                member: m.name.clone(),
                span: m.span,
            });
        }
        if failures.is_empty() {
            failures.push(Failure::Cap);
        }
    }
    Attempt {
        rule: rule.name.clone(),
        chain: rule.chain_text(),
        matched,
        size: rule.size(),
        place: describe(rule, placed),
        failures,
    }
}

/// The conditions of a rule whose ops all matched `nodes` (pattern order).
fn conditions(module: &Module, rule: &Rule, nodes: &[NodeId], failures: &mut Vec<Failure>) {
    let g = &module.graph;
    let anchor = g.node(nodes[rule.anchor]);
    if !rewrite::can_absorb(&anchor.op, rule.fold.is_some()) {
        failures.push(Failure::Absorbed {
            node: anchor.name.clone(),
            why: absorb_reason(&anchor.op),
        });
    }
    for test in &rule.tests {
        if rewrite::test_holds(module, test, nodes) {
            continue;
        }
        match test {
            Test::SingleUse(i) => failures.push(Failure::SingleUse {
                binding: binding(rule, *i),
                node: g.node(nodes[*i]).name.clone(),
                users: g.users_of(nodes[*i]).iter().map(|u| g.node(*u).name.clone()).collect(),
                output: g.is_output(nodes[*i]),
            }),
            Test::Attr { node, attr, op, value } => {
                let actual = g
                    .node(nodes[*node])
                    .op
                    .attrs()
                    .get(attr.as_str())
                    .map_or("nothing".to_string(), |a| a.to_string());
                let value = match value {
                    Literal::Number(n) => n.to_string(),
                    Literal::Bool(b) => b.to_string(),
                };
                failures.push(Failure::Attr {
                    test: format!("{}.{attr} {} {value}", binding(rule, *node), symbol(*op)),
                    node: g.node(nodes[*node]).name.clone(),
                    actual,
                });
            }
        }
    }
    if !rewrite::engine_can_apply(module, rule, nodes) {
        let ty = anchor
            .ty
            .as_ref()
            .map_or("an unknown type".to_string(), |t| format!("{t}"));
        failures.push(Failure::Engine {
            why: format!(
                "a batch_norm after a linear folds only when the linear's output is [N, F]; `{}` gives {ty}",
                anchor.name
            ),
        });
    }
}

fn binding(rule: &Rule, q: usize) -> String {
    rule.nodes[q].binding.clone().unwrap_or_else(|| rule.nodes[q].class())
}

fn symbol(op: BinaryOp) -> &'static str {
    op.symbol()
}

fn absorb_reason(op: &Op) -> String {
    let (act, quant, bn) = match op {
        Op::Conv(c) => (c.act.is_some(), c.weight_quant.is_some(), c.bn.is_some()),
        Op::Linear(l) => (l.act.is_some(), l.weight_quant.is_some(), l.bn.is_some()),
        Op::Add { act } => (act.is_some(), false, false),
        _ => (false, false, false),
    };
    if act {
        "it already has a fused activation (an activation ends a chain)".into()
    } else if quant {
        "its weights are already quantized".into()
    } else if bn {
        "it already keeps a batch norm (QAT), and cannot fold another".into()
    } else {
        "it cannot absorb more".into()
    }
}

impl Failure {
    /// One line of `--why-not` output; `sources` places `fuse off` lines.
    pub fn render(&self, sources: &SourceMap) -> String {
        match self {
            Failure::Op {
                at,
                wanted,
                node,
                found,
            } => {
                format!("op mismatch at {at}: wants {wanted}, found `{node}` ({found})")
            }
            Failure::NoUser { at, wanted, node } => {
                format!("nothing reads `{node}` where the pattern wants {at}, a {wanted}")
            }
            Failure::SingleUse {
                binding,
                node,
                users,
                output,
            } => {
                let list = users.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ");
                let n = users.len();
                let out = if *output { ", and it is a model output" } else { "" };
                format!(
                    "single_use({binding}) failed: `{node}` has {n} user{} ({list}){out}",
                    if n == 1 { "" } else { "s" }
                )
            }
            Failure::Attr { test, node, actual } => {
                format!("{test} failed: `{node}` has {actual}")
            }
            Failure::Absorbed { node, why } => format!("`{node}` cannot absorb more: {why}"),
            Failure::Engine { why } => why.clone(),
            Failure::RuleOff { rule, span } => {
                format!(
                    "the rule is turned off by `fuse off {rule}` ({})",
                    sources.location(*span)
                )
            }
            Failure::MemberOff { member, span } => {
                format!(
                    "this chain is turned off by `fuse off {member}` ({})",
                    sources.location(*span)
                )
            }
            Failure::Claimed { node, by, round } => format!(
                "the rule matched, but `{node}` went to rule {by} in round {round} (bigger patterns, then earlier \
                 rules, win)"
            ),
            Failure::Cap => "every condition holds: the rewrite stopped at its cap of rounds".into(),
        }
    }
}

impl Explanation {
    /// The `--why-not` text: a headline, then the closest rules (at most three) and what failed.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        match &self.verdict {
            Verdict::Fused(by) => {
                out.push_str(&format!("`{}` ({}) was fused:\n", self.node, self.op));
                for f in by {
                    let nodes = f.nodes.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
                    out.push_str(&format!(
                        "  rule {} ({}) fused {nodes} into `{}` (round {})\n",
                        f.rule, f.chain, f.into, f.round
                    ));
                }
            }
            Verdict::NotFused(attempts) if attempts.is_empty() => {
                out.push_str(&format!(
                    "`{}` ({}) was not fused: no rule has a place for it\n",
                    self.node, self.op
                ));
            }
            Verdict::NotFused(attempts) => {
                out.push_str(&format!("`{}` ({}) was not fused\n", self.node, self.op));
                for (i, a) in attempts.iter().take(3).enumerate() {
                    let head = if i == 0 { "closest rule" } else { "next" };
                    out.push_str(&format!(
                        "{head}: {} ({}), {} of {} pattern nodes match",
                        a.rule, a.chain, a.matched, a.size
                    ));
                    if !a.place.is_empty() {
                        out.push_str(&format!(" with `{}` as {}", self.node, a.place));
                    }
                    out.push('\n');
                    for f in &a.failures {
                        out.push_str(&format!("  - {}\n", f.render(sources)));
                    }
                }
            }
        }
        out
    }
}
