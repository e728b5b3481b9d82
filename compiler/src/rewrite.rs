//! The rewrite engine: one generic matcher over the IR for every rule (no per-rule code), the
//! patches it proposes, and the driver that applies them to a fixed point; plus the `fuse` pass
//! (stage `fused`) that runs it with the recipe's rule set (`crate::rules`).
//!
//! 1. [`find_patches`] matches every active rule at every node without touching the module: op
//!    kinds, port by port, `?variables` anywhere, then the rule's `where` tests; each match is a
//!    labelled [`Patch`] (rule, matched nodes, [`Replacement`]).
//! 2. [`select`] keeps non-overlapping patches, bigger patterns first (the rule set is sorted by
//!    size; equal-size rules that could overlap were refused when it was loaded).
//! 3. [`apply`] rewrites one patch: the anchor (the conv/linear/add) absorbs the batch norm and
//!    the activation, takes over the root's users and type, and keeps its own name (PyTorch names
//!    a fused module after the first module of the chain); the other matched nodes go. A batch
//!    norm is folded into the weights (PTQ, `fold.rs`) or kept inside the op with its buffers
//!    moved to `<anchor>.bn.*` (QAT, PyTorch's ConvBn).
//! 4. [`run`] repeats 1–3 until no rule matches (a fixed point) or `max_rounds` rounds have
//!    applied patches (the cap), and reports which.

use qc_dsl::ast::BinaryOp;
use qc_dsl::sections::FuseOp;
use qc_dsl::Diagnostic;

use crate::fold::{self, bug, key_of};
use crate::ir::{Module, NodeId, Provenance};
use crate::ops::{Act, Attr, BatchNorm, Op, BN_ROLES, KEPT_BN_ROLES};
use crate::pass::{Changed, Ctx, Pass, PassError};
pub use crate::report::{Fired, Mode, Report, Stop};
use crate::rules::{Literal, PArg, Rule, RuleSet, Test};

/// The driver's cap on rounds; the standard rules reach their fixed point in one or two.
pub const MAX_ROUNDS: usize = 64;

/// What a matched pattern becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    /// The conv/linear/add that becomes the fused op (and keeps its name and inputs).
    pub anchor: NodeId,
    /// The pattern's root, whose users read the anchor afterwards.
    pub root: NodeId,
    /// The batch norm the anchor absorbs.
    pub fold: Option<NodeId>,
    /// The activation the anchor absorbs.
    pub act: Option<Act>,
}

/// One proposed rewrite: which rule, which nodes, and what they become.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// Index of the rule in [`RuleSet::rules`].
    pub rule: usize,
    pub rule_name: String,
    /// The matched nodes, in pattern order (root first).
    pub matched: Vec<NodeId>,
    pub replacement: Replacement,
}

// ---------------------------------------------------------------- matching

/// Whether an IR op is of a pattern's op kind.
pub(crate) fn kind_matches(kind: FuseOp, op: &Op) -> bool {
    match (kind, op) {
        (FuseOp::Conv1d, Op::Conv(c)) => c.rank == 1,
        (FuseOp::Conv2d, Op::Conv(c)) => c.rank == 2,
        (FuseOp::BatchNorm, Op::BatchNorm(_)) => true,
        (FuseOp::Relu, Op::Relu) => true,
        (FuseOp::Relu6, Op::Relu6) => true,
        (FuseOp::Clamp | FuseOp::Hardtanh, Op::Clamp { .. }) => true,
        (FuseOp::Linear, Op::Linear(_)) => true,
        (FuseOp::Add, Op::Add { .. }) => true,
        _ => false,
    }
}

/// Whether an op can still absorb what the rule gives it: no activation yet (an activation ends
/// a chain), no weight quantization, and no kept batch norm when another is to be folded.
pub(crate) fn can_absorb(op: &Op, folds: bool) -> bool {
    match op {
        Op::Conv(c) => c.act.is_none() && c.weight_quant.is_none() && !(folds && c.bn.is_some()),
        Op::Linear(l) => l.act.is_none() && l.weight_quant.is_none() && !(folds && l.bn.is_some()),
        Op::Add { act } => act.is_none(),
        _ => true,
    }
}

/// Matches pattern node `p` at graph node `id`, filling `out` (pattern index → node).
fn match_node(module: &Module, rule: &Rule, p: usize, id: NodeId, out: &mut [Option<NodeId>]) -> bool {
    let g = &module.graph;
    let node = g.node(id);
    let pn = &rule.nodes[p];
    if !pn.kinds.iter().any(|k| kind_matches(*k, &node.op)) || out.contains(&Some(id)) {
        return false;
    }
    if p == rule.anchor && !can_absorb(&node.op, rule.fold.is_some()) {
        return false;
    }
    let inputs = g.inputs_of(id);
    if inputs.len() != pn.args.len() {
        return false;
    }
    out[p] = Some(id);
    for (arg, &input) in pn.args.iter().zip(&inputs) {
        if let PArg::Node(c) = arg {
            if !match_node(module, rule, *c, input, out) {
                return false;
            }
        }
    }
    true
}

fn compare(op: BinaryOp, a: f64, b: f64) -> bool {
    match op {
        BinaryOp::Eq => a == b,
        BinaryOp::Ne => a != b,
        BinaryOp::Lt => a < b,
        BinaryOp::Le => a <= b,
        BinaryOp::Gt => a > b,
        BinaryOp::Ge => a >= b,
        _ => false,
    }
}

pub(crate) fn test_holds(module: &Module, test: &Test, nodes: &[NodeId]) -> bool {
    let g = &module.graph;
    match test {
        Test::SingleUse(i) => g.use_count(nodes[*i]) == 1 && !g.is_output(nodes[*i]),
        Test::Attr { node, attr, op, value } => {
            let attrs = g.node(nodes[*node]).op.attrs();
            match (attrs.get(attr.as_str()), value) {
                (Some(Attr::Int(v)), Literal::Number(n)) => compare(*op, *v as f64, *n),
                (Some(Attr::Float(v)), Literal::Number(n)) => compare(*op, *v, *n),
                (Some(Attr::Ints(vs)), Literal::Number(n)) => vs.iter().all(|v| compare(*op, *v as f64, *n)),
                (Some(Attr::Bool(v)), Literal::Bool(b)) => match op {
                    BinaryOp::Eq => v == b,
                    BinaryOp::Ne => v != b,
                    _ => false,
                },
                _ => false,
            }
        }
    }
}

/// What the engine itself requires beyond the rule: `batch_norm1d` after a linear normalises the
/// features only when the linear's output is `[N, F]` (on `[N, L, F]` it would normalise `L`).
pub(crate) fn engine_can_apply(module: &Module, rule: &Rule, nodes: &[NodeId]) -> bool {
    let anchor = module.graph.node(nodes[rule.anchor]);
    match (&anchor.op, rule.fold) {
        (Op::Linear(_), Some(_)) => anchor.ty.as_ref().is_some_and(|t| t.dims.len() == 2),
        _ => true,
    }
}

/// The chain of ops a match of `rule` fused (one op of each class): what `fuse off MEMBER` names.
pub(crate) fn matched_chain(module: &Module, rule: &Rule, nodes: &[NodeId]) -> Vec<FuseOp> {
    rule.chain_nodes()
        .iter()
        .filter_map(|&p| {
            let op = &module.graph.node(nodes[p]).op;
            rule.nodes[p].kinds.iter().copied().find(|k| kind_matches(*k, op))
        })
        .collect()
}

/// Every match of every active rule, in priority order (rule order, then topological order of
/// the root). Reads the module only.
pub fn find_patches(module: &Module, rules: &RuleSet) -> Vec<Patch> {
    let order = module.graph.topo_order();
    let mut patches = vec![];
    for (ri, rule) in rules.rules.iter().enumerate() {
        for &id in &order {
            let mut slots = vec![None; rule.nodes.len()];
            if !match_node(module, rule, 0, id, &mut slots) {
                continue;
            }
            let Some(nodes) = slots.into_iter().collect::<Option<Vec<NodeId>>>() else {
                continue;
            };
            if !rule.tests.iter().all(|t| test_holds(module, t, &nodes)) || !engine_can_apply(module, rule, &nodes) {
                continue;
            }
            if !rule.members_off.is_empty() && rule.member_off(&matched_chain(module, rule, &nodes)).is_some() {
                continue;
            }
            let act = rule.act.and_then(|a| Act::from_op(&module.graph.node(nodes[a]).op));
            patches.push(Patch {
                rule: ri,
                rule_name: rule.name.clone(),
                replacement: Replacement {
                    anchor: nodes[rule.anchor],
                    root: nodes[0],
                    fold: rule.fold.map(|f| nodes[f]),
                    act,
                },
                matched: nodes,
            });
        }
    }
    patches
}

/// Keeps patches that share no node, the first (highest priority) winning; `patches` must be in
/// priority order, as [`find_patches`] returns them.
pub fn select(patches: Vec<Patch>) -> Vec<Patch> {
    let mut taken = std::collections::HashSet::new();
    patches
        .into_iter()
        .filter(|p| {
            if p.matched.iter().any(|n| taken.contains(n)) {
                return false;
            }
            taken.extend(p.matched.iter().copied());
            true
        })
        .collect()
}

// ---------------------------------------------------------------- applying

/// QAT: keeps batch norm `bn_id` inside `anchor`, its buffers moved to `<anchor>.bn.*` in place.
fn keep_bn(module: &mut Module, anchor: NodeId, bn_id: NodeId) -> Result<(), Box<Diagnostic>> {
    let anchor_name = module.graph.node(anchor).name.clone();
    let bn_node = module.graph.node(bn_id).clone();
    let Op::BatchNorm(bn_op) = &bn_node.op else {
        return Err(bug(format!("`{}` is kept but is not a batch norm", bn_node.name)));
    };
    let mut roles = vec![];
    for (role, kept) in BN_ROLES.iter().zip(KEPT_BN_ROLES) {
        let old = key_of(module, bn_id, role).ok_or_else(|| bug(format!("`{}` has no `{role}`", bn_node.name)))?;
        let new = format!("{anchor_name}.{kept}");
        let Some((at, _, mut p)) = module.params.shift_remove_full(&old) else {
            return Err(bug(format!("`{old}` is not in the parameter store")));
        };
        p.owner = anchor_name.clone();
        p.provenance = Provenance::Derived {
            transform: "move".into(),
            from: vec![old],
        };
        module.params.shift_insert(at, new.clone(), p);
        roles.push((kept, new));
    }
    let node = module.graph.node_mut(anchor);
    let bn = Some(BatchNorm {
        eps: bn_op.eps,
        momentum: bn_op.momentum,
    });
    match &mut node.op {
        Op::Conv(c) => c.bn = bn,
        Op::Linear(l) => l.bn = bn,
        other => return Err(bug(format!("a `{}` cannot keep a batch norm", other.name()))),
    }
    node.params.extend(roles);
    Ok(())
}

/// Applies one patch (found on the module as it is now). On error nothing has changed.
pub fn apply(module: &mut Module, patch: &Patch, mode: Mode) -> Result<(), Box<Diagnostic>> {
    let r = &patch.replacement;
    if let Some(bn) = r.fold {
        match mode {
            Mode::Ptq => fold::fold_into(module, r.anchor, bn, &patch.rule_name)?,
            Mode::Qat => keep_bn(module, r.anchor, bn)?,
        }
    }
    if let Some(act) = &r.act {
        match &mut module.graph.node_mut(r.anchor).op {
            Op::Conv(c) => c.act = Some(act.clone()),
            Op::Linear(l) => l.act = Some(act.clone()),
            Op::Add { act: a } => *a = Some(act.clone()),
            other => return Err(bug(format!("a `{}` cannot take an activation", other.name()))),
        }
    }
    if r.root != r.anchor {
        let ty = module.graph.node(r.root).ty.clone();
        module.graph.redirect_users(r.root, r.anchor);
        module.graph.node_mut(r.anchor).ty = ty;
    }
    for &n in &patch.matched {
        if n == r.anchor {
            continue;
        }
        if let Some(node) = module.graph.remove(n) {
            for (_, key) in node.params {
                module.params.shift_remove(&key);
            }
        }
    }
    Ok(())
}

/// Rewrites `module` with `rules` until nothing matches or `max_rounds` rounds have applied
/// patches. Fold errors are user errors (every one of the round is reported).
pub fn run(module: &mut Module, rules: &RuleSet, mode: Mode, max_rounds: usize) -> Result<Report, Vec<Diagnostic>> {
    let mut counts = vec![0usize; rules.rules.len()];
    let mut rounds = 0;
    let stop = loop {
        let chosen = select(find_patches(module, rules));
        if chosen.is_empty() {
            break Stop::FixedPoint;
        }
        if rounds == max_rounds {
            break Stop::Cap;
        }
        let mut errors = vec![];
        for patch in &chosen {
            match apply(module, patch, mode) {
                Ok(()) => counts[patch.rule] += 1,
                Err(d) => errors.push(*d),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        rounds += 1;
    };
    Ok(Report {
        mode,
        fired: rules
            .rules
            .iter()
            .zip(counts)
            .map(|(r, count)| Fired {
                rule: r.name.clone(),
                chain: r.chain_text(),
                summary: r.summary().to_string(),
                count,
            })
            .collect(),
        off: rules.off_names(),
        rounds,
        max_rounds,
        stop,
    })
}

/// Stage `fused`: the recipe's rule set applied to a fixed point.
pub struct Fuse;

impl Pass for Fuse {
    fn name(&self) -> &'static str {
        "fuse"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        let rules = crate::rules::load(cx.loaded)?;
        let mode = if cx.qat { Mode::Qat } else { Mode::Ptq };
        let report = run(module, &rules, mode, MAX_ROUNDS).map_err(PassError::User)?;
        let changed = report.total() > 0;
        module.rewrite = Some(report);
        Ok(if changed { Changed::Yes } else { Changed::No })
    }
}
