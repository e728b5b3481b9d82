//! `qc run`: loads a compiled `.qmodel`, runs it on inputs from `.npy`/`.npz` files, writes or
//! summarises the outputs, and times it with `--bench`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::exit::{Failure, Outcome};
use qc_runtime::model::Model;
use qc_runtime::program::{Device, QatPlan};
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::torch;

/// Where `qc run` executes the model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunDevice {
    /// qc's own CPU kernels.
    #[default]
    Cpu,
    /// libtorch on the GPU: int8 steps with integer GEMMs (`_int_mm`), the same bits as `cpu`.
    Cuda,
    /// `cuda` when libtorch sees a GPU, else `cpu`.
    Auto,
    /// What `cuda` runs (libtorch's int8 path), on the CPU: to check it without a GPU.
    TorchCpu,
}

impl RunDevice {
    /// The libtorch device to run on, `None` for qc's own kernels, or why it cannot be used.
    fn resolve(self) -> Result<Option<Device>, String> {
        use crate::train::DeviceArg;
        match self {
            RunDevice::Cpu => Ok(None),
            // libtorch only for a GPU; on the CPU qc's own kernels are the faster path.
            RunDevice::Auto => Ok(DeviceArg::Auto.resolve().ok().filter(|d| *d == Device::Cuda)),
            RunDevice::TorchCpu => DeviceArg::Cpu.resolve().map(Some),
            RunDevice::Cuda => DeviceArg::Cuda.resolve().map(Some),
        }
    }
}

/// What runs the model: qc's executor, a libtorch session holding the program on a device, or
/// libtorch evaluating a QAT program's fake quantization (`--stage observed --qat`).
enum Runner<'a> {
    Cpu(&'a Model),
    Torch(&'a Model, Box<torch::Int8Session>),
    Qat(&'a Model, &'a QatPlan),
}

impl Runner<'_> {
    /// qc's kernels on `pool`'s threads; libtorch on its own.
    fn run(&self, pool: &rayon::ThreadPool, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        match self {
            Runner::Cpu(model) => pool.install(|| model.run(inputs)).map_err(|e| e.to_string()),
            Runner::Torch(model, session) => {
                let normalized = model.normalize(inputs).map_err(|e| e.to_string())?;
                session.run(&normalized).map_err(|e| e.to_string())
            }
            Runner::Qat(model, plan) => {
                let normalized = model.normalize(inputs).map_err(|e| e.to_string())?;
                torch::run_program_qat(model.program(), plan, &normalized, Device::Cpu).map_err(|e| e.to_string())
            }
        }
    }
}

/// What `qc run` was asked to do.
pub struct RunArgs {
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub threads: Option<usize>,
    pub bench: Option<usize>,
    pub profile: bool,
    /// Labels (IDX or `.npy`, one class per sample) to report top-1 accuracy against.
    pub labels: Option<PathBuf>,
    /// An earlier run's output (`.npy`) to compare the first output with.
    pub compare: Option<PathBuf>,
    pub device: RunDevice,
    /// Run inputs with NaN or infinite values instead of refusing them.
    pub allow_non_finite: bool,
    /// `model` is a recipe, run at this stage (`qc run RECIPE --stage STAGE`).
    pub stage: Option<String>,
    /// With `stage` `observed`: the recipe compiled for QAT, run fake-quantized through libtorch.
    pub qat: bool,
}

/// Runs the command: loads the model, reads the inputs, runs them on the chosen device, then
/// reports, writes, profiles and benchmarks as asked.
pub fn run(args: RunArgs) -> Outcome {
    let model = if let Some(stage) = &args.stage {
        if !matches!(args.device, RunDevice::Cpu) {
            let device =
                clap::ValueEnum::to_possible_value(&args.device).map_or(String::new(), |v| v.get_name().to_string());
            eprintln!("error: `--stage` runs a recipe on qc's reference interpreter, not on `--device {device}`");
            eprintln!(
                "help: drop `--device`, or compile the recipe (`qc compile RECIPE -o model.qmodel`) and run that"
            );
            return Err(Failure::User);
        }
        if args.qat {
            if stage != "observed" {
                eprintln!("error: `--qat` runs the fake-quantized model of stage `observed`, not `{stage}`");
                eprintln!("help: run `--stage observed --qat`, or drop `--qat`");
                return Err(Failure::User);
            }
            let (model, plan) = crate::onnx_cmd::qat_model(&args.model)?;
            println!("fake-quantized QAT evaluation through libtorch (cpu): observers still, batch norm with running statistics");
            return run_model(&model, Some(&plan), &args);
        }
        crate::cli::recipe_model(&args.model, stage)?
    } else if args.model.extension().is_some_and(|e| e == "qrecipe") {
        eprintln!("error: `{}` is a recipe, not a compiled model", args.model.display());
        eprintln!(
            "help: run it at a stage with `--stage float` (or fused, observed, ...), or compile it first: `qc compile {} -o model.qmodel`",
            args.model.display()
        );
        return Err(Failure::User);
    } else {
        load_model(&args.model)?
    };
    run_model(&model, None, &args)
}

/// The `.qmodel` at `path`, or a clear error (what went wrong and what to do, on stderr).
pub(crate) fn load_model(path: &Path) -> Result<Model, Failure> {
    match Model::load(path) {
        Ok(m) => Ok(m),
        Err(e) => {
            use qc_runtime::artifact::LoadError;
            let compile = "`qc compile RECIPE -o model.qmodel` writes one";
            match &e {
                LoadError::Io { source, .. } => {
                    eprintln!("error: cannot read `{}`: {source}", path.display());
                    eprintln!("help: {}", qc_runtime::io_help::after_read(source, path, compile));
                }
                LoadError::Version { .. } => {
                    eprintln!("error: cannot load `{}`: {e}", path.display());
                    eprintln!("help: compile the recipe again with this qc ({compile})");
                }
                _ => {
                    eprintln!("error: cannot load `{}`: {e}", path.display());
                    eprintln!("help: the file is damaged or is not a .qmodel; {compile}");
                }
            }
            Err(Failure::User)
        }
    }
}

/// Runs `model` as `args` say: reads the inputs, runs them on the chosen device, then reports,
/// writes, profiles and benchmarks as asked.
fn run_model(model: &Model, qat: Option<&QatPlan>, args: &RunArgs) -> Outcome {
    let mut read: Vec<PathBuf> = vec![args.model.clone()];
    read.extend(args.inputs.iter().cloned());
    read.extend(args.labels.iter().cloned());
    read.extend(args.compare.iter().cloned());
    if let Some(out) = &args.output {
        crate::cli::check_output("--output", out, &read)?;
    }
    print_model(model);
    let meta = model.meta();
    let wanted: Vec<String> = meta
        .inputs
        .iter()
        .map(|s| format!("{}: {}{}", s.name, s.dtype, qc_runtime::program::shape_string(&s.shape)))
        .collect();
    let (inputs, from_bytes) = match read_inputs(model, &args.inputs) {
        Ok(t) => t,
        Err(message) => {
            eprintln!("error: {message}");
            eprintln!(
                "help: pass one --input .npy file per model input, in order ({}), or one .npz holding them by name",
                wanted.join(", ")
            );
            return Err(Failure::User);
        }
    };
    if let Err(e) = model.program().check_inputs(&inputs) {
        eprintln!("error: {e}");
        eprintln!("help: the model's inputs are {}", wanted.join(", "));
        return Err(Failure::User);
    }
    if !args.allow_non_finite {
        refuse_non_finite(model, &inputs)?;
    }
    warn_about_ranges(model, &inputs, &from_bytes);
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start {} threads: {e}", args.threads.unwrap_or(0));
            eprintln!("help: pass a smaller --threads");
            return Err(Failure::User);
        }
    };
    let runner = match qat {
        Some(_) if args.profile => {
            eprintln!("error: `--profile` times qc's own kernels step by step, not the QAT evaluation");
            eprintln!("help: drop `--profile`");
            return Err(Failure::User);
        }
        Some(plan) => Runner::Qat(model, plan),
        None => runner(model, args)?,
    };
    let outputs = match runner.run(&pool, &inputs) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: the model failed: {e}");
            eprintln!("help: the model's inputs are {}", wanted.join(", "));
            return Err(Failure::User);
        }
    };
    for (spec, out) in meta.outputs.iter().zip(&outputs) {
        summarize(&spec.name, out);
    }
    report_accuracy(args.labels.as_deref(), &outputs)?;
    report_agreement(args.compare.as_deref(), model, qat, &outputs)?;
    write_output(args.output.as_deref(), &outputs)?;
    if args.profile {
        profile(model, &pool, &inputs)?;
    }
    if let Some(rounds) = args.bench {
        bench(&runner, &pool, &inputs, rounds)?;
    }
    Ok(())
}

/// What the model is: name, stage, steps, its input normalization and calibration.
fn print_model(model: &Model) {
    let meta = model.meta();
    println!(
        "model {} (stage {}, qc {}), {} steps",
        meta.model,
        meta.stage,
        meta.qc_version,
        model.program().steps.len()
    );
    for (name, n) in &meta.input_normalize {
        println!("input `{name}` is normalized by the model: {n}");
    }
    if !meta.calibrated_for_accuracy {
        println!("note: not calibrated for accuracy (calibrated on random data): outputs serve latency work only");
    }
}

/// Warns (stderr, the run goes on) about each float input whose values do not fit the
/// normalization its `input` line declares (`input_range`); `u8` data, which `qc run` scales to
/// `[0, 1]` itself, is not judged.
fn warn_about_ranges(model: &Model, inputs: &[Tensor], from_bytes: &[bool]) {
    let meta = model.meta();
    for ((spec, t), bytes) in meta.inputs.iter().zip(inputs).zip(from_bytes) {
        if *bytes {
            continue;
        }
        let normalize = meta.input_normalize.get(&spec.name);
        if let Some(misfit) = crate::input_range::misfit(t, normalize) {
            let (warning, help) = crate::input_range::warning(&spec.name, &misfit, normalize);
            eprintln!("warning: {warning}");
            eprintln!("help: {help}");
        }
    }
}

/// Refuses an input holding NaN or an infinity, naming the input, the element's index and its
/// sample: the model would run and print garbage (calibration refuses the same data).
fn refuse_non_finite(model: &Model, inputs: &[Tensor]) -> Outcome {
    for (spec, t) in model.meta().inputs.iter().zip(inputs) {
        let Some(values) = t.as_f32() else { continue };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let per_sample: usize = t.shape.iter().skip(1).product::<usize>().max(1);
            eprintln!(
                "error: input `{}` holds {} at element {i} (sample {}); the model would run on garbage",
                spec.name,
                values[i],
                i / per_sample
            );
            eprintln!("help: clean the data, or pass --allow-non-finite to run it as it is");
            return Err(Failure::User);
        }
    }
    Ok(())
}

/// Where the model runs: qc's own kernels, or libtorch's int8 path (`--device`).
fn runner<'m>(model: &'m Model, args: &RunArgs) -> Result<Runner<'m>, Failure> {
    match args.device.resolve() {
        Ok(None) => Ok(Runner::Cpu(model)),
        Ok(Some(device)) => {
            if args.profile {
                eprintln!("error: `--profile` times qc's own kernels step by step");
                eprintln!("help: drop `--profile`, or run with `--device cpu`");
                return Err(Failure::User);
            }
            match torch::Int8Session::new(model.program().clone(), device) {
                Ok(s) => {
                    println!(
                        "device: {} through libtorch (int8 steps with integer GEMMs, bit-exact with `--device cpu`)",
                        match device {
                            Device::Cpu => "cpu",
                            Device::Cuda => "cuda",
                        }
                    );
                    Ok(Runner::Torch(model, Box::new(s)))
                }
                Err(e) => {
                    eprintln!("error: the model cannot run through libtorch: {e}");
                    eprintln!("help: run it on qc's own kernels with `--device cpu`");
                    Err(Failure::User)
                }
            }
        }
        Err(message) => {
            eprintln!("error: {message}");
            eprintln!(
                "help: `--device cpu` runs qc's own kernels (the same bits); `qc backends` shows what this machine has"
            );
            Err(Failure::User)
        }
    }
}

/// Top-1 accuracy against `--labels`, when given.
fn report_accuracy(labels: Option<&Path>, outputs: &[Tensor]) -> Outcome {
    if let Some(path) = labels {
        match accuracy(path, &outputs[0]) {
            Ok((correct, n, all)) => println!(
                "accuracy: {:.2}% top-1 ({correct}/{n} against {}{})",
                100.0 * correct as f64 / n.max(1) as f64,
                if all > n {
                    format!("the first {n} of the {all} labels of ")
                } else {
                    String::new()
                },
                path.display()
            ),
            Err(message) => {
                eprintln!("error: {message}");
                eprintln!("help: --labels takes one class index per input sample (IDX labels or a .npy of integers)");
                return Err(Failure::User);
            }
        }
    }
    Ok(())
}

/// The first output against `--compare`'s reference, when given.
fn report_agreement(reference: Option<&Path>, model: &Model, qat: Option<&QatPlan>, outputs: &[Tensor]) -> Outcome {
    let Some(path) = reference else { return Ok(()) };
    let step = crate::compare::output_step(model.program(), qat);
    match crate::compare::agreement(path, &outputs[0], step) {
        Ok(a) => {
            println!("{}", crate::compare::describe(path, &a, step));
            Ok(())
        }
        Err(message) => {
            eprintln!("error: {message}");
            eprintln!("help: --compare takes the .npy another run wrote with --output, for the same inputs");
            Err(Failure::User)
        }
    }
}

/// The outputs to `--output`, when given.
fn write_output(output: Option<&Path>, outputs: &[Tensor]) -> Outcome {
    if let Some(path) = output {
        if let Err(e) = write_outputs(path, outputs) {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            eprintln!("help: {}", qc_runtime::io_help::after_write(&e, path));
            return Err(Failure::User);
        }
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One warm run, then the profiled one: each step's share.
fn profile(model: &Model, pool: &rayon::ThreadPool, inputs: &[Tensor]) -> Outcome {
    let profiled = pool.install(|| {
        let _ = model.run(inputs);
        model.run_profiled(inputs)
    });
    match profiled {
        Ok((_, times)) => {
            print_profile(model, &times);
            Ok(())
        }
        Err(e) => {
            eprintln!("error: the model failed while profiling: {e}");
            eprintln!("help: this is a bug if the first run succeeded; please report it");
            Err(Failure::Bug)
        }
    }
}

/// `--bench ROUNDS`: three warm-up runs, then the median of the timed ones.
fn bench(runner: &Runner, pool: &rayon::ThreadPool, inputs: &[Tensor], rounds: usize) -> Outcome {
    let rounds = rounds.max(1);
    let batch = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
    let mut times = Vec::with_capacity(rounds);
    let warmup = 3.min(rounds);
    for i in 0..warmup + rounds {
        let start = Instant::now();
        if let Err(e) = runner.run(pool, inputs) {
            eprintln!("error: the model failed while benchmarking: {e}");
            eprintln!("help: this is a bug if the first run succeeded; please report it");
            return Err(Failure::Bug);
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "bench: {rounds} rounds, median {median:.3} ms/run, batch {batch}, {:.1} img/s (min {:.3}, max {:.3} ms; {} threads)",
        batch as f64 * 1e3 / median,
        times[0],
        times[times.len() - 1],
        pool.current_num_threads()
    );
    Ok(())
}

/// Each step's share of one run, slowest first (the first 15), then the total.
fn print_profile(model: &Model, times: &[std::time::Duration]) {
    let program = model.program();
    let kernels = model.step_kernels();
    let total: f64 = times.iter().map(|t| t.as_secs_f64()).sum();
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]));
    println!(
        "profile: {} steps, {:.3} ms in all; slowest first:",
        times.len(),
        total * 1e3
    );
    for &i in order.iter().take(15) {
        let step = &program.steps[i];
        let out = &program.values[step.output];
        let kernel = kernels[i].as_deref().map_or(String::new(), |k| format!("  [{k}]"));
        println!(
            "  {:>8.3} ms  {:>5.1}%  {} = {} -> {}{}{kernel}",
            times[i].as_secs_f64() * 1e3,
            100.0 * times[i].as_secs_f64() / total.max(1e-12),
            out.name,
            step.op.name(),
            out.dtype,
            out.shape_string()
        );
    }
    // The share of each kind of step: where a faster kernel would pay.
    let mut by_op: Vec<(&str, f64)> = Vec::new();
    for (i, t) in times.iter().enumerate() {
        let op = program.steps[i].op.name();
        match by_op.iter_mut().find(|(o, _)| *o == op) {
            Some((_, s)) => *s += t.as_secs_f64(),
            None => by_op.push((op, t.as_secs_f64())),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shares: Vec<String> = by_op
        .iter()
        .map(|(op, t)| format!("{op} {:.1}%", 100.0 * t / total.max(1e-12)))
        .collect();
    println!("  by op: {}", shares.join(", "));
}

/// One tensor per model input: `.npy` files in input order, or one `.npz` with the inputs by
/// name. `u8` arrays are taken as images and scaled to `[0, 1]`; the second list says which
/// inputs were.
#[allow(clippy::type_complexity)]
fn read_inputs(model: &Model, paths: &[PathBuf]) -> Result<(Vec<Tensor>, Vec<bool>), String> {
    let specs = &model.meta().inputs;
    // Every sample of an array; a single number (shape `()`) is no batch.
    let all = |a: &qc_runtime_host::data::Array, what: String| {
        if a.shape.is_empty() {
            return Err(format!(
                "{what} holds a single number (shape ()), not a batch of samples"
            ));
        }
        Ok(a.batch_f32(0, a.samples()))
    };
    if let [one] = paths {
        if one.extension().is_some_and(|e| e == "npz") {
            let arrays = qc_runtime_host::data::read_npz(one).map_err(|e| e.to_string())?;
            return specs
                .iter()
                .map(|s| {
                    arrays
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map(|(_, a)| {
                            all(a, format!("array `{}` of `{}`", s.name, one.display())).map(|t| (t, a.is_u8()))
                        })
                        .ok_or_else(|| format!("`{}` has no array named `{}`", one.display(), s.name))?
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.into_iter().unzip());
        }
    }
    if paths.len() != specs.len() {
        return Err(format!(
            "the model has {} input(s), {} --input file(s) given",
            specs.len(),
            paths.len()
        ));
    }
    paths
        .iter()
        .zip(specs)
        .map(|(p, spec)| {
            let array = read_array(p)?;
            let t = all(&array, format!("`{}`", p.display()))?;
            let bytes = array.is_u8();
            // An array whose samples hold as many elements as the model's (IDX images
            // `[N, 28, 28]` for an input `[N, 1, 28, 28]`) is reshaped to the model's shape.
            let want: Vec<usize> = spec.shape.iter().skip(1).map(|d| d.unwrap_or(0)).collect();
            let per: usize = want.iter().product();
            let have: usize = t.shape.iter().skip(1).product();
            if want != t.shape[1..] && per == have && per > 0 {
                let mut shape = vec![t.shape[0]];
                shape.extend(want);
                return Ok((Tensor { shape, data: t.data }, bytes));
            }
            Ok((t, bytes))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|v| v.into_iter().unzip())
}

/// A `.npy` array, or an IDX file (`*-ubyte`, optionally `.gz`).
fn read_array(p: &Path) -> Result<qc_runtime_host::data::Array, String> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains("-ubyte") {
        qc_runtime_host::data::read_idx(p).map_err(|e| e.to_string())
    } else {
        qc_runtime_host::data::read_npy(p).map_err(|e| e.to_string())
    }
}

/// Top-1 accuracy of `[N, classes]` logits against the labels in `path`: hits, samples scored, and
/// labels in the file (the first `n` are used).
fn accuracy(path: &Path, logits: &Tensor) -> Result<(usize, usize, usize), String> {
    let array = read_array(path)?;
    let labels: Vec<f64> = match &array.data {
        qc_runtime_host::data::ArrayData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        qc_runtime_host::data::ArrayData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        qc_runtime_host::data::ArrayData::F64(v) => v.clone(),
    };
    let TensorData::F32(v) = &logits.data else {
        return Err("the first output is not f32 logits".into());
    };
    let [n, c] = logits.shape[..] else {
        return Err(format!(
            "the first output has shape {:?}, not [N, classes]",
            logits.shape
        ));
    };
    // More labels than samples is a labels file for a longer data set (the first samples were
    // run): the first `n` are used, and the accuracy line says so.
    if array.shape.len() != 1 || labels.len() < n {
        return Err(format!(
            "`{}` holds {} label(s) (shape {:?}) for {n} sample(s); it needs one class per sample",
            path.display(),
            labels.len(),
            array.shape
        ));
    }
    let all = labels.len();
    if let Some((i, l)) = labels[..n]
        .iter()
        .enumerate()
        .find(|(_, &l)| l.fract() != 0.0 || l < 0.0 || l >= c as f64)
    {
        return Err(format!(
            "label {i} of `{}` is {l}, not a class number from 0 to {}",
            path.display(),
            c - 1
        ));
    }
    let correct = (0..n)
        .filter(|&i| {
            let row = &v[i * c..(i + 1) * c];
            let best = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best as f64 == labels[i]
        })
        .count();
    Ok((correct, n, all))
}

/// One line per output: shape, range, and for `[N, classes]` outputs the top-1 class of the
/// first rows.
fn summarize(name: &str, t: &Tensor) {
    let TensorData::F32(v) = &t.data else {
        println!("output {name}: {} {:?}", t.dtype(), t.shape);
        return;
    };
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    let mut line = format!("output {name}: f32{:?}, min {lo}, max {hi}", t.shape);
    if let [n, c] = t.shape[..] {
        if c > 0 {
            let top: Vec<String> = (0..n.min(8))
                .map(|i| {
                    let row = &v[i * c..(i + 1) * c];
                    let best = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                    best.to_string()
                })
                .collect();
            line.push_str(&format!(", top-1 of the first {}: [{}]", top.len(), top.join(", ")));
        }
    }
    println!("{line}");
}

/// Writes the outputs as `.npy` files (atomically): a single output to `path`, several to
/// `<stem>.<index>.npy` beside it.
fn write_outputs(path: &Path, outputs: &[Tensor]) -> std::io::Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let TensorData::F32(v) = &out.data else {
            return Err(std::io::Error::other(format!("output {i} is {}, not f32", out.dtype())));
        };
        let target = if outputs.len() == 1 {
            path.to_path_buf()
        } else {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            path.with_file_name(format!("{stem}.{i}.npy"))
        };
        qc_runtime::fsutil::write_atomic(&target, &qc_runtime_host::data::npy_f32_bytes(&out.shape, v))?;
    }
    Ok(())
}
