//! Every example at every stage that exists: an insta snapshot of its IR dump, a parse/print
//! round trip of that dump, and the key lists that the examples promise (torchvision's names).

use std::path::Path;

use qc_compiler::ir::{Module, Stage};
use qc_compiler::printer;

const EXAMPLES: &[&str] = &[
    "fashion_cnn",
    "resnet18",
    "mobilenet_v2",
    "inception_block",
    "conv1d_net",
];

/// Compiles an example through every stage, returning (stage, dump) pairs.
fn dumps(example: &str) -> Vec<(Stage, String)> {
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
        &mut |m: &Module| out.push((m.stage, printer::print(m, &sources))),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{example} does not compile: {e:?}"));
    out
}

#[test]
fn every_example_at_every_stage() {
    for example in EXAMPLES {
        let stages = dumps(example);
        assert_eq!(
            stages.last().map(|s| s.0),
            Some(qc_compiler::last_stage()),
            "{example} stopped early"
        );
        for (stage, text) in stages {
            insta::assert_snapshot!(format!("{example}@{:02}-{}", stage.number(), stage.name()), text);
            // The dump reads back into the same document.
            let doc = printer::parse(&text).unwrap_or_else(|e| panic!("{example}@{stage}: {e}"));
            assert_eq!(printer::render(&doc), text, "{example}@{stage} does not round-trip");
        }
    }
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
