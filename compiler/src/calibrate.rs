//! Stage `calibrated` (pass `calibrate`): streams the recipe's calibration data through the
//! observed module (lowered with `lower::lower_float`; observers are identity steps whose values
//! carry the observers' names) through libtorch (`RunOptions::calibration_device`, what
//! `qc compile` uses by default) or the reference interpreter (f64 sums, machine-independent,
//! what tests and snapshots use), feeds each observer's `ObserverState` with every batch, and
//! stores what calibration found in the IR:
//!
//! - activations: the observer's output type gets `quant = Some(QuantParams)` (`!q(...)` in the
//!   dump); its `min_val`/`max_val` (and `histogram`) parameters hold the statistics, with
//!   `Provenance::Calibrated`; QAT fake-quant nodes also get their `scale` and `zero_point`;
//! - weights: the float weight of every int8 conv and linear gets `Param::quant`, per channel
//!   (axis 0) or per tensor as its `WeightQuant` says, computed from the weight with the spec's
//!   observer (`!q(axis 0, 16 scales 0.00113..0.00267 #..., zero_point 0, [-128, 127])` in the dump). The weight's values do not
//!   change; `quantized` turns it into integers with exactly these parameters.
//!
//! Data: `fashion_mnist`/`idx` (gzip IDX, bytes scaled to `[0, 1]`), `.npy`/`.npz` (float32,
//! float64 or uint8; uint8 scaled to `[0, 1]`), then the normalization the input's line declares
//! (`normalize(...)`, applied by `Normalize::apply` as training and `qc run` apply it); `random`
//! draws seeded standard-normal inputs (what the network sees after normalization, so not
//! normalized again) and marks the module as not calibrated for accuracy. Batches of `batch_size` (default 32); at most `batches` batches and
//! `samples` samples; with neither, [`DEFAULT_BATCHES`] batches.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use qc_dsl::sections::{Calibration, DataSource, Observer, QuantizeSettings, Split};
use qc_dsl::{Diagnostic, Span};
use qc_runtime::normalize::Normalize;
use qc_runtime::program::RunError;
use qc_runtime::program::{Device, Program};
use qc_runtime::quant::{QParams, QRange};
use qc_runtime::{SplitMix64, Tensor, TensorData};
use qc_runtime_host::data::{self, Array, DataError};
use qc_runtime_host::observe::{ObserveError, Observed, ObserverKind, ObserverState};
use qc_runtime_host::torch::TorchError;

use crate::ir::{Module, NodeId, ParamQuant, Provenance};
use crate::ops::{Op, QSpec};
use crate::pass::{Changed, Ctx, Pass, PassError};
use crate::types::{Dim, QuantParams};

/// Batch size when the recipe gives none.
pub const DEFAULT_BATCH_SIZE: u64 = 32;
/// Batches when the recipe limits neither batches nor samples.
pub const DEFAULT_BATCHES: u64 = 32;
/// The seed of `random(...)` calibration data.
pub const RANDOM_SEED: u64 = 0x0ca1_1b2a_7e5e_ed00;

const NO_CALIBRATE: &str = "qc::no-calibrate";
const DATA_ERROR: &str = "qc::calibration-data";
const DATA_SHAPE: &str = "qc::calibration-shape";
const NON_FINITE: &str = "qc::calibration-non-finite";
const NO_DATA: &str = "qc::observer-no-data";
const QPARAMS: &str = "qc::calibration-qparams";

/// Runs the calibration data through the observers and stores the quantization parameters.
pub struct Calibrate;

impl Pass for Calibrate {
    fn name(&self) -> &'static str {
        "calibrate"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        if trained_fake_quant_state(module) {
            // A QAT checkpoint's fake-quant nodes carry the scales and zero points training
            // settled on; as PyTorch's `convert`, use them instead of recalibrating.
            store_weights(module)?;
            return Ok(Changed::Yes);
        }
        if cx.opts.keys_only {
            return placeholder_ranges(module);
        }
        let q = crate::plan::settings(cx.loaded, module).map_err(PassError::User)?;
        let cal = q
            .calibration
            .as_ref()
            .ok_or_else(|| PassError::User(vec![no_calibrate(q)]))?;
        let recipe_dir = cx
            .loaded
            .sources
            .files()
            .first()
            .and_then(|f| f.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let mut source = Source::open(module, cal, &recipe_dir)?;
        let described = cx
            .loaded
            .sources
            .text(cal.source.span)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let stats = run_observers(module, &mut source, cal, cx.opts.progress, cx.opts.calibration_device)?;
        let provenance = Provenance::Calibrated {
            source: described,
            batches: stats.batches,
            samples: stats.samples,
        };
        store_activations(module, stats.observers, &provenance, cal)?;
        store_weights(module)?;
        if cal.random {
            module.calibrated_for_accuracy = false;
            module.calibration_note = Some(format!(
                "random data ({})",
                crate::plan::place(&cx.loaded.sources, cal.source.span)
            ));
        }
        Ok(Changed::Yes)
    }
}

/// `RunOptions::keys_only`: every observer as if it had seen [-1, 1], so that the stages after
/// this one have their keys, dtypes and shapes without any data being read.
fn placeholder_ranges(module: &mut Module) -> Result<Changed, PassError> {
    let mut observers = observer_nodes(module)?;
    for o in &mut observers {
        o.state.observe(&[-1.0, 1.0]).map_err(|e| PassError::Internal {
            pass: "calibrate".into(),
            message: format!("placeholder range: {e}"),
        })?;
        o.raw = Some((-1.0, 1.0));
    }
    let provenance = Provenance::Calibrated {
        source: "a placeholder range [-1, 1] (keys only)".into(),
        batches: 0,
        samples: 0,
    };
    let cal = Calibration {
        source: qc_dsl::sections::Spanned::new(DataSource::Random, Span::default()),
        random: true,
        batches: None,
        batch_size: None,
        samples: None,
        span: Span::default(),
    };
    store_activations(module, observers, &provenance, &cal)?;
    store_weights(module)?;
    module.calibrated_for_accuracy = false;
    Ok(Changed::Yes)
}

/// Whether the module's quantization state comes from a QAT checkpoint: it has fake-quant nodes
/// and no observers, and every fake-quant's `scale` and `zero_point` were read from a checkpoint.
pub fn trained_fake_quant_state(module: &Module) -> bool {
    let mut fake_quants = 0;
    for id in module.graph.topo_order() {
        let node = module.graph.node(id);
        match &node.op {
            Op::Observe(_) => return false,
            Op::FakeQuant { .. } => {
                fake_quants += 1;
                let from_checkpoint = ["scale", "zero_point"].iter().all(|r| {
                    node.params.iter().any(|(role, key)| {
                        role == r
                            && module
                                .params
                                .get(key)
                                .is_some_and(|p| matches!(p.provenance, Provenance::Checkpoint { .. }))
                    })
                });
                if !from_checkpoint {
                    return false;
                }
            }
            _ => {}
        }
    }
    fake_quants > 0
}

/// Whether a weight's fake-quant state comes from a checkpoint and saw data (finite ranges).
fn trained_weight_fake_quant(module: &Module, node: &crate::ir::Node) -> bool {
    let param = |role: &str| {
        node.params
            .iter()
            .find(|(r, _)| *r == role)
            .and_then(|(_, k)| module.params.get(k))
    };
    let from_checkpoint = ["weight_fake_quant.scale", "weight_fake_quant.zero_point"]
        .iter()
        .all(|r| param(r).is_some_and(|p| matches!(p.provenance, Provenance::Checkpoint { .. })));
    let saw_data = [
        "weight_fake_quant.activation_post_process.min_val",
        "weight_fake_quant.activation_post_process.max_val",
    ]
    .iter()
    .all(|r| {
        param(r)
            .and_then(|p| p.value.as_ref())
            .and_then(|v| v.as_f32())
            .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
    });
    from_checkpoint && saw_data
}

fn no_calibrate(q: &QuantizeSettings) -> Diagnostic {
    let kw = Span::new(q.span.start, (q.span.start + "quantize".len()).min(q.span.end));
    Diagnostic::new(
        NO_CALIBRATE,
        kw,
        "`quantize` has no `calibrate` entry, so the observers get no data",
    )
    .label("no `calibrate` in this section")
    .help(
        "add a line to the section: `calibrate fashion_mnist(split: train) batches: 32` (real data), or \
         `calibrate random(batches: 8)` (latency and size work only; the ranges mean nothing)",
    )
}

/// Where calibration batches come from.
struct Source {
    /// Per model input: the input's name and its dims after the batch (all fixed).
    inputs: Vec<(String, Vec<usize>)>,
    kind: SourceKind,
    batch_size: usize,
    /// Samples to use in all.
    total: usize,
    span: Span,
}

enum SourceKind {
    Random(SplitMix64),
    Array {
        array: Array,
        /// The input line's `normalize(...)`, applied to every batch.
        normalize: Option<Normalize>,
    },
}

fn user(d: Diagnostic) -> PassError {
    PassError::User(vec![d])
}

fn data_error(e: DataError, span: Span, help: String) -> PassError {
    user(
        Diagnostic::new(DATA_ERROR, span, e.to_string())
            .label("this calibration data")
            .help(help),
    )
}

fn shape_text(dims: &[usize]) -> String {
    format!(
        "[{}]",
        dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// Each model input's name and sample shape (every dim but the first), which must be fixed.
fn sample_shapes(module: &Module, span: Span) -> Result<Vec<(String, Vec<usize>)>, PassError> {
    let g = &module.graph;
    let mut inputs = vec![];
    for &id in &g.inputs {
        let node = g.node(id);
        let ty = node.ty.as_ref().expect("inputs are typed");
        let dims: Option<Vec<usize>> = ty
            .dims
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Symbol(_) => None,
            })
            .collect();
        let Some(dims) = dims else {
            return Err(user(
                Diagnostic::new(
                    DATA_SHAPE,
                    span,
                    format!(
                        "input `{}` is {ty}: only its first dim may be symbolic for calibration",
                        node.name
                    ),
                )
                .label("calibration needs fixed sample shapes")
                .help("give every dim but the batch a number in the model's `input` line"),
            ));
        };
        inputs.push((node.name.clone(), dims));
    }
    Ok(inputs)
}

/// A relative path starts at the recipe's folder.
fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// The array a calibration file source names, for the model's one input, with its shape checked.
fn read_array(
    module: &Module,
    source: &DataSource,
    inputs: &[(String, Vec<usize>)],
    dir: &Path,
    span: Span,
) -> Result<Array, PassError> {
    if inputs.len() != 1 {
        return Err(user(
            Diagnostic::new(
                DATA_SHAPE,
                span,
                format!(
                    "`{}` has {} inputs; calibration files feed one",
                    module.name,
                    inputs.len()
                ),
            )
            .label("one array for several inputs")
            .help("calibrate a model with several inputs on `random(batches: 8)`"),
        ));
    }
    let array = match source {
        DataSource::Idx { dir: d, split } => {
            let folder = d
                .as_deref()
                .map_or_else(|| PathBuf::from(data::FASHION_MNIST_DIR), |p| resolve(dir, p));
            data::read_idx_images(&folder, *split == Split::Train).map_err(|e| {
                data_error(
                    e,
                    span,
                    format!(
                        "Fashion-MNIST is read from `{}` (`make setup` installs it there); name another \
                         folder with `fashion_mnist(\"dir\", split: {})`",
                        folder.display(),
                        split.name()
                    ),
                )
            })?
        }
        DataSource::Npy { path } => data::read_npy(&resolve(dir, path)).map_err(|e| {
            data_error(
                e,
                span,
                "save the array with `np.save` (float32, float64 or uint8, C order); relative paths \
                 start at the recipe's folder"
                    .into(),
            )
        })?,
        DataSource::Npz { path } => {
            let arrays = data::read_npz(&resolve(dir, path)).map_err(|e| {
                data_error(
                    e,
                    span,
                    "save the arrays with `np.savez` (float32, float64 or uint8, C order); relative \
                     paths start at the recipe's folder"
                        .into(),
                )
            })?;
            pick_array(arrays, &inputs[0].0, span)?
        }
        DataSource::Random => unreachable!("random data has no array"),
    };
    check_sample_shape(&array, &inputs[0], span)?;
    Ok(array)
}

/// The array's samples must have the input's shape.
fn check_sample_shape(array: &Array, input: &(String, Vec<usize>), span: Span) -> Result<(), PassError> {
    let (name, want) = input;
    if array.sample_shape() == want.as_slice() {
        return Ok(());
    }
    let mut model = vec!["N".to_string()];
    model.extend(want.iter().map(|d| d.to_string()));
    Err(user(
        Diagnostic::new(
            DATA_SHAPE,
            span,
            format!(
                "the calibration data has shape {} (samples of {}), but input `{name}` takes [{}]",
                shape_text(&array.shape),
                shape_text(array.sample_shape()),
                model.join(", ")
            ),
        )
        .label("data of another shape")
        .help(format!(
            "the data must be [samples, {}]: reshape it, or check the model's `input` line",
            want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )),
    ))
}

/// How many samples calibration reads: what the source has, capped by `samples:` and by
/// `batches:` (a default number of batches when neither is given).
fn sample_count(cal: &Calibration, available: usize, batch_size: usize) -> usize {
    let mut total = available;
    if let Some(s) = cal.samples {
        total = total.min(s.value.min(usize::MAX as u64) as usize);
    }
    let batches = match (cal.batches, cal.samples) {
        (Some(b), _) => Some(b.value),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_BATCHES),
    };
    if let Some(b) = batches {
        total = total.min((b as usize).saturating_mul(batch_size));
    }
    total
}

impl Source {
    fn open(module: &Module, cal: &Calibration, dir: &Path) -> Result<Source, PassError> {
        let span = cal.source.span;
        let inputs = sample_shapes(module, span)?;
        let batch_size = cal.batch_size.map_or(DEFAULT_BATCH_SIZE, |b| b.value).min(1 << 20) as usize;
        let (kind, available) = match &cal.source.value {
            DataSource::Random => (SourceKind::Random(SplitMix64::new(RANDOM_SEED)), usize::MAX),
            other => {
                let array = read_array(module, other, &inputs, dir, span)?;
                // A file feeds the one input (`read_array` checks that there is one).
                let normalize = module.input_normalizations().first().and_then(|(_, n)| n.cloned());
                let n = array.samples();
                (SourceKind::Array { array, normalize }, n)
            }
        };
        Ok(Source {
            inputs,
            kind,
            batch_size,
            total: sample_count(cal, available, batch_size),
            span,
        })
    }

    fn batches(&self) -> usize {
        self.total.div_ceil(self.batch_size)
    }

    /// The inputs of batch `b`, normalized as the input declares.
    fn batch(&mut self, b: usize) -> Result<Vec<Tensor>, PassError> {
        let start = b * self.batch_size;
        let count = self.batch_size.min(self.total - start);
        Ok(match &mut self.kind {
            SourceKind::Random(rng) => self
                .inputs
                .iter()
                .map(|(_, dims)| {
                    let mut shape = vec![count];
                    shape.extend(dims);
                    let n: usize = shape.iter().product();
                    Tensor::f32(shape, (0..n).map(|_| normal(rng)).collect())
                })
                .collect(),
            SourceKind::Array { array, normalize } => {
                let mut t = array.batch_f32(start, count);
                if let Some(n) = normalize {
                    n.apply(&mut t).map_err(|e| {
                        user(
                            Diagnostic::new(
                                DATA_SHAPE,
                                self.span,
                                format!("the calibration data cannot be normalized: {e}"),
                            )
                            .label("this calibration data")
                            .help("the data must have the shape of the model's `input` line"),
                        )
                    })?;
                }
                vec![t]
            }
        })
    }
}

/// A standard-normal sample (Box–Muller on SplitMix64).
fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The array of an `.npz` that feeds input `name`: the one named like the input, else the only
/// array that is not labels.
fn pick_array(arrays: Vec<(String, Array)>, name: &str, span: Span) -> Result<Array, PassError> {
    let names: Vec<String> = arrays.iter().map(|(n, _)| n.clone()).collect();
    let mut candidates: Vec<(String, Array)> = arrays
        .into_iter()
        .filter(|(n, _)| !matches!(n.as_str(), "y" | "labels" | "targets"))
        .collect();
    if let Some(i) = candidates.iter().position(|(n, _)| n == name) {
        return Ok(candidates.swap_remove(i).1);
    }
    if candidates.len() == 1 {
        return Ok(candidates.pop().expect("one").1);
    }
    Err(user(
        Diagnostic::new(
            DATA_SHAPE,
            span,
            format!(
                "the archive holds {}; none is named `{name}` after the model's input",
                if names.is_empty() {
                    "no arrays".to_string()
                } else {
                    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                }
            ),
        )
        .label("which array?")
        .help(format!(
            "name the input array `{name}`: `np.savez(\"file.npz\", {name}=images)`"
        )),
    ))
}

fn kind_of(o: &Observer) -> ObserverKind {
    match *o {
        Observer::MinMax => ObserverKind::MinMax,
        Observer::MovingAverageMinMax { momentum } => ObserverKind::MovingAverageMinMax { momentum },
        Observer::Histogram { bins } => ObserverKind::Histogram { bins },
        Observer::Percentile { p } => ObserverKind::Percentile { p },
    }
}

fn spec_of(op: &Op) -> Option<&QSpec> {
    match op {
        Op::Observe(s) | Op::FakeQuant { spec: s, .. } => Some(s),
        _ => None,
    }
}

/// One observer's running state.
struct Obs {
    node: NodeId,
    state: ObserverState,
    /// The exact min and max seen (for `min_val`/`max_val` of observers that keep no raw range).
    raw: Option<(f32, f32)>,
}

/// Why a calibration batch did not run through.
enum BatchError {
    Run(RunError),
    Torch(TorchError),
}

struct Stats {
    observers: Vec<Obs>,
    batches: u64,
    samples: u64,
}

fn run_observers(
    module: &Module,
    source: &mut Source,
    cal: &Calibration,
    progress: Option<fn(&str)>,
    device: Option<Device>,
) -> Result<Stats, PassError> {
    let program = crate::lower::lower_float(module).map_err(|e| PassError::Internal {
        pass: "calibrate".into(),
        message: e.to_string(),
    })?;
    let (mut observers, by_value) = observers_of(module, &program)?;
    let watch: Vec<usize> = by_value.keys().copied().collect();
    let session = match device {
        Some(d) => Some(
            qc_runtime_host::torch::Session::new(program.clone(), d).map_err(|e| PassError::Internal {
                pass: "calibrate".into(),
                message: format!("cannot run the observed model through libtorch: {e}"),
            })?,
        ),
        None => None,
    };
    let n = source.batches();
    let mut samples = 0u64;
    let started = std::time::Instant::now();
    for b in 0..n {
        let inputs = source.batch(b)?;
        samples += inputs.first().map_or(0, |t| t.shape[0] as u64);
        let mut failure: Option<(usize, ObserveError)> = None;
        let mut on_value = |value: usize, t: &Tensor| {
            let Some(&o) = by_value.get(&value) else {
                return ControlFlow::Continue(());
            };
            let obs = &mut observers[o];
            let values = t.as_f32().unwrap_or(&[]);
            match obs.state.observe(values) {
                Ok(()) => {
                    if !values.is_empty() {
                        let (lo, hi) = values
                            .iter()
                            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                        obs.raw = Some(obs.raw.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
                    }
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some((o, e));
                    ControlFlow::Break(())
                }
            }
        };
        let result: Result<(), BatchError> = match &session {
            Some(s) => s
                .run_watched(&inputs, &watch, &mut on_value)
                .map(|_| ())
                .map_err(BatchError::Torch),
            None => qc_runtime::interp::run_with(&program, &inputs, &mut on_value)
                .map(|_| ())
                .map_err(BatchError::Run),
        };
        if let Err(e) = result {
            let batch_samples = inputs.first().map_or(0, |t| t.shape[0]);
            return Err(batch_error(
                module,
                &observers,
                source,
                (b, n),
                batch_samples,
                e,
                failure,
            ));
        }
        if let Some(p) = progress {
            p(&progress_line(b, n, samples, started));
        }
    }
    let _ = cal;
    Ok(Stats {
        observers,
        batches: n as u64,
        samples,
    })
}

/// One observer per observer node of the module, in topological order, and which of them
/// watches each value of the lowered program.
fn observers_of(module: &Module, program: &Program) -> Result<(Vec<Obs>, HashMap<usize, usize>), PassError> {
    let g = &module.graph;
    let value_of: HashMap<&str, usize> = program
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let observers = observer_nodes(module)?;
    let by_value: HashMap<usize, usize> = observers
        .iter()
        .enumerate()
        .map(|(i, o)| (value_of[g.node(o.node).name.as_str()], i))
        .collect();
    Ok((observers, by_value))
}

/// A fresh observer for every observer node of the module, in topological order.
fn observer_nodes(module: &Module) -> Result<Vec<Obs>, PassError> {
    let g = &module.graph;
    let mut observers: Vec<Obs> = vec![];
    for id in g.topo_order() {
        let node = g.node(id);
        let Some(spec) = spec_of(&node.op) else { continue };
        let state = ObserverState::per_tensor(kind_of(&spec.observer)).map_err(|e| PassError::Internal {
            pass: "calibrate".into(),
            message: format!("`{}`: {e}", node.name),
        })?;
        observers.push(Obs {
            node: id,
            state,
            raw: None,
        });
    }
    Ok(observers)
}

/// The progress bar after batch `b` of `n`.
fn progress_line(b: usize, n: usize, samples: u64, started: std::time::Instant) -> String {
    let done = (b + 1) * 30 / n.max(1);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    format!(
        "{} [{}{}] {}/{n} batches, {samples} samples, {:.0} samples/s",
        if b + 1 == n { "calibrated" } else { "calibrate" },
        "#".repeat(done),
        ".".repeat(30 - done),
        b + 1,
        samples as f64 / secs
    )
}

/// Why a batch failed: an observer saw a non-finite value (named with its node, batch and
/// statistic), the model produced one, or the data does not fit the model.
fn batch_error(
    module: &Module,
    observers: &[Obs],
    source: &Source,
    (b, n): (usize, usize),
    batch_samples: usize,
    e: BatchError,
    failure: Option<(usize, ObserveError)>,
) -> PassError {
    let batch_text = format!("batch {} of {n}", b + 1);
    match (e, failure) {
        (_, Some((o, e))) => {
            let obs = &observers[o];
            let node = module.graph.node(obs.node);
            let message = match &e {
                ObserveError::NonFinite {
                    index,
                    value,
                    statistic,
                } => format!(
                    "calibration stopped at {batch_text}: observer `{}` ({}) saw {value} at element {index}; \
                     its {statistic} statistic was not updated",
                    node.name,
                    obs.state.name()
                ),
                other => format!(
                    "calibration stopped at {batch_text}: observer `{}` ({}): {other}",
                    node.name,
                    obs.state.name()
                ),
            };
            user(
                Diagnostic::new(NON_FINITE, source.span, message)
                    .label("while running this data")
                    .help(format!(
                        "element {} counts from the start of the batch ({} samples from sample {}); remove or \
                         repair non-finite values (NaN, inf) in the calibration data",
                        match e {
                            ObserveError::NonFinite { index, .. } => index,
                            _ => 0,
                        },
                        batch_samples,
                        b * source.batch_size
                    ))
                    .note(node.origin.span, format!("`{}` observes this node's output", node.name)),
            )
        }
        (BatchError::Torch(TorchError::NonFiniteValue { value }), None) => user(
            Diagnostic::new(
                NON_FINITE,
                source.span,
                format!("calibration stopped at {batch_text}: `{value}` produced a NaN or an infinity"),
            )
            .label("while running this data")
            .help("the float model overflows or divides by zero on this data: check its weights and inputs"),
        ),
        (BatchError::Run(RunError::NonFinite { node, index, value }), None) => user(
            Diagnostic::new(
                NON_FINITE,
                source.span,
                format!("calibration stopped at {batch_text}: `{node}` produced {value} at element {index}"),
            )
            .label("while running this data")
            .help("the float model overflows or divides by zero on this data: check its weights and inputs"),
        ),
        (e, None) => {
            let e = match e {
                BatchError::Run(e) => e.to_string(),
                BatchError::Torch(e) => e.to_string(),
            };
            user(
                Diagnostic::new(
                    DATA_SHAPE,
                    source.span,
                    format!("calibration stopped at {batch_text}: {e}"),
                )
                .label("this calibration data")
                .help("the data must match the model's inputs"),
            )
        }
    }
}

fn qrange(spec: &QSpec) -> QRange {
    QRange::new(spec.bits as u32, spec.signed).expect("plans hold 2..=8 bits")
}

fn scalar(v: f32) -> Tensor {
    Tensor::f32(vec![], vec![v])
}

fn store_activations(
    module: &mut Module,
    observers: Vec<Obs>,
    prov: &Provenance,
    cal: &Calibration,
) -> Result<(), PassError> {
    let without_data: Vec<String> = observers
        .iter()
        .filter(|o| o.raw.is_none())
        .map(|o| module.graph.node(o.node).name.clone())
        .collect();
    if let Some(first) = without_data.first() {
        let others = match without_data.len() - 1 {
            0 => String::new(),
            k => format!(" (nor did {k} other observer{})", if k == 1 { "" } else { "s" }),
        };
        return Err(user(
            Diagnostic::new(
                NO_DATA,
                cal.source.span,
                format!("observer `{first}` saw no data{others}"),
            )
            .label("no samples came from here")
            .help("the calibration data has no samples (or `samples`/`batches` left none): give it at least one"),
        ));
    }
    for o in observers {
        let node = module.graph.node(o.node).clone();
        let spec = spec_of(&node.op).expect("observer node").clone();
        let range = qrange(&spec);
        let qp = o
            .state
            .qparams(range, spec.symmetric, spec.power_of_two)
            .and_then(|q| {
                q.per_tensor()
                    .ok_or(ObserveError::NoPerChannel { observer: "activation" })
            })
            .map_err(|e| {
                user(
                    Diagnostic::new(QPARAMS, cal.source.span, format!("observer `{}`: {e}", node.name))
                        .label("calibrated on this data")
                        .help("the observed range cannot be quantized; check the data for extreme values"),
                )
            })?;
        let (min, max) = match &o.state {
            ObserverState::MinMax(m) => m.range().unwrap_or((0.0, 0.0)),
            ObserverState::MovingAverageMinMax(m) => m.range().unwrap_or((0.0, 0.0)),
            _ => o.raw.unwrap_or((0.0, 0.0)),
        };
        let mut set = |role: &str, t: Tensor| {
            if let Some((_, key)) = node.params.iter().find(|(r, _)| *r == role) {
                if let Some(p) = module.params.get_mut(key) {
                    if p.shape == t.shape {
                        p.value = Some(t);
                        p.provenance = prov.clone();
                    }
                }
            }
        };
        match &node.op {
            Op::Observe(_) => {
                set("min_val", scalar(min));
                set("max_val", scalar(max));
                if let ObserverState::Histogram(h) = &o.state {
                    if let Some((_, _, counts)) = h.histogram() {
                        set(
                            "histogram",
                            Tensor::f32(vec![counts.len()], counts.iter().map(|c| *c as f32).collect()),
                        );
                    }
                }
            }
            _ => {
                set("activation_post_process.min_val", scalar(min));
                set("activation_post_process.max_val", scalar(max));
                set("scale", Tensor::f32(vec![1], vec![qp.scale()]));
                set(
                    "zero_point",
                    Tensor {
                        shape: vec![1],
                        data: TensorData::I32(vec![qp.zero_point()]),
                    },
                );
            }
        }
        if let Some(ty) = module.graph.node_mut(o.node).ty.as_mut() {
            ty.quant = Some(QuantParams::from_runtime(&qp));
        }
    }
    Ok(())
}

/// Quantization parameters of every int8 weight, from the weight itself; a QAT weight whose
/// fake-quant state was trained (read from a checkpoint, having seen data) keeps it, and
/// `quantized` quantizes with it.
fn store_weights(module: &mut Module) -> Result<(), PassError> {
    for id in module.graph.topo_order() {
        let node = module.graph.node(id).clone();
        let wq = match &node.op {
            Op::Conv(c) => c.weight_quant.clone(),
            Op::Linear(l) => l.weight_quant.clone(),
            _ => None,
        };
        let Some(wq) = wq else { continue };
        if wq.fake && trained_weight_fake_quant(module, &node) {
            continue;
        }
        let Some((_, key)) = node.params.iter().find(|(r, _)| *r == "weight") else {
            continue;
        };
        let key = key.clone();
        let Some(w) = module.params.get(&key).and_then(|p| p.value.clone()) else {
            continue;
        };
        let values = w.as_f32().unwrap_or(&[]);
        let kind = kind_of(&wq.spec.observer);
        let fail = |e: ObserveError| {
            let d = crate::float::node_diagnostic(
                module,
                id,
                QPARAMS,
                format!("cannot quantize `{key}`: {e}"),
                "this layer's weight",
                "the weight must be finite; check the checkpoint".into(),
            );
            user(d)
        };
        let state = if wq.spec.per_channel {
            let mut s = ObserverState::per_channel(kind).map_err(fail)?;
            s.observe_per_channel(values, &w.shape, 0).map_err(fail)?;
            s
        } else {
            let mut s = ObserverState::per_tensor(kind).map_err(fail)?;
            s.observe(values).map_err(fail)?;
            s
        };
        let range = qrange(&wq.spec);
        let qp = state
            .qparams(range, wq.spec.symmetric, wq.spec.power_of_two)
            .map_err(fail)?;
        let ranges = state.range().map_err(fail)?;
        let quant = match &qp {
            Observed::PerTensor(p) => ParamQuant::PerTensor(QuantParams::from_runtime(p)),
            Observed::PerChannel { axis, channels } => ParamQuant::PerChannel {
                axis: *axis,
                scales: channels.iter().map(QParams::scale).collect(),
                zero_points: channels.iter().map(QParams::zero_point).collect(),
                qmin: range.qmin(),
                qmax: range.qmax(),
            },
        };
        if let Some(p) = module.params.get_mut(&key) {
            p.quant = Some(quant);
        }
        if wq.fake {
            let prov = Provenance::Derived {
                transform: "observe_weight".into(),
                from: vec![key.clone()],
            };
            let scales: Vec<f32> = qp.values().iter().map(QParams::scale).collect();
            let zps: Vec<i32> = qp.values().iter().map(QParams::zero_point).collect();
            let mins: Vec<f32> = ranges.values().iter().map(|r| r.0).collect();
            let maxs: Vec<f32> = ranges.values().iter().map(|r| r.1).collect();
            let per_channel = wq.spec.per_channel;
            let sets: [(&str, Tensor); 4] = [
                ("weight_fake_quant.scale", Tensor::f32(vec![scales.len()], scales)),
                (
                    "weight_fake_quant.zero_point",
                    Tensor {
                        shape: vec![zps.len()],
                        data: TensorData::I32(zps),
                    },
                ),
                (
                    "weight_fake_quant.activation_post_process.min_val",
                    if per_channel {
                        Tensor::f32(vec![mins.len()], mins)
                    } else {
                        scalar(mins[0])
                    },
                ),
                (
                    "weight_fake_quant.activation_post_process.max_val",
                    if per_channel {
                        Tensor::f32(vec![maxs.len()], maxs)
                    } else {
                        scalar(maxs[0])
                    },
                ),
            ];
            for (role, t) in sets {
                if let Some((_, k)) = node.params.iter().find(|(r, _)| *r == role) {
                    if let Some(p) = module.params.get_mut(k) {
                        if p.shape == t.shape {
                            p.value = Some(t);
                            p.provenance = prov.clone();
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
