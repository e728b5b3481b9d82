//! Stage `fused`: one test per prelude rule (through `check_rule`), float equivalence of random
//! conv/bn/relu/linear/add chains before and after fusion (PTQ and QAT), the refusal of
//! overlapping rules, the driver's cap, recipe control (`fuse off`, `fuse` chains, recipe rules)
//! and fold errors as user diagnostics.

use std::path::Path;

use proptest::prelude::*;
use qc_compiler::ir::{Module, Provenance, Stage};
use qc_compiler::pass::{Ctx, Pass, PassError};
use qc_compiler::rewrite::{self, Mode, Stop};
use qc_compiler::{printer, rules, CompileError, RunOptions};
use qc_runtime::quant::float_rewrite_close;
use qc_runtime::{SplitMix64, Tensor, TensorData};

fn load(text: &str) -> qc_dsl::Loaded {
    let loaded = qc_dsl::load_str("t.qrecipe", Path::new("t.qrecipe"), text.to_string());
    assert!(
        loaded.diagnostics.is_empty(),
        "{}",
        qc_dsl::diag::render_plain(&loaded.diagnostics, &loaded.sources)
    );
    loaded
}

fn compile(loaded: &qc_dsl::Loaded, stop: Stage, qat: bool) -> Result<Module, CompileError> {
    let opts = RunOptions {
        stop_after: Some(stop),
        verify: true,
        qat,
        ..Default::default()
    };
    qc_compiler::compile(loaded, &opts, &mut |_| {}, &mut |_, _| {})
}

/// A dump with its continuation lines joined: one line per input, param, node and output.
fn joined(ir: &str) -> String {
    ir.replace(&format!("\n{}", printer::CONTINUATION), " ")
}

/// Compiles `recipe_text` to stage `fused` (PTQ) and returns how often `rule` fired and the
/// fused IR dump (which must print, parse and print back to the same text), continuation lines
/// joined.
fn check_rule(recipe_text: &str, rule: &str) -> (usize, String) {
    let loaded = load(recipe_text);
    let module = compile(&loaded, Stage::Fused, false).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(module.stage, Stage::Fused);
    let report = module.rewrite.as_ref().expect("the fuse pass ran");
    assert_eq!(report.stop, Stop::FixedPoint);
    assert!(
        report.fired.iter().any(|f| f.rule == rule),
        "`{rule}` is not an active rule"
    );
    let text = printer::print(&module, &loaded.sources);
    let doc = printer::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(printer::render(&doc), text, "the fused dump does not round-trip");
    (report.count(rule), joined(&text))
}

fn node_line<'a>(ir: &'a str, name: &str) -> &'a str {
    ir.lines()
        .find(|l| l.starts_with(&format!("node {name} = ")))
        .unwrap_or_else(|| panic!("no node `{name}` in\n{ir}"))
}

fn has_node(ir: &str, name: &str) -> bool {
    ir.lines().any(|l| l.starts_with(&format!("node {name} = ")))
}

const CONV_BN_ACT: &str = "
model m {
  input x: f32[N, 3, 8, 8]
  conv1 = conv2d(x, out: 4, kernel: 3, pad: 1, bias: false)
  bn1   = batch_norm(conv1)
  act1  = ACT(bn1)
  pool  = max_pool2d(act1, kernel: 2)
  output pool
}";

#[test]
fn conv2d_bn_relu() {
    let (fired, ir) = check_rule(&CONV_BN_ACT.replace("ACT", "relu"), "conv_bn_act");
    assert_eq!(fired, 1);
    let conv = node_line(&ir, "conv1");
    // `bias: true` is the builder's default, so the dump leaves it out; the roles show the bias.
    assert!(conv.contains("act: relu") && !conv.contains("bias:"), "{conv}");
    assert!(conv.contains("[weight, bias]"), "{conv}");
    assert!(!has_node(&ir, "bn1") && !has_node(&ir, "act1"), "{ir}");
    assert!(node_line(&ir, "pool").contains("max_pool2d(conv1)"));
    // The conv gains a bias; both folded keys name every key they came from.
    let from = "fold_bn(conv1.weight, bn1.{weight, bias, running_mean, running_var})";
    assert!(ir.contains("param conv1.weight: f32[4, 3, 3, 3] "), "{ir}");
    assert!(
        ir.lines()
            .any(|l| l.starts_with("param conv1.weight") && l.ends_with(from)),
        "{ir}"
    );
    assert!(
        ir.lines()
            .any(|l| l.starts_with("param conv1.bias: f32[4]") && l.ends_with(from)),
        "{ir}"
    );
    assert!(!ir.contains("param bn1."), "{ir}");
    equivalent(&CONV_BN_ACT.replace("ACT", "relu"), 1, false);
}

#[test]
fn conv2d_bn_relu6() {
    let (fired, ir) = check_rule(&CONV_BN_ACT.replace("ACT", "relu6"), "conv_bn_act");
    assert_eq!(fired, 1);
    assert!(node_line(&ir, "conv1").contains("act: relu6"));
    equivalent(&CONV_BN_ACT.replace("ACT", "relu6"), 2, false);
}

#[test]
fn conv2d_bn() {
    // A conv with a bias keeps it: the fold's provenance names it too.
    let text = "
model m {
  input x: f32[N, 3, 8, 8]
  conv1 = conv2d(x, out: 4, kernel: 3)
  bn1   = batch_norm(conv1)
  output bn1
}";
    let (fired, ir) = check_rule(text, "conv_bn");
    assert_eq!(fired, 1);
    let conv = node_line(&ir, "conv1");
    assert!(!conv.contains("act:"), "{conv}");
    assert!(ir.contains("fold_bn(conv1.{weight, bias}, bn1.{weight, bias, running_mean, running_var})"));
    // The model's output now reads the conv.
    assert!(ir.ends_with("output bn1\n"), "{ir}");
    equivalent(text, 3, false);
}

fn conv2d_act(act: &str, rule: &str, seed: u64) {
    let text = format!(
        "model m {{\n  input x: f32[N, 3, 8, 8]\n  conv1 = conv2d(x, out: 4, kernel: 3)\n  a = {act}(conv1)\n  output a\n}}"
    );
    let (fired, ir) = check_rule(&text, rule);
    assert_eq!(fired, 1, "{rule}");
    assert!(node_line(&ir, "conv1").contains(&format!("act: {act},")), "{ir}");
    assert!(ir.contains("<- init(kaiming_uniform"), "weights are untouched: {ir}");
    equivalent(&text, seed, false);
}

#[test]
fn conv2d_relu() {
    conv2d_act("relu", "conv_act", 4);
}

#[test]
fn conv2d_relu6() {
    conv2d_act("relu6", "conv_act", 14);
}

const CONV1D: &str = "
model m {
  input x: f32[N, 2, 16]
  c = conv1d(x, out: 3, kernel: 3, bias: false)
  b = batch_norm(c)
  TAIL
}";

fn conv1d_bn_act(act: &str, rule: &str, seed: u64) {
    let text = CONV1D.replace("TAIL", &format!("r = {act}(b)\n  output r"));
    let (fired, ir) = check_rule(&text, rule);
    assert_eq!(fired, 1, "{rule}");
    assert!(node_line(&ir, "c").contains(&format!("act: {act},")), "{ir}");
    assert!(!has_node(&ir, "b") && !has_node(&ir, "r"));
    equivalent(&text, seed, false);
}

#[test]
fn conv1d_bn_relu() {
    conv1d_bn_act("relu", "conv_bn_act", 5);
}

#[test]
fn conv1d_bn_relu6() {
    conv1d_bn_act("relu6", "conv_bn_act", 15);
}

#[test]
fn conv1d_bn() {
    let text = CONV1D.replace("TAIL", "output b");
    let (fired, ir) = check_rule(&text, "conv_bn");
    assert_eq!(fired, 1);
    assert!(ir.contains("param c.bias: f32[3]"), "{ir}");
    equivalent(&text, 6, false);
}

fn conv1d_act(act: &str, rule: &str, seed: u64) {
    let text = format!(
        "model m {{\n  input x: f32[N, 2, 16]\n  c = conv1d(x, out: 3, kernel: 3)\n  r = {act}(c)\n  output r\n}}"
    );
    let (fired, ir) = check_rule(&text, rule);
    assert_eq!(fired, 1, "{rule}");
    assert!(node_line(&ir, "c").contains(&format!("act: {act},")), "{ir}");
    equivalent(&text, seed, false);
}

#[test]
fn conv1d_relu() {
    conv1d_act("relu", "conv_act", 7);
}

#[test]
fn conv1d_relu6() {
    conv1d_act("relu6", "conv_act", 17);
}

#[test]
fn linear_relu() {
    let text = "model m {\n  input x: f32[N, 6]\n  fc = linear(x, out: 4)\n  r = relu(fc)\n  output r\n}";
    let (fired, ir) = check_rule(text, "linear_relu");
    assert_eq!(fired, 1);
    assert!(node_line(&ir, "fc").contains("act: relu"));
    equivalent(text, 8, false);
}

#[test]
fn linear_bn() {
    let text =
        "model m {\n  input x: f32[N, 6]\n  fc = linear(x, out: 4, bias: false)\n  bn = batch_norm(fc)\n  output bn\n}";
    let (fired, ir) = check_rule(text, "linear_bn");
    assert_eq!(fired, 1);
    assert!(node_line(&ir, "fc").contains("[weight, bias]"));
    assert!(ir.contains("fold_bn(fc.weight, bn.{weight, bias, running_mean, running_var})"));
    equivalent(text, 9, false);
    equivalent(text, 9, true);
}

#[test]
fn linear_bn_needs_features_last() {
    // On [N, L, F] batch_norm1d normalises L, not the linear's features: the engine leaves it.
    let text = "model m {\n  input x: f32[N, 4, 6]\n  fc = linear(x, out: 4)\n  bn = batch_norm(fc)\n  output bn\n}";
    let (fired, ir) = check_rule(text, "linear_bn");
    assert_eq!(fired, 0);
    assert!(has_node(&ir, "bn"));
}

#[test]
fn add_relu() {
    let text = "
model m {
  input x: f32[N, 3, 8, 8]
  a = conv2d(x, out: 3, kernel: 1)
  out = relu(add(a, x))
  output out
}";
    let (fired, ir) = check_rule(text, "add_relu");
    assert_eq!(fired, 1);
    // The fused node is named after the add (the first module of the chain).
    assert!(node_line(&ir, "out.add").contains("add(a, x) {act: relu}"), "{ir}");
    assert!(!has_node(&ir, "out"));
    equivalent(text, 10, false);
}

#[test]
fn single_use_keeps_shared_values() {
    // bn1 is read twice: neither conv+bn nor bn+relu may fuse it away; the conv has one user.
    let text = "
model m {
  input x: f32[N, 3, 8, 8]
  conv1 = conv2d(x, out: 4, kernel: 3)
  bn1   = batch_norm(conv1)
  r     = relu(bn1)
  s     = add(r, bn1)
  output s
}";
    let (fired, ir) = check_rule(text, "conv_bn");
    assert_eq!(fired, 1, "conv1+bn1 fuse (bn1 is the root, its users move to conv1)");
    assert!(node_line(&ir, "s").contains("add(r, conv1)"), "{ir}");
    assert!(node_line(&ir, "r").contains("relu(conv1)"), "{ir}");
    equivalent(text, 11, false);
    // A conv that is itself a model output is not fused away either.
    let text = "model m {\n  input x: f32[N, 3, 8, 8]\n  c = conv2d(x, out: 4, kernel: 3)\n  b = batch_norm(c)\n  output b, c\n}";
    let (fired, _) = check_rule(text, "conv_bn");
    assert_eq!(fired, 0);
}

#[test]
fn qat_keeps_batch_norm_inside_the_conv() {
    let text = CONV_BN_ACT.replace("ACT", "relu");
    let loaded = load(&text);
    let module = compile(&loaded, Stage::Fused, true).unwrap();
    let ir = printer::print(&module, &loaded.sources);
    let lines = joined(&ir);
    let conv = node_line(&lines, "conv1");
    assert!(conv.contains("bn_eps: 0.00001") && conv.contains("act: relu"), "{conv}");
    // Roles under the node's own name (`conv1.bn.weight`) print as the role alone.
    assert!(
        conv.contains("[weight, bn.weight, bn.bias, bn.running_mean, bn.running_var"),
        "{conv}"
    );
    let keys: Vec<&str> = module.params.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "conv1.weight",
            "conv1.bn.weight",
            "conv1.bn.bias",
            "conv1.bn.running_mean",
            "conv1.bn.running_var",
            "conv1.bn.num_batches_tracked"
        ]
    );
    assert_eq!(
        module.params["conv1.bn.running_var"].provenance,
        Provenance::Derived {
            transform: "move".into(),
            from: vec!["bn1.running_var".into()]
        }
    );
    assert_eq!(module.rewrite.as_ref().unwrap().mode, Mode::Qat);
    let doc = printer::parse(&ir).unwrap();
    assert_eq!(printer::render(&doc), ir);
    equivalent(&text, 12, true);
}

// ---------------------------------------------------------------- float equivalence

/// Randomises every f32 parameter (running variances positive) so that no op is trivial.
fn randomise(m: &mut Module, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for (key, p) in m.params.iter_mut() {
        if let Some(Tensor {
            data: TensorData::F32(v),
            ..
        }) = &mut p.value
        {
            let (lo, hi) = if key.ends_with("running_var") {
                (0.1, 3.0)
            } else {
                (-0.6, 0.6)
            };
            for x in v.iter_mut() {
                *x = rng.uniform(lo, hi);
            }
        }
    }
}

fn random_inputs(program: &qc_runtime::program::Program, seed: u64) -> Vec<Tensor> {
    let mut rng = SplitMix64::new(seed);
    program
        .inputs
        .iter()
        .map(|&id| {
            let shape: Vec<usize> = program.values[id].shape.iter().map(|d| d.unwrap_or(2)).collect();
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect())
        })
        .collect()
}

/// Runs the float stage and the fused stage (of the same randomised weights) on the reference
/// interpreter; every output agrees within `float_rewrite_close`. Returns the fuse report's total.
fn equivalent(text: &str, seed: u64, qat: bool) -> usize {
    let loaded = load(text);
    let mut m = compile(&loaded, Stage::Float, qat).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    randomise(&mut m, seed);
    let float = qc_compiler::lower::lower_float(&m).expect("float lowers");
    let opts = qc_compiler::RunOptions {
        qat,
        ..Default::default()
    };
    let mut cx = Ctx::new(&loaded, &opts);
    rewrite::Fuse.run(&mut m, &mut cx).unwrap_or_else(|e| panic!("{e:?}"));
    m.stage = Stage::Fused;
    let errors = qc_compiler::verify::verify(&m);
    assert!(errors.is_empty(), "{errors:?}\n{text}");
    let fused = qc_compiler::lower::lower_float(&m).expect("fused lowers");
    let inputs = random_inputs(&float, seed ^ 0x5eed);
    let a = qc_runtime::interp::run(&float, &inputs).expect("float runs");
    let b = qc_runtime::interp::run(&fused, &inputs).expect("fused runs");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.shape, y.shape);
        let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(float_rewrite_close(x, y), "differs by {worst} (qat: {qat})\n{text}");
    }
    m.rewrite.as_ref().map_or(0, |r| r.total())
}

#[derive(Clone, Debug)]
enum Step {
    Conv {
        out: usize,
        bias: bool,
    },
    Bn,
    Relu,
    Relu6,
    /// `add` of the current value and the latest earlier value of the same shape.
    Add,
    Linear {
        out: usize,
        bias: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1usize..5, any::<bool>()).prop_map(|(out, bias)| Step::Conv { out, bias }),
        3 => Just(Step::Bn),
        2 => Just(Step::Relu),
        1 => Just(Step::Relu6),
        2 => Just(Step::Add),
        1 => (1usize..6, any::<bool>()).prop_map(|(out, bias)| Step::Linear { out, bias }),
    ]
}

/// A recipe for a chain of steps on `[N, 3, 5, 5]` (or `[N, 2, 9]` for 1-D convs); a linear
/// flattens first, and after it the chain works on features.
fn chain_recipe(steps: &[Step], one_d: bool) -> String {
    let mut lines = vec![];
    let (input, mut shape): (&str, Vec<usize>) = if one_d {
        ("x: f32[N, 2, 9]", vec![2, 9])
    } else {
        ("x: f32[N, 3, 5, 5]", vec![3, 5, 5])
    };
    let mut values: Vec<(String, Vec<usize>)> = vec![("x".into(), shape.clone())];
    let mut cur = "x".to_string();
    for (i, s) in steps.iter().enumerate() {
        let name = format!("v{i}");
        let expr = match s {
            Step::Conv { out, bias } if shape.len() > 1 => {
                let conv = if one_d { "conv1d" } else { "conv2d" };
                shape[0] = *out;
                format!("{conv}({cur}, out: {out}, kernel: 3, pad: 1, bias: {bias})")
            }
            Step::Conv { .. } => continue,
            Step::Bn => format!("batch_norm({cur})"),
            Step::Relu => format!("relu({cur})"),
            Step::Relu6 => format!("relu6({cur})"),
            Step::Add => {
                let Some((other, _)) = values.iter().rev().skip(1).find(|(_, sh)| *sh == shape) else {
                    continue;
                };
                format!("add({cur}, {other})")
            }
            Step::Linear { out, bias } => {
                let input = if shape.len() > 1 {
                    lines.push(format!("  f{i} = flatten({cur})"));
                    format!("f{i}")
                } else {
                    cur.clone()
                };
                shape = vec![*out];
                format!("linear({input}, out: {out}, bias: {bias})")
            }
        };
        lines.push(format!("  {name} = {expr}"));
        values.push((name.clone(), shape.clone()));
        cur = name;
    }
    format!(
        "model m {{\n  input {input}\n{}\n  output {cur}\n}}\n",
        lines.join("\n")
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn fused_chains_compute_what_float_does(
        steps in prop::collection::vec(step(), 1..9),
        one_d in any::<bool>(),
        qat in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let text = chain_recipe(&steps, one_d);
        equivalent(&text, seed, qat);
    }
}

#[test]
fn chains_do_fuse() {
    // The generator's typical chain fuses (so the property above is not vacuous).
    let text = chain_recipe(
        &[
            Step::Conv { out: 3, bias: false },
            Step::Bn,
            Step::Relu,
            Step::Conv { out: 3, bias: true },
            Step::Bn,
            Step::Add,
            Step::Relu,
            Step::Linear { out: 4, bias: true },
            Step::Bn,
        ],
        false,
    );
    // conv+bn+relu, add+relu, linear+bn; the second conv is read by its batch norm and by the
    // add, so it stays apart from its batch norm.
    assert_eq!(equivalent(&text, 1, false), 3, "{text}");
    assert_eq!(equivalent(&text, 1, true), 3, "{text}");
}

// ---------------------------------------------------------------- the rule set

fn rule_errors(text: &str) -> Vec<qc_dsl::Diagnostic> {
    match rules::load(&load(text)) {
        Err(PassError::User(d)) => d,
        Err(PassError::Internal { message, .. }) => panic!("internal: {message}"),
        Ok(_) => panic!("the rule set loads:\n{text}"),
    }
}

const MODEL: &str = "
model m {
  input x: f32[N, 3, 8, 8]
  conv1 = conv2d(x, out: 4, kernel: 3)
  bn1   = batch_norm(conv1)
  bn2   = batch_norm(bn1)
  bn3   = batch_norm(bn2)
  output bn3
}
";

const MY_CONV_BN: &str = "
/// my own conv + bn
rule my_conv_bn {
  match b = batch_norm(c = conv2d(?x))
  where single_use(c)
  -> conv2d(?x, fold: b)
}
";

#[test]
fn overlapping_rules_of_equal_size_are_refused() {
    let diags = rule_errors(&format!("{MODEL}{MY_CONV_BN}"));
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d.code, "qc::rule-overlap");
    assert!(
        d.message.contains("`my_conv_bn`") && d.message.contains("the prelude's rule `conv_bn`"),
        "{}",
        d.message
    );
    // The help names the one chain of `conv_bn` that overlaps (`conv1d_bn` does not).
    assert!(
        d.help.contains("`fuse off conv2d_bn` or `fuse off my_conv_bn`"),
        "{}",
        d.help
    );
    // Turning that chain of the prelude's rule off resolves it, and the recipe's rule does the work.
    let text = format!("{MODEL}{MY_CONV_BN}\nquantize {{\n  fuse off conv2d_bn\n}}\n");
    let set = rules::load(&load(&text)).unwrap_or_else(|_| panic!("loads"));
    assert!(set.get("conv_bn").is_some_and(|r| r.members_off.len() == 1) && set.get("my_conv_bn").is_some());
    let loaded = load(&text);
    let m = compile(&loaded, Stage::Fused, false).unwrap();
    let report = m.rewrite.unwrap();
    assert_eq!(report.count("my_conv_bn"), 3);
    assert_eq!(report.count("conv_bn"), 0);
    assert!(report.render().contains("conv2d_bn") && report.render().contains("turned off"));
    // Two recipe rules overlapping each other: the diagnostic points at one and notes the other.
    let twin = MY_CONV_BN.replace("my_conv_bn", "twin").replace("my own", "twin");
    let diags = rule_errors(&format!(
        "{MODEL}{MY_CONV_BN}{twin}\nquantize {{\n  fuse off conv2d_bn\n}}\n"
    ));
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].message.contains("`twin`") && diags[0].notes.len() == 1);
}

#[test]
fn a_bigger_pattern_wins_over_a_smaller_one() {
    let text = CONV_BN_ACT.replace("ACT", "relu");
    let loaded = load(&text);
    let m = compile(&loaded, Stage::Fused, false).unwrap();
    let r = m.rewrite.unwrap();
    assert_eq!(
        (r.count("conv_bn_act"), r.count("conv_bn"), r.count("conv_act")),
        (1, 0, 0)
    );
    assert_eq!(r.rounds, 1);
}

/// Every chain of every prelude rule (each member of its op classes) has its own test above,
/// named by the member (`conv1d_bn_relu6`).
#[test]
fn every_prelude_rule_is_tested() {
    let this = include_str!("rules.rs");
    for r in rules::prelude().unwrap() {
        for (member, _) in r.members() {
            assert!(
                this.contains(&format!("fn {member}() {{")),
                "no test `fn {member}()` for rule `{}`",
                r.name
            );
        }
    }
}

#[test]
fn the_driver_stops_at_the_cap_and_says_so() {
    // conv -> bn -> bn -> bn folds one batch norm per round (PTQ).
    let loaded = load(MODEL);
    let set = rules::load(&loaded).unwrap_or_else(|_| panic!("loads"));
    let float = compile(&loaded, Stage::Float, false).unwrap();
    let mut m = float.clone();
    let capped = rewrite::run(&mut m, &set, Mode::Ptq, 2).unwrap();
    assert_eq!((capped.stop, capped.rounds, capped.count("conv_bn")), (Stop::Cap, 2, 2));
    assert!(capped
        .render()
        .contains("stopped at the cap (2 rounds) with rules still matching"));
    assert!(qc_compiler::verify::verify(&m).is_empty());
    let mut m = float.clone();
    let done = rewrite::run(&mut m, &set, Mode::Ptq, rewrite::MAX_ROUNDS).unwrap();
    assert_eq!(
        (done.stop, done.rounds, done.count("conv_bn")),
        (Stop::FixedPoint, 3, 3)
    );
    // Folding twice still names the float keys.
    match &m.params["conv1.weight"].provenance {
        Provenance::Derived { from, .. } => {
            assert!(from.contains(&"conv1.weight".to_string()) && from.contains(&"bn3.running_var".to_string()))
        }
        other => panic!("{other}"),
    }
    // Patches are found without mutating.
    let before = printer::print(&float, &loaded.sources);
    let patches = rewrite::find_patches(&float, &set);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].rule_name, "conv_bn");
    assert_eq!(printer::print(&float, &loaded.sources), before);
    // QAT keeps one batch norm in the conv; the others stay.
    let mut m = float;
    let qat = rewrite::run(&mut m, &set, Mode::Qat, rewrite::MAX_ROUNDS).unwrap();
    assert_eq!((qat.stop, qat.count("conv_bn")), (Stop::FixedPoint, 1));
}

#[test]
fn fuse_chains_require_an_active_rule() {
    let ok = format!("{MODEL}\nquantize {{\n  fuse conv2d -> batch_norm -> relu\n  fuse linear -> relu\n}}\n");
    assert!(rules::load(&load(&ok)).is_ok());
    let off = format!("{MODEL}\nquantize {{\n  fuse conv2d -> batch_norm -> relu\n  fuse off conv2d_bn_relu\n}}\n");
    let d = rule_errors(&off);
    assert_eq!(d[0].code, "qc::fuse-chain");
    assert!(d[0].message.contains("turned off") && d[0].help.contains("remove `fuse off conv2d_bn_relu`"));
    let none = format!("{MODEL}\nquantize {{\n  fuse conv2d -> hardtanh\n}}\n");
    let d = rule_errors(&none);
    assert!(
        d[0].message.contains("no active rule fuses `conv2d -> hardtanh`"),
        "{}",
        d[0].message
    );
    assert!(
        d[0].help
            .contains("`conv1d|conv2d -> batch_norm -> relu|relu6` (conv_bn_act)"),
        "{}",
        d[0].help
    );
    // A recipe rule satisfies it.
    let rule = "
/// conv + hardtanh
rule conv_hardtanh {
  match h = hardtanh(c = conv2d(?x))
  where single_use(c)
  -> conv2d(?x, act: h)
}
";
    let text = format!(
        "model m {{\n  input x: f32[N, 3, 8, 8]\n  c = conv2d(x, out: 4, kernel: 3)\n  h = hardtanh(c, min: -0.5, max: 0.5)\n  output h\n}}\n{rule}\nquantize {{\n  fuse conv2d -> hardtanh\n}}\n"
    );
    let (fired, ir) = check_rule(&text, "conv_hardtanh");
    assert_eq!(fired, 1);
    assert!(
        node_line(&ir, "c").contains("act: clamp, act_max: 0.5, act_min: -0.5"),
        "{ir}"
    );
    equivalent(&text, 13, false);
}

#[test]
fn fuse_off_names_a_rule() {
    let d = rule_errors(&format!("{MODEL}\nquantize {{\n  fuse off conv2d_bn_rleu\n}}\n"));
    assert_eq!(d[0].code, "qc::unknown-rule");
    assert!(d[0].help.contains("did you mean `conv2d_bn_relu`?"), "{}", d[0].help);
    let d = rule_errors(&format!("{MODEL}{}", MY_CONV_BN.replace("my_conv_bn", "conv_bn")));
    assert_eq!(d[0].code, "qc::duplicate-rule");
    // A chain's member name is taken too: `fuse off conv2d_bn` would mean two things.
    let d = rule_errors(&format!("{MODEL}{}", MY_CONV_BN.replace("my_conv_bn", "conv2d_bn")));
    assert_eq!(d[0].code, "qc::duplicate-rule");
    assert!(
        d[0].message.contains("a chain of the prelude's rule `conv_bn`"),
        "{}",
        d[0].message
    );
}

/// `fuse off conv2d_bn_relu` (the name of a prelude rule before op classes) turns off that one
/// chain of `conv_bn_act`: conv1d chains still fuse in one patch; the conv2d chain fuses as it
/// did when `conv2d_bn_relu` was its own rule and turned off (conv + bn, then conv + relu).
#[test]
fn fuse_off_a_member_turns_off_one_chain() {
    let text = "
model m {
  input x: f32[N, 3, 8, 8]
  a = conv2d(x, out: 4, kernel: 3)
  ab = batch_norm(a)
  ar = relu(ab)
  b = conv2d(ar, out: 4, kernel: 3)
  bb = batch_norm(b)
  br = relu6(bb)
  output br
}
quantize {
  fuse off conv2d_bn_relu
}
";
    let loaded = load(text);
    let m = compile(&loaded, Stage::Fused, false).unwrap();
    let r = m.rewrite.as_ref().unwrap();
    assert_eq!(
        (
            r.count("conv_bn_act"),
            r.count("conv_bn"),
            r.count("conv_act"),
            r.rounds
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(r.off, ["conv2d_bn_relu"]);
    assert!(
        r.render().contains("conv2d_bn_relu    off  (turned off by `fuse off`)"),
        "{}",
        r.render()
    );
    let ir = printer::print(&m, &loaded.sources);
    assert!(node_line(&ir, "a").contains("act: relu,") && node_line(&ir, "b").contains("act: relu6,"));
    equivalent(text, 21, false);
    // Requiring the chain that is off is refused, and names the `fuse off`.
    let d = rule_errors(&text.replace("fuse off", "fuse conv2d -> batch_norm -> relu\n  fuse off"));
    assert!(d[0].message.contains("turned off for this chain"), "{}", d[0].message);
    assert_eq!(d[0].notes.len(), 1);
    // A typo of a member name gets a did-you-mean.
    let d = rule_errors(&text.replace("conv2d_bn_relu", "conv2d_bn_rlu6"));
    assert!(d[0].help.contains("did you mean `conv2d_bn_relu6`?"), "{}", d[0].help);
}

#[test]
fn attribute_tests_select_nodes() {
    // Only depthwise convs (groups > 1) fuse with relu6 through this rule.
    let text = "
model m {
  input x: f32[N, 4, 8, 8]
  a = conv2d(x, out: 4, kernel: 3, groups: 4)
  ra = relu6(a)
  b = conv2d(ra, out: 4, kernel: 3)
  rb = relu6(b)
  output rb
}
/// depthwise conv + relu6
rule dw_relu6 {
  match r = relu6(c = conv2d(?x))
  where single_use(c), c.groups > 1
  -> conv2d(?x, act: relu6)
}
quantize {
  fuse off conv2d_relu6
}
";
    let (fired, ir) = check_rule(text, "dw_relu6");
    assert_eq!(fired, 1);
    assert!(node_line(&ir, "a").contains("act: relu6"));
    assert!(has_node(&ir, "rb"));
}

#[test]
fn fold_errors_name_the_node_and_the_key() {
    let text = CONV_BN_ACT.replace("ACT", "relu");
    let loaded = load(&text);
    let mut m = compile(&loaded, Stage::Float, false).unwrap();
    if let Some(Tensor {
        data: TensorData::F32(v),
        ..
    }) = &mut m.params.get_mut("bn1.running_var").unwrap().value
    {
        v[2] = -1.0;
    }
    let opts = qc_compiler::RunOptions::default();
    let mut cx = Ctx::new(&loaded, &opts);
    let Err(PassError::User(d)) = rewrite::Fuse.run(&mut m, &mut cx) else {
        panic!("a negative variance folds")
    };
    assert_eq!(d[0].code, "qc::fold-bn");
    assert!(
        d[0].message.contains("`bn1`") && d[0].message.contains("`conv1`") && d[0].message.contains("bn1.running_var"),
        "{}",
        d[0].message
    );
    assert!(d[0].help.contains("fuse off conv_bn_act"), "{}", d[0].help);
    assert_eq!(loaded.sources.location(d[0].span).line, 5, "points at bn1's statement");
}

#[test]
fn mutated_rules_never_panic() {
    // Deletions and insertions all over the prelude: every result is either a rule set or
    // diagnostics (each with a help line), never a panic.
    let text = rules::PRELUDE;
    let inserts = [
        "(", ")", "?", "->", "=", ",", "{", "}", " where ", "x.", "1", "relu(", "fold: ", "act: ",
    ];
    let mut cases = 0;
    for (i, (at, _)) in text.char_indices().enumerate().filter(|(i, _)| i % 5 == 0) {
        let next = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
        let deleted = format!("{}{}", &text[..at], &text[next..]);
        let inserted = format!("{}{}{}", &text[..at], inserts[i % inserts.len()], &text[at..]);
        for mutated in [deleted, inserted] {
            let loaded = qc_dsl::load_str("m.qrecipe", Path::new("m.qrecipe"), mutated);
            if loaded.diagnostics.is_empty() {
                let mut diags = vec![];
                for def in &loaded.recipe.rules {
                    let _ = rules::check_rule(def, rules::RuleOrigin::Recipe, &mut diags);
                }
                assert!(diags.iter().all(|d| !d.help.is_empty()), "{diags:?}");
            } else {
                assert!(loaded.diagnostics.iter().all(|d| !d.help.is_empty()));
            }
            cases += 1;
        }
    }
    assert!(cases > 500);
}
