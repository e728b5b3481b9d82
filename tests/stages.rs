//! Every example at every stage that exists: an insta snapshot of its IR dump, a parse/print
//! round trip of that dump, the dump's readability (line width, small values inline), and the
//! key lists that the examples promise (torchvision's names).

use std::path::Path;

use qc_compiler::dump_values::INLINE_MAX;
use qc_compiler::ir::{Module, Stage};
use qc_compiler::printer::{self, IrDoc, IrLine};

const EXAMPLES: &[&str] = &[
    "fashion_cnn",
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "inception_block",
    "conv1d_net",
];

/// Compiles an example through every stage, returning (stage, document) pairs.
fn documents(example: &str) -> Vec<(Stage, IrDoc)> {
    let path = Path::new("examples").join(format!("{example}.qrecipe"));
    let loaded = qc_dsl::load(&path).expect("example exists");
    let mut out = vec![];
    let sources = loaded.sources.clone();
    let opts = qc_compiler::RunOptions {
        verify: true,
        ..Default::default()
    };
    qc_compiler::compile(
        &loaded,
        &opts,
        &mut |m: &Module| out.push((m.stage, printer::document(m, &sources))),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{example} does not compile: {e:?}"));
    out
}

/// Compiles an example through every stage, returning (stage, dump) pairs.
fn dumps(example: &str) -> Vec<(Stage, String)> {
    documents(example)
        .into_iter()
        .map(|(stage, doc)| (stage, printer::render(&doc)))
        .collect()
}

/// A dump reads well: no line is wider than `printer::LINE_WIDTH`, and no parameter of at most
/// `INLINE_MAX` elements is shown as a hash (its values print instead).
fn assert_readable(what: &str, doc: &IrDoc, text: &str) {
    for (n, line) in text.lines().enumerate() {
        assert!(
            line.chars().count() <= printer::LINE_WIDTH,
            "{what}: line {} has {} characters (at most {}):\n{line}",
            n + 1,
            line.chars().count(),
            printer::LINE_WIDTH
        );
    }
    for line in &doc.lines {
        if let IrLine::Param {
            key,
            shape: Some(shape),
            value: Some(value),
            ..
        } = line
        {
            let small = shape.iter().product::<usize>() <= INLINE_MAX;
            assert_eq!(
                value.starts_with("= "),
                small,
                "{what}: `{key}` of shape {shape:?} shows `{value}`"
            );
        }
    }
}

#[test]
fn every_example_at_every_stage() {
    for example in EXAMPLES {
        let stages = documents(example);
        assert_eq!(
            stages.last().map(|s| s.0),
            Some(qc_compiler::last_stage()),
            "{example} stopped early"
        );
        for (stage, doc) in stages {
            let text = printer::render(&doc);
            insta::assert_snapshot!(format!("{example}@{:02}-{}", stage.number(), stage.name()), text);
            // The dump reads back into the same document, and prints back to the same text.
            let parsed = printer::parse(&text).unwrap_or_else(|e| panic!("{example}@{stage}: {e}"));
            assert_eq!(printer::render(&parsed), text, "{example}@{stage} does not round-trip");
            assert_eq!(parsed, doc, "{example}@{stage} reads back into another document");
            assert_readable(&format!("{example}@{stage}"), &doc, &text);
        }
    }
}

/// The snapshot test above covers every recipe in `examples/`, so every example's dumps are
/// held to `assert_readable`.
#[test]
fn every_example_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir("examples")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".qrecipe").map(str::to_string)
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = EXAMPLES.iter().map(|e| e.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "add new examples to EXAMPLES");
}

/// Two compiles give the same dumps at every stage (conv1d_net: every stage, including a
/// calibration, in a few seconds).
#[test]
fn dumps_are_stable_across_runs() {
    assert_eq!(dumps("conv1d_net"), dumps("conv1d_net"));
}

fn float_keys(example: &str) -> Vec<(String, Vec<usize>)> {
    let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    let opts = qc_compiler::RunOptions {
        stop_after: Some(Stage::Float),
        ..Default::default()
    };
    let m = qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}).unwrap();
    m.params.iter().map(|(k, p)| (k.clone(), p.shape.clone())).collect()
}

/// torchvision's resnet18().state_dict(): 122 keys, in this order.
#[test]
fn resnet18_has_torchvisions_keys_in_order() {
    let keys = float_keys("resnet18");
    assert_eq!(keys.len(), 122);
    let mut want: Vec<(String, Vec<usize>)> = vec![];
    let bn = |want: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            want.push((format!("{p}.{s}"), vec![c]));
        }
        want.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    want.push(("conv1.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut want, "bn1", 64);
    let mut cin = 64;
    for (layer, ch) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for block in 0..2 {
            let p = format!("layer{layer}.{block}");
            let bin = if block == 0 { cin } else { ch };
            want.push((format!("{p}.conv1.weight"), vec![ch, bin, 3, 3]));
            bn(&mut want, &format!("{p}.bn1"), ch);
            want.push((format!("{p}.conv2.weight"), vec![ch, ch, 3, 3]));
            bn(&mut want, &format!("{p}.bn2"), ch);
            if block == 0 && layer > 1 {
                want.push((format!("{p}.downsample.0.weight"), vec![ch, bin, 1, 1]));
                bn(&mut want, &format!("{p}.downsample.1"), ch);
            }
        }
        cin = ch;
    }
    want.push(("fc.weight".into(), vec![1000, 512]));
    want.push(("fc.bias".into(), vec![1000]));
    assert_eq!(keys, want);
}

#[test]
fn example_key_counts() {
    for (example, n) in [
        ("fashion_cnn", 18),
        ("mobilenet_v2", 314),
        ("mobilenet_v3_small", 244),
        ("inception_block", 72),
        ("conv1d_net", 30),
    ] {
        assert_eq!(float_keys(example).len(), n, "{example}");
    }
    let inception = float_keys("inception_block");
    assert_eq!(
        inception[0],
        ("Conv2d_1a_3x3.conv.weight".to_string(), vec![32, 3, 3, 3])
    );
    assert!(
        inception.iter().all(|(k, _)| !k.starts_with("Conv2d_1a_3x3.conv.bias")),
        "torchvision's BasicConv2d has no conv bias"
    );
    let mobilenet = float_keys("mobilenet_v2");
    assert!(
        mobilenet.contains(&("features.1.conv.0.0.weight".to_string(), vec![32, 1, 3, 3])),
        "depthwise weight shape"
    );
    assert_eq!(
        mobilenet.last().unwrap(),
        &("classifier.1.bias".to_string(), vec![1000])
    );
}

/// torchvision's mobilenet_v3_small().state_dict(): 244 keys, in this order, derived from
/// torchvision's `_mobilenet_v3_conf("mobilenet_v3_small")` table and its `InvertedResidual`,
/// `SqueezeExcitation` and `Conv2dNormActivation` modules (not from the recipe).
#[test]
fn mobilenet_v3_small_has_torchvisions_keys_in_order() {
    let keys = float_keys("mobilenet_v3_small");
    let mut want: Vec<(String, Vec<usize>)> = vec![];
    let conv_bn = |want: &mut Vec<(String, Vec<usize>)>, p: &str, shape: Vec<usize>| {
        let c = shape[0];
        want.push((format!("{p}.0.weight"), shape));
        for s in ["weight", "bias", "running_mean", "running_var"] {
            want.push((format!("{p}.1.{s}"), vec![c]));
        }
        want.push((format!("{p}.1.num_batches_tracked"), vec![]));
    };
    // torchvision.ops.misc._make_divisible(v, 8)
    let make_divisible = |v: usize| {
        let n = 8usize.max((v + 4) / 8 * 8);
        if (n as f64) < 0.9 * v as f64 {
            n + 8
        } else {
            n
        }
    };
    conv_bn(&mut want, "features.0", vec![16, 3, 3, 3]);
    // (input, kernel, expanded, out, use_se)
    let table = [
        (16, 3, 16, 16, true),
        (16, 3, 72, 24, false),
        (24, 3, 88, 24, false),
        (24, 5, 96, 40, true),
        (40, 5, 240, 40, true),
        (40, 5, 240, 40, true),
        (40, 5, 120, 48, true),
        (48, 5, 144, 48, true),
        (48, 5, 288, 96, true),
        (96, 5, 576, 96, true),
        (96, 5, 576, 96, true),
    ];
    for (i, &(inp, k, exp, out, se)) in table.iter().enumerate() {
        let p = format!("features.{}.block", i + 1);
        let mut idx = 0;
        if exp != inp {
            conv_bn(&mut want, &format!("{p}.{idx}"), vec![exp, inp, 1, 1]);
            idx += 1;
        }
        conv_bn(&mut want, &format!("{p}.{idx}"), vec![exp, 1, k, k]);
        idx += 1;
        if se {
            let sq = make_divisible(exp / 4);
            want.push((format!("{p}.{idx}.fc1.weight"), vec![sq, exp, 1, 1]));
            want.push((format!("{p}.{idx}.fc1.bias"), vec![sq]));
            want.push((format!("{p}.{idx}.fc2.weight"), vec![exp, sq, 1, 1]));
            want.push((format!("{p}.{idx}.fc2.bias"), vec![exp]));
            idx += 1;
        }
        conv_bn(&mut want, &format!("{p}.{idx}"), vec![out, exp, 1, 1]);
    }
    conv_bn(&mut want, "features.12", vec![576, 96, 1, 1]);
    want.push(("classifier.0.weight".into(), vec![1024, 576]));
    want.push(("classifier.0.bias".into(), vec![1024]));
    want.push(("classifier.3.weight".into(), vec![1000, 1024]));
    want.push(("classifier.3.bias".into(), vec![1000]));
    assert_eq!(want.len(), 244);
    assert_eq!(keys, want);
    // The same list as real torchvision 0.26.0 writes it (`tests/data/GENERATE.md`).
    let file = std::fs::read_to_string("tests/data/mobilenet_v3_small.keys.tsv").unwrap();
    let torchvision: Vec<String> = file.lines().map(str::to_string).collect();
    let ours: Vec<String> = keys
        .iter()
        .map(|(k, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{k}\t[{}]", dims.join(", "))
        })
        .collect();
    assert_eq!(ours, torchvision);
}
