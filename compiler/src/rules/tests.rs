//! Tests of the rule checker, the prelude and the overlap refusal.

use std::path::Path;

use qc_dsl::sections::FuseOp;
use qc_dsl::{Diagnostic, Span};

use super::overlap::{active_overlap, overlapping_members};
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
    let one = "/// conv + relu\nrule a { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }\n";
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
    let a = rule("rule a { match b = batch_norm(c = conv2d(?x)) where single_use(c) -> conv2d(?x, fold: b) }").unwrap();
    let b = rule("rule b { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }").unwrap();
    let c = rule("rule c { match q = batch_norm(k = conv2d(?y)) where single_use(k) -> conv2d(?y, fold: q) }").unwrap();
    assert!(!can_overlap(&a, &b) && !can_overlap(&b, &a));
    assert!(can_overlap(&a, &c) && can_overlap(&c, &a));
}

#[test]
fn op_classes_match_any_of_their_ops() {
    let a =
        rule("rule a { match r = relu|relu6(c = conv1d|conv2d(?x)) where single_use(c) -> conv1d|conv2d(?x, act: r) }")
            .unwrap();
    assert_eq!(a.nodes[0].kinds, [FuseOp::Relu, FuseOp::Relu6]);
    assert_eq!(a.chains().len(), 4);
    assert!(a.fuses(&[FuseOp::Conv1d, FuseOp::Relu6]) && !a.fuses(&[FuseOp::Linear, FuseOp::Relu]));
    // The result may list the class in another order; `hardtanh` is `clamp`.
    let b = rule(
        "rule b { match r = hardtanh|clamp(c = conv2d|conv1d(?x)) where single_use(c) -> conv1d|conv2d(?x, act: r) }",
    )
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
    let r =
        rule("rule a { match r = relu6(c = conv2d(?x)) where single_use(c), c.groups == 1 -> conv2d(?x, act: relu6) }")
            .unwrap();
    assert_eq!(r.act, Some(0));
    assert_eq!(r.anchor, 1);
    assert!(matches!(&r.tests[1], Test::Attr { attr, .. } if attr == "groups"));
}
