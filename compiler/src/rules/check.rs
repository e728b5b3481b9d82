//! Checking one `rule` item into a typed [`Rule`], step by step: the pattern (ops and op
//! classes, bindings, `?variables`), the `where` conditions, the result (its op, the anchor; its
//! inputs; `fold:` and `act:`), and what the whole rule must say (every matched op has a place,
//! the activation reads the fused op, everything fused away is `single_use`).

use qc_dsl::ast::{BinaryOp, Constraint, ExprKind, Ident, OpClass, Pattern, PatternArg, RuleDef, RuleResult};
use qc_dsl::diag::did_you_mean;
use qc_dsl::sections::FuseOp;
use qc_dsl::{Diagnostic, Span};

use super::{normalise, Literal, PArg, PNode, Rule, RuleOrigin, Test};

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
fn resolve_anchor(b: &mut Builder<'_>, res: &RuleResult) -> Option<usize> {
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
    let tests = where_tests(&mut b, &def.constraints);
    let res = &def.result;
    let anchor = resolve_anchor(&mut b, res);
    if let Some(a) = anchor {
        check_result_inputs(&mut b, a, res);
    }
    let (fold, mut act) = result_args(&mut b, res, anchor);
    if b.ok {
        if let Some(a) = anchor {
            act = check_whole(&mut b, res, &tests, a, fold, act);
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

/// The `where` conditions as tests.
fn where_tests(b: &mut Builder<'_>, constraints: &[Constraint]) -> Vec<Test> {
    let mut tests = vec![];
    for c in constraints {
        let test = match c {
            Constraint::Predicate { name, arg, .. } => predicate(b, name, arg),
            Constraint::Compare {
                binding,
                attr,
                op,
                value,
                ..
            } => compare(b, c, binding, attr, *op, &value.kind),
        };
        tests.extend(test);
    }
    tests
}

/// `single_use(b)`, the one predicate.
fn predicate(b: &mut Builder<'_>, name: &Ident, arg: &Ident) -> Option<Test> {
    let node = b.bound(arg);
    if name.name != "single_use" {
        let help = match did_you_mean(&name.name, ["single_use"]) {
            Some(m) => m,
            None => "the condition a rule can test is `single_use(b)`, and attributes: `c.groups == 1`".into(),
        };
        b.error(
            "qc::rule-where",
            name.span,
            format!("unknown condition `{}`", name.name),
            "unknown condition",
            help,
        );
        return None;
    }
    node.map(Test::SingleUse)
}

/// `c.groups == 1`: a known attribute of the bound op against a literal.
fn compare(
    b: &mut Builder<'_>,
    c: &Constraint,
    binding: &Ident,
    attr: &Ident,
    op: BinaryOp,
    value: &ExprKind,
) -> Option<Test> {
    let n = b.bound(binding)?;
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
        return None;
    }
    let value = match *value {
        ExprKind::Int(v) => Literal::Number(v as f64),
        ExprKind::Float(v) => Literal::Number(v),
        ExprKind::Bool(v) => Literal::Bool(v),
        _ => return None,
    };
    if matches!(value, Literal::Bool(_)) && !matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
        b.error(
            "qc::rule-where",
            c.span(),
            format!("`{}` compares a boolean with `{}`", attr.name, op.symbol()),
            "booleans compare with `==` or `!=`",
            format!("write `{}.{} == true` or `!= true`", binding.name, attr.name),
        );
        return None;
    }
    Some(Test::Attr {
        node: n,
        attr: attr.name.clone(),
        op,
        value,
    })
}

/// The result's inputs are the anchor's pattern inputs, in order.
fn check_result_inputs(b: &mut Builder<'_>, a: usize, res: &RuleResult) {
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
        let message = format!("the inputs of `{}` must be `?variables`", b.nodes[a].class());
        b.error(
            "qc::rule-result",
            span,
            message,
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
        let message = format!(
            "the result's inputs must be the pattern's inputs of `{}`: {}",
            b.nodes[a].class(),
            vars.join(", ")
        );
        b.error(
            "qc::rule-result",
            span,
            message,
            "inputs differ from the pattern",
            format!(
                "write `{}({}, ...)`; the fused op keeps its inputs",
                res.op.text(),
                vars.join(", ")
            ),
        );
    }
}

/// The result's `fold:` and `act:` arguments: the batch norm and the activation the anchor
/// absorbs.
fn result_args(b: &mut Builder<'_>, res: &RuleResult, anchor: Option<usize>) -> (Option<usize>, Option<usize>) {
    let mut fold = None;
    let mut act = None;
    for (key, value) in &res.args {
        match key.name.as_str() {
            "fold" => {
                if let Some(n) = fold_arg(b, key, value, anchor) {
                    fold = Some(n);
                }
            }
            "act" => {
                if let Some(n) = act_arg(b, value) {
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
    (fold, act)
}

/// `fold: b`: a bound batch_norm whose input is the anchor (a conv1d, conv2d or linear).
fn fold_arg(b: &mut Builder<'_>, key: &Ident, value: &Ident, anchor: Option<usize>) -> Option<usize> {
    let n = b.bound(value)?;
    if b.nodes[n].kinds != [FuseOp::BatchNorm] {
        let message = format!(
            "`fold:` takes a batch_norm, `{}` is a `{}`",
            value.name,
            b.nodes[n].class()
        );
        b.error(
            "qc::rule-result",
            value.span,
            message,
            "not a batch_norm",
            "write `fold: b` where `b = batch_norm(...)` in the pattern".into(),
        );
        return None;
    }
    match anchor {
        Some(a) if b.nodes[a].has(FuseOp::Add) => {
            b.error(
                "qc::rule-result",
                key.span,
                "an `add` cannot absorb a batch_norm".into(),
                "nothing to fold into",
                "only conv1d, conv2d and linear fold a batch_norm".into(),
            );
            None
        }
        Some(a) if b.nodes[n].args.first() != Some(&PArg::Node(a)) => {
            let class = b.nodes[a].class();
            b.error(
                "qc::rule-result",
                value.span,
                format!("`{}` is not applied to the result's `{class}`", value.name),
                "not right after the fused op",
                format!("fold a batch norm whose input is the fused op: `b = batch_norm(c = {class}(?x))`"),
            );
            None
        }
        _ => Some(n),
    }
}

/// `act: r` (a bound activation) or `act: relu` (the root's op by name); the activation must be
/// the pattern's root.
fn act_arg(b: &mut Builder<'_>, value: &Ident) -> Option<usize> {
    let n = match b.node_named(&value.name) {
        Some(n) => n,
        None => match FuseOp::from_name(&value.name) {
            Some(op) if ACTS.contains(&op) => {
                if b.nodes[0].kinds == [normalise(op)] {
                    0
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
                    return None;
                }
            }
            _ => {
                b.bound(value);
                return None;
            }
        },
    };
    if !b.nodes[n].kinds.iter().all(|k| ACTS.contains(k)) {
        let class = b.nodes[n].class();
        b.error(
            "qc::rule-result",
            value.span,
            format!("`act:` takes an activation, `{}` is a `{class}`", value.name),
            "not an activation",
            "an activation is a relu, relu6, hardtanh or clamp of the pattern".into(),
        );
        None
    } else if n != 0 {
        b.error(
            "qc::rule-result",
            value.span,
            format!("the activation `{}` is not the pattern's root", value.name),
            "not the last op",
            "a fused activation is the last op of the pattern (its outermost call)".into(),
        );
        None
    } else {
        Some(n)
    }
}

/// What the whole rule must say once its parts are sound: the result changes something, every
/// matched op has a place in it, the activation reads the fused op (or its folded batch norm),
/// and everything fused away is `single_use`. Returns the activation (none when it reads
/// something else).
fn check_whole(
    b: &mut Builder<'_>,
    res: &RuleResult,
    tests: &[Test],
    a: usize,
    fold: Option<usize>,
    act: Option<usize>,
) -> Option<usize> {
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
    let act = act.filter(|&r| activation_reads_anchor(b, r, a, fold));
    // Everything but the root disappears into the fused op: nobody else may read it.
    if b.ok {
        require_single_use(b, tests);
    }
    act
}

/// With a folded batch norm the activation `r` reads it; otherwise it reads the anchor.
fn activation_reads_anchor(b: &mut Builder<'_>, r: usize, a: usize, fold: Option<usize>) -> bool {
    let below = match b.nodes[r].args.first() {
        Some(PArg::Node(c)) => Some(*c),
        _ => None,
    };
    if below == fold.or(Some(a)) {
        return true;
    }
    let span = b.nodes[r].span;
    b.error(
        "qc::rule-result",
        span,
        "the activation must apply to the fused op or to its folded batch_norm".into(),
        "applied to something else",
        "write `r = relu(b = batch_norm(c = conv2d(?x)))` or `r = relu(c = conv2d(?x))`".into(),
    );
    false
}

/// Every pattern node but the root has a `single_use` test.
fn require_single_use(b: &mut Builder<'_>, tests: &[Test]) {
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
            let message = format!(
                "this `{}` is fused away, so the rule must require that nothing else reads it",
                b.nodes[i].class()
            );
            b.error("qc::rule-where", span, message, "needs `single_use`", help);
        }
    }
}
