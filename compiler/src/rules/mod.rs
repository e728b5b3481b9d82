//! Rewrite rules as data: the prelude (`prelude.qrecipe`, shipped with `include_str!` and parsed
//! with the recipe parser) and a recipe's own `rule` items, checked into typed patterns that the
//! one engine (`crate::rewrite`) matches; the recipe's control over them (`fuse off NAME`, and
//! `fuse A -> B` chains that require an active rule); and the load-time refusal of rule sets in
//! which two rules of the same size could claim the same nodes.
//!
//! A pattern node is an op or an op class (`conv1d|conv2d`, matching either); a rule with classes
//! fuses one chain per choice of ops, each with a member name (`conv2d_bn_relu6`) that `fuse off`
//! takes to turn that chain alone off. `crate::why_not` explains what the rules did to one node.
//!
//! What a rule may say is what the engine can build: the result is the pattern's one conv1d,
//! conv2d, linear or add (the *anchor*, which keeps its name and inputs), absorbing a
//! `batch_norm` right after it (`fold: b`) and/or an activation at the pattern's root
//! (`act: r` or `act: relu`). Every other matched node is removed, so each must be
//! `single_use`.

use std::path::Path;
use std::sync::OnceLock;

use qc_dsl::ast::{BinaryOp, Constraint, ExprKind, Ident, OpClass, Pattern, PatternArg, RuleDef};
use qc_dsl::diag::did_you_mean;
use qc_dsl::sections::FuseOp;
use qc_dsl::{Diagnostic, Loaded, Span};

use crate::pass::PassError;

/// The standard rules, as text.
pub const PRELUDE: &str = include_str!("prelude.qrecipe");
/// Where the prelude lives in the source tree (shown in messages about it).
pub const PRELUDE_PATH: &str = "compiler/src/rules/prelude.qrecipe";

/// Where a rule was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOrigin {
    Prelude,
    Recipe,
}

/// One argument of a pattern node.
#[derive(Clone, Debug, PartialEq)]
pub enum PArg {
    /// `?x`: any node, left as it is.
    Var(String),
    /// Another pattern node, by index.
    Node(usize),
}

/// One op of a pattern. Index 0 is the root; children follow their parents (preorder).
#[derive(Clone, Debug, PartialEq)]
pub struct PNode {
    /// The op kinds matched: one, or an op class (`conv1d|conv2d`) in the order written
    /// (`hardtanh` is normalised to `clamp`; no kind twice).
    pub kinds: Vec<FuseOp>,
    pub binding: Option<String>,
    pub args: Vec<PArg>,
    /// The pattern node this one is an argument of, and at which position.
    pub parent: Option<(usize, usize)>,
    /// The op name as written (for messages).
    pub span: Span,
}

impl PNode {
    /// `conv2d`, or `conv1d|conv2d` for a class.
    pub fn class(&self) -> String {
        class_text(&self.kinds)
    }

    pub fn has(&self, op: FuseOp) -> bool {
        self.kinds.contains(&normalise(op))
    }
}

/// `conv1d|conv2d`.
pub fn class_text(kinds: &[FuseOp]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("|")
}

/// One chain of a rule turned off by `fuse off MEMBER` (`fuse off conv2d_bn_relu` turns off
/// `conv2d -> batch_norm -> relu` in `conv_bn_act`, leaving the rule's other chains on).
#[derive(Clone, Debug, PartialEq)]
pub struct MemberOff {
    pub name: String,
    pub chain: Vec<FuseOp>,
    /// The name in `fuse off`.
    pub span: Span,
}

/// A literal on the right of an attribute test.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Number(f64),
    Bool(bool),
}

/// A `where` condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// The node has exactly one user and is not a model output.
    SingleUse(usize),
    /// `c.groups == 1`: an attribute of a node (every element of a list attribute) against a literal.
    Attr {
        node: usize,
        attr: String,
        op: BinaryOp,
        value: Literal,
    },
}

/// A checked rule: a pattern, its conditions, and what the anchor absorbs.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// The doc comment: the rule's identity.
    pub doc: String,
    pub origin: RuleOrigin,
    /// The rule's name in the recipe (meaningless for prelude rules, whose text is not part of the
    /// recipe's source map).
    pub span: Span,
    pub nodes: Vec<PNode>,
    pub tests: Vec<Test>,
    /// The conv/linear/add that becomes the fused op.
    pub anchor: usize,
    /// The batch norm folded into (PTQ) or kept inside (QAT) the anchor.
    pub fold: Option<usize>,
    /// The activation fused into the anchor (always the root).
    pub act: Option<usize>,
    /// Chains of this rule turned off by `fuse off MEMBER` (see [`Rule::members`]).
    pub members_off: Vec<MemberOff>,
}

impl Rule {
    /// Ops matched: the rule's benefit (bigger patterns win).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The pattern nodes from the anchor to the root: anchor, folded batch norm, activation.
    pub fn chain_nodes(&self) -> Vec<usize> {
        let mut out = vec![self.anchor];
        out.extend(self.fold);
        out.extend(self.act);
        out
    }

    /// Every chain of ops the rule fuses, as `fuse A -> B -> C` names them: one per choice of an
    /// op from each class (`conv1d|conv2d -> relu` has two), in the order written.
    pub fn chains(&self) -> Vec<Vec<FuseOp>> {
        let mut out: Vec<Vec<FuseOp>> = vec![vec![]];
        for p in self.chain_nodes() {
            out = out
                .iter()
                .flat_map(|c| {
                    self.nodes[p].kinds.iter().map(move |k| {
                        let mut c = c.clone();
                        c.push(*k);
                        c
                    })
                })
                .collect();
        }
        out
    }

    /// The rule's chains with their member names (`conv2d_bn_relu`), which `fuse off` accepts
    /// for a rule with op classes (a rule without has one chain, named by the rule's name).
    pub fn members(&self) -> Vec<(String, Vec<FuseOp>)> {
        self.chains().into_iter().map(|c| (member_name(&c), c)).collect()
    }

    /// Whether the rule fuses `chain` (normalised ops): one of its chains, not turned off.
    pub fn fuses(&self, chain: &[FuseOp]) -> bool {
        self.chains().iter().any(|c| c == chain) && self.member_off(chain).is_none()
    }

    /// The `fuse off` that turned `chain` off in this rule, if one did.
    pub fn member_off(&self, chain: &[FuseOp]) -> Option<&MemberOff> {
        self.members_off.iter().find(|m| m.chain == chain)
    }

    /// `conv1d|conv2d -> batch_norm -> relu|relu6`.
    pub fn chain_text(&self) -> String {
        self.chain_nodes()
            .iter()
            .map(|&p| self.nodes[p].class())
            .collect::<Vec<_>>()
            .join(" -> ")
    }

    /// One rule per choice of an op from each class (the rule itself when it has no class),
    /// leaving out the chains turned off: what the overlap check compares.
    pub fn concrete(&self) -> Vec<Rule> {
        let mut out = vec![self.clone()];
        for p in 0..self.nodes.len() {
            out = out
                .iter()
                .flat_map(|r| {
                    self.nodes[p].kinds.iter().map(move |k| {
                        let mut r = r.clone();
                        r.nodes[p].kinds = vec![*k];
                        r
                    })
                })
                .collect();
        }
        out.retain(|r| r.chains().first().is_some_and(|c| self.member_off(c).is_none()));
        out
    }

    /// The first line of the doc comment (or a placeholder).
    pub fn summary(&self) -> &str {
        self.doc
            .lines()
            .next()
            .filter(|l| !l.is_empty())
            .unwrap_or("(no doc comment)")
    }
}

fn chain_text(ops: &[FuseOp]) -> String {
    ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(" -> ")
}

/// The member name of a chain: its ops joined by `_`, `batch_norm` written `bn`
/// (`conv2d_bn_relu`): the names the prelude's rules had before they had op classes.
pub fn member_name(chain: &[FuseOp]) -> String {
    chain
        .iter()
        .map(|o| if *o == FuseOp::BatchNorm { "bn" } else { o.name() })
        .collect::<Vec<_>>()
        .join("_")
}

/// `hardtanh` and `clamp` are one op in the IR.
fn normalise(op: FuseOp) -> FuseOp {
    if op == FuseOp::Hardtanh {
        FuseOp::Clamp
    } else {
        op
    }
}

/// The rules in force for one recipe, in priority order (bigger patterns first, then the
/// prelude's before the recipe's, each in source order), with those turned off kept aside.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Rules turned off by `fuse off`, with the span of the `fuse off` name.
    pub off: Vec<(Rule, Span)>,
}

impl RuleSet {
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// What `fuse off` turned off, for `--stats`: whole rules, then single chains (member names).
    pub fn off_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.off.iter().map(|(r, _)| r.name.clone()).collect();
        for m in self.rules.iter().flat_map(|r| &r.members_off) {
            if !out.contains(&m.name) {
                out.push(m.name.clone());
            }
        }
        out
    }
}

/// The prelude's rules, checked once. An error here is a compiler bug (tested).
pub fn prelude() -> Result<&'static [Rule], &'static str> {
    static PRELUDE_RULES: OnceLock<Result<Vec<Rule>, String>> = OnceLock::new();
    PRELUDE_RULES
        .get_or_init(|| check_prelude(PRELUDE))
        .as_deref()
        .map_err(|e| e.as_str())
}

/// Checks prelude text: it must parse, hold only sound rules with doc comments and unique names,
/// and no two of them may overlap. The error is the rendered diagnostics (for a bug report).
pub fn check_prelude(text: &str) -> Result<Vec<Rule>, String> {
    let loaded = qc_dsl::load_str(PRELUDE_PATH, Path::new(PRELUDE_PATH), text.to_string());
    let describe = |diags: &[Diagnostic]| {
        let rendered = qc_dsl::diag::render_plain(diags, &loaded.sources);
        format!("the rule prelude ({PRELUDE_PATH}) is broken:\n{rendered}")
    };
    if !loaded.diagnostics.is_empty() {
        return Err(describe(&loaded.diagnostics));
    }
    let r = &loaded.recipe;
    if !r.models.is_empty() || !r.blocks.is_empty() || !r.quantize.is_empty() || !r.weights.is_empty() {
        return Err(format!(
            "the rule prelude ({PRELUDE_PATH}) holds items other than rules"
        ));
    }
    let mut diags = vec![];
    let rules: Vec<Rule> = r
        .rules
        .iter()
        .filter_map(|d| check_rule(d, RuleOrigin::Prelude, &mut diags))
        .collect();
    duplicate_names(&r.rules, &mut diags);
    if !diags.is_empty() {
        return Err(describe(&diags));
    }
    if let Some(r) = rules.iter().find(|r| r.doc.trim().is_empty()) {
        return Err(format!("prelude rule `{}` has no doc comment", r.name));
    }
    if let Some((a, b)) = first_overlap(&rules) {
        return Err(format!(
            "prelude rules `{}` and `{}` can match the same nodes",
            a.name, b.name
        ));
    }
    Ok(rules)
}

/// The rule set of a recipe: the prelude, minus what `fuse off` turns off, plus the recipe's
/// rules; checks the recipe's rules, its `fuse off` names and `fuse` chains, and refuses
/// ambiguous sets. Recipe errors are `PassError::User`; a broken prelude is `Internal`.
pub fn load(loaded: &Loaded) -> Result<RuleSet, PassError> {
    let prelude = prelude().map_err(|message| PassError::Internal {
        pass: "rules".into(),
        message: message.to_string(),
    })?;
    let mut diags = vec![];
    let mut all: Vec<Rule> = prelude.to_vec();
    let taken: Vec<bool> = loaded
        .recipe
        .rules
        .iter()
        .map(|def| prelude_name_taken(prelude, def, &mut diags))
        .collect();
    duplicate_names(&loaded.recipe.rules, &mut diags);
    for (def, taken) in loaded.recipe.rules.iter().zip(taken) {
        if let Some(rule) = check_rule(def, RuleOrigin::Recipe, &mut diags) {
            if !taken && !all.iter().any(|r| r.name == rule.name) {
                all.push(rule);
            }
        }
    }
    let quantize = loaded.sections.quantize.as_ref();
    let mut set = RuleSet::default();
    let off: Vec<(String, Span)> = quantize
        .map(|q| q.fuse_off.iter().map(|f| (f.value.clone(), f.span)).collect())
        .unwrap_or_default();
    for (name, span) in &off {
        if all.iter().any(|r| &r.name == name) {
            continue;
        }
        // Not a rule: a member name turns that one chain off in every rule with op classes that
        // has it (a rule without classes has one chain, named by the rule's name).
        let mut found = false;
        for rule in all.iter_mut().filter(|r| r.chains().len() > 1) {
            if let Some((_, chain)) = rule.members().into_iter().find(|(m, _)| m == name) {
                rule.members_off.push(MemberOff {
                    name: name.clone(),
                    chain,
                    span: *span,
                });
                found = true;
            }
        }
        if !found {
            diags.push(unknown_rule(name, *span, &all));
        }
    }
    for rule in all {
        match off.iter().find(|(n, _)| *n == rule.name) {
            Some((_, span)) => set.off.push((rule, *span)),
            None => set.rules.push(rule),
        }
    }
    // Bigger patterns first; the sort is stable, so prelude before recipe, each in source order.
    set.rules.sort_by_key(|r| std::cmp::Reverse(r.size()));
    overlaps(&set.rules, &mut diags);
    if let Some(q) = quantize {
        for chain in &q.fuse {
            if let Some(d) = check_fuse_chain(&set, chain) {
                diags.push(d);
            }
        }
    }
    if diags.is_empty() {
        Ok(set)
    } else {
        diags.sort_by_key(|d| (d.span.start, d.span.end));
        Err(PassError::User(diags))
    }
}

/// A recipe rule may not take a prelude rule's name, nor a member name of one (`conv2d_relu`),
/// which `fuse off` would then mean two things by.
fn prelude_name_taken(prelude: &[Rule], def: &RuleDef, diags: &mut Vec<Diagnostic>) -> bool {
    let name = &def.name.name;
    let (message, p) = if let Some(p) = prelude.iter().find(|p| &p.name == name) {
        (format!("the prelude already has a rule `{name}`"), p)
    } else if let Some(p) = prelude.iter().find(|p| p.members().iter().any(|(m, _)| m == name)) {
        (format!("`{name}` names a chain of the prelude's rule `{}`", p.name), p)
    } else {
        return false;
    };
    diags.push(
        Diagnostic::new("qc::duplicate-rule", def.name.span, message)
            .label("name taken")
            .help(format!(
                "rule names are unique, and `fuse off` takes the prelude's chain names too; rename this one (the \
                 prelude's `{}` fuses `{}`; turn `{name}` off with `fuse off {name}` in `quantize {{ }}` if yours \
                 replaces it)",
                p.name,
                p.chain_text(),
            )),
    );
    true
}

fn unknown_rule(name: &str, span: Span, all: &[Rule]) -> Diagnostic {
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    let members: Vec<String> = all
        .iter()
        .filter(|r| r.chains().len() > 1)
        .flat_map(|r| r.members().into_iter().map(|(m, _)| m))
        .collect();
    let candidates = names.iter().copied().chain(members.iter().map(|m| m.as_str()));
    let help = match did_you_mean(name, candidates) {
        Some(m) => m,
        None => format!(
            "rules are named in {PRELUDE_PATH} and by the recipe's `rule` items: {}; one chain of a rule with \
             op classes is named by its ops, e.g. `conv2d_bn_relu`",
            names.join(", ")
        ),
    };
    Diagnostic::new(
        "qc::unknown-rule",
        span,
        format!("there is no rule `{name}` to turn off"),
    )
    .label("unknown rule")
    .help(help)
}

/// `fuse A -> B`: some active rule must fuse exactly that chain.
fn check_fuse_chain(set: &RuleSet, chain: &qc_dsl::sections::FuseChain) -> Option<Diagnostic> {
    let want: Vec<FuseOp> = chain.ops.iter().map(|o| normalise(o.value)).collect();
    if set.rules.iter().any(|r| r.fuses(&want)) {
        return None;
    }
    let written: Vec<FuseOp> = chain.ops.iter().map(|o| o.value).collect();
    let text = chain_text(&written);
    let member_off = set.rules.iter().find_map(|r| r.member_off(&want).map(|m| (r, m)));
    if let Some((r, m)) = member_off {
        return Some(
            Diagnostic::new(
                "qc::fuse-chain",
                chain.span,
                format!(
                    "`fuse {text}` asks for rule `{}` (`{}`), which is turned off for this chain",
                    r.name, m.name
                ),
            )
            .label("required here")
            .note(m.span, "turned off here")
            .help(format!("remove `fuse off {}`, or remove this `fuse` line", m.name)),
        );
    }
    if let Some((r, off_span)) = set.off.iter().find(|(r, _)| r.chains().contains(&want)) {
        return Some(
            Diagnostic::new(
                "qc::fuse-chain",
                chain.span,
                format!("`fuse {text}` asks for rule `{}`, which is turned off", r.name),
            )
            .label("required here")
            .note(*off_span, "turned off here")
            .help(format!("remove `fuse off {}`, or remove this `fuse` line", r.name)),
        );
    }
    let first = want[0];
    let near: Vec<String> = set
        .rules
        .iter()
        .filter(|r| r.nodes[r.anchor].has(first))
        .map(|r| format!("`{}` ({})", r.chain_text(), r.name))
        .collect();
    let near = if near.is_empty() {
        String::new()
    } else {
        format!("; active rules starting with `{}`: {}", first.name(), near.join(", "))
    };
    Some(
        Diagnostic::new("qc::fuse-chain", chain.span, format!("no active rule fuses `{text}`"))
            .label("no rule for this chain")
            .help(format!(
                "write a `rule` for it (see docs/recipe-language.md, \"Rules\"), or remove this line{near}"
            )),
    )
}

fn duplicate_names(defs: &[RuleDef], diags: &mut Vec<Diagnostic>) {
    for (i, d) in defs.iter().enumerate() {
        if let Some(first) = defs[..i].iter().find(|f| f.name.name == d.name.name) {
            diags.push(
                Diagnostic::new(
                    "qc::duplicate-rule",
                    d.name.span,
                    format!("a second rule named `{}`", d.name.name),
                )
                .label("second rule")
                .note(first.name.span, "first rule here")
                .help("rule names are unique (`fuse off NAME` names one); rename one of them"),
            );
        }
    }
}

/// Refuses pairs of active rules of the same size that could match the same nodes.
fn overlaps(rules: &[Rule], diags: &mut Vec<Diagnostic>) {
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.size() == b.size() && active_overlap(a, b) {
                // Point at the recipe's rule (a prelude rule has no place in the recipe).
                let (here, other) = if b.origin == RuleOrigin::Recipe { (b, a) } else { (a, b) };
                let off_name = |r: &Rule, with: &Rule| -> String {
                    let names = overlapping_members(r, with);
                    if names.len() == r.concrete().len() {
                        r.name.clone()
                    } else {
                        names.join("`, `fuse off ")
                    }
                };
                let whose = |r: &Rule| match r.origin {
                    RuleOrigin::Prelude => format!("the prelude's rule `{}`", r.name),
                    RuleOrigin::Recipe => format!("rule `{}`", r.name),
                };
                let mut d = Diagnostic::new(
                    "qc::rule-overlap",
                    here.span,
                    format!(
                        "{} and {} can match the same nodes, and both fuse {} ops",
                        whose(here),
                        whose(other),
                        a.size()
                    ),
                )
                .label("ambiguous with another rule")
                .help(format!(
                    "which one applies would be arbitrary: turn one off (`fuse off {}` or `fuse off {}` in \
                     `quantize {{ }}`), or make one pattern bigger or narrower",
                    off_name(other, here),
                    off_name(here, other)
                ));
                if other.origin == RuleOrigin::Recipe {
                    d = d.note(other.span, format!("`{}` is here", other.name));
                }
                diags.push(d);
            }
        }
    }
}

fn first_overlap(rules: &[Rule]) -> Option<(&Rule, &Rule)> {
    rules.iter().enumerate().find_map(|(i, a)| {
        rules[i + 1..]
            .iter()
            .find(|b| a.size() == b.size() && active_overlap(a, b))
            .map(|b| (a, b))
    })
}

/// Whether the chains of `a` and `b` that are not turned off could match the same nodes.
fn active_overlap(a: &Rule, b: &Rule) -> bool {
    !overlapping_members(a, b).is_empty()
}

/// The member names of `a`'s chains (not turned off) that could match nodes that `b`'s could.
fn overlapping_members(a: &Rule, b: &Rule) -> Vec<String> {
    let theirs = b.concrete();
    a.concrete()
        .iter()
        .filter(|x| theirs.iter().any(|y| can_overlap(x, y)))
        .filter_map(|x| x.chains().first().map(|c| member_name(c)))
        .collect()
}

/// Whether some graph has a node that both rules' patterns match: some node of `a` and some node
/// of `b` unify (a kind in common; their inputs unify where both are ops; their users unify where both
/// have one, which `single_use` makes the same node). Attribute tests are ignored, so this can
/// refuse rules that never meet in practice, never the other way round.
pub fn can_overlap(a: &Rule, b: &Rule) -> bool {
    (0..a.nodes.len()).any(|i| (0..b.nodes.len()).any(|j| unify(a, i, b, j, None)))
}

fn unify(a: &Rule, i: usize, b: &Rule, j: usize, from: Option<(usize, usize)>) -> bool {
    let (na, nb) = (&a.nodes[i], &b.nodes[j]);
    if !na.kinds.iter().any(|k| nb.kinds.contains(k)) || na.args.len() != nb.args.len() {
        return false;
    }
    let down = na.args.iter().zip(&nb.args).all(|(x, y)| match (x, y) {
        (PArg::Node(ci), PArg::Node(cj)) if from == Some((*ci, *cj)) => true,
        (PArg::Node(ci), PArg::Node(cj)) => unify_down(a, *ci, b, *cj),
        _ => true,
    });
    down && match (na.parent, nb.parent) {
        (Some((pi, port_i)), Some((pj, port_j))) => port_i == port_j && unify(a, pi, b, pj, Some((i, j))),
        _ => true,
    }
}

fn unify_down(a: &Rule, i: usize, b: &Rule, j: usize) -> bool {
    let (na, nb) = (&a.nodes[i], &b.nodes[j]);
    na.kinds.iter().any(|k| nb.kinds.contains(k))
        && na.args.len() == nb.args.len()
        && na.args.iter().zip(&nb.args).all(|(x, y)| match (x, y) {
            (PArg::Node(ci), PArg::Node(cj)) => unify_down(a, *ci, b, *cj),
            _ => true,
        })
}

// ---------------------------------------------------------------- checking one rule

/// Ops a pattern may name, with their input counts.
fn arity(op: FuseOp) -> usize {
    if op == FuseOp::Add {
        2
    } else {
        1
    }
}

/// Attributes a `where` test may read, per op kind (those of `Op::attrs`).
fn attrs_of(op: FuseOp) -> &'static [&'static str] {
    match op {
        FuseOp::Conv1d | FuseOp::Conv2d => &["out", "kernel", "stride", "pad", "dilation", "groups", "bias"],
        FuseOp::Linear => &["out", "bias"],
        FuseOp::BatchNorm => &["eps", "momentum"],
        FuseOp::Hardtanh | FuseOp::Clamp => &["min", "max"],
        FuseOp::Relu | FuseOp::Relu6 | FuseOp::Add => &[],
    }
}

/// Ops the engine can turn into a fused op.
const ANCHORS: [FuseOp; 4] = [FuseOp::Conv1d, FuseOp::Conv2d, FuseOp::Linear, FuseOp::Add];
const ACTS: [FuseOp; 4] = [FuseOp::Relu, FuseOp::Relu6, FuseOp::Clamp, FuseOp::Hardtanh];
const RESULT_ARGS: [&str; 2] = ["fold", "act"];

struct Builder<'a> {
    nodes: Vec<PNode>,
    vars: Vec<Ident>,
    diags: &'a mut Vec<Diagnostic>,
    ok: bool,
}

impl Builder<'_> {
    fn error(&mut self, code: &'static str, span: Span, message: String, label: &str, help: String) {
        self.ok = false;
        self.diags
            .push(Diagnostic::new(code, span, message).label(label).help(help));
    }

    /// The kinds of an op class (`conv1d|conv2d`), normalised, each once; reports unknown ops
    /// and classes whose ops take different numbers of inputs.
    fn op_class(&mut self, class: &OpClass) -> Vec<FuseOp> {
        let mut kinds = vec![];
        for name in &class.names {
            match FuseOp::from_name(&name.name) {
                Some(k) if !kinds.contains(&normalise(k)) => kinds.push(normalise(k)),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = FuseOp::ALL.iter().map(|o| o.name()).collect();
                    let help = match did_you_mean(&name.name, names.iter().copied()) {
                        Some(m) => format!("{m} patterns match the ops {}", list(&names)),
                        None => format!("patterns match the ops {}", list(&names)),
                    };
                    self.error(
                        "qc::rule-pattern",
                        name.span,
                        format!("`{}` cannot appear in a rule pattern", name.name),
                        "not a fusable op",
                        help,
                    );
                }
            }
        }
        if kinds.iter().any(|k| arity(*k) != arity(kinds[0])) {
            self.error(
                "qc::rule-pattern",
                class.span,
                format!("the ops of `{}` take different numbers of inputs", class.text()),
                "mixed arities",
                "an op class groups ops that are used alike, e.g. `conv1d|conv2d` or `relu|relu6`".into(),
            );
        }
        kinds
    }

    fn pattern(&mut self, p: &Pattern, parent: Option<(usize, usize)>) {
        let idx = self.nodes.len();
        let kinds = self.op_class(&p.op);
        if let Some(b) = &p.binding {
            let taken = self.nodes.iter().any(|n| n.binding.as_deref() == Some(b.name.as_str()));
            if taken || self.vars.iter().any(|v| v.name == b.name) {
                self.error(
                    "qc::rule-binding",
                    b.span,
                    format!("`{}` is bound twice in this pattern", b.name),
                    "bound again",
                    "give each op of a pattern its own name".into(),
                );
            }
        }
        let want = kinds.first().map(|k| arity(*k));
        self.nodes.push(PNode {
            kinds,
            binding: p.binding.as_ref().map(|b| b.name.clone()),
            args: vec![],
            parent,
            span: p.op.span,
        });
        if let Some(want) = want.filter(|w| p.args.len() != *w) {
            let example = if want == 2 { "add(?a, ?b)" } else { "relu(?x)" };
            self.error(
                "qc::rule-pattern",
                p.span,
                format!(
                    "`{}` takes {want} input{} in a pattern, found {}",
                    p.op.text(),
                    if want == 1 { "" } else { "s" },
                    p.args.len()
                ),
                "wrong number of inputs",
                format!("write each input as a pattern or a `?variable`, e.g. `{example}`"),
            );
        }
        for (port, a) in p.args.iter().enumerate() {
            let arg = match a {
                PatternArg::Var(v) => {
                    if self.vars.iter().any(|w| w.name == v.name) {
                        self.error(
                            "qc::rule-binding",
                            v.span,
                            format!("`?{}` appears twice in this pattern", v.name),
                            "used again",
                            "each `?variable` stands for one input; use another name".into(),
                        );
                    } else if self.nodes.iter().any(|n| n.binding.as_deref() == Some(v.name.as_str())) {
                        self.error(
                            "qc::rule-binding",
                            v.span,
                            format!("`?{}` has the name of a bound op", v.name),
                            "name taken",
                            "use another name for the variable".into(),
                        );
                    }
                    self.vars.push(v.clone());
                    PArg::Var(v.name.clone())
                }
                PatternArg::Op(child) => {
                    let c = self.nodes.len();
                    self.pattern(child, Some((idx, port)));
                    PArg::Node(c)
                }
            };
            self.nodes[idx].args.push(arg);
        }
    }

    fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.binding.as_deref() == Some(name))
    }

    /// A binding used in `where` or in the result; reports an unbound one.
    fn bound(&mut self, id: &Ident) -> Option<usize> {
        let found = self.node_named(&id.name);
        if found.is_none() {
            let names: Vec<&str> = self.nodes.iter().filter_map(|n| n.binding.as_deref()).collect();
            let help = match did_you_mean(&id.name, names.iter().copied()) {
                Some(m) => m,
                None if names.is_empty() => "bind an op of the pattern to a name first: `c = conv2d(?x)`".into(),
                None => format!("the pattern binds {}", list(&names)),
            };
            self.error(
                "qc::rule-binding",
                id.span,
                format!("`{}` is not bound in the pattern", id.name),
                "unbound name",
                help,
            );
        }
        found
    }
}

fn list(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The pattern node a rule's result names: the one whose op (or op class) is the result's,
/// which must be one the engine can fuse into.
fn resolve_anchor(b: &mut Builder<'_>, res: &qc_dsl::ast::RuleResult) -> Option<usize> {
    let text = res.op.text();
    let kinds: Option<Vec<FuseOp>> = res
        .op
        .names
        .iter()
        .map(|n| FuseOp::from_name(&n.name).map(normalise))
        .collect();
    let kinds = kinds.filter(|ks| ks.iter().all(|k| ANCHORS.contains(k)));
    let Some(mut kinds) = kinds else {
        let names: Vec<&str> = ANCHORS.iter().map(|o| o.name()).collect();
        let help = format!(
            "the result is the op that absorbs the others: one of {} or a class of them like `conv1d|conv2d` \
             (with `fold:` and `act:`)",
            list(&names)
        );
        let wrong = res
            .op
            .names
            .iter()
            .find(|n| !FuseOp::from_name(&n.name).is_some_and(|k| ANCHORS.contains(&k)));
        let help = match wrong.and_then(|w| did_you_mean(&w.name, names.iter().copied())) {
            Some(m) => format!("{m} {help}"),
            None => help,
        };
        b.error(
            "qc::rule-result",
            res.op.span,
            format!("a rule cannot produce `{text}`"),
            "the engine cannot build this",
            help,
        );
        return None;
    };
    kinds.sort_by_key(|k| k.name());
    kinds.dedup();
    let same = |n: &PNode| {
        let mut ks = n.kinds.clone();
        ks.sort_by_key(|k| k.name());
        ks == kinds
    };
    let found: Vec<usize> = (0..b.nodes.len()).filter(|&i| same(&b.nodes[i])).collect();
    match found.as_slice() {
        [one] => Some(*one),
        [] => {
            let near = b.nodes.iter().find(|n| kinds.iter().any(|k| n.kinds.contains(k)));
            let help = match near {
                Some(n) => format!(
                    "the result names the pattern's op as written there: `{}(...)` (one op of a class stands for \
                     whichever the pattern matched)",
                    n.class()
                ),
                None => {
                    "the result names the pattern's conv1d, conv2d, linear or add that absorbs the other ops".into()
                }
            };
            b.error(
                "qc::rule-result",
                res.op.span,
                format!("the result is a `{text}`, but the pattern has none"),
                "not in the pattern",
                help,
            );
            None
        }
        _ => {
            b.error(
                "qc::rule-result",
                res.op.span,
                format!(
                    "the pattern has {} `{text}` ops; the result can be only one",
                    found.len()
                ),
                "ambiguous",
                "a rule fuses into one conv1d, conv2d, linear or add; match one of them".into(),
            );
            None
        }
    }
}

/// Checks one rule into a [`Rule`]; every problem goes to `diags` (spans into the rule's file).
pub fn check_rule(def: &RuleDef, origin: RuleOrigin, diags: &mut Vec<Diagnostic>) -> Option<Rule> {
    let mut b = Builder {
        nodes: vec![],
        vars: vec![],
        diags,
        ok: true,
    };
    b.pattern(&def.pattern, None);
    if !b.ok {
        // An unknown op or a wrong arity: what the rest of the rule says about it would mislead.
        return None;
    }

    // where
    let mut tests = vec![];
    for c in &def.constraints {
        match c {
            Constraint::Predicate { name, arg, .. } => {
                let node = b.bound(arg);
                if name.name != "single_use" {
                    let help = match did_you_mean(&name.name, ["single_use"]) {
                        Some(m) => m,
                        None => {
                            "the condition a rule can test is `single_use(b)`, and attributes: `c.groups == 1`".into()
                        }
                    };
                    b.error(
                        "qc::rule-where",
                        name.span,
                        format!("unknown condition `{}`", name.name),
                        "unknown condition",
                        help,
                    );
                } else if let Some(n) = node {
                    tests.push(Test::SingleUse(n));
                }
            }
            Constraint::Compare {
                binding,
                attr,
                op,
                value,
                ..
            } => {
                let Some(n) = b.bound(binding) else { continue };
                // A class's node has the attributes all of its ops have.
                let class = b.nodes[n].class();
                let kinds = b.nodes[n].kinds.clone();
                let known: Vec<&str> = attrs_of(kinds[0])
                    .iter()
                    .copied()
                    .filter(|a| kinds.iter().all(|k| attrs_of(*k).contains(a)))
                    .collect();
                if !known.contains(&attr.name.as_str()) {
                    let help = match (did_you_mean(&attr.name, known.iter().copied()), known.is_empty()) {
                        (Some(m), _) => m,
                        (None, true) => format!("`{class}` has no attributes to test"),
                        (None, false) => format!("`{class}` has {}", list(&known)),
                    };
                    b.error(
                        "qc::rule-where",
                        attr.span,
                        format!("`{class}` has no attribute `{}`", attr.name),
                        "unknown attribute",
                        help,
                    );
                    continue;
                }
                let value = match value.kind {
                    ExprKind::Int(v) => Literal::Number(v as f64),
                    ExprKind::Float(v) => Literal::Number(v),
                    ExprKind::Bool(v) => Literal::Bool(v),
                    _ => continue,
                };
                if matches!(value, Literal::Bool(_)) && !matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
                    b.error(
                        "qc::rule-where",
                        c.span(),
                        format!("`{}` compares a boolean with `{}`", attr.name, op.symbol()),
                        "booleans compare with `==` or `!=`",
                        format!("write `{}.{} == true` or `!= true`", binding.name, attr.name),
                    );
                    continue;
                }
                tests.push(Test::Attr {
                    node: n,
                    attr: attr.name.clone(),
                    op: *op,
                    value,
                });
            }
        }
    }

    // the result
    let res = &def.result;
    let anchor = resolve_anchor(&mut b, res);
    // The result's inputs are the anchor's pattern inputs, in order.
    if let Some(a) = anchor {
        let want: Vec<Option<&str>> = b.nodes[a]
            .args
            .iter()
            .map(|x| match x {
                PArg::Var(v) => Some(v.as_str()),
                PArg::Node(_) => None,
            })
            .collect();
        let got: Vec<Option<&str>> = res.inputs.iter().map(|v| Some(v.name.as_str())).collect();
        if want.iter().any(|w| w.is_none()) {
            let span = b.nodes[a].span;
            b.error(
                "qc::rule-result",
                span,
                format!("the inputs of `{}` must be `?variables`", b.nodes[a].class()),
                "an op feeds the fused op here",
                "the fused op keeps its inputs as they are; match what feeds it with `?x` (an op there would \
                 be removed without a place in the result)"
                    .into(),
            );
        } else if want != got {
            let vars: Vec<String> = want.iter().flatten().map(|v| format!("?{v}")).collect();
            // Point at the first input that differs (or at the whole result when one is missing).
            let span = (0..want.len().min(got.len()))
                .find(|&i| want[i] != got[i])
                .or_else(|| (got.len() > want.len()).then_some(want.len()))
                .map_or(res.span, |i| res.inputs[i].span);
            b.error(
                "qc::rule-result",
                span,
                format!(
                    "the result's inputs must be the pattern's inputs of `{}`: {}",
                    b.nodes[a].class(),
                    vars.join(", ")
                ),
                "inputs differ from the pattern",
                format!(
                    "write `{}({}, ...)`; the fused op keeps its inputs",
                    res.op.text(),
                    vars.join(", ")
                ),
            );
        }
    }
    let mut fold = None;
    let mut act = None;
    for (key, value) in &res.args {
        match key.name.as_str() {
            "fold" => {
                let Some(n) = b.bound(value) else { continue };
                if b.nodes[n].kinds != [FuseOp::BatchNorm] {
                    b.error(
                        "qc::rule-result",
                        value.span,
                        format!(
                            "`fold:` takes a batch_norm, `{}` is a `{}`",
                            value.name,
                            b.nodes[n].class()
                        ),
                        "not a batch_norm",
                        "write `fold: b` where `b = batch_norm(...)` in the pattern".into(),
                    );
                    continue;
                }
                match anchor {
                    Some(a) if b.nodes[a].has(FuseOp::Add) => b.error(
                        "qc::rule-result",
                        key.span,
                        "an `add` cannot absorb a batch_norm".into(),
                        "nothing to fold into",
                        "only conv1d, conv2d and linear fold a batch_norm".into(),
                    ),
                    Some(a) if b.nodes[n].args.first() != Some(&PArg::Node(a)) => b.error(
                        "qc::rule-result",
                        value.span,
                        format!(
                            "`{}` is not applied to the result's `{}`",
                            value.name,
                            b.nodes[a].class()
                        ),
                        "not right after the fused op",
                        format!(
                            "fold a batch norm whose input is the fused op: `b = batch_norm(c = {}(?x))`",
                            b.nodes[a].class()
                        ),
                    ),
                    _ => fold = Some(n),
                }
            }
            "act" => {
                let n = match b.node_named(&value.name) {
                    Some(n) => Some(n),
                    None => match FuseOp::from_name(&value.name) {
                        Some(op) if ACTS.contains(&op) => {
                            if b.nodes[0].kinds == [normalise(op)] {
                                Some(0)
                            } else {
                                b.error(
                                    "qc::rule-result",
                                    value.span,
                                    format!(
                                        "`act: {}` needs the pattern's root to be a `{}`",
                                        value.name, value.name
                                    ),
                                    "no such activation at the root",
                                    format!("match it: `r = {}(...)`, then write `act: r`", value.name),
                                );
                                None
                            }
                        }
                        _ => {
                            b.bound(value);
                            None
                        }
                    },
                };
                let Some(n) = n else { continue };
                if !b.nodes[n].kinds.iter().all(|k| ACTS.contains(k)) {
                    let class = b.nodes[n].class();
                    b.error(
                        "qc::rule-result",
                        value.span,
                        format!("`act:` takes an activation, `{}` is a `{class}`", value.name),
                        "not an activation",
                        "an activation is a relu, relu6, hardtanh or clamp of the pattern".into(),
                    );
                } else if n != 0 {
                    b.error(
                        "qc::rule-result",
                        value.span,
                        format!("the activation `{}` is not the pattern's root", value.name),
                        "not the last op",
                        "a fused activation is the last op of the pattern (its outermost call)".into(),
                    );
                } else {
                    act = Some(n);
                }
            }
            other => {
                let help = match did_you_mean(other, RESULT_ARGS) {
                    Some(m) => m,
                    None => "a result takes `fold: <batch_norm binding>` and `act: <activation>`".into(),
                };
                b.error(
                    "qc::rule-result",
                    key.span,
                    format!("a rule's result has no argument `{other}`"),
                    "unknown argument",
                    help,
                );
            }
        }
    }
    if b.ok {
        if let Some(a) = anchor {
            if fold.is_none() && act.is_none() {
                b.error(
                    "qc::rule-result",
                    res.span,
                    "this result changes nothing".into(),
                    "no `fold:` and no `act:`",
                    "say what the fused op absorbs: `fold: b` (a batch_norm) and/or `act: r` (an activation)".into(),
                );
            }
            // Every matched op has a place in the result.
            for i in 0..b.nodes.len() {
                if i != a && Some(i) != fold && Some(i) != act {
                    let (span, kind) = (b.nodes[i].span, b.nodes[i].class());
                    b.error(
                        "qc::rule-result",
                        span,
                        format!("the result does not say what becomes of this `{kind}`"),
                        "matched, then lost",
                        "fold a batch_norm with `fold: b`, fuse the root activation with `act: r`, or match this \
                         input with a `?variable`"
                            .into(),
                    );
                }
            }
            if let Some(r) = act {
                let below = match b.nodes[r].args.first() {
                    Some(PArg::Node(c)) => Some(*c),
                    _ => None,
                };
                // With a folded batch norm the activation reads it; otherwise it reads the anchor.
                if below != fold.or(Some(a)) {
                    let span = b.nodes[r].span;
                    b.error(
                        "qc::rule-result",
                        span,
                        "the activation must apply to the fused op or to its folded batch_norm".into(),
                        "applied to something else",
                        "write `r = relu(b = batch_norm(c = conv2d(?x)))` or `r = relu(c = conv2d(?x))`".into(),
                    );
                    act = None;
                }
            }
            // Everything but the root disappears into the fused op: nobody else may read it.
            if b.ok {
                for i in 1..b.nodes.len() {
                    if !tests.contains(&Test::SingleUse(i)) {
                        let name = b.nodes[i].binding.clone();
                        let span = b.nodes[i].span;
                        let help = match &name {
                            Some(n) => format!("add `single_use({n})` to the rule's `where`"),
                            None => format!(
                                "bind it (`c = {}(...)`) and add `single_use(c)` to the rule's `where`",
                                b.nodes[i].class()
                            ),
                        };
                        b.error(
                            "qc::rule-where",
                            span,
                            format!(
                                "this `{}` is fused away, so the rule must require that nothing else reads it",
                                b.nodes[i].class()
                            ),
                            "needs `single_use`",
                            help,
                        );
                    }
                }
            }
        }
    }
    if !b.ok {
        return None;
    }
    Some(Rule {
        name: def.name.name.clone(),
        doc: def.doc.clone(),
        origin,
        span: def.name.span,
        nodes: b.nodes,
        tests,
        anchor: anchor?,
        fold,
        act,
        members_off: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_loads_and_every_rule_has_an_identity() {
        let rules = prelude().unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv_bn_act",
                "conv_bn",
                "conv_act",
                "linear_relu",
                "linear_bn",
                "add_relu"
            ]
        );
        for r in rules {
            assert!(!r.doc.trim().is_empty(), "{} has no doc", r.name);
            assert_eq!(r.origin, RuleOrigin::Prelude);
        }
        let c = rules.iter().find(|r| r.name == "conv_bn_act").expect("conv_bn_act");
        assert_eq!(c.chain_text(), "conv1d|conv2d -> batch_norm -> relu|relu6");
        assert!(c.summary().contains("W' = W·γ/√(σ²+ε)"), "{}", c.summary());
        assert_eq!(c.size(), 3);
        // The 13 chains the prelude fused before it had op classes, each with its old name.
        let members: Vec<String> = rules.iter().flat_map(|r| r.members()).map(|(m, _)| m).collect();
        assert_eq!(
            members,
            [
                "conv1d_bn_relu",
                "conv1d_bn_relu6",
                "conv2d_bn_relu",
                "conv2d_bn_relu6",
                "conv1d_bn",
                "conv2d_bn",
                "conv1d_relu",
                "conv1d_relu6",
                "conv2d_relu",
                "conv2d_relu6",
                "linear_relu",
                "linear_bn",
                "add_relu"
            ]
        );
    }

    #[test]
    fn a_broken_prelude_is_refused_with_a_reason() {
        let one =
            "/// conv + relu\nrule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }\n";
        assert_eq!(check_prelude(one).map(|r| r.len()), Ok(1));
        let cases = [
            (
                "rule a { match r = relu(c = conv2d(?x)) -> conv2d(?x, act: r) }",
                "single_use",
            ),
            (
                "rule a { match r = relu(c = conv2d(?x)) where single_use(c) conv2d(?x, act: r) }",
                "expected",
            ),
            (
                "rule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }",
                "no doc comment",
            ),
            (
                &format!("{one}{}", one.replace("rule a", "rule b")),
                "can match the same nodes",
            ),
            (&format!("{one}{one}"), "a second rule named `a`"),
            (
                &format!("{one}model m {{\n  input x: f32[N, 3]\n  output x\n}}\n"),
                "other than rules",
            ),
        ];
        for (text, want) in cases {
            let err = check_prelude(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    fn rule(text: &str) -> Result<Rule, Vec<Diagnostic>> {
        let loaded = qc_dsl::load_str("t.qrecipe", Path::new("t.qrecipe"), text.to_string());
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let mut diags = vec![];
        let r = check_rule(&loaded.recipe.rules[0], RuleOrigin::Recipe, &mut diags);
        r.ok_or(diags)
    }

    #[test]
    fn overlap_is_symmetric_and_follows_users() {
        let a =
            rule("rule a { match b = batch_norm(c = conv2d(?x)) where single_use(c) -> conv2d(?x, fold: b) }").unwrap();
        let b = rule("rule b { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }").unwrap();
        let c =
            rule("rule c { match q = batch_norm(k = conv2d(?y)) where single_use(k) -> conv2d(?y, fold: q) }").unwrap();
        assert!(!can_overlap(&a, &b) && !can_overlap(&b, &a));
        assert!(can_overlap(&a, &c) && can_overlap(&c, &a));
    }

    #[test]
    fn op_classes_match_any_of_their_ops() {
        let a = rule(
            "rule a { match r = relu|relu6(c = conv1d|conv2d(?x)) where single_use(c) -> conv1d|conv2d(?x, act: r) }",
        )
        .unwrap();
        assert_eq!(a.nodes[0].kinds, [FuseOp::Relu, FuseOp::Relu6]);
        assert_eq!(a.chains().len(), 4);
        assert!(a.fuses(&[FuseOp::Conv1d, FuseOp::Relu6]) && !a.fuses(&[FuseOp::Linear, FuseOp::Relu]));
        // The result may list the class in another order; `hardtanh` is `clamp`.
        let b = rule("rule b { match r = hardtanh|clamp(c = conv2d|conv1d(?x)) where single_use(c) -> conv1d|conv2d(?x, act: r) }")
            .unwrap();
        assert_eq!(b.nodes[0].kinds, [FuseOp::Clamp]);
        // Classes overlap where they share an op, and only there.
        let c2 = rule("rule c { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }").unwrap();
        let l = rule("rule l { match r = relu(c = linear(?x)) where single_use(c) -> linear(?x, act: r) }").unwrap();
        assert!(can_overlap(&a, &c2) && can_overlap(&c2, &a));
        assert!(!can_overlap(&a, &l) && !can_overlap(&b, &c2));
        assert_eq!(overlapping_members(&a, &c2), ["conv2d_relu"]);
        // Turning that chain off leaves `a` and `c` apart.
        let mut off = a.clone();
        off.members_off.push(MemberOff {
            name: "conv2d_relu".into(),
            chain: vec![FuseOp::Conv2d, FuseOp::Relu],
            span: Span::default(),
        });
        assert!(!active_overlap(&off, &c2) && off.concrete().len() == 3);
        assert!(!off.fuses(&[FuseOp::Conv2d, FuseOp::Relu]) && off.fuses(&[FuseOp::Conv2d, FuseOp::Relu6]));
    }

    #[test]
    fn op_class_errors() {
        let cases = [
            ("rule a { match r = relu|relu7(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }", "`relu7` cannot appear"),
            ("rule a { match r = relu|add(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }", "different numbers of inputs"),
            ("rule a { match r = relu(c = conv1d|conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }", "`conv1d|conv2d(...)`"),
            ("rule a { match r = relu(c = conv1d|conv2d(?x)) where single_use(c) -> conv2d|relu(?x, act: r) }", "cannot produce `conv2d|relu`"),
            ("rule a { match r = relu(c = conv2d|linear(?x)) where single_use(c), c.groups == 1 -> conv2d|linear(?x, act: r) }", "`conv2d|linear` has no attribute `groups`"),
            ("rule a { match r = relu|batch_norm(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }", "`act:` takes an activation"),
        ];
        for (text, want) in cases {
            let diags = rule(text).expect_err(text);
            let all: Vec<String> = diags.iter().map(|d| format!("{} / {}", d.message, d.help)).collect();
            assert!(all.iter().any(|m| m.contains(want)), "{text}: {all:?}");
        }
    }

    #[test]
    fn semantic_errors() {
        let cases = [
            ("rule a { match r = relu(c = conv3d(?x)) where single_use(c) -> conv2d(?x, act: r) }", "conv3d"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_use(d) -> conv2d(?x, act: r) }", "`d` is not bound"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_use(c) -> relu(?x, act: r) }", "cannot produce"),
            ("rule a { match r = relu(c = conv2d(?x)) -> conv2d(?x, act: r) }", "single_use(c)"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?y, act: r) }", "inputs"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, fold: r) }", "batch_norm"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x) }", "changes nothing"),
            ("rule a { match r = relu(c = conv2d(?x)) where single_used(c) -> conv2d(?x, act: r) }", "single_use"),
            ("rule a { match r = relu(c = conv2d(?x)) where c.group == 1, single_use(c) -> conv2d(?x, act: r) }", "groups"),
            ("rule a { match r = relu(b = batch_norm(c = conv2d(?x))) where single_use(c), single_use(b) -> conv2d(?x, act: r) }", "becomes of"),
            ("rule a { match r = add(?x) where single_use(r) -> add(?x, act: r) }", "2 inputs"),
        ];
        for (text, want) in cases {
            let diags = rule(text).expect_err(text);
            let all: Vec<String> = diags.iter().map(|d| format!("{} / {}", d.message, d.help)).collect();
            assert!(all.iter().any(|m| m.contains(want)), "{text}: {all:?}");
            assert!(diags.iter().all(|d| !d.help.is_empty()));
        }
    }

    #[test]
    fn act_by_name_and_attribute_tests() {
        let r = rule(
            "rule a { match r = relu6(c = conv2d(?x)) where single_use(c), c.groups == 1 -> conv2d(?x, act: relu6) }",
        )
        .unwrap();
        assert_eq!(r.act, Some(0));
        assert_eq!(r.anchor, 1);
        assert!(matches!(&r.tests[1], Test::Attr { attr, .. } if attr == "groups"));
    }
}
