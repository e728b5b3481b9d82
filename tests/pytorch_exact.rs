//! PyTorch's converted int8 models on qc against PyTorch's own outputs: each fixture's
//! `<x>.int8.pth` (`torch.ao.quantization.convert`, x86 engine, written by
//! `tests/data/generate.py`) binds at the quantized stage, is lowered and run on the batch that
//! `tests/data/int8_outputs.py` ran through PyTorch 2.11, and its output codes are compared with
//! PyTorch's (`<x>.int8.outputs.safetensors`), with the same bits on every kernel path this CPU
//! runs and on the emulated VNNI and AMX drivers.
//! - `requantize: float_bias` (PyTorch's fbgemm: the bias added in `f32` before the multiply):
//!   every code equals PyTorch's.
//! - `requantize: float` (the bias an `i32` in the accumulator, as ONNX Runtime's QLinearConv):
//!   never more than one step apart, equal on at least the share measured when this test was
//!   written (docs/numerics.md, "Agreement with PyTorch's converted models").

use std::path::{Path, PathBuf};

use qc_compiler::ir::{Module, Stage};
use qc_compiler::RunOptions;
use qc_runtime::exec::Executor;
use qc_runtime::kernels::fast::Isa;
use qc_runtime::{Tensor, TensorData};

/// With `requantize: float`, the share of output codes equal to PyTorch's, per model, as
/// measured (every path): fashion_cnn 83.83%, conv1d_net 95.06%, inception_block 94.25%.
fn min_equal_share_int32_bias(example: &str) -> f64 {
    match example {
        "fashion_cnn" => 0.838,
        "conv1d_net" => 0.950,
        _ => 0.942,
    }
}

/// The example's recipe with `weights` naming the converted fixture, the x86 scheme with
/// `requantize: <requantize>`, no input normalization (PyTorch's model quantizes its raw input)
/// and a one-sample calibration (the checkpoint's scales replace what calibration would choose).
fn recipe_for(dir: &Path, example: &str, requantize: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("calibrate ") {
            out.push_str("  calibrate random(batches: 1) batch_size: 1\n");
        } else if t.starts_with("scheme ") {
            out.push_str(&format!("  scheme x86\n  requantize: {requantize}\n"));
        } else if t.starts_with("input ") {
            let cut = line.find(" normalize(").unwrap_or(line.len());
            out.push_str(&line[..cut]);
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let fixture = std::fs::canonicalize(format!("tests/data/{example}.int8.pth")).unwrap();
    out.push_str(&format!("weights \"{}\"\n", fixture.display()));
    let path = dir.join(format!("{example}_int8_{requantize}.qrecipe"));
    std::fs::write(&path, out).unwrap();
    path
}

fn lowered(recipe: &Path) -> Module {
    let loaded = qc_dsl::load(recipe).unwrap();
    let mut last = None;
    qc_compiler::compile(
        &loaded,
        &RunOptions::default(),
        &mut |m| last = Some(m.clone()),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{} does not compile: {e:?}", recipe.display()));
    let m = last.unwrap();
    assert_eq!(m.stage, Stage::Lowered);
    m
}

/// PyTorch's batch, output codes, and the output's scale and zero point.
struct Expected {
    input: Tensor,
    codes: Vec<u8>,
    scale: f32,
    zero_point: i32,
}

fn expected(example: &str) -> Expected {
    let path = PathBuf::from(format!("tests/data/{example}.int8.outputs.safetensors"));
    let mut tensors = qc_compiler::checkpoint::read_safetensors(&path).unwrap();
    let mut take = |key: &str| {
        tensors
            .shift_remove(key)
            .unwrap_or_else(|| panic!("{}: no `{key}`", path.display()))
    };
    let TensorData::F32(scale) = take("output_scale").data else {
        panic!("output_scale is a float")
    };
    let TensorData::I64(zero_point) = take("output_zero_point").data else {
        panic!("output_zero_point is an i64")
    };
    let (scale, zero_point) = (scale[0], zero_point[0] as i32);
    let input = take("input");
    let TensorData::U8(codes) = take("output_codes").data else {
        panic!("output_codes are u8")
    };
    Expected {
        input,
        codes,
        scale,
        zero_point,
    }
}

/// (elements equal, the largest difference in steps) of qc's output against PyTorch's codes.
fn agreement(out: &Tensor, want: &Expected) -> (usize, u32) {
    let TensorData::F32(v) = &out.data else {
        panic!("qc's output is f32")
    };
    assert_eq!(v.len(), want.codes.len(), "output size");
    let mut equal = 0;
    let mut worst = 0;
    for (&y, &code) in v.iter().zip(&want.codes) {
        // qc dequantizes (q - zp) * scale; the division recovers q exactly.
        let q = (y / want.scale).round() as i32 + want.zero_point;
        let d = q.abs_diff(code as i32);
        equal += usize::from(d == 0);
        worst = worst.max(d);
    }
    (equal, worst)
}

/// Runs `example` with `requantize` on every path; each must have at least `min_share` of the
/// codes equal to PyTorch's, none more than one step away, and all paths the same bits.
fn check(example: &str, requantize: &str, min_share: f64) {
    let dir = tempfile::tempdir().unwrap();
    let module = lowered(&recipe_for(dir.path(), example, requantize));
    let program = module.program.clone().expect("stage lowered has a program");
    let want = expected(example);
    let mut paths: Vec<(String, Executor)> = Isa::ALL
        .into_iter()
        .filter(|isa| isa.check().is_ok())
        .map(|isa| {
            (
                isa.name().to_string(),
                Executor::with_isa(program.clone(), isa).unwrap(),
            )
        })
        .collect();
    paths.push((
        "vnni (emulated)".into(),
        Executor::with_emulated_vnni(program.clone()).unwrap(),
    ));
    paths.push((
        "amx (emulated)".into(),
        Executor::with_emulated_amx(program.clone()).unwrap(),
    ));
    let mut first: Option<(String, Tensor)> = None;
    for (isa, exec) in paths {
        let out = exec.run(std::slice::from_ref(&want.input)).unwrap();
        let (equal, worst) = agreement(&out[0], &want);
        let share = equal as f64 / want.codes.len() as f64;
        println!(
            "{example}, requantize: {requantize} ({isa}): {equal} of {} output codes equal PyTorch's ({:.2}%), \
             largest difference {worst} step(s)",
            want.codes.len(),
            100.0 * share
        );
        assert!(worst <= 1, "{example} ({isa}): a difference of {worst} steps");
        assert!(
            share >= min_share,
            "{example} ({isa}): only {:.2}% equal",
            100.0 * share
        );
        match &first {
            None => first = Some((isa, out[0].clone())),
            Some((path, bits)) => assert_eq!(bits, &out[0], "{example}: {isa} differs from {path}"),
        }
    }
}

#[test]
fn fashion_cnn_int8_with_float_bias_equals_pytorch() {
    check("fashion_cnn", "float_bias", 1.0);
}

#[test]
fn conv1d_net_int8_with_float_bias_equals_pytorch() {
    check("conv1d_net", "float_bias", 1.0);
}

#[test]
fn inception_block_int8_with_float_bias_equals_pytorch() {
    check("inception_block", "float_bias", 1.0);
}

#[test]
fn fashion_cnn_int8_with_int32_bias_is_within_one_step_of_pytorch() {
    check("fashion_cnn", "float", min_equal_share_int32_bias("fashion_cnn"));
}

#[test]
fn conv1d_net_int8_with_int32_bias_is_within_one_step_of_pytorch() {
    check("conv1d_net", "float", min_equal_share_int32_bias("conv1d_net"));
}

#[test]
fn inception_block_int8_with_int32_bias_is_within_one_step_of_pytorch() {
    check(
        "inception_block",
        "float",
        min_equal_share_int32_bias("inception_block"),
    );
}
