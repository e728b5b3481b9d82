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
//!
//! This module holds the types, the prelude and a recipe's rule set (`load`, `fuse off`, `fuse`
//! chains); `check` checks one `rule` item into a [`Rule`]; `overlap` refuses ambiguous sets;
//! `why_not` explains a node.

use std::path::Path;
use std::sync::OnceLock;

use qc_dsl::ast::{BinaryOp, RuleDef};
use qc_dsl::diag::did_you_mean;
use qc_dsl::sections::FuseOp;
use qc_dsl::{Diagnostic, Loaded, Span};

use crate::pass::PassError;

mod check;
mod overlap;
#[cfg(test)]
mod tests;
pub use check::check_rule;
pub use overlap::can_overlap;
use overlap::{first_overlap, overlaps};

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
    let mut all = with_recipe_rules(prelude, &loaded.recipe.rules, &mut diags);
    let quantize = loaded.sections.quantize.as_ref();
    let mut set = RuleSet::default();
    let off: Vec<(String, Span)> = quantize
        .map(|q| q.fuse_off.iter().map(|f| (f.value.clone(), f.span)).collect())
        .unwrap_or_default();
    turn_off_members(&mut all, &off, &mut diags);
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

/// The prelude's rules followed by the recipe's that check and whose names are free.
fn with_recipe_rules(prelude: &[Rule], defs: &[RuleDef], diags: &mut Vec<Diagnostic>) -> Vec<Rule> {
    let mut all: Vec<Rule> = prelude.to_vec();
    let taken: Vec<bool> = defs.iter().map(|def| prelude_name_taken(prelude, def, diags)).collect();
    duplicate_names(defs, diags);
    for (def, taken) in defs.iter().zip(taken) {
        if let Some(rule) = check_rule(def, RuleOrigin::Recipe, diags) {
            if !taken && !all.iter().any(|r| r.name == rule.name) {
                all.push(rule);
            }
        }
    }
    all
}

/// `fuse off NAME` where NAME is not a rule: a member name turns that one chain off in every
/// rule with op classes that has it (a rule without classes has one chain, named by the rule's
/// name); a name that is neither is an error.
fn turn_off_members(all: &mut [Rule], off: &[(String, Span)], diags: &mut Vec<Diagnostic>) {
    for (name, span) in off {
        if all.iter().any(|r| &r.name == name) {
            continue;
        }
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
            diags.push(unknown_rule(name, *span, all));
        }
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
