//! `qc import` on ONNX graphs written by real PyTorch 2.11 (`tests/data/onnx/`, made by
//! `tests/onnx/generate_fixtures.py`, see `tests/data/onnx/GENERATE.md`), both exporters, batch
//! norm kept and folded:
//! - the small models with weights import, run at stage `float` on qc's reference interpreter,
//!   and agree with ONNX Runtime (from `.venv-ort/`) on the same input within the float
//!   tolerance of docs/numerics.md §7 (`FLOAT_REWRITE_RTOL`);
//! - torchvision's ResNet-18, ResNet-50 and MobileNetV2 graphs (no weight data) import, compile
//!   to `float` with qc's deterministic initial values and run; with batch norm kept `qc keys`
//!   equals torchvision's `state_dict().keys()` in order; folded, the convolutions carry a bias
//!   and a comment says so; the repeated structures are blocks;
//! - bad inputs are refused with `error:` and `help:`, exit code 1, and nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qc_runtime::quant::FLOAT_REWRITE_RTOL;

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/data/onnx").join(name)
}

fn python() -> PathBuf {
    let py = root().join(".venv-ort/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make setup` (scripts/setup.sh)",
        py.display()
    );
    py
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qc import ONNX -o DIR/STEM.qrecipe`; the recipe's path and what qc printed.
fn import(dir: &Path, onnx: &Path, stem: &str) -> (PathBuf, String) {
    let recipe = dir.join(format!("{stem}.qrecipe"));
    let out = ok(qc().arg("import").arg(onnx).arg("-o").arg(&recipe).output().unwrap());
    (recipe, out)
}

fn keys(recipe: &Path) -> Vec<String> {
    let out = ok(qc()
        .args(["keys", "--format", "tsv", "--stage", "float"])
        .arg(recipe)
        .output()
        .unwrap());
    out.lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = qc_runtime_host::data::read_npy(path).unwrap();
    let t = a.batch_f32(0, a.samples());
    (t.shape.clone(), t.as_f32().unwrap().to_vec())
}

/// A deterministic normal input written by numpy.
fn input(dir: &Path, shape: &[usize]) -> PathBuf {
    let path = dir.join("x.npy");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let code = format!(
        "import numpy as np; np.save(r'{}', np.random.default_rng(7).standard_normal(({},)).astype(np.float32))",
        path.display(),
        dims.join(", ")
    );
    let out = Command::new(python()).args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    path
}

const VARIANTS: [&str; 3] = ["ts.bn", "ts.folded", "dynamo.folded"];

#[test]
fn small_models_round_trip_against_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for (model, shape) in [
        ("narrow_resnet", [2, 3, 32, 32]),
        ("narrow_mobilenet_v2", [2, 3, 32, 32]),
        ("fashion_cnn", [2, 1, 28, 28]),
        ("inception_block", [2, 3, 33, 33]),
    ] {
        let x = input(dir.path(), &shape);
        for variant in VARIANTS {
            let onnx = fixture(&format!("{model}.{variant}.onnx"));
            let stem = format!("{model}_{}", variant.replace('.', "_"));
            let (recipe, printed) = import(dir.path(), &onnx, &stem);
            assert!(printed.contains("tensors under their PyTorch keys"), "{printed}");
            if model == "inception_block" && variant == "dynamo.folded" {
                // torchvision's BasicConv2d as a block: the stem and the seven of Mixed_5b.
                assert!(printed.contains("basic_conv2d x8"), "{printed}");
            }
            let y_qc = dir.path().join(format!("{stem}.qc.npy"));
            ok(qc()
                .arg("run")
                .arg(&recipe)
                .args(["--stage", "float", "--input"])
                .arg(&x)
                .arg("--output")
                .arg(&y_qc)
                .output()
                .unwrap());
            let y_ort = dir.path().join(format!("{stem}.ort.npy"));
            ok(Command::new(python())
                .arg(root().join("tests/onnx/run_ort.py"))
                .arg(&onnx)
                .arg(&x)
                .arg(&y_ort)
                .output()
                .unwrap());
            let (sq, q) = read_f32(&y_qc);
            let (so, o) = read_f32(&y_ort);
            assert_eq!(sq, so, "{model} {variant}: output shapes");
            let max_ref = o.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = q.iter().zip(&o).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let tol = FLOAT_REWRITE_RTOL * max_ref + f32::MIN_POSITIVE;
            println!(
                "{model} {variant}: max |qc - onnxruntime| = {diff:.3e} (max |y| {max_ref:.3e}, tolerance {tol:.3e}, {} outputs)",
                o.len()
            );
            assert!(
                qc_runtime::quant::float_rewrite_close(&o, &q),
                "{model} {variant}: max difference {diff} over tolerance {tol}"
            );
        }
    }
}

/// torchvision's keys, in order.
fn torchvision_keys(model: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(&format!("torchvision/{model}.keys.txt")))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn torchvision_keys_in_order_with_batch_norm_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (model, n) in [("resnet18", 122), ("resnet50", 320), ("mobilenet_v2", 314)] {
        let (recipe, printed) = import(dir.path(), &fixture(&format!("torchvision/{model}.ts.bn.onnx")), model);
        assert!(printed.contains("no weights written"), "{printed}");
        let expected = torchvision_keys(model);
        assert_eq!(expected.len(), n);
        assert_eq!(keys(&recipe), expected, "{model}");
        println!("{model}: {n} keys, torchvision's, in order");
    }
}

#[test]
fn folded_batch_norm_gives_convolutions_with_bias() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["resnet18", "resnet50", "mobilenet_v2"] {
        // Folded: every conv and linear module of torchvision's with a weight and a bias.
        let tv = torchvision_keys(model);
        let bn: Vec<&str> = tv.iter().filter_map(|k| k.strip_suffix(".running_mean")).collect();
        let expected: Vec<String> = tv
            .iter()
            .filter_map(|k| k.strip_suffix(".weight"))
            .filter(|m| !bn.contains(m))
            .flat_map(|m| [format!("{m}.weight"), format!("{m}.bias")])
            .collect();
        for variant in ["ts.folded", "dynamo.folded"] {
            let stem = format!("{model}_{}", variant.replace('.', "_"));
            let (recipe, printed) = import(
                dir.path(),
                &fixture(&format!("torchvision/{model}.{variant}.onnx")),
                &stem,
            );
            assert!(printed.contains("batch norm folded"), "{printed}");
            let text = std::fs::read_to_string(&recipe).unwrap();
            assert!(
                text.contains("// Batch norm was folded into the convolutions"),
                "{text}"
            );
            assert!(!text.contains("batch_norm("), "{text}");
            assert_eq!(keys(&recipe), expected, "{model} {variant}");
            println!(
                "{model} {variant}: {} keys, conv + bias under torchvision's module names",
                expected.len()
            );
        }
    }
}

#[test]
fn torchvision_graphs_compile_to_float_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let x = input(dir.path(), &[1, 3, 224, 224]);
    for model in ["resnet18", "resnet50", "mobilenet_v2"] {
        for variant in VARIANTS {
            let stem = format!("{model}_{}", variant.replace('.', "_"));
            let (recipe, _) = import(
                dir.path(),
                &fixture(&format!("torchvision/{model}.{variant}.onnx")),
                &stem,
            );
            let text = std::fs::read_to_string(&recipe).unwrap();
            assert!(!text.contains("\nweights "), "{text}");
            assert!(
                text.contains("// No `weights` line: the model's weight values are in"),
                "{text}"
            );
            let out = ok(qc().arg("check").arg(&recipe).output().unwrap());
            assert!(out.contains("no checkpoint (deterministic initialiser)"), "{out}");
            ok(qc()
                .arg("compile")
                .arg(&recipe)
                .args(["--stop-after", "float"])
                .output()
                .unwrap());
        }
        // The float model runs (deterministic initial values, one 224x224 image). ResNet-50 only
        // compiles: its 4 GMACs on the f64 reference interpreter would take most of a minute.
        if model == "resnet50" {
            continue;
        }
        let recipe = dir.path().join(format!("{model}_ts_bn.qrecipe"));
        let y = dir.path().join(format!("{model}.npy"));
        ok(qc()
            .arg("run")
            .arg(&recipe)
            .args(["--stage", "float", "--input"])
            .arg(&x)
            .arg("--output")
            .arg(&y)
            .output()
            .unwrap());
        let (shape, values) = read_f32(&y);
        assert_eq!(shape, [1, 1000], "{model}");
        assert!(values.iter().all(|v| v.is_finite()), "{model}");
    }
}

#[test]
fn repeated_structures_become_blocks() {
    let dir = tempfile::tempdir().unwrap();
    for (model, variant, block, uses) in [
        ("resnet18", "ts.bn", "layer_block", 8),
        ("resnet18", "dynamo.folded", "basic_block", 8),
        ("resnet50", "dynamo.folded", "bottleneck", 16),
        ("mobilenet_v2", "ts.bn", "features_block", 16),
        ("mobilenet_v2", "dynamo.folded", "inverted_residual", 16),
    ] {
        let stem = format!("{model}_{}", variant.replace('.', "_"));
        let (recipe, printed) = import(
            dir.path(),
            &fixture(&format!("torchvision/{model}.{variant}.onnx")),
            &stem,
        );
        assert!(printed.contains(&format!("{block} x{uses}")), "{printed}");
        let text = std::fs::read_to_string(&recipe).unwrap();
        let calls = text.lines().filter(|l| l.contains(&format!("= {block}("))).count();
        assert_eq!(calls, uses, "{model} {variant}:\n{text}");
        assert!(text.contains(&format!("\nblock {block}(")), "{text}");
    }
    // ResNet's optional projection shortcut and MobileNetV2's optional residual.
    let text = std::fs::read_to_string(dir.path().join("resnet18_ts_bn.qrecipe")).unwrap();
    assert!(
        text.contains("= if downsample { downsample.1 = batch_norm(downsample.0 = conv2d(x"),
        "{text}"
    );
    assert!(
        text.contains("layer2.0 = layer_block(layer1.1, ch: 128, stride: 2, downsample: true)"),
        "{text}"
    );
    let text = std::fs::read_to_string(dir.path().join("mobilenet_v2_ts_bn.qrecipe")).unwrap();
    assert!(
        text.contains("= if residual { add(x, conv.3) } else { conv.3 }"),
        "{text}"
    );
    assert!(
        text.contains("features.3          = features_block(features.2, ch: 144, ch2: 24, residual: true)"),
        "{text}"
    );
    let text = std::fs::read_to_string(dir.path().join("mobilenet_v2_dynamo_folded.qrecipe")).unwrap();
    assert!(
        text.contains("= if residual { add(x, conv.2) } else { conv.2 }"),
        "{text}"
    );
}

#[test]
fn imported_recipe_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, _) = import(dir.path(), &fixture("narrow_resnet.ts.bn.onnx"), "narrow_resnet");
    let text = std::fs::read_to_string(recipe).unwrap();
    insta::assert_snapshot!("import_narrow_resnet_ts_bn", text);
}

#[test]
fn mobilenet_v3_small_imports_with_hardswish_hardsigmoid_and_mul() {
    let dir = tempfile::tempdir().unwrap();
    for variant in VARIANTS {
        let stem = format!("mobilenet_v3_small_{}", variant.replace('.', "_"));
        let (recipe, _) = import(
            dir.path(),
            &fixture(&format!("torchvision/mobilenet_v3_small.{variant}.onnx")),
            &stem,
        );
        let text = std::fs::read_to_string(recipe).unwrap();
        for op in ["hardswish(", "hardsigmoid(", "mul(", "global_avg_pool("] {
            assert!(text.contains(op), "{variant}: no {op}\n{text}");
        }
        assert!(text.contains("features.1.block.0.0"), "{text}");
    }
}

#[test]
fn mobilenet_v3_small_keys_compile_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let x = input(dir.path(), &[1, 3, 224, 224]);
    for variant in VARIANTS {
        let stem = format!("mobilenet_v3_small_{}", variant.replace('.', "_"));
        let (recipe, _) = import(
            dir.path(),
            &fixture(&format!("torchvision/mobilenet_v3_small.{variant}.onnx")),
            &stem,
        );
        ok(qc().arg("check").arg(&recipe).output().unwrap());
        if variant == "ts.bn" {
            assert_eq!(keys(&recipe), torchvision_keys("mobilenet_v3_small"));
        }
        ok(qc()
            .arg("run")
            .arg(&recipe)
            .args(["--stage", "float", "--input"])
            .arg(&x)
            .output()
            .unwrap());
    }
}

/// A refused import: exit code 1, `error:` and `help:` lines, and nothing written.
fn refused(args: &[&std::ffi::OsStr], dir: &Path) -> String {
    let before: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    let out = qc().arg("import").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains("error: ") && err.contains("\nhelp: "), "{err}");
    let after: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before, after, "something was written:\n{err}");
    err
}

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.qrecipe");
    let os = |p: &Path| p.as_os_str().to_owned();

    let not_onnx = d.join("notes.onnx");
    std::fs::write(&not_onnx, "model fashion_cnn { input x: f32[N, 1, 28, 28] }\n").unwrap();
    let err = refused(&[&os(&not_onnx), "-o".as_ref(), &os(&out)], d);
    assert!(
        err.contains("not an ONNX model") || err.contains("has no graph"),
        "{err}"
    );

    let bytes = std::fs::read(fixture("narrow_resnet.ts.bn.onnx")).unwrap();
    let truncated = d.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused(&[&os(&truncated), "-o".as_ref(), &os(&out)], d);
    assert!(err.contains("not an ONNX model"), "{err}");

    let err = refused(
        &[
            &os(&fixture("unsupported_softmax.ts.folded.onnx")),
            "-o".as_ref(),
            &os(&out),
        ],
        d,
    );
    assert!(
        err.contains("node `/softmax/Softmax`: op `Softmax` is not supported"),
        "{err}"
    );
    assert!(
        err.contains("help: qc imports these ONNX ops: AveragePool, BatchNormalization"),
        "{err}"
    );
    println!("{err}");

    // The output is the input: refused before anything is read or written.
    let model = d.join("model.onnx");
    std::fs::copy(fixture("narrow_resnet.ts.bn.onnx"), &model).unwrap();
    let err = refused(&[&os(&model), "-o".as_ref(), &os(&model)], d);
    assert!(err.contains("qc never writes over a file the command reads"), "{err}");
    let err = refused(
        &[&os(&model), "-o".as_ref(), &os(&out), "--weights".as_ref(), &os(&model)],
        d,
    );
    assert!(err.contains("qc never writes over a file the command reads"), "{err}");
    let err = refused(
        &[&os(&model), "-o".as_ref(), &os(&out), "--weights".as_ref(), &os(&out)],
        d,
    );
    assert!(err.contains("it is the recipe `-o` writes"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), bytes);

    let missing = d.join("missing.onnx");
    let err = refused(&[&os(&missing), "-o".as_ref(), &os(&out)], d);
    assert!(err.contains("cannot read"), "{err}");
}
