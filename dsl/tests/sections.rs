//! Tests of `sections::check` through `load_str`: typed settings, and one diagnostic per user
//! error pointing at the exact offending text.

use std::path::Path;

use qc_dsl::sections::*;
use qc_dsl::Loaded;

fn load(text: &str) -> Loaded {
    let l = qc_dsl::load_str("t.qrecipe", Path::new("t.qrecipe"), text.to_string());
    for d in &l.diagnostics {
        assert!(!d.help.is_empty(), "empty help for {d:?}");
        assert!(!d.label.is_empty(), "empty label for {d:?}");
    }
    l
}

/// `(code, offending text)` of every diagnostic.
fn found(l: &Loaded) -> Vec<(&'static str, String)> {
    l.diagnostics
        .iter()
        .map(|d| (d.code, l.sources.text(d.span).to_string()))
        .collect()
}

fn text<T>(l: &Loaded, s: &Spanned<T>) -> String {
    l.sources.text(s.span).to_string()
}

fn only(l: &Loaded, code: &str, offending: &str) -> qc_dsl::Diagnostic {
    assert_eq!(found(l), vec![(code, offending.to_string())], "{:#?}", l.diagnostics);
    l.diagnostics[0].clone()
}

const DESIGN: &str = r#"model m { input x: f32[N, 4] normalize(mean: 0.2860, std: 0.3530)  fc = linear(x, out: 2)  output fc }
quantize {
  scheme   x86
  fuse     conv2d -> batch_norm -> relu
  observe  activations: histogram(bins: 2048); weights: minmax
  calibrate "data/train.npz" batches: 32
  layer fc       { skip }
  layer "conv*"  { activations: power_of_two }
  layer op(linear) { weights: int4 per_tensor symmetric }
}
qat { epochs: 3, lr: 1e-4, optimizer: sgd(momentum: 0.9), freeze_bn_after: 2, freeze_observers_after: 2, freeze_ranges_after: 2 }
train { epochs: 2, lr: 0.01, batch_size: 64, data: fashion_mnist(split: train), seed: 1 }
"#;

/// DESIGN.md's example, which asks for power-of-two activation scales on `conv*` and has a `qat`
/// section (QAT with power-of-two scales, TI's flow): every setting is read, nothing refused.
#[test]
fn design_example() {
    let l = load(DESIGN);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.quantize.as_ref().expect("quantize");
    assert_eq!(q.scheme.value, Scheme::X86);
    assert!(!q.scheme_defaulted);
    assert_eq!(text(&l, &q.scheme), "x86");

    assert_eq!(q.fuse.len(), 1);
    let ops: Vec<FuseOp> = q.fuse[0].ops.iter().map(|o| o.value).collect();
    assert_eq!(ops, [FuseOp::Conv2d, FuseOp::BatchNorm, FuseOp::Relu]);
    assert_eq!(text(&l, &q.fuse[0].ops[1]), "batch_norm");
    assert_eq!(l.sources.text(q.fuse[0].span), "fuse     conv2d -> batch_norm -> relu");

    let obs = q.activations.observer.expect("activation observer");
    assert_eq!(obs.value, Observer::Histogram { bins: 2048 });
    assert_eq!(text(&l, &obs), "histogram(bins: 2048)");
    assert_eq!(q.weights.observer.map(|o| o.value), Some(Observer::MinMax));
    assert_eq!(q.activations.bits, None);

    let c = q.calibration.as_ref().expect("calibration");
    assert_eq!(
        c.source.value,
        DataSource::Npz {
            path: "data/train.npz".into()
        }
    );
    assert!(!c.random);
    assert_eq!(c.batches.map(|b| b.value), Some(32));
    assert_eq!(text(&l, c.batches.as_ref().unwrap()), "batches: 32");
    assert_eq!(l.sources.text(c.span), "calibrate \"data/train.npz\" batches: 32");

    assert_eq!(q.layers.len(), 3);
    assert_eq!(q.layers[0].selector.value, LayerSelector::Name("fc".into()));
    assert_eq!(l.sources.text(q.layers[0].skip.unwrap()), "skip");
    assert!(q.layers[0].weights.is_empty() && q.layers[0].activations.is_empty());
    assert_eq!(q.layers[1].selector.value, LayerSelector::Glob("conv*".into()));
    assert_eq!(q.layers[1].activations.power_of_two.map(|p| p.value), Some(true));
    assert_eq!(q.layers[2].selector.value, LayerSelector::Op("linear".into()));
    let w = &q.layers[2].weights;
    assert_eq!(w.bits.map(|b| b.value), Some(4));
    assert_eq!(w.signed.map(|b| b.value), Some(true));
    assert_eq!(w.granularity.map(|g| g.value), Some(Granularity::PerTensor));
    assert_eq!(w.symmetric.map(|g| g.value), Some(true));
    assert_eq!(text(&l, w.granularity.as_ref().unwrap()), "per_tensor");

    let qat = l.sections.qat.as_ref().expect("qat");
    assert_eq!(qat.epochs(), 3);
    assert_eq!(qat.lr(), 1e-4);
    assert_eq!(
        qat.optimizer(),
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false
        }
    );
    assert_eq!(qat.freeze_bn_after(), Some(2));
    assert_eq!(qat.freeze_observers_after(), Some(2));
    assert_eq!(qat.freeze_ranges_after(), Some(2));
    assert!(!qat.learnable_scales());
    assert_eq!(qat.batch_size(), 64);
    assert_eq!(text(&l, qat.lr.as_ref().unwrap()), "lr: 1e-4");
    assert_eq!(
        text(&l, qat.optimizer.as_ref().unwrap()),
        "optimizer: sgd(momentum: 0.9)"
    );

    let train = l.sections.train.as_ref().expect("train");
    assert_eq!(train.epochs(), 2);
    assert_eq!(train.lr(), 0.01);
    assert_eq!(train.batch_size(), 64);
    assert_eq!(
        train.data.as_ref().unwrap().value,
        DataSource::Idx {
            dir: None,
            split: Split::Train
        }
    );
    let n = l.sections.normalize_of("m", "x").expect("x declares normalize");
    assert_eq!(
        n.value,
        Normalize {
            mean: vec![0.2860],
            std: vec![0.3530]
        }
    );
    assert_eq!(text(&l, n), "normalize(mean: 0.2860, std: 0.3530)");
    assert_eq!(train.seed(), 1);
    assert_eq!(train.schedule(), Schedule::Constant);
    assert_eq!(train.test_data, None);
}

#[test]
fn node_resolution_applies_overrides_in_order() {
    let l = load(DESIGN);
    let q = l.sections.quantize.as_ref().unwrap();
    let (wd, ad) = q.scheme_defaults();

    let fc = q.for_node("fc", "linear");
    assert!(fc.skip.is_some());
    let w = fc.weights.resolve(&wd);
    assert_eq!(
        (w.bits, w.granularity, w.observer),
        (4, Granularity::PerTensor, Observer::MinMax)
    );

    let conv = q.for_node("conv1", "conv2d");
    assert!(conv.skip.is_none());
    let a = conv.activations.resolve(&ad);
    assert!(a.power_of_two);
    assert_eq!((a.bits, a.signed, a.symmetric), (7, false, false));
    assert_eq!(a.observer, Observer::Histogram { bins: 2048 });
    let w = conv.weights.resolve(&wd);
    assert_eq!((w.bits, w.granularity), (8, Granularity::PerChannel));

    // A later override wins over an earlier one.
    let l = load("quantize {\n  layer \"*\" { weights: int4 }\n  layer fc { weights: int6 }\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.quantize.as_ref().unwrap();
    assert!(q.scheme_defaulted);
    assert_eq!(l.sources.text(q.scheme.span), "quantize");
    assert_eq!(q.for_node("fc", "linear").weights.bits.map(|b| b.value), Some(6));
    assert_eq!(q.for_node("conv", "conv2d").weights.bits.map(|b| b.value), Some(4));
}

#[test]
fn misspelt_key_suggests() {
    let l = load("qat { epocs: 3 }\n");
    let d = only(&l, "qc::unknown-setting", "epocs");
    assert_eq!(d.message, "unknown setting `epocs` in `qat`");
    assert!(d.help.starts_with("did you mean `epochs`?"), "{}", d.help);
    assert!(d.help.contains("`freeze_bn_after`"), "{}", d.help);
}

#[test]
fn qat_only_keys_are_rejected_in_train() {
    let l = load("train { freeze_bn_after: 2 }\n");
    let d = only(&l, "qc::unknown-setting", "freeze_bn_after");
    assert!(d.message.contains("is a `qat` setting"), "{}", d.message);
}

#[test]
fn duplicate_key_points_at_second_with_note_at_first() {
    let text = "train { lr: 0.1, lr: 0.2 }\n";
    let l = load(text);
    let d = only(&l, "qc::duplicate-setting", "lr");
    assert_eq!(d.span.start, text.rfind("lr").unwrap());
    assert_eq!(d.notes.len(), 1);
    assert_eq!(d.notes[0].0.start, text.find("lr").unwrap());
    assert_eq!(l.sections.train.as_ref().unwrap().lr(), 0.1);
}

#[test]
fn bits_out_of_range() {
    let l = load("quantize {\n  weights: int9\n  activations: uint1\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-value", "int9".to_string()),
            ("qc::bad-value", "uint1".to_string())
        ]
    );
    assert!(l.diagnostics.iter().all(|d| d.message.contains("bits must be 2 to 8")));
    // In range: accepted.
    let l = load("quantize {\n  weights: int2\n  activations: uint7\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.quantize.unwrap();
    assert_eq!(q.activations.bits.map(|b| b.value), Some(7));
    assert_eq!(q.activations.signed.map(|b| b.value), Some(false));
}

#[test]
fn per_channel_is_for_weights_only() {
    let l = load("quantize {\n  observe activations: per_channel; weights: per_channel\n}\n");
    let d = only(&l, "qc::bad-granularity", "per_channel");
    assert_eq!(d.span.start, "quantize {\n  observe activations: ".len());
    let q = l.sections.quantize.unwrap();
    assert_eq!(q.weights.granularity.map(|g| g.value), Some(Granularity::PerChannel));
    assert_eq!(q.activations.granularity, None);
}

#[test]
fn unknown_observer_and_unknown_word() {
    let l = load("quantize {\n  activations: histogramm(bins: 10)\n  weights: minmux\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::unknown-observer", "histogramm".to_string()),
            ("qc::unknown-word", "minmux".to_string())
        ]
    );
    assert!(
        l.diagnostics[0].help.starts_with("did you mean `histogram`?"),
        "{}",
        l.diagnostics[0].help
    );
    assert!(
        l.diagnostics[1].help.starts_with("did you mean `minmax`?"),
        "{}",
        l.diagnostics[1].help
    );
}

#[test]
fn observer_arguments() {
    let l = load("quantize {\n  activations: moving_average(momentum: 0.05)\n  weights: percentile(p: 99.9)\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.quantize.unwrap();
    assert_eq!(
        q.activations.observer.map(|o| o.value),
        Some(Observer::MovingAverageMinMax { momentum: 0.05 })
    );
    assert_eq!(
        q.weights.observer.map(|o| o.value),
        Some(Observer::Percentile { p: 99.9 })
    );

    let l = load(
        "quantize {\n  activations: histogram(bns: 10)\n  weights: percentile(p: 120)\n  layer x { weights: histogram(0) }\n}\n",
    );
    assert_eq!(
        found(&l),
        vec![
            ("qc::unknown-argument", "bns".to_string()),
            ("qc::bad-value", "120".to_string()),
            ("qc::bad-argument", "0".to_string()),
        ]
    );
    assert!(
        l.diagnostics[0].help.contains("did you mean `bins`?"),
        "{}",
        l.diagnostics[0].help
    );
    assert!(
        l.diagnostics[0].help.contains("`histogram` takes `bins`"),
        "{}",
        l.diagnostics[0].help
    );
}

#[test]
fn repeated_and_contradicting_words() {
    let text = "quantize {\n  weights: int8 symmetric int4 symmetric affine\n  observe activations: float\n  activations: minmax\n}\n";
    let l = load(text);
    assert_eq!(
        found(&l),
        vec![
            ("qc::conflicting-setting", "int4".to_string()),
            ("qc::duplicate-setting", "symmetric".to_string()),
            ("qc::conflicting-setting", "affine".to_string()),
            ("qc::conflicting-setting", "minmax".to_string()),
        ]
    );
    let d = &l.diagnostics[0];
    assert_eq!(d.message, "`int4` contradicts `int8`");
    assert_eq!(l.sources.text(d.notes[0].0), "int8");
    // The last one contradicts a word in another entry.
    assert_eq!(l.sources.text(l.diagnostics[3].notes[0].0), "float");
    let q = l.sections.quantize.unwrap();
    assert_eq!(q.weights.bits.map(|b| b.value), Some(8));
    assert_eq!(q.weights.symmetric.map(|b| b.value), Some(true));
}

#[test]
fn number_alone_in_spec() {
    let l = load("quantize {\n  weights: int8 2048\n}\n");
    let d = only(&l, "qc::bad-value", "2048");
    assert!(d.help.contains("histogram(bins: 2048)"), "{}", d.help);
}

#[test]
fn float_for_an_integer_setting() {
    let l = load("qat { epochs: 99999999999999999999, limit: 1e999 }\n");
    assert_eq!(l.diagnostics[0].message, "`epochs` is too large");
    assert_eq!(l.diagnostics[1].message, "`limit` is too large");
    let l = load("qat { epochs: 2.5, batch_size: 0, lr: 0.001 }\n");
    assert_eq!(
        found(&l),
        vec![("qc::bad-value", "2.5".to_string()), ("qc::bad-value", "0".to_string())]
    );
    assert_eq!(l.diagnostics[0].message, "`epochs` must be a whole number, found `2.5`");
    assert!(l.diagnostics[0].help.contains("at least 1"));
    // An integer where a float is expected is fine.
    let l = load("train { lr: 1, weight_decay: 0 }\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.sections.train.unwrap().lr(), 1.0);
}

#[test]
fn duplicate_sections() {
    let text = "qat { epochs: 1 }\nqat { epochs: 2, lr: -1 }\nquantize { }\nquantize { }\n";
    let l = load(text);
    assert_eq!(
        found(&l),
        vec![
            ("qc::duplicate-section", "qat".to_string()),
            ("qc::bad-value", "-1".to_string()),
            ("qc::duplicate-section", "quantize".to_string()),
        ]
    );
    let d = &l.diagnostics[0];
    assert_eq!(d.span.start, text.find("qat { epochs: 2").unwrap());
    assert_eq!(d.notes[0].0.start, 0);
    assert_eq!(l.sections.qat.unwrap().epochs(), 1);
}

#[test]
fn unknown_quantize_entry() {
    let l = load("quantize {\n  shceme x86\n  frobnicate all the things\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::unknown-entry", "shceme".to_string()),
            ("qc::unknown-entry", "frobnicate".to_string())
        ]
    );
    assert_eq!(l.diagnostics[0].message, "unknown entry `shceme` in `quantize`");
    assert!(
        l.diagnostics[0].help.starts_with("did you mean `scheme`?"),
        "{}",
        l.diagnostics[0].help
    );
    for word in [
        "scheme",
        "fuse",
        "observe",
        "calibrate",
        "layer",
        "activations:",
        "weights:",
    ] {
        assert!(
            l.diagnostics[1].help.contains(&format!("`{word}`")),
            "{}",
            l.diagnostics[1].help
        );
    }
}

#[test]
fn malformed_entries_name_their_form() {
    let l = load("quantize {\n  calibrate random\n}\n");
    let d = only(&l, "qc::bad-entry", "calibrate random");
    assert!(d.help.contains("calibrate random(batches: 8)"), "{}", d.help);
}

#[test]
fn schemes() {
    let l = load("quantize {\n  scheme power_of_two\n}\n");
    assert!(l.diagnostics.is_empty());
    let q = l.sections.quantize.unwrap();
    assert_eq!(q.scheme.value, Scheme::PowerOfTwo);
    assert!(q.scheme_defaults().0.power_of_two);

    let l = load("quantize {\n  scheme symetric8\n  scheme x86\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::unknown-scheme", "symetric8".to_string()),
            ("qc::duplicate-setting", "x86".to_string())
        ]
    );
    assert!(l.diagnostics[0].help.starts_with("did you mean `symmetric8`?"));
    let q = l.sections.quantize.unwrap();
    assert!(q.scheme_defaulted);
    assert_eq!(q.scheme.value, Scheme::X86);
}

#[test]
fn fuse_chains() {
    let l = load("quantize {\n  fuse conv1d -> relu6\n  fuse linear -> rleu\n  fuse conv1d -> relu6\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-fuse", "rleu".to_string()),
            ("qc::duplicate-setting", "fuse conv1d -> relu6".to_string())
        ]
    );
    assert!(l.diagnostics[0].help.starts_with("did you mean `relu`?"));
    assert_eq!(l.sections.quantize.unwrap().fuse.len(), 1);
}

#[test]
fn calibration_sources() {
    let l = load("quantize {\n  calibrate random(batches: 8, batch_size: 4)\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let c = l.sections.quantize.unwrap().calibration.unwrap();
    assert!(c.random);
    assert_eq!(c.source.value, DataSource::Random);
    assert_eq!(
        (c.batches.map(|b| b.value), c.batch_size.map(|b| b.value)),
        (Some(8), Some(4))
    );

    let l = load("quantize {\n  calibrate fashion_mnist(\"../data\", split: test) samples: 500\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let c = l.sections.quantize.unwrap().calibration.unwrap();
    assert_eq!(
        c.source.value,
        DataSource::Idx {
            dir: Some("../data".into()),
            split: Split::Test
        }
    );
    assert_eq!(c.samples.map(|s| s.value), Some(500));

    let l = load("quantize {\n  calibrate \"a.NPZ\", batches: 3, samples: 10\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let c = l.sections.quantize.unwrap().calibration.unwrap();
    assert_eq!(c.source.value, DataSource::Npz { path: "a.NPZ".into() });
    assert_eq!(
        (c.batches.map(|b| b.value), c.samples.map(|b| b.value)),
        (Some(3), Some(10))
    );

    let l = load("quantize {\n  calibrate npy(\"x.bin\")\n}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let c = l.sections.quantize.unwrap().calibration.unwrap();
    assert_eq!(c.source.value, DataSource::Npy { path: "x.bin".into() });

    let l = load(
        "quantize {\n  calibrate random(batches: 8) batches: 4 bathces: 2\n  calibrate imagenet()\n  calibrate npz()\n  calibrate \"x.csv\"\n}\n",
    );
    assert_eq!(
        found(&l),
        vec![
            ("qc::duplicate-setting", "batches".to_string()),
            ("qc::unknown-argument", "bathces".to_string()),
            ("qc::duplicate-setting", "calibrate".to_string()),
            ("qc::unknown-data-source", "imagenet".to_string()),
            ("qc::duplicate-setting", "calibrate".to_string()),
            ("qc::missing-argument", "npz()".to_string()),
            ("qc::duplicate-setting", "calibrate".to_string()),
            ("qc::bad-value", "\"x.csv\"".to_string()),
        ]
    );
}

#[test]
fn optimizers_and_schedules() {
    let l = load("qat { optimizer: adam(beta2: 0.99), schedule: step(every: 2), learnable_scales: true }\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.qat.unwrap();
    assert_eq!(
        q.optimizer(),
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.99
        }
    );
    assert_eq!(q.schedule(), Schedule::Step { every: 2, gamma: 0.1 });
    assert!(q.learnable_scales());
    assert_eq!(q.lr(), 1e-4);

    let l = load("train { optimizer: adamw, schedule: step(gamma: 0.5) }\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-value", "adamw".to_string()),
            ("qc::missing-argument", "step(gamma: 0.5)".to_string())
        ]
    );
    assert!(l.diagnostics[0].help.starts_with("did you mean `adam`?"));

    let l = load("train { optimizer: sgd(momentum: 0, nesterov: true), schedule: cosine }\n");
    let d = only(&l, "qc::bad-value", "0");
    assert!(d.message.contains("Nesterov"));
    assert_eq!(l.sections.train.unwrap().schedule(), Schedule::Cosine);
}

#[test]
fn data_and_limits() {
    let l = load("train { data: \"a.npz\", test_data: fashion_mnist, limit: 100, threads: 2 }\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let t = l.sections.train.unwrap();
    assert_eq!(t.data.as_ref().unwrap().value, DataSource::Npz { path: "a.npz".into() });
    assert_eq!(
        t.test_data.as_ref().unwrap().value,
        DataSource::Idx {
            dir: None,
            split: Split::Test
        }
    );
    assert_eq!((t.limit(), t.threads()), (Some(100), Some(2)));

    let l = load("train { data: random(batches: 1), test_data: fashion_mnist(split: tset), seed: -1 }\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-value", "random(batches: 1)".to_string()),
            ("qc::bad-value", "tset".to_string()),
            ("qc::bad-value", "-1".to_string()),
        ]
    );
    assert!(l.diagnostics[1].help.starts_with("did you mean `test`?"));
}

#[test]
fn values_must_be_literal() {
    let l = load("train { lr: 1e-3 * 2, epochs: if true { 1 } else { 2 }, learnable: 1 }\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-value", "1e-3 * 2".to_string()),
            ("qc::bad-value", "if true { 1 } else { 2 }".to_string()),
            ("qc::unknown-setting", "learnable".to_string()),
        ]
    );
}

#[test]
fn skip_with_specs_conflicts() {
    let l = load("quantize {\n  layer fc { skip weights: int8 }\n  layer \"\" { skip }\n}\n");
    assert_eq!(
        found(&l),
        vec![
            ("qc::conflicting-setting", "weights: int8".to_string()),
            ("qc::bad-value", "\"\"".to_string())
        ]
    );
}

#[test]
fn every_error_is_reported() {
    let l = load(
        "quantize {\n  scheme x68\n  weights: int16\n  activations: per_channel\n}\nqat { epochs: 0, lr: 0 }\ntrain { optimiser: sgd }\n",
    );
    let codes: Vec<&str> = l.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            "qc::unknown-scheme",
            "qc::bad-value",
            "qc::bad-granularity",
            "qc::bad-value",
            "qc::bad-value",
            "qc::unknown-setting"
        ]
    );
}

#[test]
fn float_tensors() {
    let l = load("quantize { weights: int4\n layer a.0.b { activations: float weights: float } }");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let q = l.sections.quantize.unwrap();
    let n = q.for_node("a.0.b", "conv2d");
    assert!(n.weights.resolve(&q.scheme_defaults().0).float);
    assert!(!q.for_node("c", "conv2d").weights.resolve(&q.scheme_defaults().0).float);
}

#[test]
fn odd_input_does_not_panic() {
    let cases = [
        "quantize { weights: int99999999999999999999999 }",
        "quantize { weights: uint }",
        "qat { epochs: 99999999999999999999999, lr: 1e999, normalize: [\"a\", true] }",
        "train { data: npz(1), test_data: idx(\"a\", \"b\", split: train, split: test) }",
        "train { schedule: step(every: 1.5, gamma: -1), optimizer: adam(beta1: 1) }",
        "quantize { calibrate fashion_mnist(split: [1]) batches: \"x\" }",
        "quantize { activations: histogram(bins: 99999999) percentile }",
        "qat { data: x.y, optimizer: [1], schedule: \"cosine\", learnable_scales: 1 }",
    ];
    for c in cases {
        let l = load(c);
        assert!(!l.diagnostics.is_empty(), "no diagnostic for {c}");
    }
}

#[test]
fn renders_with_miette() {
    let cases = [
        "quantize {\n  scheme x68\n  weights: int16 symmetric affine\n  activations: per_channel histogramm(bins: 3)\n  calibrate \"x.csv\" bathces: 3\n  shceme x\n}\nqat { epocs: 0, lr: 0, epocs: 1 }\ntrain { optimizer: sgd(momentum: 1.5), data: random(), normalize: [1] }\nmodel m { input x: f32[N, 3] normalize(mean: [1, 2], std: 0) output x }\nqat { }\n",
        "qat { epochs: 99999999999999999999999, lr: 1e999, normalize: [\"a\", true] }",
        "train { data: npz(1), test_data: idx(\"a\", \"b\", split: train, split: test) }",
        "quantize { calibrate fashion_mnist(split: [1]) batches: \"x\" }",
        "quantize { activations: histogram(bins: 99999999) percentile }",
        "qat { data: x.y, optimizer: [1], schedule: \"cosine\", learnable_scales: 1 }",
    ];
    for c in cases {
        let l = load(c);
        let out = qc_dsl::diag::render_plain(&l.diagnostics, &l.sources);
        for d in &l.diagnostics {
            assert!(out.contains(d.code) && out.contains(&d.message), "{out}");
        }
    }
}

/// `normalize(mean, std)` on an `input` line: numbers, per-channel lists of the channel count,
/// a number beside a list repeated per channel.
#[test]
fn input_normalize_one_value_or_one_per_channel() {
    let l = load(
        "model m {\n  input a: f32[N, 3, 8, 8] normalize(mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])\n  \
         input b: f32[N, 2] normalize(mean: -1, std: [0.5, 2])\n  input c: f32[N, 4]\n  output a\n}\n",
    );
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let a = &l.sections.normalize_of("m", "a").unwrap().value;
    assert_eq!(a.mean, [0.485, 0.456, 0.406]);
    assert_eq!(a.std, [0.229, 0.224, 0.225]);
    let b = &l.sections.normalize_of("m", "b").unwrap().value;
    assert_eq!(
        (b.mean.as_slice(), b.std.as_slice()),
        (&[-1.0, -1.0][..], &[0.5, 2.0][..])
    );
    assert!(l.sections.normalize_of("m", "c").is_none());
    assert_eq!(l.sections.inputs.len(), 3);
}

/// Each wrong `normalize` is reported at the value at fault: a std of 0 or below, a list of the
/// wrong length (the message names the channel count), a list without a fixed channel dim, a
/// missing argument, an unknown one, an unknown option.
#[test]
fn input_normalize_errors_point_at_the_value() {
    let case = |line: &str| load(&format!("model m {{\n  {line}\n  output x\n}}\n"));
    let l = case("input x: f32[N, 1, 28, 28] normalize(mean: 0.5, std: 0)");
    let d = only(&l, "qc::bad-value", "0");
    assert!(
        d.message.contains("`std` of `normalize` must be above 0"),
        "{}",
        d.message
    );
    let l = case("input x: f32[N, 1, 28, 28] normalize(mean: 0.5, std: -0.25)");
    only(&l, "qc::bad-value", "-0.25");
    let l = case("input x: f32[N, 3, 224, 224] normalize(mean: [0.485, 0.456], std: 0.25)");
    let d = only(&l, "qc::bad-value", "[0.485, 0.456]");
    assert_eq!(d.message, "`mean` has 2 values, but input `x` has 3 channels (dim 1)");
    assert!(d.help.starts_with("give 3 values (one per channel)"), "{}", d.help);
    let l = case("input x: f32[N, C, 8] normalize(mean: [0.5, 0.5], std: 1)");
    let d = only(&l, "qc::bad-value", "[0.5, 0.5]");
    assert!(d.message.contains("no fixed channel dim"), "{}", d.message);
    let l = case("input x: f32[N, 2] normalize(mean: [], std: 1)");
    only(&l, "qc::bad-value", "[]");
    let l = case("input x: f32[N, 2] normalize(mean: 0.5)");
    let d = only(&l, "qc::missing-argument", "normalize(mean: 0.5)");
    assert_eq!(d.message, "`normalize` needs `std`");
    let l = case("input x: f32[N, 2] normalize(mean: 0.5, sd: 1)");
    assert_eq!(
        found(&l),
        vec![
            ("qc::missing-argument", "normalize(mean: 0.5, sd: 1)".to_string()),
            ("qc::unknown-argument", "sd".to_string())
        ]
    );
    let l = case("input x: f32[N, 2] normalise(mean: 0.5, std: 1)");
    let d = only(&l, "qc::unknown-entry", "normalise");
    assert!(d.help.starts_with("did you mean `normalize`?"), "{}", d.help);
    let l = case("input x: f32[N, 2] normalize(mean: \"a\", std: 1 + 1)");
    assert_eq!(
        found(&l),
        vec![
            ("qc::bad-value", "\"a\"".to_string()),
            ("qc::bad-value", "1 + 1".to_string())
        ]
    );
}

/// `normalize` in `train` or `qat` is refused; the help line is the `input` line to write, built
/// from the model's own input and the section's numbers (or says the input already has one).
#[test]
fn train_normalize_is_refused_with_the_input_line_to_write() {
    let l = load(
        "model m {\n  input x: f32[N, 1, 28, 28]\n  output x\n}\ntrain { epochs: 1, normalize: [0.2860, 0.3530] }\n",
    );
    let d = only(&l, "qc::moved-setting", "normalize: [0.2860, 0.3530]");
    assert!(
        d.message
            .contains("belongs to the model's `input` line, not to `train`"),
        "{}",
        d.message
    );
    assert_eq!(
        d.help,
        "delete this line and declare it on the model's input, where calibration, training and `qc run` all \
         apply it: `input x: f32[N, 1, 28, 28] normalize(mean: 0.286, std: 0.353)`"
    );
    let l = load(
        "model m {\n  input x: f32[N, 2] normalize(mean: 0, std: 1)\n  output x\n}\nqat { normalize: [0.5, 0.5] }\n",
    );
    let d = only(&l, "qc::moved-setting", "normalize: [0.5, 0.5]");
    assert!(d.message.contains("not to `qat`"));
    assert_eq!(
        d.help,
        "delete this line: the model's `input` line already declares `normalize(...)`"
    );
}
