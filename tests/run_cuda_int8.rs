//! The shipped examples' lowered int8 programs through libtorch (`torch::Int8Session`:
//! `_int_mm`, integer requantization) give the CPU executor's bits for every value, on the CPU
//! device (always) and on CUDA (when present; otherwise the test says it skipped), and
//! `qc run --device torch-cpu|cuda|auto` runs them: the same output file as `--device cpu`, and
//! a clear error with a help line where libtorch sees no GPU. Calibration is one random batch of
//! one sample: what is checked is exactness, not accuracy.

use std::path::{Path, PathBuf};
use std::process::Command;

use qc_runtime::program::Device;
use qc_runtime::program::{Program, StepOp};
use qc_runtime::{SplitMix64, Tensor, TensorData};
use qc_runtime_host::torch::{self, Int8Session};

const EXAMPLES: &[&str] = &[
    "fashion_cnn",
    "conv1d_net",
    "inception_block",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "resnet18",
];

/// The example's recipe with a one-sample random calibration, written to `dir`.
fn recipe(dir: &Path, example: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    let out: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("calibrate ") {
                "  calibrate random(batches: 1) batch_size: 1\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = dir.join(format!("{example}.qrecipe"));
    std::fs::write(&path, out).unwrap();
    path
}

/// The example's lowered program.
fn lowered(dir: &Path, example: &str) -> Program {
    let loaded = qc_dsl::load(&recipe(dir, example)).unwrap();
    let mut last = None;
    qc_compiler::compile(
        &loaded,
        &qc_compiler::RunOptions::default(),
        &mut |m| last = m.program.clone(),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{example} does not compile: {e:?}"));
    last.expect("stage lowered has a program")
}

/// One random input per model input, batch `batch`.
fn inputs(p: &Program, batch: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = SplitMix64::new(seed);
    p.inputs
        .iter()
        .map(|&v| {
            let shape: Vec<usize> = p.values[v].shape.iter().map(|d| d.unwrap_or(batch)).collect();
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect())
        })
        .collect()
}

/// Every value's bits on the CPU executor and on `device` (every step's output made an output).
fn assert_same_bits(example: &str, p: &Program, device: Device) {
    assert!(
        p.steps.iter().any(|s| matches!(s.op, StepOp::Quant(_))),
        "{example} has int8 steps"
    );
    let p = Program {
        outputs: p.steps.iter().map(|s| s.output).collect(),
        ..p.clone()
    };
    let x = inputs(&p, 1, 5);
    let want = qc_runtime::exec::run(&p, &x).unwrap();
    let got = Int8Session::new(p.clone(), device)
        .and_then(|s| s.run(&x))
        .unwrap_or_else(|e| panic!("{example}: {e}"));
    for ((w, g), &id) in want.iter().zip(&got).zip(&p.outputs) {
        assert!(w == g, "{example}: `{}` differs", p.values[id].name);
    }
}

fn examples_on(device: Device) {
    let dir = tempfile::tempdir().unwrap();
    for example in EXAMPLES {
        let start = std::time::Instant::now();
        let p = lowered(dir.path(), example);
        let compiled = start.elapsed();
        assert_same_bits(example, &p, device);
        println!(
            "{example}: {} steps, every value equal (compile {:.1} s, runs {:.1} s)",
            p.steps.len(),
            compiled.as_secs_f64(),
            (start.elapsed() - compiled).as_secs_f64()
        );
    }
}

#[test]
fn shipped_examples_through_libtorch_on_the_cpu_equal_the_cpu_executor() {
    examples_on(Device::Cpu);
}

/// The same on the GPU (the CPU test above covers every line of logic).
#[test]
fn shipped_examples_through_libtorch_on_cuda_equal_the_cpu_executor() {
    let info = torch::info().expect("libtorch");
    if !info.cuda_available {
        println!("skipped: no CUDA device (libtorch {} sees none)", info.version);
        return;
    }
    examples_on(Device::Cuda);
}

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

/// `qc compile -o` of conv1d_net, and an input file for it.
fn model_and_input(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("m.qmodel");
    let out = qc()
        .arg("compile")
        .arg(recipe(dir, "conv1d_net"))
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = qc_runtime::model::Model::load(&model).unwrap().program().clone();
    let x = inputs(&p, 3, 9).remove(0);
    let TensorData::F32(v) = &x.data else { unreachable!() };
    let input = dir.join("x.npy");
    std::fs::write(&input, qc_runtime_host::data::npy_f32_bytes(&x.shape, v)).unwrap();
    (model, input)
}

fn run_on(model: &Path, input: &Path, device: &str, output: &Path) -> std::process::Output {
    qc().arg("run")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--device", device])
        .output()
        .unwrap()
}

#[test]
fn qc_run_on_libtorch_writes_the_cpu_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, input) = model_and_input(dir.path());
    let cpu = dir.path().join("cpu.npy");
    let out = run_on(&model, &input, "cpu", &cpu);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cuda = torch::info().map(|i| i.cuda_available).unwrap_or(false);
    let mut devices = vec!["torch-cpu", "auto"];
    if cuda {
        devices.push("cuda");
    }
    for device in devices {
        let y = dir.path().join(format!("{device}.npy"));
        let out = run_on(&model, &input, device, &y);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if device != "auto" || cuda {
            assert!(stdout.contains("through libtorch"), "{device}: {stdout}");
        }
        assert_eq!(std::fs::read(&y).unwrap(), std::fs::read(&cpu).unwrap(), "{device}");
    }
    if !cuda {
        let out = run_on(&model, &input, "cuda", &dir.path().join("no.npy"));
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: `--device cuda`: libtorch sees no CUDA device") && stderr.contains("help: "),
            "{stderr}"
        );
    }
}
