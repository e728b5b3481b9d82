//! `qc train`: float training of a recipe's model through libtorch with the settings of its
//! `train { }` section, writing the trained parameters under their PyTorch names to a
//! `.safetensors` file that a recipe binds with `weights "FILE"` (docs/design-later-stages.md,
//! Training).

use std::path::{Path, PathBuf};
use std::time::Instant;

use qc_compiler::ir::{Module, Stage};
use qc_compiler::{CompileError, RunOptions};
use qc_dsl::sections::{DataSource, Optimizer, Schedule, Split, TrainSettings};
use qc_dsl::Diagnostic;
use qc_runtime::data::{self, Array, ArrayData};
use qc_runtime::torch::{self, LabeledData, LrSchedule, TorchError, TrainConfig};
use qc_runtime::{Tensor, TensorData};

const EXIT_USER: i32 = 1;

/// `qc train` arguments.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  qc train examples/fashion_cnn.qrecipe -o fashion_cnn.safetensors\n  qc train examples/fashion_cnn.qrecipe -o quick.safetensors --epochs 1 --max-samples 2000\n\nA recipe binds the result with a `weights \"fashion_cnn.safetensors\"` line."
)]
pub struct TrainArgs {
    /// The .qrecipe file (with a `train { }` section).
    file: PathBuf,
    /// The .safetensors file to write (atomically): every float parameter under its PyTorch name.
    #[arg(short, long)]
    output: PathBuf,
    /// Train this many epochs instead of the recipe's `epochs`.
    #[arg(long)]
    epochs: Option<u64>,
    /// Train on at most this many samples (overrides the recipe's `limit`).
    #[arg(long, value_name = "N")]
    max_samples: Option<u64>,
}

/// Runs the command; returns the exit code.
pub fn main(args: TrainArgs) -> i32 {
    let loaded = match crate::cli::load(&args.file) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let user = |d: Diagnostic| crate::cli::fail(CompileError::User(vec![d]), &loaded.sources);
    let Some(settings) = loaded.sections.train.clone() else {
        eprintln!("error: `{}` has no `train {{ }}` section", args.file.display());
        eprintln!(
            "help: add one, e.g. `train {{ epochs: 2  lr: 0.01  optimizer: sgd(momentum: 0.9)  data: fashion_mnist(split: train)  test_data: fashion_mnist(split: test) }}`"
        );
        return EXIT_USER;
    };
    let opts = RunOptions {
        stop_after: Some(Stage::Float),
        ..Default::default()
    };
    let mut module = match qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}) {
        Ok(m) => m,
        Err(e) => return crate::cli::fail(e, &loaded.sources),
    };
    let (program, keys) = match qc_compiler::lower::lower_with_keys(&module) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("internal error: the float stage does not lower: {e}");
            eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
            return 70;
        }
    };
    let trainable: Vec<bool> = keys
        .iter()
        .map(|k| {
            k.as_deref()
                .is_some_and(|k| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        })
        .collect();
    let recipe_dir = loaded
        .sources
        .files()
        .first()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let input_name = program.values[program.inputs[0]].name.clone();
    let Some(source) = settings.data.clone() else {
        return user(
            Diagnostic::new("qc::train::data", settings.span, "the `train` section names no training data")
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
    let config = config_of(&settings, args.epochs, args.max_samples);
    let samples = config
        .max_samples
        .map_or(train_data.0.samples(), |m| m.min(train_data.0.samples()));
    println!(
        "training {} on {samples} samples{}: {} epoch(s), batch {}, lr {}, {}",
        module.name,
        test_data
            .as_ref()
            .map(|t| format!(" (testing on {})", t.0.samples()))
            .unwrap_or_default(),
        config.epochs,
        config.batch_size,
        config.lr,
        optimizer_text(&config.optimizer),
    );
    let started = Instant::now();
    let result = torch::train_float(
        &program,
        &trainable,
        &config,
        LabeledData {
            inputs: &train_data.0,
            labels: &train_data.1,
        },
        test_data.as_ref().map(|t| LabeledData {
            inputs: &t.0,
            labels: &t.1,
        }),
        &mut |s| {
            let test = s
                .test_accuracy
                .map(|a| format!("  test acc {:6.2}%", a * 100.0))
                .unwrap_or_default();
            println!(
                "epoch {}/{}  loss {:.4}  train acc {:6.2}%{test}  {:.1} s (+{:.1} s test)",
                s.epoch,
                config.epochs,
                s.loss,
                s.train_accuracy * 100.0,
                s.seconds,
                s.eval_seconds
            );
        },
    );
    let result = match result {
        Ok(r) => r,
        Err(e @ TorchError::NonFinite { .. }) => {
            eprintln!("error: training diverged: {e}");
            eprintln!(
                "help: lower the learning rate (`lr:` in the `train` section), and check the data for NaN or infinite values"
            );
            return EXIT_USER;
        }
        Err(e) => {
            eprintln!("error: training failed: {e}");
            eprintln!("help: `qc backends` shows whether this qc has libtorch; `qc check` the recipe");
            return EXIT_USER;
        }
    };
    store(&mut module, &keys, &result);
    let (tensors, mut meta) = match qc_compiler::keys::export(&module) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("internal error: cannot export the trained parameters: {e}");
            eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
            return 70;
        }
    };
    meta.insert("qc.trained_epochs".into(), result.epochs.len().to_string());
    if let Some(a) = result.epochs.last().and_then(|s| s.test_accuracy) {
        meta.insert("qc.test_accuracy".into(), format!("{a:.4}"));
    }
    if let Err(e) = qc_compiler::checkpoint::write_safetensors_with_metadata(&args.output, &tensors, Some(meta)) {
        eprintln!("error: {e}");
        eprintln!("help: check that the folder exists and is writable");
        return EXIT_USER;
    }
    let last = result.epochs.last();
    println!(
        "trained {} in {:.1} s ({} steps){}; wrote {} tensors to {}",
        module.name,
        started.elapsed().as_secs_f64(),
        result.steps,
        last.and_then(|s| s.test_accuracy)
            .map(|a| format!(", test accuracy {:.2}%", a * 100.0))
            .unwrap_or_default(),
        tensors.len(),
        args.output.display()
    );
    println!("bind them in a recipe with `weights \"{}\"`", args.output.display());
    0
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

/// Puts the trained values back into the float module's parameters, and advances every
/// `num_batches_tracked` by the optimizer steps (as PyTorch's batch norms count training batches).
fn store(module: &mut Module, keys: &[Option<String>], result: &torch::TrainResult) {
    for (key, value) in keys.iter().zip(&result.constants) {
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
                TensorData::I64(v) => v.iter_mut().for_each(|x| *x += result.steps as i64),
                TensorData::I32(v) => v.iter_mut().for_each(|x| *x += result.steps as i32),
                _ => {}
            }
        }
    }
}
