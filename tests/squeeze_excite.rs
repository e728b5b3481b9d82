//! hardswish, hardsigmoid, sigmoid and mul (squeeze-excite) end to end through the real `qc`:
//! MobileNetV3-Small (`examples/mobilenet_v3_small.qrecipe`, deterministic initial weights, a
//! 64×64 input and one random calibration batch to stay quick) compiles to a `.qmodel` whose int8
//! program holds `qlut` and `qmul` steps, `qc run` runs it and writes what `qc run RECIPE
//! --stage lowered` writes, and the float stage stays close to it; and the float semantics of the
//! four ops against values computed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use qc_runtime::model::Model;
use qc_runtime::program::{QuantOp, StepOp};
use qc_runtime::{SplitMix64, Tensor, TensorData};

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

fn f32s(t: &Tensor) -> &[f32] {
    let TensorData::F32(v) = &t.data else { panic!("f32") };
    v
}

/// The example at 64×64 with one random calibration batch, written to `dir`.
fn recipe(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("examples/mobilenet_v3_small.qrecipe").unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("calibrate ") {
                "  calibrate random(batches: 1) batch_size: 2\n".to_string()
            } else {
                format!("{}\n", l.replace("f32[N, 3, 224, 224]", "f32[N, 3, 64, 64]"))
            }
        })
        .collect();
    assert!(text.contains("f32[N, 3, 64, 64]"));
    let path = dir.join("mobilenet_v3_small.qrecipe");
    std::fs::write(&path, text).unwrap();
    path
}

fn write_npy(path: &Path, t: &Tensor) {
    std::fs::write(path, qc_runtime_host::data::npy_f32_bytes(&t.shape, f32s(t))).unwrap();
}

fn read_npy(path: &Path, n: usize) -> Tensor {
    qc_runtime_host::data::read_npy(path).unwrap().batch_f32(0, n)
}

fn run(args: &[&std::ffi::OsStr]) -> String {
    let out = qc().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qc {:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mobilenet_v3_small_compiles_and_runs_int8() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let model_path = dir.path().join("m.qmodel");
    let stdout = run(&[
        "compile".as_ref(),
        recipe.as_os_str(),
        "-o".as_ref(),
        model_path.as_os_str(),
    ]);
    assert!(stdout.contains("stage lowered"), "{stdout}");

    // The program is int8 from the stem to the classifier: 9 squeeze-excite gates and 19
    // hardswishes as tables, 9 squeeze-excite products, no float step.
    let model = Model::load(&model_path).unwrap();
    let p = model.program();
    let count = |f: &dyn Fn(&QuantOp) -> bool| {
        p.steps
            .iter()
            .filter(|s| matches!(&s.op, StepOp::Quant(q) if f(q)))
            .count()
    };
    use qc_runtime::quant::Curve;
    assert_eq!(count(&|q| matches!(q, QuantOp::QLut(Curve::HardSigmoid))), 9);
    assert_eq!(count(&|q| matches!(q, QuantOp::QLut(Curve::HardSwish))), 19);
    assert_eq!(count(&|q| matches!(q, QuantOp::QMul)), 9);
    assert!(p.steps.iter().all(|s| matches!(s.op, StepOp::Quant(_))));

    let mut rng = SplitMix64::new(5);
    let x = Tensor::f32(
        vec![2, 3, 64, 64],
        (0..2 * 3 * 64 * 64).map(|_| rng.uniform(-2.0, 2.0)).collect(),
    );
    let input = dir.path().join("x.npy");
    write_npy(&input, &x);
    let out = |what: &Path, stage: Option<&str>, name: &str| {
        let output = dir.path().join(name);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "run".as_ref(),
            what.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
        ];
        if let Some(s) = stage {
            args.extend::<[&std::ffi::OsStr; 2]>(["--stage".as_ref(), s.as_ref()]);
        }
        run(&args);
        read_npy(&output, 2)
    };
    let compiled = out(&model_path, None, "compiled.npy");
    assert_eq!(compiled.shape, vec![2, 1000]);
    assert_eq!(f32s(&compiled), f32s(&model.run(std::slice::from_ref(&x)).unwrap()[0]));
    let lowered = out(&recipe, Some("lowered"), "lowered.npy");
    assert_eq!(f32s(&lowered), f32s(&compiled));
    // The float model (reference interpreter) on the same input: the int8 logits follow it.
    let float = out(&recipe, Some("float"), "float.npy");
    let (f, c) = (f32s(&float), f32s(&compiled));
    let range = f.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = f.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let (mf, mc) = (mean(f), mean(c));
    let cov: f64 = f.iter().zip(c).map(|(a, b)| (*a as f64 - mf) * (*b as f64 - mc)).sum();
    let var = |v: &[f32], m: f64| v.iter().map(|a| (*a as f64 - m).powi(2)).sum::<f64>();
    let corr = cov / (var(f, mf) * var(c, mc)).sqrt();
    eprintln!("float vs int8: max |diff| {worst} of max |float| {range}, correlation {corr:.4}");
    // Measured: correlation 0.9999, max difference 0.00053 of 0.046.
    assert!(corr > 0.99, "float and int8 logits correlate at {corr}");
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64
}

/// The float stage of a recipe with the four ops, on values chosen by hand.
#[test]
fn float_semantics_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("se.qrecipe");
    std::fs::write(
        &recipe,
        "model se {\n  input x: f32[N, 2, 1, 3]\n  input g: f32[N, 2, 1, 1]\n  \
         a = hardswish(x)\n  b = hardsigmoid(x)\n  c = sigmoid(g)\n  d = mul(x, g)\n  \
         e = mul(g, a)\n  output a, b, c, d, e\n}\n",
    )
    .unwrap();
    let x = Tensor::f32(vec![1, 2, 1, 3], vec![-4.0, -1.5, 0.0, 1.0, 3.0, 6.0]);
    let g = Tensor::f32(vec![1, 2, 1, 1], vec![2.0, -0.5]);
    let (xp, gp) = (dir.path().join("x.npy"), dir.path().join("g.npy"));
    write_npy(&xp, &x);
    write_npy(&gp, &g);
    let outs = dir.path().join("y.npy");
    let stdout = run(&[
        "run".as_ref(),
        recipe.as_os_str(),
        "--stage".as_ref(),
        "float".as_ref(),
        "--input".as_ref(),
        xp.as_os_str(),
        "--input".as_ref(),
        gp.as_os_str(),
        "--output".as_ref(),
        outs.as_os_str(),
    ]);
    // Several outputs land beside `y.npy` as `y.0.npy`, `y.1.npy`, ... in declaration order.
    let got = |i: usize| {
        let path = outs.with_file_name(format!("y.{i}.npy"));
        let t = qc_runtime_host::data::read_npy(&path).unwrap_or_else(|e| panic!("{stdout}: {e}"));
        let n = t.shape.iter().product::<usize>() / t.shape[0];
        f32s(&t.batch_f32(0, 1))[..n].to_vec()
    };
    assert_eq!(got(0), vec![0.0, -0.375, 0.0, 4.0 / 6.0, 3.0, 6.0]);
    assert_eq!(got(1), vec![0.0, 0.25, 0.5, 4.0 / 6.0, 1.0, 1.0]);
    let c = got(2);
    assert!(
        (c[0] - 0.880_797).abs() < 1e-6 && (c[1] - 0.377_541).abs() < 1e-6,
        "{c:?}"
    );
    assert_eq!(got(3), vec![-8.0, -3.0, 0.0, -0.5, -1.5, -3.0]);
    assert_eq!(got(4), vec![0.0, -0.75, 0.0, -1.0 / 3.0, -1.5, -3.0]);
}
