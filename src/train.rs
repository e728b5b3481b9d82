//! `qc train`: training of a recipe's model through libtorch. Float training with the settings
//! of its `train { }` section, or, with `--qat`, quantization-aware fine-tuning with its
//! `qat { }` section; writes the parameters under their PyTorch names to a `.safetensors` file
//! that a recipe binds with `weights "FILE"`, after every epoch, with the state to `--resume`
//! beside it (docs/design-later-stages.md, Training).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use qc_compiler::training::{self, PrepareError, TrainJob, TrainRequest};
use qc_runtime::program::Device;
use qc_runtime_host::torch::{self, EpochStats, StepProgress, TorchError, TrainHooks};

use crate::exit::{Failure, Outcome};

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
    /// Train this many epochs (1 to 100,000) instead of the section's `epochs`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: Option<u64>,
    /// Train on at most this many samples, at least 1 (overrides the section's `limit`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_samples: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// Runs the command: prepares the run through the compiler's training driver, reports progress,
/// epochs and the summary.
pub fn main(args: TrainArgs) -> Outcome {
    let loaded = crate::cli::load(&args.file)?;
    let mut inputs = crate::cli::recipe_inputs(&loaded);
    inputs.push(training::resume_path(&args.output));
    crate::cli::check_output("-o", &args.output, &inputs)?;
    crate::cli::check_output(
        "-o",
        &training::resume_path(&args.output),
        &crate::cli::recipe_inputs(&loaded),
    )?;
    let device = match args.device.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("help: `qc backends` shows what this machine has; use `--device cpu` or `--device auto`");
            return Err(Failure::User);
        }
    };
    let request = TrainRequest {
        qat: args.qat,
        epochs: args.epochs,
        max_samples: args.max_samples,
        device,
        resume_output: args.resume.then(|| args.output.clone()),
    };
    let job = match training::prepare(&loaded, &request) {
        Ok(job) => job,
        Err(PrepareError::AlreadyDone { epochs_done, epochs }) => {
            println!(
                "{} already holds {epochs_done} epoch(s) of {epochs}; nothing to do (`--epochs` trains further)",
                args.output.display(),
            );
            return Ok(());
        }
        Err(e) => return Err(prepare_failed(e, &args, &loaded.sources)),
    };
    if args.qat && !job.binds_weights() {
        eprintln!("warning: the recipe binds no weights, so QAT starts from random weights");
        eprintln!("help: train the float model first (`qc train RECIPE -o fp32.safetensors`) and bind it with `weights \"fp32.safetensors\"`");
    }
    print_header(&job, args.qat);
    let started = Instant::now();
    let bar = std::cell::RefCell::new(ProgressBar::new());
    let mut saved: Option<String> = None;
    let epochs_total = job.config.epochs;
    let result = job.run(TrainHooks {
        on_step: &mut |p| bar.borrow_mut().update(p),
        on_epoch: &mut |s, state| {
            bar.borrow_mut().finish();
            print_epoch(s, epochs_total);
            let tensors = job.save_epoch(state, &args.output)?;
            saved = Some(format!("wrote {tensors} tensors to {}", args.output.display()));
            Ok(())
        },
    });
    bar.borrow_mut().finish();
    let result = match result {
        Ok(r) => r,
        Err(e) => return Err(training_failed(e, job.section, saved.is_some(), &args.output)),
    };
    print_summary(&result.epochs);
    let last = result.epochs.last();
    println!(
        "trained {} in {:.1} s ({} steps){}; {}",
        job.module.name,
        started.elapsed().as_secs_f64(),
        result.steps,
        last.and_then(|s| s.test_accuracy)
            .map(|a| format!(", test accuracy {:.2}%", a * 100.0))
            .unwrap_or_default(),
        saved.unwrap_or_else(|| "nothing new to write".into())
    );
    let binding = crate::cli::path_from_recipe(&args.file, &args.output);
    if args.qat {
        println!("bind them in a recipe with `weights \"{binding}\"` and compile with `qc compile --qat`");
    } else {
        println!("bind them in a recipe with `weights \"{binding}\"`");
    }
    Ok(())
}

/// Reports why the run could not be prepared.
fn prepare_failed(e: PrepareError, args: &TrainArgs, sources: &std::sync::Arc<qc_dsl::SourceMap>) -> Failure {
    match e {
        PrepareError::NoSection { section: "qat" } => {
            eprintln!("error: `{}` has no `qat {{ }}` section", args.file.display());
            eprintln!("help: add one, e.g. `qat {{ epochs: 1  lr: 1e-4  optimizer: sgd(momentum: 0.9)  freeze_bn_after: 1 }}` (data and test data come from the `train` section, the normalization from the `input` line)");
            Failure::User
        }
        PrepareError::NoSection { .. } => {
            eprintln!("error: `{}` has no `train {{ }}` section", args.file.display());
            eprintln!(
                "help: add one, e.g. `train {{ epochs: 2  lr: 0.01  optimizer: sgd(momentum: 0.9)  data: fashion_mnist(split: train)  test_data: fashion_mnist(split: test) }}`"
            );
            Failure::User
        }
        PrepareError::Compile(e) => crate::cli::fail(e, sources),
        PrepareError::Lower(e) => {
            eprintln!("error: {e}");
            eprintln!("help: change the layer's quantization in the recipe's `quantize` section");
            Failure::User
        }
        PrepareError::LowerBug { stage, error } => {
            eprintln!("internal error: the {stage} stage does not lower: {error}");
            eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
            Failure::Bug
        }
        PrepareError::Resume(e) => {
            eprintln!("error: cannot resume: {e}");
            eprintln!(
                "help: `--resume` goes on from `{}`, which `qc train` writes after each epoch with the same `-o`",
                training::resume_path(&args.output).display()
            );
            Failure::User
        }
        PrepareError::AlreadyDone { .. } => Failure::User,
    }
}

/// Reports why training stopped.
fn training_failed(e: TorchError, section: &str, saved: bool, output: &Path) -> Failure {
    match e {
        e @ TorchError::NonFinite { .. } => {
            eprintln!("error: training diverged: {e}");
            eprintln!(
                "help: lower the learning rate (`lr:` in the `{section}` section), and check the data for NaN or infinite values{}",
                if saved {
                    format!("; `{}` holds the last good epoch (`--resume` goes on from it)", output.display())
                } else {
                    String::new()
                }
            );
        }
        TorchError::Train(m) if m.starts_with("cannot write") => {
            eprintln!("error: {m}");
            eprintln!(
                "help: a checkpoint is written whole or not at all, so `{}` holds the last epoch saved (if any); \
                 free space or fix the folder, then run again (`--resume` goes on from that epoch)",
                output.display()
            );
        }
        e => {
            eprintln!("error: training failed: {e}");
            eprintln!("help: `qc backends` shows whether this qc has libtorch; `qc check` the recipe");
        }
    }
    Failure::User
}

/// The run's first lines: what trains on what, how, where.
fn print_header(job: &TrainJob, qat: bool) {
    let config = &job.config;
    println!(
        "{} {} on {} samples{}: {} epoch(s){}, batch {}, lr {}, {}, {}",
        if qat {
            "quantization-aware training of"
        } else {
            "training"
        },
        job.module.name,
        job.samples(),
        job.test
            .as_ref()
            .map(|t| format!(" (testing on {})", t.0.samples()))
            .unwrap_or_default(),
        config.epochs,
        job.resume
            .as_ref()
            .map(|r| format!(" (resuming after epoch {})", r.epoch))
            .unwrap_or_default(),
        config.batch_size,
        config.lr,
        optimizer_text(&config.optimizer),
        match config.device {
            Device::Cpu => "libtorch CPU",
            Device::Cuda => "libtorch CUDA",
        }
    );
    if let Some(qat) = &job.qat {
        let after = |e: Option<usize>| e.map_or("never".to_string(), |e| format!("after epoch {e}"));
        let pow2 = qat.plan.sites.iter().filter(|s| s.power_of_two).count();
        let learned = qat.plan.sites.iter().filter(|s| s.learnable).count();
        let kinds = match (pow2, learned) {
            (0, _) => String::new(),
            (p, 0) => format!(" ({p} with power-of-two scales)"),
            (p, l) => format!(" ({p} with power-of-two scales, {l} with learned ranges)"),
        };
        let ranges = qat
            .freeze_ranges_after
            .map_or(String::new(), |e| format!(", ranges frozen after epoch {e}"));
        println!(
            "{} fake quantizations{kinds}; batch norm frozen {}, observers frozen {}{ranges}",
            qat.plan.sites.len(),
            after(qat.freeze_bn_after),
            after(qat.freeze_observers_after)
        );
    }
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

fn optimizer_text(o: &torch::Optimizer) -> String {
    match o {
        torch::Optimizer::Sgd { momentum, nesterov } => {
            format!("sgd(momentum: {momentum}{})", if *nesterov { ", nesterov" } else { "" })
        }
        torch::Optimizer::Adam { beta1, beta2 } => format!("adam(beta1: {beta1}, beta2: {beta2})"),
    }
}
