//! `why_not::why_not`: for each way a rule can fail to fuse a node, the explanation names the
//! rule and the failure; a fused node names the rule that fused it; an unknown name suggests one.

use std::path::Path;

use qc_compiler::ir::{Module, Stage};
use qc_compiler::rewrite::Mode;
use qc_compiler::rules::{self, RuleSet};
use qc_compiler::why_not::{why_not, Explanation, Failure, Verdict, WhyNotError};
use qc_compiler::RunOptions;

fn float(text: &str) -> (qc_dsl::Loaded, Module, RuleSet) {
    let loaded = qc_dsl::load_str("t.qrecipe", Path::new("t.qrecipe"), text.to_string());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let opts = RunOptions {
        stop_after: Some(Stage::Float),
        verify: true,
        ..Default::default()
    };
    let m = qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e:?}"));
    let set = rules::load(&loaded).unwrap_or_else(|_| panic!("rules load"));
    (loaded, m, set)
}

fn explain(text: &str, node: &str) -> (Explanation, String) {
    let (loaded, m, set) = float(text);
    let e = why_not(&m, &set, Mode::Ptq, node).unwrap_or_else(|e| panic!("{e:?}"));
    let rendered = e.render(&loaded.sources);
    (e, rendered)
}

/// The closest attempt's rule and its failures.
fn closest(e: &Explanation) -> (&str, &[Failure]) {
    match &e.verdict {
        Verdict::NotFused(a) if !a.is_empty() => (a[0].rule.as_str(), &a[0].failures),
        other => panic!("{other:?}"),
    }
}

const MODEL: &str = "
model m {
  input x: f32[N, 3, 8, 8]
  TAIL
}
";

fn model(tail: &str) -> String {
    MODEL.replace("TAIL", tail)
}

#[test]
fn a_fused_node_names_its_rule() {
    let text = model("c = conv1d(x, out: 4, kernel: 3)\n  r = relu6(c)\n  output r");
    let text = text.replace("f32[N, 3, 8, 8]", "f32[N, 3, 8]");
    let (e, out) = explain(&text, "r");
    let Verdict::Fused(by) = &e.verdict else {
        panic!("{e:?}")
    };
    assert_eq!(
        (by[0].rule.as_str(), by[0].chain.as_str()),
        ("conv_act", "conv1d -> relu6")
    );
    assert_eq!((by[0].into.as_str(), by[0].round), ("c", 1));
    assert!(
        out.contains("rule conv_act (conv1d -> relu6) fused `r`, `c` into `c` (round 1)"),
        "{out}"
    );
}

#[test]
fn single_use_failure_counts_users() {
    let text = model("c = conv2d(x, out: 4, kernel: 3)\n  b = batch_norm(c)\n  output b, c");
    let (e, out) = explain(&text, "c");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "conv_bn");
    assert!(
        matches!(&failures[0], Failure::SingleUse { binding, users, output: true, .. } if binding == "c" && users == &["b"]),
        "{failures:?}"
    );
    assert!(
        out.contains("single_use(c) failed: `c` has 1 user (`b`), and it is a model output"),
        "{out}"
    );
}

#[test]
fn op_mismatch_names_the_pattern_node_and_port() {
    let text = "model m {\n  input x: f32[N, 6]\n  fc = linear(x, out: 4)\n  a = relu6(fc)\n  output a\n}";
    let (e, out) = explain(text, "a");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "conv_act");
    assert!(
        matches!(&failures[0], Failure::Op { wanted, found, node, .. } if wanted == "conv1d|conv2d" && found == "linear" && node == "fc"),
        "{failures:?}"
    );
    assert!(
        out.contains("op mismatch at `c = conv1d|conv2d` (input 0 of `r`)"),
        "{out}"
    );
    // From the linear's side, linear_relu is closest: it wants a relu where the relu6 is.
    let (e, _) = explain(text, "fc");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "linear_relu");
    assert!(matches!(&failures[0], Failure::Op { found, .. } if found == "relu6"));
}

#[test]
fn attribute_tests_say_what_the_node_has() {
    let text = model("c = conv2d(x, out: 4, kernel: 3)\n  r = relu(c)\n  output r")
        + "
/// depthwise conv + relu
rule dw_relu {
  match r = relu(c = conv2d(?x))
  where single_use(c), c.groups > 1
  -> conv2d(?x, act: r)
}
quantize {
  fuse off conv_act
}
";
    let (e, out) = explain(&text, "r");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "dw_relu");
    assert!(
        matches!(&failures[0], Failure::Attr { test, actual, .. } if test == "c.groups > 1" && actual == "1"),
        "{failures:?}"
    );
    assert!(out.contains("c.groups > 1 failed: `c` has 1"), "{out}");
    // The prelude's rule that would have fused it is next, turned off.
    assert!(out.contains("next: conv_act"), "{out}");
    assert!(
        out.contains("the rule is turned off by `fuse off conv_act` (t.qrecipe:"),
        "{out}"
    );
}

#[test]
fn a_chain_turned_off_by_its_member_name() {
    let text = model("c = conv2d(x, out: 4, kernel: 3)\n  r = relu6(c)\n  output r")
        + "quantize {\n  fuse off conv2d_relu6\n}\n";
    let (e, out) = explain(&text, "c");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "conv_act");
    assert!(
        matches!(failures, [Failure::MemberOff { member, .. }] if member == "conv2d_relu6"),
        "{failures:?}"
    );
    assert!(
        out.contains("this chain is turned off by `fuse off conv2d_relu6`"),
        "{out}"
    );
}

#[test]
fn an_anchor_that_already_absorbed_an_activation() {
    let text = model("c = conv2d(x, out: 4, kernel: 3)\n  r = relu(c)\n  r2 = relu6(r)\n  output r2");
    let (e, out) = explain(&text, "r2");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "conv_act");
    assert!(
        matches!(&failures[0], Failure::Absorbed { node, .. } if node == "c"),
        "{failures:?}"
    );
    assert!(
        out.contains("`c` cannot absorb more: it already has a fused activation"),
        "{out}"
    );
}

#[test]
fn what_the_engine_requires() {
    let text = "model m {\n  input x: f32[N, 4, 6]\n  fc = linear(x, out: 4)\n  bn = batch_norm(fc)\n  output bn\n}";
    let (e, out) = explain(text, "bn");
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "linear_bn");
    assert!(matches!(&failures[0], Failure::Engine { .. }), "{failures:?}");
    assert!(
        out.contains("folds only when the linear's output is [N, F]; `fc` gives f32[N, 4, 4]"),
        "{out}"
    );
}

#[test]
fn a_node_claimed_by_a_rule_of_higher_priority() {
    // The loader orders rules bigger first and refuses equal-size overlaps, so a claim is rare;
    // put conv_bn before conv_bn_act by hand: conv_bn takes c and b, and conv_bn_act loses r
    // (which conv_act would then fuse in round 2: leave it out).
    let text = model("c = conv2d(x, out: 4, kernel: 3)\n  b = batch_norm(c)\n  r = relu(b)\n  output r");
    let (loaded, m, mut set) = float(&text);
    let at = |set: &RuleSet, name: &str| set.rules.iter().position(|r| r.name == name).unwrap();
    let (i, j) = (at(&set, "conv_bn"), at(&set, "conv_bn_act"));
    set.rules.swap(i, j);
    // Without conv_act, nothing fuses r in a later round.
    set.rules.retain(|r| r.name != "conv_act");
    let e = why_not(&m, &set, Mode::Ptq, "r").unwrap();
    let (rule, failures) = closest(&e);
    assert_eq!(rule, "conv_bn_act");
    assert!(
        matches!(failures, [Failure::Claimed { node, by, round: 1 }] if node == "b" && by == "conv_bn"),
        "{failures:?}"
    );
    assert!(e.render(&loaded.sources).contains("went to rule conv_bn in round 1"));
}

#[test]
fn no_rule_has_a_place_and_unknown_names() {
    let text = model("p = max_pool2d(x, kernel: 2)\n  output p");
    let (e, out) = explain(&text, "p");
    assert_eq!(e.verdict, Verdict::NotFused(vec![]));
    assert!(out.contains("no rule has a place for it"), "{out}");
    let (_, m, set) = float(&text);
    assert_eq!(
        why_not(&m, &set, Mode::Ptq, "pp"),
        Err(WhyNotError::UnknownNode {
            name: "pp".into(),
            suggestion: Some("did you mean `p`?".into())
        })
    );
}
