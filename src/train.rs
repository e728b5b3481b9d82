//! `qc train`: training of a recipe's model through libtorch. Float training with the settings
//! of its `train { }` section, or, with `--qat`, quantization-aware fine-tuning with its
//! `qat { }` section; writes the parameters under their PyTorch names to a `.safetensors` file
//! that a recipe binds with `weights "FILE"`, after every epoch, with the state to `--resume`
//! beside it (docs/design-later-stages.md, Training).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indexmap::IndexMap;
use qc_compiler::ir::{Module, Stage};
use qc_compiler::{CompileError, RunOptions};
use qc_dsl::sections::{DataSource, Optimizer, Schedule, Split, TrainSettings};
use qc_dsl::Diagnostic;
use qc_runtime::program::Device;
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::data::{self, Array, ArrayData};
use qc_runtime_host::torch::{
    self, EpochStats, LabeledData, LrSchedule, QatTraining, StepProgress, TorchError, TrainConfig, TrainHooks,
    TrainState,
};

const EXIT_USER: i32 = 1;

/// Where a command runs its model through libtorch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
}

impl DeviceArg {
    /// The device, or why it cannot be used.
    /// Every command's `--device` choice of a libtorch device goes through here.
    pub fn resolve(self) -> Result<Device, String> {
        if !torch::COMPILED {
            return Err("this qc was built without libtorch".into());
        }
        let cuda = torch::info().map(|i| i.cuda_available).unwrap_or(false);
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Auto if cuda => Ok(Device::Cuda),
            DeviceArg::Auto => Ok(Device::Cpu),
            DeviceArg::Cuda if cuda => Ok(Device::Cuda),
            DeviceArg::Cuda => Err("`--device cuda`: libtorch sees no CUDA device on this machine".into()),
        }
    }
}

/// `qc train` arguments.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  qc train examples/fashion_cnn.qrecipe -o fashion_cnn.safetensors\n  qc train examples/fashion_cnn.qrecipe -o quick.safetensors --epochs 1 --max-samples 2000\n  qc train trained.qrecipe --qat -o qat.safetensors      (the recipe binds the float weights)\n  qc train examples/fashion_cnn.qrecipe -o fashion_cnn.safetensors --resume\n\nA recipe binds the result with a `weights \"fashion_cnn.safetensors\"` line; a QAT result binds at\nstage `observed` (`qc compile --qat`)."
)]
pub struct TrainArgs {
    /// The .qrecipe file (with a `train { }` section; with `--qat`, a `qat { }` section).
    file: PathBuf,
    /// The .safetensors file to write (atomically, after every epoch): every parameter under
    /// its PyTorch name. The state to resume from goes beside it (`FILE.resume.safetensors`).
    #[arg(short, long)]
    output: PathBuf,
    /// Quantization-aware training: fine-tune with fake quantization and batch norms folded on
    /// the fly, from the weights the recipe binds, with the `qat { }` section's settings.
    #[arg(long)]
    qat: bool,
    /// Go on from the last epoch a run with the same recipe and output saved.
    #[arg(long)]
    resume: bool,
    /// Train this many epochs instead of the section's `epochs`.
    #[arg(long)]
    epochs: Option<u64>,
    /// Train on at most this many samples (overrides the section's `limit`).
    #[arg(long, value_name = "N")]
    max_samples: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// The file beside the output that holds the state to resume from.
pub fn resume_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".resume.safetensors");
    output.with_file_name(name)
}

/// Runs the command; returns the exit code.
pub fn main(args: TrainArgs) -> i32 {
    let loaded = match crate::cli::load(&args.file) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let user = |d: Diagnostic| crate::cli::fail(CompileError::User(vec![d]), &loaded.sources);
    let section = if args.qat { "qat" } else { "train" };
    let mut learnable_scales = false;
    let settings = if args.qat {
        let Some(q) = loaded.sections.qat.clone() else {
            eprintln!("error: `{}` has no `qat {{ }}` section", args.file.display());
            eprintln!("help: add one, e.g. `qat {{ epochs: 1  lr: 1e-4  optimizer: sgd(momentum: 0.9)  freeze_bn_after: 1 }}` (data, test data and normalization come from the `train` section)");
            return EXIT_USER;
        };
        let freeze = (q.freeze_bn_after(), q.freeze_observers_after());
        learnable_scales = q.learnable_scales.is_some_and(|l| l.value);
        (
            with_train_defaults(q.training.clone(), loaded.sections.train.as_ref()),
            Some(freeze),
        )
    } else {
        let Some(t) = loaded.sections.train.clone() else {
            eprintln!("error: `{}` has no `train {{ }}` section", args.file.display());
            eprintln!(
                "help: add one, e.g. `train {{ epochs: 2  lr: 0.01  optimizer: sgd(momentum: 0.9)  data: fashion_mnist(split: train)  test_data: fashion_mnist(split: test) }}`"
            );
            return EXIT_USER;
        };
        (t, None)
    };
    let (settings, freeze) = settings;
    let device = match args.device.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("help: `qc backends` shows what this machine has; use `--device cpu` or `--device auto`");
            return EXIT_USER;
        }
    };
    let opts = RunOptions {
        stop_after: Some(if args.qat { Stage::Observed } else { Stage::Float }),
        qat: args.qat,
        ..Default::default()
    };
    let module = match qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}) {
        Ok(m) => m,
        Err(e) => return crate::cli::fail(e, &loaded.sources),
    };
    let lowered = if args.qat {
        qc_compiler::lower::lower_qat(&module, learnable_scales).map(|(p, k, plan)| (p, k, Some(plan)))
    } else {
        qc_compiler::lower::lower_with_keys(&module).map(|(p, k)| (p, k, None))
    };
    let (program, keys, plan) = match lowered {
        Ok(p) => p,
        Err(e @ qc_compiler::lower::LowerError::Node { .. }) => {
            eprintln!("error: {e}");
            eprintln!("help: change the layer's quantization in the recipe's `quantize` section");
            return EXIT_USER;
        }
        Err(e) => {
            eprintln!("internal error: the {} stage does not lower: {e}", module.stage);
            eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
            return 70;
        }
    };
    let trainable = qc_compiler::lower::trainable(&keys, plan.as_ref());
    if args.qat
        && !module
            .params
            .values()
            .any(|p| matches!(p.provenance, qc_compiler::ir::Provenance::Checkpoint { .. }))
    {
        eprintln!("warning: the recipe binds no weights, so QAT starts from random weights");
        eprintln!("help: train the float model first (`qc train RECIPE -o fp32.safetensors`) and bind it with `weights \"fp32.safetensors\"`");
    }
    let recipe_dir = loaded
        .sources
        .files()
        .first()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let input_name = program.values[program.inputs[0]].name.clone();
    let Some(source) = settings.data.clone() else {
        return user(
            Diagnostic::new("qc::train::data", settings.span, format!("the `{section}` section names no training data"))
                .label("no `data:` here")
                .help("add `data: fashion_mnist(split: train)`, or `data: \"train.npz\"` with the inputs and a `labels` array"),
        );
    };
    let train_data = match read_labeled(&source.value, &recipe_dir, &input_name, "data") {
        Ok(d) => d,
        Err((message, help)) => {
            return user(
                Diagnostic::new("qc::train::data", source.span, message)
                    .label("this training data")
                    .help(help),
            )
        }
    };
    let test_data = match &settings.test_data {
        Some(t) => match read_labeled(&t.value, &recipe_dir, &input_name, "test_data") {
            Ok(d) => Some(d),
            Err((message, help)) => {
                return user(
                    Diagnostic::new("qc::train::data", t.span, message)
                        .label("this test data")
                        .help(help),
                )
            }
        },
        None => None,
    };
    let mut config = config_of(&settings, args.epochs, args.max_samples);
    config.device = device;
    let resume = if args.resume {
        match read_resume(&resume_path(&args.output)) {
            Ok(s) if s.epoch >= config.epochs => {
                println!(
                    "{} already holds {} epoch(s) of {}; nothing to do (`--epochs` trains further)",
                    args.output.display(),
                    s.epoch,
                    config.epochs
                );
                return 0;
            }
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: cannot resume: {e}");
                eprintln!(
                    "help: `--resume` goes on from `{}`, which `qc train` writes after each epoch with the same `-o`",
                    resume_path(&args.output).display()
                );
                return EXIT_USER;
            }
        }
    } else {
        None
    };
    let samples = config
        .max_samples
        .map_or(train_data.0.samples(), |m| m.min(train_data.0.samples()));
    println!(
        "{} {} on {samples} samples{}: {} epoch(s){}, batch {}, lr {}, {}, {}",
        if args.qat {
            "quantization-aware training of"
        } else {
            "training"
        },
        module.name,
        test_data
            .as_ref()
            .map(|t| format!(" (testing on {})", t.0.samples()))
            .unwrap_or_default(),
        config.epochs,
        resume
            .as_ref()
            .map(|r| format!(" (resuming after epoch {})", r.epoch))
            .unwrap_or_default(),
        config.batch_size,
        config.lr,
        optimizer_text(&config.optimizer),
        match device {
            Device::Cpu => "libtorch CPU",
            Device::Cuda => "libtorch CUDA",
        }
    );
    if let (Some(plan), Some((bn, obs))) = (&plan, freeze) {
        let after = |e: Option<u64>| e.map_or("never".to_string(), |e| format!("after epoch {e}"));
        println!(
            "{} fake quantizations; batch norm frozen {}, observers frozen {}",
            plan.sites.len(),
            after(bn),
            after(obs)
        );
    }
    let qat = plan.map(|plan| QatTraining {
        plan,
        freeze_bn_after: freeze.and_then(|f| f.0).map(|e| e as usize),
        freeze_observers_after: freeze.and_then(|f| f.1).map(|e| e as usize),
    });
    let started = Instant::now();
    let bar = std::cell::RefCell::new(ProgressBar::new());
    let mut saved: Option<String> = None;
    let epochs_total = config.epochs;
    let result = torch::train(
        &program,
        &trainable,
        qat.as_ref(),
        &config,
        LabeledData {
            inputs: &train_data.0,
            labels: &train_data.1,
        },
        test_data.as_ref().map(|t| LabeledData {
            inputs: &t.0,
            labels: &t.1,
        }),
        resume.as_ref(),
        TrainHooks {
            on_step: &mut |p| bar.borrow_mut().update(p),
            on_epoch: &mut |s, state| {
                bar.borrow_mut().finish();
                print_epoch(s, epochs_total);
                let tensors = save(&module, &keys, state, epochs_total, &args.output)?;
                saved = Some(format!("wrote {tensors} tensors to {}", args.output.display()));
                Ok(())
            },
        },
    );
    bar.borrow_mut().finish();
    let result = match result {
        Ok(r) => r,
        Err(e @ TorchError::NonFinite { .. }) => {
            eprintln!("error: training diverged: {e}");
            eprintln!(
                "help: lower the learning rate (`lr:` in the `{section}` section), and check the data for NaN or infinite values{}",
                if saved.is_some() {
                    format!("; `{}` holds the last good epoch (`--resume` goes on from it)", args.output.display())
                } else {
                    String::new()
                }
            );
            return EXIT_USER;
        }
        Err(TorchError::Train(m)) if m.starts_with("cannot write") => {
            eprintln!("error: {m}");
            eprintln!("help: check that the folder exists and is writable");
            return EXIT_USER;
        }
        Err(e) => {
            eprintln!("error: training failed: {e}");
            eprintln!("help: `qc backends` shows whether this qc has libtorch; `qc check` the recipe");
            return EXIT_USER;
        }
    };
    print_summary(&result.epochs);
    let last = result.epochs.last();
    println!(
        "trained {} in {:.1} s ({} steps){}; {}",
        module.name,
        started.elapsed().as_secs_f64(),
        result.steps,
        last.and_then(|s| s.test_accuracy)
            .map(|a| format!(", test accuracy {:.2}%", a * 100.0))
            .unwrap_or_default(),
        saved.unwrap_or_else(|| "nothing new to write".into())
    );
    if args.qat {
        println!(
            "bind them in a recipe with `weights \"{}\"` and compile with `qc compile --qat`",
            args.output.display()
        );
    } else {
        println!("bind them in a recipe with `weights \"{}\"`", args.output.display());
    }
    0
}

/// The `qat` section's settings, with what it leaves out (data, test data, normalization, seed,
/// batch size, threads, limit) taken from the `train` section.
fn with_train_defaults(mut q: TrainSettings, train: Option<&TrainSettings>) -> TrainSettings {
    if let Some(t) = train {
        q.data = q.data.or_else(|| t.data.clone());
        q.test_data = q.test_data.or_else(|| t.test_data.clone());
        q.normalize = q.normalize.or(t.normalize);
        q.seed = q.seed.or(t.seed);
        q.batch_size = q.batch_size.or(t.batch_size);
        q.threads = q.threads.or(t.threads);
        q.limit = q.limit.or(t.limit);
    }
    q
}

/// Writes the epoch's parameters (PyTorch names, `num_batches_tracked` advanced by the steps) to
/// `output` and the state to resume from beside it, both atomically. Returns the tensor count.
fn save(
    module: &Module,
    keys: &[Option<String>],
    state: &TrainState,
    epochs: usize,
    output: &Path,
) -> Result<usize, String> {
    let mut m = module.clone();
    store(&mut m, keys, &state.constants, state.steps);
    let (tensors, mut meta) =
        qc_compiler::keys::export(&m).map_err(|e| format!("cannot export the trained parameters: {e}"))?;
    meta.insert("qc.epochs_done".into(), state.epoch.to_string());
    meta.insert("qc.epochs".into(), epochs.to_string());
    qc_compiler::checkpoint::write_safetensors_with_metadata(output, &tensors, Some(meta))
        .map_err(|e| format!("cannot write the checkpoint: {e}"))?;
    let mut resume: IndexMap<String, Tensor> = IndexMap::new();
    let scalar = |v: usize| Tensor {
        shape: vec![],
        data: TensorData::I64(vec![v as i64]),
    };
    resume.insert("qc.epoch".into(), scalar(state.epoch));
    resume.insert("qc.steps".into(), scalar(state.steps));
    for (i, c) in state.constants.iter().enumerate() {
        resume.insert(format!("constant.{i:05}"), c.clone());
    }
    for (i, o) in state.optimizer.iter().enumerate() {
        resume.insert(format!("optimizer.{i:05}"), o.clone());
    }
    qc_compiler::checkpoint::write_safetensors(&resume_path(output), &resume)
        .map_err(|e| format!("cannot write the checkpoint: {e}"))?;
    Ok(tensors.len())
}

/// The state `save` wrote.
fn read_resume(path: &Path) -> Result<TrainState, String> {
    let t = qc_compiler::checkpoint::read_safetensors(path).map_err(|e| e.to_string())?;
    let int = |k: &str| match t.get(k).map(|x| &x.data) {
        Some(TensorData::I64(v)) if v.len() == 1 && v[0] >= 0 => Ok(v[0] as usize),
        _ => Err(format!(
            "`{}` has no `{k}`; it is not a state `qc train` wrote",
            path.display()
        )),
    };
    let list = |prefix: &str| -> Vec<Tensor> {
        t.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    };
    Ok(TrainState {
        epoch: int("qc.epoch")?,
        steps: int("qc.steps")?,
        constants: list("constant."),
        optimizer: list("optimizer."),
    })
}

/// A one-line progress bar on stderr: redrawn in place on a terminal (at most 10 times a
/// second), a line at every quarter of an epoch otherwise.
struct ProgressBar {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
    quarter: usize,
}

impl ProgressBar {
    fn new() -> Self {
        ProgressBar {
            tty: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
            quarter: 0,
        }
    }

    fn update(&mut self, p: &StepProgress) {
        let text = |width: usize| {
            let done = (p.step * width).div_ceil(p.steps.max(1)).min(width);
            format!(
                "epoch {}/{} [{}{}] {}/{} loss {:.4} acc {:5.2}% {:.0} samples/s",
                p.epoch,
                p.epochs,
                "#".repeat(done),
                ".".repeat(width - done),
                p.step,
                p.steps,
                p.loss,
                p.accuracy * 100.0,
                p.samples_per_second
            )
        };
        if self.tty {
            let due = self.last.is_none_or(|t| t.elapsed().as_millis() >= 100) || p.step == p.steps;
            if due {
                eprint!("\r{}", text(30));
                let _ = std::io::stderr().flush();
                self.last = Some(Instant::now());
                self.drawn = true;
            }
        } else {
            let quarter = p.step * 4 / p.steps.max(1);
            if p.step == 1 {
                self.quarter = 0;
            }
            if quarter > self.quarter {
                self.quarter = quarter;
                eprintln!("{}", text(20));
            }
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn print_epoch(s: &EpochStats, epochs: usize) {
    let test = s
        .test_accuracy
        .map(|a| format!("  test acc {:6.2}%", a * 100.0))
        .unwrap_or_default();
    println!(
        "epoch {}/{}  loss {:.4}  train acc {:6.2}%{test}  {:.1} s (+{:.1} s test)",
        s.epoch,
        epochs,
        s.loss,
        s.train_accuracy * 100.0,
        s.seconds,
        s.eval_seconds
    );
}

/// The table at the end of a run: one row per epoch trained in this run.
fn print_summary(epochs: &[EpochStats]) {
    if epochs.is_empty() {
        return;
    }
    println!();
    println!(
        "{:>5}  {:>9}  {:>7}  {:>9}  {:>8}  {:>7}",
        "epoch", "lr", "loss", "train acc", "test acc", "time"
    );
    for s in epochs {
        println!(
            "{:>5}  {:>9.3e}  {:>7.4}  {:>8.2}%  {:>8}  {:>6.1}s",
            s.epoch,
            s.lr,
            s.loss,
            s.train_accuracy * 100.0,
            s.test_accuracy
                .map(|a| format!("{:.2}%", a * 100.0))
                .unwrap_or_else(|| "-".into()),
            s.seconds + s.eval_seconds
        );
    }
}

/// The runtime's training configuration from the recipe's section and the command line.
fn config_of(s: &TrainSettings, epochs: Option<u64>, max_samples: Option<u64>) -> TrainConfig {
    TrainConfig {
        epochs: epochs.unwrap_or_else(|| s.epochs()) as usize,
        batch_size: s.batch_size().max(1) as usize,
        lr: s.lr(),
        schedule: match s.schedule() {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::Cosine => LrSchedule::Cosine,
            Schedule::Step { every, gamma } => LrSchedule::Step {
                every: every as usize,
                gamma,
            },
        },
        optimizer: match s.optimizer() {
            Optimizer::Sgd { momentum, nesterov } => torch::Optimizer::Sgd { momentum, nesterov },
            Optimizer::Adam { beta1, beta2 } => torch::Optimizer::Adam { beta1, beta2 },
        },
        weight_decay: s.weight_decay(),
        seed: s.seed(),
        normalize: s.normalize().map(|n| (n.mean, n.std)),
        max_samples: max_samples.or(s.limit()).map(|m| m as usize),
        threads: s.threads().map(|t| t as usize),
        device: Device::Cpu,
    }
}

fn optimizer_text(o: &torch::Optimizer) -> String {
    match o {
        torch::Optimizer::Sgd { momentum, nesterov } => {
            format!("sgd(momentum: {momentum}{})", if *nesterov { ", nesterov" } else { "" })
        }
        torch::Optimizer::Adam { beta1, beta2 } => format!("adam(beta1: {beta1}, beta2: {beta2})"),
    }
}

/// Inputs and one class per sample: IDX images and labels, or a `.npz` holding the input (by
/// name, or its only other array) and `labels`. On failure, the message and a help line.
fn read_labeled(
    source: &DataSource,
    dir: &Path,
    input: &str,
    key: &str,
) -> Result<(Array, Vec<i64>), (String, String)> {
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    match source {
        DataSource::Idx { dir: d, split } => {
            let folder = d
                .as_deref()
                .map_or_else(|| PathBuf::from(data::FASHION_MNIST_DIR), resolve);
            let help = format!(
                "Fashion-MNIST is read from `{}` (`make setup` installs it there); name another folder with `fashion_mnist(\"dir\", split: {})`",
                folder.display(),
                split.name()
            );
            let train = *split == Split::Train;
            let images = data::read_idx_images(&folder, train).map_err(|e| (e.to_string(), help.clone()))?;
            let (_, labels_path) = data::idx_files(&folder, train);
            let labels = data::read_idx(&labels_path).map_err(|e| (e.to_string(), help.clone()))?;
            Ok((images, classes(&labels).map_err(|m| (m, help))?))
        }
        DataSource::Npz { path } => {
            let help = format!(
                "save the inputs and the classes with `np.savez(\"{path}\", {input}=x, labels=y)`; relative paths start at the recipe's folder"
            );
            let mut arrays = data::read_npz(&resolve(path)).map_err(|e| (e.to_string(), help.clone()))?;
            let Some(l) = arrays.iter().position(|(n, _)| n == "labels") else {
                return Err((format!("`{path}` holds no `labels` array"), help));
            };
            let (_, labels) = arrays.remove(l);
            let x = match arrays.iter().position(|(n, _)| n == input) {
                Some(i) => arrays.remove(i).1,
                None if arrays.len() == 1 => arrays.remove(0).1,
                None => return Err((format!("`{path}` holds no array named `{input}`"), help)),
            };
            Ok((x, classes(&labels).map_err(|m| (m, help))?))
        }
        DataSource::Npy { .. } => Err((
            "a `.npy` file holds no labels; training needs a class per sample".into(),
            format!("use `{key}: \"train.npz\"` holding the inputs (`{input}`) and `labels`, or `fashion_mnist(...)`"),
        )),
        DataSource::Random => Err((
            "random data has no labels to train on".into(),
            format!("use `{key}: fashion_mnist(split: train)` or a `.npz` with `{input}` and `labels`"),
        )),
    }
}

/// Class labels as `i64`: `u8`, or integral floats.
fn classes(a: &Array) -> Result<Vec<i64>, String> {
    if a.shape.len() != 1 {
        return Err(format!(
            "labels must be one class per sample (rank 1), found shape {:?}",
            a.shape
        ));
    }
    let integral = |x: f64| (x.fract() == 0.0 && x >= 0.0).then_some(x as i64);
    let v: Option<Vec<i64>> = match &a.data {
        ArrayData::U8(v) => Some(v.iter().map(|&b| b as i64).collect()),
        ArrayData::F32(v) => v.iter().map(|&x| integral(x as f64)).collect(),
        ArrayData::F64(v) => v.iter().map(|&x| integral(x)).collect(),
    };
    v.ok_or_else(|| "labels must be non-negative whole numbers (class indices)".into())
}

/// Puts the trained values back into the module's parameters, and advances every
/// `num_batches_tracked` by the optimizer steps (as PyTorch's batch norms count training batches).
fn store(module: &mut Module, keys: &[Option<String>], constants: &[Tensor], steps: usize) {
    for (key, value) in keys.iter().zip(constants) {
        if let Some(p) = key.as_ref().and_then(|k| module.params.get_mut(k)) {
            p.value = Some(value.clone());
        }
    }
    for (key, p) in module.params.iter_mut() {
        if !key.ends_with("num_batches_tracked") {
            continue;
        }
        if let Some(Tensor { data, .. }) = &mut p.value {
            match data {
                TensorData::I64(v) => v.iter_mut().for_each(|x| *x += steps as i64),
                TensorData::I32(v) => v.iter_mut().for_each(|x| *x += steps as i32),
                _ => {}
            }
        }
    }
}
