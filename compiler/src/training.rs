//! The training driver behind `qc train`: compiles a recipe to the stage training starts from
//! (`float`, or `observed` for QAT), lowers it with its parameter keys (and the QAT plan), reads
//! the labeled data the `train`/`qat` section names, trains through the host crate's libtorch
//! training, and saves each epoch's parameters under PyTorch's names with the state to resume
//! from beside them. It prints nothing: the command reports progress through the hooks.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use qc_dsl::sections::{DataSource, Optimizer, Schedule, Split, TrainSettings};
use qc_dsl::{Diagnostic, Loaded};
use qc_runtime::program::{Device, Program};
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::data::{self, Array, ArrayData};
use qc_runtime_host::torch::{
    self, LabeledData, LrSchedule, QatTraining, TorchError, TrainConfig, TrainHooks, TrainResult, TrainState,
};

use crate::ir::{Module, Provenance, Stage};
use crate::lower::{self, LowerError};
use crate::pass::RunOptions;
use crate::pipeline::{self, CompileError};

/// What the command line asks of a training run.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// Quantization-aware training (the `qat` section) instead of float training (`train`).
    pub qat: bool,
    /// Overrides the section's `epochs`.
    pub epochs: Option<u64>,
    /// Overrides the section's `limit`.
    pub max_samples: Option<u64>,
    pub device: Device,
    /// Go on from the state that [`save_epoch`] wrote beside this output.
    pub resume_output: Option<PathBuf>,
}

/// Inputs and one class per sample.
pub type Labeled = (Array, Vec<i64>);

/// Everything a training run needs, prepared from the recipe and the request.
pub struct TrainJob {
    /// The module at the stage training starts from; trained values go back into its parameters.
    pub module: Module,
    /// The parameter key each program constant holds (`None`: not a parameter).
    pub keys: Vec<Option<String>>,
    pub program: Program,
    /// One flag per program constant: trained by the optimizer.
    pub trainable: Vec<bool>,
    pub qat: Option<QatTraining>,
    pub config: TrainConfig,
    pub train: Labeled,
    pub test: Option<Labeled>,
    /// The state to go on from (`--resume`).
    pub resume: Option<TrainState>,
    /// The recipe section the settings come from: `train` or `qat`.
    pub section: &'static str,
}

/// Why a training run could not be prepared.
#[derive(Debug)]
pub enum PrepareError {
    /// The recipe has no `train { }` (or, for QAT, `qat { }`) section.
    NoSection { section: &'static str },
    /// Compiling to the starting stage failed, or the data the section names is unusable.
    Compile(CompileError),
    /// A layer cannot be lowered as the recipe quantizes it (the recipe's fault).
    Lower(LowerError),
    /// The starting stage does not lower: a bug in qc.
    LowerBug { stage: Stage, error: LowerError },
    /// `--resume` found nothing it can go on from.
    Resume(String),
    /// The resume state already holds every epoch asked for.
    AlreadyDone { epochs_done: usize, epochs: usize },
}

/// Compiles, lowers and reads the data of a training run.
pub fn prepare(loaded: &Loaded, request: &TrainRequest) -> Result<TrainJob, PrepareError> {
    let (settings, freeze, learnable_scales) = section_settings(loaded, request.qat)?;
    let section = if request.qat { "qat" } else { "train" };
    let opts = RunOptions {
        stop_after: Some(if request.qat { Stage::Observed } else { Stage::Float }),
        qat: request.qat,
        ..Default::default()
    };
    let module = pipeline::compile(loaded, &opts, &mut |_| {}, &mut |_, _| {}).map_err(PrepareError::Compile)?;
    let lowered = if request.qat {
        lower::lower_qat(&module, learnable_scales).map(|(p, k, plan)| (p, k, Some(plan)))
    } else {
        lower::lower_with_keys(&module).map(|(p, k)| (p, k, None))
    };
    let (program, keys, plan) = lowered.map_err(|e| match e {
        e @ LowerError::Node { .. } => PrepareError::Lower(e),
        error => PrepareError::LowerBug {
            stage: module.stage,
            error,
        },
    })?;
    let trainable = lower::trainable(&keys, plan.as_ref());
    let input_name = program.values[program.inputs[0]].name.clone();
    let (train, test) = read_section_data(loaded, &settings, section, &input_name)?;
    let mut config = config_of(&settings, request.epochs, request.max_samples);
    config.device = request.device;
    // The data is normalized as the model's input line declares (the one input training feeds).
    config.normalize = module.input_normalizations().first().and_then(|(_, n)| n.cloned());
    let resume = match &request.resume_output {
        Some(output) => {
            let state = read_resume(&resume_path(output)).map_err(PrepareError::Resume)?;
            if state.epoch >= config.epochs {
                return Err(PrepareError::AlreadyDone {
                    epochs_done: state.epoch,
                    epochs: config.epochs,
                });
            }
            Some(state)
        }
        None => None,
    };
    let qat = plan.map(|plan| QatTraining {
        plan,
        freeze_bn_after: freeze.and_then(|f| f.0).map(|e| e as usize),
        freeze_observers_after: freeze.and_then(|f| f.1).map(|e| e as usize),
        freeze_ranges_after: freeze.and_then(|f| f.2).map(|e| e as usize),
    });
    Ok(TrainJob {
        module,
        keys,
        program,
        trainable,
        qat,
        config,
        train,
        test,
        resume,
        section,
    })
}

impl TrainJob {
    /// The samples one epoch trains on.
    pub fn samples(&self) -> usize {
        self.config
            .max_samples
            .map_or(self.train.0.samples(), |m| m.min(self.train.0.samples()))
    }

    /// True when some parameter comes from a checkpoint (QAT from random weights is a mistake
    /// worth a warning).
    pub fn binds_weights(&self) -> bool {
        self.module
            .params
            .values()
            .any(|p| matches!(p.provenance, Provenance::Checkpoint { .. }))
    }

    /// Trains through libtorch; `hooks` see each step and each finished epoch.
    pub fn run(&self, hooks: TrainHooks) -> Result<TrainResult, TorchError> {
        torch::train(
            &self.program,
            &self.trainable,
            self.qat.as_ref(),
            &self.config,
            LabeledData {
                inputs: &self.train.0,
                labels: &self.train.1,
            },
            self.test.as_ref().map(|t| LabeledData {
                inputs: &t.0,
                labels: &t.1,
            }),
            self.resume.as_ref(),
            hooks,
        )
    }

    /// Writes an epoch's parameters to `output` and the state to resume from beside it; returns
    /// the tensor count.
    pub fn save_epoch(&self, state: &TrainState, output: &Path) -> Result<usize, String> {
        save(&self.module, &self.keys, state, self.config.epochs, output)
    }
}

/// QAT's freezing epochs as the recipe says them: batch norm, observers, ranges.
type Freeze = (Option<u64>, Option<u64>, Option<u64>);

/// The section's settings (QAT's with the `train` section's data and the like filled in), the
/// freezing epochs and whether scales are learnable.
#[allow(clippy::type_complexity)]
fn section_settings(loaded: &Loaded, qat: bool) -> Result<(TrainSettings, Option<Freeze>, bool), PrepareError> {
    if qat {
        let Some(q) = loaded.sections.qat.clone() else {
            return Err(PrepareError::NoSection { section: "qat" });
        };
        let freeze = (q.freeze_bn_after(), q.freeze_observers_after(), q.freeze_ranges_after());
        let learnable_scales = q.learnable_scales.is_some_and(|l| l.value);
        Ok((
            with_train_defaults(q.training.clone(), loaded.sections.train.as_ref()),
            Some(freeze),
            learnable_scales,
        ))
    } else {
        let Some(t) = loaded.sections.train.clone() else {
            return Err(PrepareError::NoSection { section: "train" });
        };
        Ok((t, None, false))
    }
}

/// The training and test data the section names, read relative to the recipe's folder; an
/// unusable source is a diagnostic on its span.
fn read_section_data(
    loaded: &Loaded,
    settings: &TrainSettings,
    section: &str,
    input_name: &str,
) -> Result<(Labeled, Option<Labeled>), PrepareError> {
    let user = |d: Diagnostic| PrepareError::Compile(CompileError::User(vec![d]));
    let recipe_dir = loaded
        .sources
        .files()
        .first()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let Some(source) = settings.data.clone() else {
        return Err(user(
            Diagnostic::new("qc::train::data", settings.span, format!("the `{section}` section names no training data"))
                .label("no `data:` here")
                .help("add `data: fashion_mnist(split: train)`, or `data: \"train.npz\"` with the inputs and a `labels` array"),
        ));
    };
    let train = read_labeled(&source.value, &recipe_dir, input_name, "data").map_err(|(message, help)| {
        user(
            Diagnostic::new("qc::train::data", source.span, message)
                .label("this training data")
                .help(help),
        )
    })?;
    let test = match &settings.test_data {
        Some(t) => Some(
            read_labeled(&t.value, &recipe_dir, input_name, "test_data").map_err(|(message, help)| {
                user(
                    Diagnostic::new("qc::train::data", t.span, message)
                        .label("this test data")
                        .help(help),
                )
            })?,
        ),
        None => None,
    };
    Ok((train, test))
}

/// The file beside the output that holds the state to resume from.
pub fn resume_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".resume.safetensors");
    output.with_file_name(name)
}

/// The `qat` section's settings, with what it leaves out (data, test data, seed, batch size,
/// threads, limit) taken from the `train` section.
fn with_train_defaults(mut q: TrainSettings, train: Option<&TrainSettings>) -> TrainSettings {
    if let Some(t) = train {
        q.data = q.data.or_else(|| t.data.clone());
        q.test_data = q.test_data.or_else(|| t.test_data.clone());
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
        crate::keys::export(&m).map_err(|e| format!("cannot export the trained parameters: {e}"))?;
    meta.insert("qc.epochs_done".into(), state.epoch.to_string());
    meta.insert("qc.epochs".into(), epochs.to_string());
    crate::checkpoint::write_safetensors_with_metadata(output, &tensors, Some(meta)).map_err(|e| e.to_string())?;
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
    crate::checkpoint::write_safetensors(&resume_path(output), &resume).map_err(|e| e.to_string())?;
    Ok(tensors.len())
}

/// The state `save` wrote.
pub fn read_resume(path: &Path) -> Result<TrainState, String> {
    let t = crate::checkpoint::read_safetensors(path).map_err(|e| e.to_string())?;
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
        normalize: None,
        max_samples: max_samples.or(s.limit()).map(|m| m as usize),
        threads: s.threads().map(|t| t as usize),
        device: Device::Cpu,
    }
}

/// Inputs and one class per sample: IDX images and labels, or a `.npz` holding the input (by
/// name, or its only other array) and `labels`; relative paths start at `dir`. On failure, the
/// message and a help line. (`key` names the setting in the help: `data`, `test_data`.)
pub fn read_labeled(
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
