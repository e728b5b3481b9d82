//! Checks the `quantize`, `qat` and `train` sections of a recipe and turns them into typed,
//! validated settings.
//!
//! Every user error becomes a [`Diagnostic`] pointing at the offending word or value; checking
//! goes on after an error so that one run reports all of them. Every setting keeps the [`Span`]
//! of the recipe text that decided it, so that `qc plan` can say which line decided what. A
//! setting that was not written is `None` (or, for the scheme, marked as defaulted); the
//! documented defaults are applied by the `effective` accessors and by [`Scheme::defaults`].

use crate::ast::{
    Arg, CalibrationSource, Call, Expr, ExprKind, Ident, KwArg, QSpec, QWord, Quantize, QuantizeEntry, Recipe,
    Selector, Settings,
};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::source::Span;

// ---------------------------------------------------------------- diagnostic codes

const UNKNOWN_SETTING: &str = "qc::unknown-setting";
const UNKNOWN_ENTRY: &str = "qc::unknown-entry";
const BAD_ENTRY: &str = "qc::bad-entry";
const UNKNOWN_SCHEME: &str = "qc::unknown-scheme";
const UNKNOWN_WORD: &str = "qc::unknown-word";
const UNKNOWN_OBSERVER: &str = "qc::unknown-observer";
const UNKNOWN_ARGUMENT: &str = "qc::unknown-argument";
const UNKNOWN_DATA_SOURCE: &str = "qc::unknown-data-source";
const BAD_FUSE: &str = "qc::bad-fuse";
const BAD_VALUE: &str = "qc::bad-value";
const BAD_ARGUMENT: &str = "qc::bad-argument";
const MISSING_ARGUMENT: &str = "qc::missing-argument";
const BAD_GRANULARITY: &str = "qc::bad-granularity";
const DUPLICATE_SETTING: &str = "qc::duplicate-setting";
const CONFLICTING_SETTING: &str = "qc::conflicting-setting";
const DUPLICATE_SECTION: &str = "qc::duplicate-section";

// ---------------------------------------------------------------- public types

/// A value together with the span of the recipe text that decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// The checked sections of a recipe. A section that is absent is `None`; when a section is
/// written more than once, the first one is kept (the others are checked and reported).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sections {
    pub quantize: Option<QuantizeSettings>,
    pub qat: Option<QatSettings>,
    pub train: Option<TrainSettings>,
}

/// A quantization scheme: the defaults every tensor starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `x86`: fbgemm-style, PyTorch's `get_default_qconfig("x86")`. Weights int8 symmetric per
    /// channel (minmax); activations unsigned 7-bit (`[0, 127]` in `u8`: PyTorch's
    /// `reduce_range`, which keeps the `u8·i8` pair sums of AVX2's `vpmaddubsw` inside `i16`),
    /// affine per tensor (histogram with 2048 bins). Write `activations: uint8` for the full range.
    X86,
    /// `symmetric8`: weights int8 symmetric per channel; activations int8 symmetric per
    /// tensor; minmax observers for both.
    Symmetric8,
    /// `power_of_two`: like `symmetric8`, with every scale restricted to a power of two
    /// (TIDL-style, so that requantization is a shift).
    PowerOfTwo,
}

impl Scheme {
    /// Every scheme, in the order the help text lists them.
    pub const ALL: [Scheme; 3] = [Scheme::X86, Scheme::Symmetric8, Scheme::PowerOfTwo];

    /// The name as written in a recipe.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::X86 => "x86",
            Scheme::Symmetric8 => "symmetric8",
            Scheme::PowerOfTwo => "power_of_two",
        }
    }

    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scheme's defaults as `(weights, activations)`:
    ///
    /// | scheme         | weights                                 | activations                                      |
    /// |----------------|-----------------------------------------|--------------------------------------------------|
    /// | `x86`          | int8, symmetric, per channel, minmax    | uint7, affine, per tensor, histogram(bins: 2048) |
    /// | `symmetric8`   | int8, symmetric, per channel, minmax    | int8, symmetric, per tensor, minmax              |
    /// | `power_of_two` | as `symmetric8`, power-of-two scales    | as `symmetric8`, power-of-two scales             |
    ///
    /// No scheme keeps a tensor in float (`float` is false).
    pub fn defaults(self) -> (TensorDefaults, TensorDefaults) {
        let weights = TensorDefaults {
            bits: 8,
            signed: true,
            granularity: Granularity::PerChannel,
            symmetric: true,
            power_of_two: false,
            float: false,
            observer: Observer::MinMax,
        };
        let symmetric_acts = TensorDefaults {
            granularity: Granularity::PerTensor,
            ..weights.clone()
        };
        match self {
            Scheme::X86 => (
                weights,
                TensorDefaults {
                    bits: 7,
                    signed: false,
                    granularity: Granularity::PerTensor,
                    symmetric: false,
                    power_of_two: false,
                    float: false,
                    observer: Observer::Histogram {
                        bins: Observer::DEFAULT_BINS,
                    },
                },
            ),
            Scheme::Symmetric8 => (weights, symmetric_acts),
            Scheme::PowerOfTwo => (
                TensorDefaults {
                    power_of_two: true,
                    ..weights
                },
                TensorDefaults {
                    power_of_two: true,
                    ..symmetric_acts
                },
            ),
        }
    }
}

/// Complete quantization settings of one tensor: a scheme's defaults, or a [`TensorSpec`]
/// resolved against them with [`TensorSpec::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDefaults {
    /// Bits of the quantized integer type, 2 to 8.
    pub bits: u8,
    /// Signed (`int<N>`) or unsigned (`uint<N>`).
    pub signed: bool,
    pub granularity: Granularity,
    /// Symmetric (zero point 0) or affine.
    pub symmetric: bool,
    /// Scales restricted to powers of two.
    pub power_of_two: bool,
    /// Keep this tensor in float (the other fields are then irrelevant).
    pub float: bool,
    pub observer: Observer,
}

/// One scale for the whole tensor, or one per output channel (weights only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    PerTensor,
    PerChannel,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::PerTensor => "per_tensor",
            Granularity::PerChannel => "per_channel",
        }
    }
}

/// How the range of a tensor is observed during calibration (and QAT).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observer {
    /// `minmax`: the running minimum and maximum.
    MinMax,
    /// `moving_average_minmax(momentum: 0.01)` (or `moving_average(...)`): an exponential
    /// moving average of each batch's min and max; `momentum` in (0, 1], default 0.01.
    MovingAverageMinMax { momentum: f64 },
    /// `histogram(bins: 2048)`: a histogram, with the range chosen to minimise the
    /// quantization error; `bins` at least 1, default 2048.
    Histogram { bins: u32 },
    /// `percentile(p: 99.99)`: clip the range at the p-th percentile of |x|; `p` in (0, 100],
    /// default 99.99.
    Percentile { p: f64 },
}

impl Observer {
    pub const DEFAULT_MOMENTUM: f64 = 0.01;
    pub const DEFAULT_BINS: u32 = 2048;
    /// The most histogram bins a recipe may ask for.
    pub const MAX_BINS: u32 = 1 << 20;
    pub const DEFAULT_PERCENTILE: f64 = 99.99;

    /// The name as written in a recipe.
    pub fn name(&self) -> &'static str {
        match self {
            Observer::MinMax => "minmax",
            Observer::MovingAverageMinMax { .. } => "moving_average_minmax",
            Observer::Histogram { .. } => "histogram",
            Observer::Percentile { .. } => "percentile",
        }
    }
}

/// The quantization words written for one tensor kind (`weights: int4 per_tensor symmetric`).
/// Each field is what the recipe said, with the span of the word that said it; `None` means
/// "not said here" (a scheme default, the section default, or an earlier override applies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorSpec {
    /// From `int<N>` / `uint<N>` (N in 2..=8); same span as `signed`.
    pub bits: Option<Spanned<u8>>,
    /// From `int<N>` (true) / `uint<N>` (false).
    pub signed: Option<Spanned<bool>>,
    /// `per_channel` (weights only) / `per_tensor`.
    pub granularity: Option<Spanned<Granularity>>,
    /// `symmetric` (true) / `affine` (false).
    pub symmetric: Option<Spanned<bool>>,
    /// `power_of_two`: scales restricted to powers of two (only ever `true` when written).
    pub power_of_two: Option<Spanned<bool>>,
    /// `float`: keep this tensor in float (only ever `true` when written).
    pub float: Option<Spanned<bool>>,
    /// `minmax`, `moving_average_minmax(...)`, `histogram(...)`, `percentile(...)`.
    pub observer: Option<Spanned<Observer>>,
}

impl TensorSpec {
    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == TensorSpec::default()
    }

    /// `self` laid over `base`: every field `self` sets wins, the others come from `base`.
    /// A spec that sets any quantization field (and not `float`) also cancels a `float` from
    /// `base`: `weights: int4` on a layer quantizes it even where the section said `float`.
    pub fn layered_over(&self, base: &TensorSpec) -> TensorSpec {
        let quantizes = self.bits.is_some()
            || self.granularity.is_some()
            || self.symmetric.is_some()
            || self.power_of_two.is_some()
            || self.observer.is_some();
        TensorSpec {
            bits: self.bits.or(base.bits),
            signed: self.signed.or(base.signed),
            granularity: self.granularity.or(base.granularity),
            symmetric: self.symmetric.or(base.symmetric),
            power_of_two: self.power_of_two.or(base.power_of_two),
            float: if quantizes && self.float.is_none() {
                None
            } else {
                self.float.or(base.float)
            },
            observer: self.observer.or(base.observer),
        }
    }

    /// The complete settings: every field this spec sets, the others from `defaults`
    /// (normally one half of [`Scheme::defaults`]).
    pub fn resolve(&self, defaults: &TensorDefaults) -> TensorDefaults {
        TensorDefaults {
            bits: self.bits.map_or(defaults.bits, |s| s.value),
            signed: self.signed.map_or(defaults.signed, |s| s.value),
            granularity: self.granularity.map_or(defaults.granularity, |s| s.value),
            symmetric: self.symmetric.map_or(defaults.symmetric, |s| s.value),
            power_of_two: self.power_of_two.map_or(defaults.power_of_two, |s| s.value),
            float: self.float.map_or(defaults.float, |s| s.value),
            observer: self.observer.map_or(defaults.observer, |s| s.value),
        }
    }
}

/// An op name allowed in a `fuse` chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuseOp {
    Conv1d,
    Conv2d,
    BatchNorm,
    Relu,
    Relu6,
    Hardtanh,
    Clamp,
    Linear,
    Add,
}

impl FuseOp {
    pub const ALL: [FuseOp; 9] = [
        FuseOp::Conv1d,
        FuseOp::Conv2d,
        FuseOp::BatchNorm,
        FuseOp::Relu,
        FuseOp::Relu6,
        FuseOp::Hardtanh,
        FuseOp::Clamp,
        FuseOp::Linear,
        FuseOp::Add,
    ];

    /// The op name as written in a recipe (and in a model).
    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Conv1d => "conv1d",
            FuseOp::Conv2d => "conv2d",
            FuseOp::BatchNorm => "batch_norm",
            FuseOp::Relu => "relu",
            FuseOp::Relu6 => "relu6",
            FuseOp::Hardtanh => "hardtanh",
            FuseOp::Clamp => "clamp",
            FuseOp::Linear => "linear",
            FuseOp::Add => "add",
        }
    }

    pub fn from_name(name: &str) -> Option<FuseOp> {
        FuseOp::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// `fuse conv2d -> batch_norm -> relu`: a chain of at least two ops to fuse where they occur.
#[derive(Debug, Clone, PartialEq)]
pub struct FuseChain {
    /// The ops in order, each with the span of its name.
    pub ops: Vec<Spanned<FuseOp>>,
    /// From `fuse` to the last op name.
    pub span: Span,
}

/// The split of an IDX data set (Fashion-MNIST).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Where samples come from. Paths are kept exactly as written; the compiler resolves relative
/// paths (against the recipe's folder).
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// `"file.npz"` or `npz("file")`.
    Npz { path: String },
    /// `"file.npy"` or `npy("file")`.
    Npy { path: String },
    /// `fashion_mnist(split: train)`, `fashion_mnist("dir", split: test)` or `idx(...)`:
    /// IDX files. `dir: None` means the data set folder the setup script downloads. The split
    /// defaults to `train`, except for `test_data` where it defaults to `test`.
    Idx { dir: Option<String>, split: Split },
    /// `random(...)`: random inputs shaped like the model's; only in `calibrate`, and only
    /// good for latency work (the ranges it gives mean nothing).
    Random,
}

/// `calibrate SOURCE key: value ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub source: Spanned<DataSource>,
    /// True when the source is [`DataSource::Random`]: for latency work only.
    pub random: bool,
    /// `batches: N`: calibrate on at most N batches.
    pub batches: Option<Spanned<u64>>,
    /// `batch_size: N`.
    pub batch_size: Option<Spanned<u64>>,
    /// `samples: N`: calibrate on at most N samples.
    pub samples: Option<Spanned<u64>>,
    /// From `calibrate` to the last argument.
    pub span: Span,
}

/// Which nodes a `layer` override applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSelector {
    /// `layer fc`, `layer layer1.0.conv1`: the node with exactly this name.
    Name(String),
    /// `layer "layer1.*"`: every node whose name matches the glob (`*` matches any run of
    /// characters, `?` any one character; nothing else is special).
    Glob(String),
    /// `layer op(conv2d)`: every node of this op kind (checked by the compiler).
    Op(String),
}

impl LayerSelector {
    /// Whether a node with this name and op kind is selected.
    pub fn matches(&self, node_name: &str, op_kind: &str) -> bool {
        match self {
            LayerSelector::Name(n) => n == node_name,
            LayerSelector::Glob(g) => glob_match(g, node_name),
            LayerSelector::Op(k) => k == op_kind,
        }
    }
}

/// `layer SELECTOR { skip | activations: ... | weights: ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOverride {
    pub selector: Spanned<LayerSelector>,
    /// `skip`: keep the selected nodes entirely in float.
    pub skip: Option<Span>,
    pub activations: TensorSpec,
    pub weights: TensorSpec,
    /// The whole `layer ... { ... }` entry.
    pub span: Span,
}

/// The settings of a `quantize { ... }` section.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSettings {
    /// The scheme; when not written (or misspelt), `x86` with the span of the `quantize` word.
    pub scheme: Spanned<Scheme>,
    /// True when the scheme was not taken from a `scheme` entry.
    pub scheme_defaulted: bool,
    /// `fuse A -> B -> C`: each chain must be fused by an active rule (the compiler checks).
    pub fuse: Vec<FuseChain>,
    /// `fuse off NAME`: rules turned off, each with the span of its name (the compiler checks
    /// that the names exist).
    pub fuse_off: Vec<Spanned<String>>,
    /// Section-wide activation settings (`observe activations: ...` and `activations: ...`).
    pub activations: TensorSpec,
    /// Section-wide weight settings (`observe weights: ...` and `weights: ...`).
    pub weights: TensorSpec,
    pub calibration: Option<Calibration>,
    /// `layer` overrides in recipe order. When several match one node they apply in this
    /// order, so later ones win field by field (see [`QuantizeSettings::for_node`]).
    pub layers: Vec<LayerOverride>,
    /// The whole section.
    pub span: Span,
}

/// What applies to one node after the section defaults and all matching `layer` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeQuant {
    /// The `skip` of a matching override, if any (the last one that says `skip`).
    pub skip: Option<Span>,
    pub weights: TensorSpec,
    pub activations: TensorSpec,
}

impl QuantizeSettings {
    /// The `(weights, activations)` defaults of the scheme.
    pub fn scheme_defaults(&self) -> (TensorDefaults, TensorDefaults) {
        self.scheme.value.defaults()
    }

    /// The overrides that select a node, in recipe order.
    pub fn layers_matching<'a>(
        &'a self,
        node_name: &'a str,
        op_kind: &'a str,
    ) -> impl Iterator<Item = &'a LayerOverride> + 'a {
        self.layers
            .iter()
            .filter(move |l| l.selector.value.matches(node_name, op_kind))
    }

    /// The section defaults with every matching override laid over them in recipe order: a
    /// later override wins over an earlier one for each field it sets. A `skip` is never undone
    /// by a later override. Resolve the result against [`Self::scheme_defaults`] with
    /// [`TensorSpec::resolve`] for complete settings.
    pub fn for_node(&self, node_name: &str, op_kind: &str) -> NodeQuant {
        let mut n = NodeQuant {
            skip: None,
            weights: self.weights.clone(),
            activations: self.activations.clone(),
        };
        for l in self.layers_matching(node_name, op_kind) {
            if l.skip.is_some() {
                n.skip = l.skip;
            }
            n.weights = l.weights.layered_over(&n.weights);
            n.activations = l.activations.layered_over(&n.activations);
        }
        n
    }
}

/// The optimizer of a training loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `sgd` or `sgd(momentum: 0.9, nesterov: false)`; bare `sgd` means momentum 0.9.
    Sgd { momentum: f64, nesterov: bool },
    /// `adam` or `adam(beta1: 0.9, beta2: 0.999)`.
    Adam { beta1: f64, beta2: f64 },
}

impl Optimizer {
    pub const DEFAULT_MOMENTUM: f64 = 0.9;
    pub const DEFAULT_BETA1: f64 = 0.9;
    pub const DEFAULT_BETA2: f64 = 0.999;
}

impl Default for Optimizer {
    /// `sgd(momentum: 0.9, nesterov: false)`.
    fn default() -> Self {
        Optimizer::Sgd {
            momentum: Optimizer::DEFAULT_MOMENTUM,
            nesterov: false,
        }
    }
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Schedule {
    /// `constant` (the default).
    #[default]
    Constant,
    /// `cosine`: cosine annealing to 0 over all epochs.
    Cosine,
    /// `step(every: N, gamma: 0.1)`: multiply the rate by `gamma` every N epochs.
    Step { every: u64, gamma: f64 },
}

/// `normalize: [mean, std]`: inputs become `(x - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: f64,
    pub std: f64,
}

/// Defaults shared by `qat` and `train` (the learning rate differs; see each type).
pub mod defaults {
    pub const EPOCHS: u64 = 1;
    pub const BATCH_SIZE: u64 = 64;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const SEED: u64 = 0;
    pub const TRAIN_LR: f64 = 0.01;
    pub const QAT_LR: f64 = 1e-4;
}

/// The settings of a training loop: a `train { ... }` section (float training), and the loop part
/// of a `qat { ... }` section. Every field is what the recipe wrote, with the span of
/// `key: value`; the methods give the effective values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainSettings {
    pub epochs: Option<Spanned<u64>>,
    pub lr: Option<Spanned<f64>>,
    pub optimizer: Option<Spanned<Optimizer>>,
    pub batch_size: Option<Spanned<u64>>,
    pub weight_decay: Option<Spanned<f64>>,
    pub schedule: Option<Spanned<Schedule>>,
    pub seed: Option<Spanned<u64>>,
    pub threads: Option<Spanned<u64>>,
    pub data: Option<Spanned<DataSource>>,
    pub test_data: Option<Spanned<DataSource>>,
    pub normalize: Option<Spanned<Normalize>>,
    /// Use at most this many training samples (for quick runs).
    pub limit: Option<Spanned<u64>>,
    /// The learning rate when none is written: [`defaults::TRAIN_LR`] for `train`,
    /// [`defaults::QAT_LR`] for `qat` (fine-tuning starts from trained weights).
    pub default_lr: f64,
    /// The whole section.
    pub span: Span,
}

impl TrainSettings {
    /// Epochs; default 1.
    pub fn epochs(&self) -> u64 {
        self.epochs.map_or(defaults::EPOCHS, |s| s.value)
    }
    /// Learning rate; default `default_lr`.
    pub fn lr(&self) -> f64 {
        self.lr.map_or(self.default_lr, |s| s.value)
    }
    /// Optimizer; default `sgd(momentum: 0.9, nesterov: false)`.
    pub fn optimizer(&self) -> Optimizer {
        self.optimizer.map_or_else(Optimizer::default, |s| s.value)
    }
    /// Batch size; default 64.
    pub fn batch_size(&self) -> u64 {
        self.batch_size.map_or(defaults::BATCH_SIZE, |s| s.value)
    }
    /// Weight decay; default 0.
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay.map_or(defaults::WEIGHT_DECAY, |s| s.value)
    }
    /// Schedule; default `constant`.
    pub fn schedule(&self) -> Schedule {
        self.schedule.map_or_else(Schedule::default, |s| s.value)
    }
    /// Seed; default 0.
    pub fn seed(&self) -> u64 {
        self.seed.map_or(defaults::SEED, |s| s.value)
    }
    /// Threads; `None` (the default) lets the runtime decide.
    pub fn threads(&self) -> Option<u64> {
        self.threads.map(|s| s.value)
    }
    /// Normalization; default none.
    pub fn normalize(&self) -> Option<Normalize> {
        self.normalize.map(|s| s.value)
    }
    /// Sample limit; default none (all samples).
    pub fn limit(&self) -> Option<u64> {
        self.limit.map(|s| s.value)
    }
}

/// The settings of a `qat { ... }` section (quantization-aware training): a training loop plus
/// what only QAT has. Derefs to the loop, so `qat.epochs()` and `qat.lr` read as for `train`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QatSettings {
    pub training: TrainSettings,
    /// Freeze batch-norm statistics after this many epochs.
    pub freeze_bn_after: Option<Spanned<u64>>,
    /// Freeze observers (stop updating ranges) after this many epochs.
    pub freeze_observers_after: Option<Spanned<u64>>,
    /// Learn the quantization scales (LSQ-style) instead of observing them.
    pub learnable_scales: Option<Spanned<bool>>,
}

impl std::ops::Deref for QatSettings {
    type Target = TrainSettings;
    fn deref(&self) -> &TrainSettings {
        &self.training
    }
}

impl std::ops::DerefMut for QatSettings {
    fn deref_mut(&mut self) -> &mut TrainSettings {
        &mut self.training
    }
}

impl QatSettings {
    /// Epochs after which batch norm is frozen; `None` (the default): never.
    pub fn freeze_bn_after(&self) -> Option<u64> {
        self.freeze_bn_after.map(|s| s.value)
    }
    /// Epochs after which observers are frozen; `None` (the default): never.
    pub fn freeze_observers_after(&self) -> Option<u64> {
        self.freeze_observers_after.map(|s| s.value)
    }
    /// Whether scales are learnt; default false.
    pub fn learnable_scales(&self) -> bool {
        self.learnable_scales.is_some_and(|s| s.value)
    }
}

/// Checks the sections of a recipe, reporting every error to `diags`.
pub fn check(recipe: &Recipe, diags: &mut Diagnostics) -> Sections {
    let mut c = Checker { diags };
    let quantize = c.first_section(&recipe.quantize, "quantize", |q| q.span, |c, q| c.quantize(q));
    let qat = c.first_section(&recipe.qat, "qat", |s| s.span, |c, s| c.loop_settings(s, "qat"));
    let train = c.first_section(
        &recipe.train,
        "train",
        |s| s.span,
        |c, s| c.loop_settings(s, "train").training,
    );
    Sections { quantize, qat, train }
}

// ---------------------------------------------------------------- word tables

const QUANTIZE_ENTRIES: &[&str] = &[
    "scheme",
    "fuse",
    "observe",
    "calibrate",
    "layer",
    "activations",
    "weights",
];
const QUANTIZE_ENTRIES_HELP: &str =
    "a `quantize` section takes `scheme`, `fuse`, `observe`, `calibrate`, `layer`, `activations:` and `weights:`";

const SPEC_WORDS: &[&str] = &[
    "int8",
    "uint8",
    "int4",
    "uint4",
    "per_channel",
    "per_tensor",
    "symmetric",
    "affine",
    "power_of_two",
    "float",
    "minmax",
    "moving_average_minmax",
    "moving_average",
    "histogram",
    "percentile",
];
const SPEC_HELP: &str = "a spec is made of: a type (`int2`..`int8`, `uint2`..`uint8`), `per_channel` or \
     `per_tensor`, `symmetric` or `affine`, `power_of_two`, `float`, and an observer (`minmax`, \
     `moving_average_minmax(momentum: 0.01)`, `histogram(bins: 2048)`, `percentile(p: 99.99)`)";
const OBSERVERS: &[&str] = &[
    "minmax",
    "moving_average_minmax",
    "moving_average",
    "histogram",
    "percentile",
];
const OBSERVER_HELP: &str = "observers are `minmax`, `moving_average_minmax(momentum: 0.01)`, \
     `histogram(bins: 2048)` and `percentile(p: 99.99)`";

const COMMON_KEYS: &[&str] = &[
    "epochs",
    "lr",
    "optimizer",
    "batch_size",
    "weight_decay",
    "schedule",
    "seed",
    "threads",
    "data",
    "test_data",
    "normalize",
    "limit",
];
const QAT_ONLY_KEYS: &[&str] = &["freeze_bn_after", "freeze_observers_after", "learnable_scales"];

const DATA_SOURCES: &[&str] = &["fashion_mnist", "idx", "npz", "npy"];
const CALIBRATION_SOURCES: &[&str] = &["random", "fashion_mnist", "idx", "npz", "npy"];
const BATCH_ARGS: &[&str] = &["batches", "batch_size", "samples"];

fn key_help(key: &str) -> &'static str {
    match key {
        "epochs" => "`epochs` is a whole number of passes over the training data, at least 1 (e.g. `epochs: 3`)",
        "lr" => "`lr` is the learning rate, a number above 0 (e.g. `lr: 1e-4`)",
        "optimizer" => {
            "`optimizer` is `sgd`, `sgd(momentum: 0.9, nesterov: false)`, `adam` or `adam(beta1: 0.9, beta2: 0.999)`"
        }
        "batch_size" => "`batch_size` is a whole number of samples per step, at least 1 (e.g. `batch_size: 64`)",
        "weight_decay" => "`weight_decay` is a number, 0 or more (e.g. `weight_decay: 1e-4`)",
        "freeze_bn_after" => {
            "`freeze_bn_after` is the number of epochs after which batch-norm statistics freeze, 0 or more"
        }
        "freeze_observers_after" => {
            "`freeze_observers_after` is the number of epochs after which observers freeze, 0 or more"
        }
        "learnable_scales" => "`learnable_scales` is `true` or `false`",
        "schedule" => "`schedule` is `constant`, `cosine` or `step(every: 2, gamma: 0.1)`",
        "seed" => "`seed` is a whole number, 0 or more (e.g. `seed: 1`)",
        "threads" => "`threads` is a whole number of worker threads, at least 1",
        "data" | "test_data" => {
            "data is a file (`\"train.npz\"`, `npz(\"...\")`, `npy(\"...\")`) or IDX files \
             (`fashion_mnist(split: train)`, `fashion_mnist(\"dir\", split: test)`, `idx(\"dir\", split: train)`)"
        }
        "normalize" => "`normalize` is `[mean, std]`: two numbers, std above 0 (e.g. `normalize: [0.2860, 0.3530]`)",
        "limit" => "`limit` is the most training samples to use, at least 1 (e.g. `limit: 1000` for a quick run)",
        "batches" => "`batches` is the number of calibration batches, at least 1 (e.g. `batches: 32`)",
        "samples" => "`samples` is the number of calibration samples, at least 1 (e.g. `samples: 1000`)",
        "split" => "`split` is `train` or `test`",
        "momentum" => "`momentum` is a number at least 0 and below 1 (e.g. `momentum: 0.9`)",
        "nesterov" => "`nesterov` is `true` or `false`",
        "beta1" | "beta2" => "Adam's betas are numbers at least 0 and below 1 (e.g. `beta1: 0.9, beta2: 0.999`)",
        "every" => "`every` is a whole number of epochs, at least 1 (e.g. `step(every: 2, gamma: 0.1)`)",
        "gamma" => "`gamma` is the factor applied to the rate, a number above 0 (e.g. `gamma: 0.1`)",
        "bins" => "`bins` is a whole number of histogram bins, 1 to 1048576 (e.g. `histogram(bins: 2048)`)",
        "p" => "`p` is a percentile above 0 and at most 100 (e.g. `percentile(p: 99.99)`)",
        "ema_momentum" => {
            "`momentum` of a moving average is above 0 and at most 1 (e.g. `moving_average_minmax(momentum: 0.01)`)"
        }
        _ => "see docs/recipe-language.md for the accepted values",
    }
}

fn list_words(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

/// "did you mean `x`? REST", or just REST.
fn suggest(dym: Option<String>, rest: impl AsRef<str>) -> String {
    match dym {
        Some(d) => format!("{d} {}", rest.as_ref()),
        None => rest.as_ref().to_string(),
    }
}

fn describe(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => format!("`{v}`"),
        ExprKind::Float(v) => format!("`{v}`"),
        ExprKind::Bool(b) => format!("`{b}`"),
        ExprKind::Str(s) => format!("the string \"{s}\""),
        ExprKind::List(_) => "a list".into(),
        ExprKind::Path(p) => format!("`{}`", p.text),
        ExprKind::Call(c) => format!("`{}(...)`", c.callee.name),
        ExprKind::Binding(_) => "a named call".into(),
        ExprKind::If { .. } => "an `if` expression".into(),
        ExprKind::Unary(..) | ExprKind::Binary(..) => "an expression".into(),
    }
}

fn is_literal(e: &Expr) -> bool {
    !matches!(
        e.kind,
        ExprKind::Binding(_) | ExprKind::If { .. } | ExprKind::Unary(..) | ExprKind::Binary(..)
    )
}

/// `*` matches any run of characters, `?` one character. Linear backtracking (no blow-up).
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Bounds of a float setting, and how to say them.
#[derive(Clone, Copy)]
struct Bounds {
    lo: f64,
    lo_incl: bool,
    hi: f64,
    hi_incl: bool,
}

impl Bounds {
    const POSITIVE: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    const NON_NEGATIVE: Bounds = Bounds {
        lo: 0.0,
        lo_incl: true,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    /// [0, 1)
    const UNIT_HALF_OPEN: Bounds = Bounds {
        lo: 0.0,
        lo_incl: true,
        hi: 1.0,
        hi_incl: false,
    };
    /// (0, 1]
    const UNIT_LEFT_OPEN: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: 1.0,
        hi_incl: true,
    };
    const FINITE: Bounds = Bounds {
        lo: f64::NEG_INFINITY,
        lo_incl: false,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    const PERCENT: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: 100.0,
        hi_incl: true,
    };

    fn contains(self, v: f64) -> bool {
        let lo = if self.lo_incl { v >= self.lo } else { v > self.lo };
        let hi = if self.hi_incl { v <= self.hi } else { v < self.hi };
        v.is_finite() && lo && hi
    }

    fn describe(self) -> String {
        if self.lo == f64::NEG_INFINITY && self.hi == f64::INFINITY {
            return "a finite number".into();
        }
        let lo = if self.lo_incl {
            format!("at least {}", self.lo)
        } else {
            format!("above {}", self.lo)
        };
        if self.hi.is_infinite() {
            lo
        } else if self.hi_incl {
            format!("{lo} and at most {}", self.hi)
        } else {
            format!("{lo} and below {}", self.hi)
        }
    }
}

// ---------------------------------------------------------------- checker

struct Checker<'d> {
    diags: &'d mut Diagnostics,
}

/// The parsed kinds of a spec word.
#[derive(Clone, Copy)]
enum SpecWord {
    Dtype { bits: u8, signed: bool },
    Granularity(Granularity),
    Symmetric(bool),
    PowerOfTwo,
    Float,
    Observer(Observer),
}

/// What a data source is for: decides the accepted forms and the default split.
#[derive(Clone, Copy, PartialEq)]
enum DataUse {
    Calibrate,
    Data,
    TestData,
}

#[derive(Default)]
struct BatchArgs {
    batches: Option<Spanned<u64>>,
    batch_size: Option<Spanned<u64>>,
    samples: Option<Spanned<u64>>,
}

/// Names already given in one place (a section, a call), for duplicate detection.
#[derive(Default)]
struct Seen(Vec<(String, Span)>);

impl Checker<'_> {
    fn error(&mut self, code: &'static str, span: Span, message: String, label: impl Into<String>, help: String) {
        self.diags
            .push(Diagnostic::new(code, span, message).label(label).help(help));
    }

    fn error_note(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        label: impl Into<String>,
        help: String,
        note: (Span, String),
    ) {
        self.diags.push(
            Diagnostic::new(code, span, message)
                .label(label)
                .help(help)
                .note(note.0, note.1),
        );
    }

    /// Records `name` at `span`; reports a duplicate and returns false if it was seen before.
    fn first_time(&mut self, seen: &mut Seen, name: &str, span: Span, place: &str) -> bool {
        if let Some((_, first)) = seen.0.iter().find(|(n, _)| n == name) {
            let first = *first;
            self.error_note(
                DUPLICATE_SETTING,
                span,
                format!("`{name}` is set twice in {place}"),
                "set again here",
                format!("remove one of the two `{name}`; each setting is written once"),
                (first, "first set here".into()),
            );
            return false;
        }
        seen.0.push((name.to_string(), span));
        true
    }

    /// Checks every section of one kind, reports all but the first as duplicates and returns
    /// the first one's settings.
    fn first_section<S, T>(
        &mut self,
        sections: &[S],
        keyword: &str,
        span_of: impl Fn(&S) -> Span,
        mut check: impl FnMut(&mut Self, &S) -> T,
    ) -> Option<T> {
        let mut first = None;
        for (i, s) in sections.iter().enumerate() {
            let out = check(self, s);
            if i == 0 {
                first = Some(out);
                continue;
            }
            let kw = |sp: Span| Span::new(sp.start, (sp.start + keyword.len()).min(sp.end));
            self.error_note(
                DUPLICATE_SECTION,
                kw(span_of(s)),
                format!("a second `{keyword}` section"),
                "second section",
                format!("a recipe (with its includes) has at most one `{keyword}` section: merge the two"),
                (kw(span_of(&sections[0])), "first section here".into()),
            );
        }
        first
    }

    // ------------------------------------------------------------ quantize

    fn quantize(&mut self, q: &Quantize) -> QuantizeSettings {
        let keyword = Span::new(q.span.start, (q.span.start + "quantize".len()).min(q.span.end));
        let mut scheme: Option<Spanned<Scheme>> = None;
        let mut scheme_seen: Option<Span> = None;
        let mut fuse: Vec<FuseChain> = Vec::new();
        let mut fuse_off: Vec<Spanned<String>> = Vec::new();
        let mut activations = TensorSpec::default();
        let mut weights = TensorSpec::default();
        let mut calibration: Option<Calibration> = None;
        let mut calibrate_seen: Option<Span> = None;
        let mut layers = Vec::new();

        for entry in &q.entries {
            match entry {
                QuantizeEntry::Scheme(ident) => {
                    if let Some(first) = scheme_seen {
                        self.error_note(
                            DUPLICATE_SETTING,
                            ident.span,
                            "`scheme` is set twice in `quantize`".into(),
                            "second scheme",
                            "a `quantize` section has one `scheme`; remove one".into(),
                            (first, "first set here".into()),
                        );
                        continue;
                    }
                    scheme_seen = Some(ident.span);
                    match Scheme::from_name(&ident.name) {
                        Some(s) => scheme = Some(Spanned::new(s, ident.span)),
                        None => {
                            let names: Vec<&str> = Scheme::ALL.iter().map(|s| s.name()).collect();
                            self.error(
                                UNKNOWN_SCHEME,
                                ident.span,
                                format!("unknown scheme `{}`", ident.name),
                                "not a scheme",
                                suggest(
                                    did_you_mean(&ident.name, names.iter().copied()),
                                    format!("schemes are {}", list_words(&names)),
                                ),
                            );
                        }
                    }
                }
                QuantizeEntry::Fuse { ops, span } => {
                    if let Some(chain) = self.fuse(ops, *span) {
                        if let Some(first) = fuse
                            .iter()
                            .find(|f| f.ops.iter().map(|o| o.value).eq(chain.ops.iter().map(|o| o.value)))
                        {
                            let first = first.span;
                            self.error_note(
                                DUPLICATE_SETTING,
                                chain.span,
                                "this `fuse` chain is written twice".into(),
                                "same chain again",
                                "remove one of the two".into(),
                                (first, "first written here".into()),
                            );
                        } else {
                            fuse.push(chain);
                        }
                    }
                }
                QuantizeEntry::FuseOff { name, .. } => {
                    if let Some(first) = fuse_off.iter().find(|f| f.value == name.name) {
                        let first = first.span;
                        self.error_note(
                            DUPLICATE_SETTING,
                            name.span,
                            format!("rule `{}` is turned off twice", name.name),
                            "turned off again",
                            "remove one of the two `fuse off` lines".into(),
                            (first, "first turned off here".into()),
                        );
                    } else {
                        fuse_off.push(Spanned::new(name.name.clone(), name.span));
                    }
                }
                QuantizeEntry::Observe(specs) => {
                    for spec in specs {
                        self.spec_into(spec, &mut activations, &mut weights);
                    }
                }
                QuantizeEntry::Spec(spec) => self.spec_into(spec, &mut activations, &mut weights),
                QuantizeEntry::Calibrate { source, args, span } => {
                    let entry_span = args.last().map_or_else(
                        || {
                            let end = match source {
                                CalibrationSource::File { span, .. } => span.end,
                                CalibrationSource::Call(c) => c.span.end,
                            };
                            Span::new(span.start, end)
                        },
                        |a| Span::new(span.start, a.value.span.end),
                    );
                    let kw = Span::new(span.start, (span.start + "calibrate".len()).min(span.end));
                    if let Some(first) = calibrate_seen {
                        self.error_note(
                            DUPLICATE_SETTING,
                            kw,
                            "`calibrate` is written twice in `quantize`".into(),
                            "second calibration",
                            "a `quantize` section has one `calibrate`; remove one".into(),
                            (first, "first written here".into()),
                        );
                        // Still check it, for its own errors.
                        let _ = self.calibration(source, args, entry_span);
                        continue;
                    }
                    calibrate_seen = Some(kw);
                    calibration = self.calibration(source, args, entry_span);
                }
                QuantizeEntry::Layer {
                    selector,
                    skip,
                    specs,
                    span,
                } => {
                    if let Some(l) = self.layer(selector, *skip, specs, *span) {
                        layers.push(l);
                    }
                }
                QuantizeEntry::Unknown { word, span } => self.unknown_entry(word, *span),
            }
        }

        let scheme_defaulted = scheme.is_none();
        QuantizeSettings {
            scheme: scheme.unwrap_or(Spanned::new(Scheme::X86, keyword)),
            scheme_defaulted,
            fuse,
            fuse_off,
            activations,
            weights,
            calibration,
            layers,
            span: q.span,
        }
    }

    fn unknown_entry(&mut self, word: &Ident, span: Span) {
        let form = match word.name.as_str() {
            "scheme" => Some("write `scheme x86`, `scheme symmetric8` or `scheme power_of_two`"),
            "fuse" => Some(
                "write `fuse conv2d -> batch_norm -> relu` (two or more op names joined by `->`) or \
                 `fuse off RULE` (turn a rule off)",
            ),
            "observe" => Some("write `observe activations: histogram(bins: 2048); weights: minmax`"),
            "calibrate" => Some(
                "write `calibrate \"data.npz\" batches: 32`, `calibrate fashion_mnist(split: train)` or \
                 `calibrate random(batches: 8)`",
            ),
            "layer" => Some(
                "write `layer NAME { ... }`, `layer \"glob*\" { ... }` or `layer op(kind) { ... }`, with `skip`, \
                 `activations: ...` or `weights: ...` inside",
            ),
            "activations" | "weights" => {
                Some("write quantization words after the colon, e.g. `weights: int8 per_channel symmetric minmax`")
            }
            "skip" => Some("`skip` goes inside a layer block: `layer NAME { skip }`"),
            _ => None,
        };
        match form {
            Some(help) => self.error(
                BAD_ENTRY,
                span,
                format!("malformed `{}` entry", word.name),
                format!("not a valid `{}` entry", word.name),
                help.to_string(),
            ),
            None => self.error(
                UNKNOWN_ENTRY,
                word.span,
                format!("unknown entry `{}` in `quantize`", word.name),
                "unknown entry",
                suggest(
                    did_you_mean(&word.name, QUANTIZE_ENTRIES.iter().copied()),
                    QUANTIZE_ENTRIES_HELP,
                ),
            ),
        }
    }

    fn fuse(&mut self, ops: &[Ident], span: Span) -> Option<FuseChain> {
        let mut out = Vec::new();
        let mut ok = true;
        for op in ops {
            match FuseOp::from_name(&op.name) {
                Some(o) => out.push(Spanned::new(o, op.span)),
                None => {
                    ok = false;
                    let names: Vec<&str> = FuseOp::ALL.iter().map(|o| o.name()).collect();
                    self.error(
                        BAD_FUSE,
                        op.span,
                        format!("`{}` cannot be fused", op.name),
                        "not a fusable op",
                        suggest(
                            did_you_mean(&op.name, names.iter().copied()),
                            format!("ops that fuse are {}", list_words(&names)),
                        ),
                    );
                }
            }
        }
        let end = ops.last().map_or(span.end, |o| o.span.end);
        let span = Span::new(span.start, end);
        if ops.len() < 2 {
            self.error(
                BAD_FUSE,
                span,
                "a `fuse` chain needs at least two ops".into(),
                "too short",
                "write two or more ops joined by `->`, e.g. `fuse conv2d -> relu`".into(),
            );
            return None;
        }
        ok.then_some(FuseChain { ops: out, span })
    }

    /// Adds a spec's words to the activations or weights spec (by its key).
    fn spec_into(&mut self, spec: &QSpec, activations: &mut TensorSpec, weights: &mut TensorSpec) {
        match spec.key.name.as_str() {
            "weights" => self.spec_words(spec, weights, true),
            _ => self.spec_words(spec, activations, false),
        }
    }

    fn spec_words(&mut self, spec: &QSpec, into: &mut TensorSpec, is_weights: bool) {
        for w in &spec.words {
            if let Some(word) = self.spec_word(w, is_weights) {
                self.apply_word(word, w.span(), into);
            }
        }
    }

    fn spec_word(&mut self, w: &QWord, is_weights: bool) -> Option<SpecWord> {
        match w {
            QWord::Number(v, span) => {
                self.error(
                    BAD_VALUE,
                    *span,
                    format!("a number alone (`{v}`) means nothing in a quantization spec"),
                    "a bare number",
                    "bits are part of the type word (`int8`, `uint4`); observer settings go in a call \
                     (`histogram(bins: 2048)`, `percentile(p: 99.99)`)"
                        .into(),
                );
                None
            }
            QWord::Word(ident) => self.spec_bare_word(ident, is_weights),
            QWord::Call(call) => {
                let name = call.callee.name.as_str();
                if OBSERVERS.contains(&name) {
                    return self.observer_call(call).map(SpecWord::Observer);
                }
                if Self::known_plain_word(name) {
                    self.error(
                        BAD_ARGUMENT,
                        call.span,
                        format!("`{name}` takes no arguments"),
                        "arguments here",
                        format!("write `{name}` alone; only observers take arguments ({OBSERVER_HELP})"),
                    );
                    return None;
                }
                self.error(
                    UNKNOWN_OBSERVER,
                    call.callee.span,
                    format!("unknown observer `{name}`"),
                    "not an observer",
                    suggest(did_you_mean(name, OBSERVERS.iter().copied()), OBSERVER_HELP),
                );
                None
            }
        }
    }

    fn known_plain_word(name: &str) -> bool {
        SPEC_WORDS.contains(&name) || Self::dtype_bits(name).is_some()
    }

    /// `int<N>` / `uint<N>` with digits after: `(signed, bits)`, bits `None` when out of range.
    fn dtype_bits(name: &str) -> Option<(bool, Option<u8>)> {
        let (signed, digits) = if let Some(d) = name.strip_prefix("uint") {
            (false, d)
        } else if let Some(d) = name.strip_prefix("int") {
            (true, d)
        } else {
            return None;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let bits = digits
            .parse::<u64>()
            .ok()
            .filter(|b| (2..=8).contains(b))
            .map(|b| b as u8);
        Some((signed, bits))
    }

    fn spec_bare_word(&mut self, ident: &Ident, is_weights: bool) -> Option<SpecWord> {
        let name = ident.name.as_str();
        if let Some((signed, bits)) = Self::dtype_bits(name) {
            return match bits {
                Some(bits) => Some(SpecWord::Dtype { bits, signed }),
                None => {
                    self.error(
                        BAD_VALUE,
                        ident.span,
                        format!("`{name}`: bits must be 2 to 8"),
                        "unsupported bit width",
                        "quantized types are `int2`..`int8` and `uint2`..`uint8`; write `float` to keep a \
                         tensor in float"
                            .into(),
                    );
                    None
                }
            };
        }
        let word = match name {
            "per_channel" if !is_weights => {
                self.error(
                    BAD_GRANULARITY,
                    ident.span,
                    "`per_channel` is for weights only".into(),
                    "activations are quantized per tensor",
                    "activations have one scale per tensor: remove `per_channel`, or write it under `weights:`".into(),
                );
                return None;
            }
            "per_channel" => SpecWord::Granularity(Granularity::PerChannel),
            "per_tensor" => SpecWord::Granularity(Granularity::PerTensor),
            "symmetric" => SpecWord::Symmetric(true),
            "affine" => SpecWord::Symmetric(false),
            "power_of_two" => SpecWord::PowerOfTwo,
            "float" => SpecWord::Float,
            "minmax" => SpecWord::Observer(Observer::MinMax),
            "moving_average_minmax" | "moving_average" => SpecWord::Observer(Observer::MovingAverageMinMax {
                momentum: Observer::DEFAULT_MOMENTUM,
            }),
            "histogram" => SpecWord::Observer(Observer::Histogram {
                bins: Observer::DEFAULT_BINS,
            }),
            "percentile" => SpecWord::Observer(Observer::Percentile {
                p: Observer::DEFAULT_PERCENTILE,
            }),
            _ => {
                self.error(
                    UNKNOWN_WORD,
                    ident.span,
                    format!("unknown quantization word `{name}`"),
                    "not a quantization word",
                    suggest(did_you_mean(name, SPEC_WORDS.iter().copied()), SPEC_HELP),
                );
                return None;
            }
        };
        Some(word)
    }

    fn observer_call(&mut self, call: &Call) -> Option<Observer> {
        let name = call.callee.name.as_str();
        let allowed: &[&str] = match name {
            "minmax" => &[],
            "moving_average_minmax" | "moving_average" => &["momentum"],
            "histogram" => &["bins"],
            _ => &["p"],
        };
        let (_, named) = self.call_args(call, allowed, 0, "", &mut Seen::default());
        let mut ok = true;
        let mut obs = match name {
            "minmax" => Observer::MinMax,
            "moving_average_minmax" | "moving_average" => Observer::MovingAverageMinMax {
                momentum: Observer::DEFAULT_MOMENTUM,
            },
            "histogram" => Observer::Histogram {
                bins: Observer::DEFAULT_BINS,
            },
            _ => Observer::Percentile {
                p: Observer::DEFAULT_PERCENTILE,
            },
        };
        for (key, value) in named {
            match (&mut obs, key.name.as_str()) {
                (Observer::MovingAverageMinMax { momentum }, "momentum") => {
                    match self.float_value(value, "`momentum`", Bounds::UNIT_LEFT_OPEN, key_help("ema_momentum")) {
                        Some(v) => *momentum = v,
                        None => ok = false,
                    }
                }
                (Observer::Histogram { bins }, "bins") => match self.int_value(value, "`bins`", 1, key_help("bins")) {
                    Some(v) if v <= u64::from(Observer::MAX_BINS) => *bins = v as u32,
                    Some(v) => {
                        ok = false;
                        self.error(
                            BAD_VALUE,
                            value.span,
                            format!("`bins` must be at most {}, found {v}", Observer::MAX_BINS),
                            "too many bins",
                            key_help("bins").into(),
                        );
                    }
                    None => ok = false,
                },
                (Observer::Percentile { p }, "p") => {
                    match self.float_value(value, "`p`", Bounds::PERCENT, key_help("p")) {
                        Some(v) => *p = v,
                        None => ok = false,
                    }
                }
                _ => {}
            }
        }
        ok.then_some(obs)
    }

    fn word_text(w: SpecWord) -> String {
        match w {
            SpecWord::Dtype { bits, signed } => {
                format!("{}int{bits}", if signed { "" } else { "u" })
            }
            SpecWord::Granularity(g) => g.name().into(),
            SpecWord::Symmetric(true) => "symmetric".into(),
            SpecWord::Symmetric(false) => "affine".into(),
            SpecWord::PowerOfTwo => "power_of_two".into(),
            SpecWord::Float => "float".into(),
            SpecWord::Observer(o) => o.name().into(),
        }
    }

    /// The words already in a spec, with their spans (for conflict reports).
    fn words_in(spec: &TensorSpec) -> Vec<(SpecWord, Span)> {
        let mut out = Vec::new();
        if let (Some(b), Some(s)) = (spec.bits, spec.signed) {
            out.push((
                SpecWord::Dtype {
                    bits: b.value,
                    signed: s.value,
                },
                b.span,
            ));
        }
        if let Some(g) = spec.granularity {
            out.push((SpecWord::Granularity(g.value), g.span));
        }
        if let Some(s) = spec.symmetric {
            out.push((SpecWord::Symmetric(s.value), s.span));
        }
        if let Some(p) = spec.power_of_two {
            out.push((SpecWord::PowerOfTwo, p.span));
        }
        if let Some(o) = spec.observer {
            out.push((SpecWord::Observer(o.value), o.span));
        }
        if let Some(f) = spec.float {
            out.push((SpecWord::Float, f.span));
        }
        out
    }

    fn apply_word(&mut self, word: SpecWord, span: Span, into: &mut TensorSpec) {
        let existing = Self::words_in(into);
        let same_slot = |a: SpecWord, b: SpecWord| {
            matches!(
                (a, b),
                (SpecWord::Dtype { .. }, SpecWord::Dtype { .. })
                    | (SpecWord::Granularity(_), SpecWord::Granularity(_))
                    | (SpecWord::Symmetric(_), SpecWord::Symmetric(_))
                    | (SpecWord::PowerOfTwo, SpecWord::PowerOfTwo)
                    | (SpecWord::Float, SpecWord::Float)
                    | (SpecWord::Observer(_), SpecWord::Observer(_))
            )
        };
        let text = Self::word_text(word);
        // The same setting again, or `float` together with a quantization setting.
        let clash = existing.iter().find(|(w, _)| same_slot(*w, word)).or_else(|| {
            existing
                .iter()
                .find(|(w, _)| matches!(w, SpecWord::Float) != matches!(word, SpecWord::Float))
        });
        if let Some((first, first_span)) = clash {
            let first_text = Self::word_text(*first);
            if first_text == text {
                self.error_note(
                    DUPLICATE_SETTING,
                    span,
                    format!("`{text}` is written twice"),
                    "written again here",
                    format!("remove the second `{text}`; each setting of a tensor is written once"),
                    (*first_span, "first written here".into()),
                );
            } else if matches!(word, SpecWord::Float) || matches!(first, SpecWord::Float) {
                self.error_note(
                    CONFLICTING_SETTING,
                    span,
                    format!("`{text}` contradicts `{first_text}`"),
                    format!("contradicts `{first_text}`"),
                    "`float` keeps a tensor in float, so it cannot be combined with quantization words; keep \
                     one or the other"
                        .into(),
                    (*first_span, format!("`{first_text}` written here")),
                );
            } else {
                self.error_note(
                    CONFLICTING_SETTING,
                    span,
                    format!("`{text}` contradicts `{first_text}`"),
                    format!("contradicts `{first_text}`"),
                    format!("a tensor has one setting of each kind: keep `{first_text}` or `{text}`"),
                    (*first_span, format!("`{first_text}` written here")),
                );
            }
            return;
        }
        match word {
            SpecWord::Dtype { bits, signed } => {
                into.bits = Some(Spanned::new(bits, span));
                into.signed = Some(Spanned::new(signed, span));
            }
            SpecWord::Granularity(g) => into.granularity = Some(Spanned::new(g, span)),
            SpecWord::Symmetric(s) => into.symmetric = Some(Spanned::new(s, span)),
            SpecWord::PowerOfTwo => into.power_of_two = Some(Spanned::new(true, span)),
            SpecWord::Float => into.float = Some(Spanned::new(true, span)),
            SpecWord::Observer(o) => into.observer = Some(Spanned::new(o, span)),
        }
    }

    fn layer(&mut self, selector: &Selector, skip: Option<Span>, specs: &[QSpec], span: Span) -> Option<LayerOverride> {
        let selector = match selector {
            Selector::Name(p) => Spanned::new(LayerSelector::Name(p.text.clone()), p.span),
            Selector::Glob { pattern, span } => {
                if pattern.is_empty() {
                    self.error(
                        BAD_VALUE,
                        *span,
                        "an empty pattern selects no layer".into(),
                        "empty pattern",
                        "write a glob over node names, e.g. `layer \"layer1.*\" { ... }` (`*` and `?` are wildcards)"
                            .into(),
                    );
                    return None;
                }
                Spanned::new(LayerSelector::Glob(pattern.clone()), *span)
            }
            Selector::Op(i) => Spanned::new(LayerSelector::Op(i.name.clone()), i.span),
        };
        let mut activations = TensorSpec::default();
        let mut weights = TensorSpec::default();
        for spec in specs {
            if let Some(skip) = skip {
                let spec_span = Span::new(
                    spec.key.span.start,
                    spec.words.last().map_or(spec.key.span.end, |w| w.span().end),
                );
                let key = &spec.key.name;
                let (at, note, label) = if skip.start > spec.key.span.start {
                    (
                        skip,
                        (spec.key.span, format!("`{key}:` written here")),
                        format!("contradicts `{key}:`"),
                    )
                } else {
                    (
                        spec_span,
                        (skip, "`skip` written here".into()),
                        "contradicts `skip`".to_string(),
                    )
                };
                self.error_note(
                    CONFLICTING_SETTING,
                    at,
                    format!("`skip` and `{key}:` in one layer block"),
                    label,
                    format!(
                        "`skip` keeps the whole layer in float; remove it, or remove `{key}:` (write `{key}: float` \
                         to keep only the {key} in float)"
                    ),
                    note,
                );
                continue;
            }
            self.spec_into(spec, &mut activations, &mut weights);
        }
        Some(LayerOverride {
            selector,
            skip,
            activations,
            weights,
            span,
        })
    }

    // ------------------------------------------------------------ calibration and data

    fn calibration(&mut self, source: &CalibrationSource, args: &[KwArg], span: Span) -> Option<Calibration> {
        let mut batch = BatchArgs::default();
        let mut seen = Seen::default();
        let src = match source {
            CalibrationSource::File { path, span } => self
                .path_source(path, *span, "calibrate")
                .map(|d| Spanned::new(d, *span)),
            CalibrationSource::Call(call) => self
                .source_call(call, DataUse::Calibrate, &mut batch, &mut seen)
                .map(|d| Spanned::new(d, call.span)),
        };
        for kw in args {
            self.batch_arg(&kw.key, &kw.value, &mut batch, &mut seen);
        }
        let source = src?;
        Some(Calibration {
            random: source.value == DataSource::Random,
            source,
            batches: batch.batches,
            batch_size: batch.batch_size,
            samples: batch.samples,
            span,
        })
    }

    /// `batches:`, `batch_size:` or `samples:` of a calibration.
    fn batch_arg(&mut self, key: &Ident, value: &Expr, batch: &mut BatchArgs, seen: &mut Seen) {
        let name = key.name.as_str();
        if !BATCH_ARGS.contains(&name) {
            self.error(
                UNKNOWN_ARGUMENT,
                key.span,
                format!("`calibrate` has no setting `{name}`"),
                "unknown setting",
                suggest(
                    did_you_mean(name, BATCH_ARGS.iter().copied()),
                    format!("`calibrate` takes {}", list_words(BATCH_ARGS)),
                ),
            );
            return;
        }
        if !self.first_time(seen, name, key.span, "`calibrate`") {
            return;
        }
        let what = format!("`{name}`");
        let help = key_help(name);
        if let Some(v) = self.int_value(value, &what, 1, help) {
            let s = Some(Spanned::new(v, key.span.to(value.span)));
            match name {
                "batches" => batch.batches = s,
                "batch_size" => batch.batch_size = s,
                _ => batch.samples = s,
            }
        }
    }

    /// A data source written as a string: the format comes from the extension.
    fn path_source(&mut self, path: &str, span: Span, key: &str) -> Option<DataSource> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".npz") {
            Some(DataSource::Npz { path: path.to_string() })
        } else if lower.ends_with(".npy") {
            Some(DataSource::Npy { path: path.to_string() })
        } else {
            self.error(
                BAD_VALUE,
                span,
                format!("cannot tell the format of \"{path}\" from its name"),
                "not a `.npz` or `.npy` file",
                format!(
                    "`{key}` reads `.npz` and `.npy` files by name; otherwise say the format: `npz(\"{path}\")`, \
                     `npy(\"{path}\")` or `idx(\"{path}\", split: train)`"
                ),
            );
            None
        }
    }

    /// A data source written as a call (or a bare word, as a call without arguments).
    fn source_call(
        &mut self,
        call: &Call,
        use_: DataUse,
        batch: &mut BatchArgs,
        seen: &mut Seen,
    ) -> Option<DataSource> {
        let name = call.callee.name.as_str();
        let extra: &[&str] = if use_ == DataUse::Calibrate { BATCH_ARGS } else { &[] };
        let known: &[&str] = if use_ == DataUse::Calibrate {
            CALIBRATION_SOURCES
        } else {
            DATA_SOURCES
        };
        let specific: &[&str] = match name {
            "random" if use_ == DataUse::Calibrate => &[],
            "fashion_mnist" | "idx" => &["split"],
            "npz" | "npy" => &[],
            "random" => {
                self.error(
                    BAD_VALUE,
                    call.span,
                    "random data cannot train a model".into(),
                    "random data",
                    "`random(...)` is only for `calibrate` (latency work); train on a file or \
                     `fashion_mnist(split: train)`"
                        .into(),
                );
                return None;
            }
            _ => {
                self.error(
                    UNKNOWN_DATA_SOURCE,
                    call.callee.span,
                    format!("unknown data source `{name}`"),
                    "not a data source",
                    suggest(
                        did_you_mean(name, known.iter().copied()),
                        format!(
                            "data sources are a file path in quotes (`\"data/train.npz\"`) and {}",
                            list_words(known)
                        ),
                    ),
                );
                return None;
            }
        };
        let allowed: Vec<&str> = specific.iter().chain(extra).copied().collect();
        let max_pos = if matches!(name, "random") { 0 } else { 1 };
        let positional_help = match name {
            "npz" | "npy" => {
                format!("`{name}` takes one path string: `{name}(\"data/file.{name}\")`")
            }
            "fashion_mnist" | "idx" => {
                format!("`{name}` takes an optional folder and a split: `{name}(\"data/fashion\", split: test)`")
            }
            _ => "`random` takes only named settings, e.g. `random(batches: 8)`".to_string(),
        };
        let (positional, named) = self.call_args(call, &allowed, max_pos, &positional_help, seen);
        let mut path: Option<String> = None;
        let mut ok = true;
        if let Some(p) = positional.first() {
            match &p.kind {
                ExprKind::Str(s) if !s.is_empty() => path = Some(s.clone()),
                _ => {
                    ok = false;
                    self.error(
                        BAD_VALUE,
                        p.span,
                        format!("expected a path string, found {}", describe(p)),
                        "expected a string",
                        positional_help.clone(),
                    );
                }
            }
        }
        let mut split = if use_ == DataUse::TestData {
            Split::Test
        } else {
            Split::Train
        };
        for (key, value) in named {
            match key.name.as_str() {
                "split" => match self.word_value(value) {
                    Some(("train", _)) => split = Split::Train,
                    Some(("test", _)) => split = Split::Test,
                    _ => {
                        ok = false;
                        let dym = match &value.kind {
                            ExprKind::Path(p) => did_you_mean(&p.text, ["train", "test"]),
                            ExprKind::Str(s) => did_you_mean(s, ["train", "test"]),
                            _ => None,
                        };
                        self.error(
                            BAD_VALUE,
                            value.span,
                            format!("`split` must be `train` or `test`, found {}", describe(value)),
                            "not a split",
                            suggest(dym, key_help("split")),
                        );
                    }
                },
                // Already checked for duplicates by `call_args`.
                _ => self.batch_arg(key, value, batch, &mut Seen::default()),
            }
        }
        match name {
            "random" => ok.then_some(DataSource::Random),
            "fashion_mnist" | "idx" => ok.then_some(DataSource::Idx { dir: path, split }),
            _ => match path {
                Some(path) if ok => Some(if name == "npz" {
                    DataSource::Npz { path }
                } else {
                    DataSource::Npy { path }
                }),
                Some(_) => None,
                None => {
                    if ok {
                        self.error(
                            MISSING_ARGUMENT,
                            call.span,
                            format!("`{name}` needs a path"),
                            "no path",
                            positional_help,
                        );
                    }
                    None
                }
            },
        }
    }

    /// Checks a call's arguments: at most `max_positional` positional ones, named ones among
    /// `allowed`, none twice. Returns the valid positional and named arguments.
    fn call_args<'a>(
        &mut self,
        call: &'a Call,
        allowed: &[&str],
        max_positional: usize,
        positional_help: &str,
        seen: &mut Seen,
    ) -> (Vec<&'a Expr>, Vec<(&'a Ident, &'a Expr)>) {
        let name = &call.callee.name;
        let takes = if allowed.is_empty() {
            format!("`{name}` takes no named arguments")
        } else {
            format!("`{name}` takes {}", list_words(allowed))
        };
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for Arg { name: key, value } in &call.args {
            match key {
                None => {
                    if positional.len() < max_positional {
                        positional.push(value);
                    } else {
                        let help = if max_positional > 0 {
                            positional_help.to_string()
                        } else if let Some(first) = allowed.first() {
                            format!("name the argument, e.g. `{name}({first}: ...)`; {takes}")
                        } else {
                            format!("write `{name}` without arguments")
                        };
                        self.error(
                            BAD_ARGUMENT,
                            value.span,
                            format!("`{name}` does not take this argument without a name"),
                            "unnamed argument",
                            help,
                        );
                    }
                }
                Some(key) => {
                    if !allowed.contains(&key.name.as_str()) {
                        self.error(
                            UNKNOWN_ARGUMENT,
                            key.span,
                            format!("`{name}` has no argument `{}`", key.name),
                            "unknown argument",
                            suggest(did_you_mean(&key.name, allowed.iter().copied()), &takes),
                        );
                        continue;
                    }
                    if self.first_time(seen, &key.name, key.span, &format!("`{name}(...)`")) {
                        named.push((key, value));
                    }
                }
            }
        }
        (positional, named)
    }

    // ------------------------------------------------------------ values

    fn not_literal(&mut self, e: &Expr, what: &str, help: &str) {
        self.error(
            BAD_VALUE,
            e.span,
            format!("{what} must be written as a plain value, found {}", describe(e)),
            "not a plain value",
            format!("settings are not evaluated: write the value itself. {help}"),
        );
    }

    fn int_value(&mut self, e: &Expr, what: &str, min: i64, help: &str) -> Option<u64> {
        match &e.kind {
            ExprKind::Int(v) if *v >= min => u64::try_from(*v).ok(),
            ExprKind::Int(v) => {
                let bound = if min == 0 {
                    "must not be negative".to_string()
                } else {
                    format!("must be at least {min}")
                };
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} {bound}, found {v}"),
                    bound,
                    help.into(),
                );
                None
            }
            // The parser keeps integers too large for i64 as (integral or infinite) floats.
            ExprKind::Float(v) if v.abs() >= 9.2e18 => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} is too large"),
                    "too large",
                    help.into(),
                );
                None
            }
            ExprKind::Float(v) => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a whole number, found `{v}`"),
                    "not a whole number",
                    help.into(),
                );
                None
            }
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a whole number, found {}", describe(e)),
                    "expected a whole number",
                    help.into(),
                );
                None
            }
        }
    }

    fn float_value(&mut self, e: &Expr, what: &str, bounds: Bounds, help: &str) -> Option<f64> {
        let v = match &e.kind {
            ExprKind::Int(v) => *v as f64,
            ExprKind::Float(v) => *v,
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                return None;
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a number, found {}", describe(e)),
                    "expected a number",
                    help.into(),
                );
                return None;
            }
        };
        if bounds.contains(v) {
            return Some(v);
        }
        if !v.is_finite() {
            self.error(
                BAD_VALUE,
                e.span,
                format!("{what} is out of range"),
                "not a finite number",
                help.into(),
            );
            return None;
        }
        let must = format!("must be {}", bounds.describe());
        self.error(
            BAD_VALUE,
            e.span,
            format!("{what} {must}, found {v}"),
            must,
            help.into(),
        );
        None
    }

    fn bool_value(&mut self, e: &Expr, what: &str, help: &str) -> Option<bool> {
        match &e.kind {
            ExprKind::Bool(b) => Some(*b),
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be `true` or `false`, found {}", describe(e)),
                    "expected `true` or `false`",
                    help.into(),
                );
                None
            }
        }
    }

    /// A bare word (`cosine`, `train`) and its span.
    fn word_value<'e>(&self, e: &'e Expr) -> Option<(&'e str, Span)> {
        match &e.kind {
            ExprKind::Path(p) => Some((p.text.as_str(), p.span)),
            _ => None,
        }
    }

    // ------------------------------------------------------------ qat / train

    /// A `qat` or `train` section; for `train` only `.training` is filled.
    fn loop_settings(&mut self, s: &Settings, section: &str) -> QatSettings {
        let qat = section == "qat";
        let default_lr = if qat { defaults::QAT_LR } else { defaults::TRAIN_LR };
        let mut f = QatSettings {
            training: TrainSettings {
                default_lr,
                span: s.span,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut seen = Seen::default();
        for KwArg { key, value } in &s.entries {
            let name = key.name.as_str();
            let allowed = COMMON_KEYS.contains(&name) || (qat && QAT_ONLY_KEYS.contains(&name));
            if !allowed {
                let all: Vec<&str> = COMMON_KEYS
                    .iter()
                    .chain(if qat { QAT_ONLY_KEYS } else { &[] })
                    .copied()
                    .collect();
                let (message, help) = if QAT_ONLY_KEYS.contains(&name) {
                    (
                        format!("`{name}` is a `qat` setting; `train` does not take it"),
                        format!("move it to the `qat` section; `train` takes {}", list_words(&all)),
                    )
                } else {
                    (
                        format!("unknown setting `{name}` in `{section}`"),
                        suggest(
                            did_you_mean(name, all.iter().copied()),
                            format!("`{section}` takes {}", list_words(&all)),
                        ),
                    )
                };
                self.error(UNKNOWN_SETTING, key.span, message, "unknown setting", help);
                continue;
            }
            if !self.first_time(&mut seen, name, key.span, &format!("`{section}`")) {
                continue;
            }
            let span = key.span.to(value.span);
            let what = format!("`{name}`");
            let help = key_help(name);
            let sp = |v| Some(Spanned::new(v, span));
            match name {
                "epochs" => f.epochs = self.int_value(value, &what, 1, help).and_then(sp),
                "batch_size" => f.batch_size = self.int_value(value, &what, 1, help).and_then(sp),
                "threads" => f.threads = self.int_value(value, &what, 1, help).and_then(sp),
                "limit" => f.limit = self.int_value(value, &what, 1, help).and_then(sp),
                "seed" => f.seed = self.int_value(value, &what, 0, help).and_then(sp),
                "freeze_bn_after" => f.freeze_bn_after = self.int_value(value, &what, 0, help).and_then(sp),
                "freeze_observers_after" => {
                    f.freeze_observers_after = self.int_value(value, &what, 0, help).and_then(sp)
                }
                "lr" => {
                    f.lr = self
                        .float_value(value, &what, Bounds::POSITIVE, help)
                        .map(|v| Spanned::new(v, span))
                }
                "weight_decay" => {
                    f.weight_decay = self
                        .float_value(value, &what, Bounds::NON_NEGATIVE, help)
                        .map(|v| Spanned::new(v, span))
                }
                "learnable_scales" => {
                    f.learnable_scales = self.bool_value(value, &what, help).map(|v| Spanned::new(v, span))
                }
                "optimizer" => f.optimizer = self.optimizer(value).map(|v| Spanned::new(v, span)),
                "schedule" => f.schedule = self.schedule(value).map(|v| Spanned::new(v, span)),
                "normalize" => f.normalize = self.normalize(value).map(|v| Spanned::new(v, span)),
                "data" => {
                    f.data = self
                        .data_value(value, DataUse::Data, name)
                        .map(|v| Spanned::new(v, span))
                }
                "test_data" => {
                    f.test_data = self
                        .data_value(value, DataUse::TestData, name)
                        .map(|v| Spanned::new(v, span))
                }
                _ => {}
            }
        }
        f
    }

    /// A bare word or a call, as the call it names (`sgd` = `sgd()`); reports anything else.
    fn word_or_call(&mut self, e: &Expr, what: &str, help: &str) -> Option<Call> {
        match &e.kind {
            ExprKind::Call(c) => Some(c.clone()),
            ExprKind::Path(p) => Some(Call {
                callee: Ident {
                    name: p.text.clone(),
                    span: p.span,
                },
                args: vec![],
                span: p.span,
            }),
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                let help = match &e.kind {
                    ExprKind::Str(s) => format!("write it without quotes: `{s}`. {help}"),
                    _ => help.to_string(),
                };
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a name or a call, found {}", describe(e)),
                    "expected a name or a call",
                    help,
                );
                None
            }
        }
    }

    fn unknown_choice(&mut self, call: &Call, what: &str, choices: &[&str], help: &str) {
        let name = &call.callee.name;
        self.error(
            BAD_VALUE,
            call.callee.span,
            format!("unknown {what} `{name}`"),
            format!("not a {what}"),
            suggest(did_you_mean(name, choices.iter().copied()), help),
        );
    }

    fn optimizer(&mut self, e: &Expr) -> Option<Optimizer> {
        let help = key_help("optimizer");
        let call = self.word_or_call(e, "`optimizer`", help)?;
        match call.callee.name.as_str() {
            "sgd" => {
                let (_, named) = self.call_args(&call, &["momentum", "nesterov"], 0, "", &mut Seen::default());
                let mut momentum = Optimizer::DEFAULT_MOMENTUM;
                let mut momentum_span = call.span;
                let mut nesterov = false;
                let mut ok = true;
                for (key, value) in named {
                    if key.name == "momentum" {
                        match self.float_value(value, "`momentum`", Bounds::UNIT_HALF_OPEN, key_help("momentum")) {
                            Some(v) => (momentum, momentum_span) = (v, value.span),
                            None => ok = false,
                        }
                    } else {
                        match self.bool_value(value, "`nesterov`", key_help("nesterov")) {
                            Some(v) => nesterov = v,
                            None => ok = false,
                        }
                    }
                }
                if ok && nesterov && momentum == 0.0 {
                    self.error(
                        BAD_VALUE,
                        momentum_span,
                        "Nesterov momentum needs a momentum above 0".into(),
                        "momentum is 0",
                        "set `momentum` above 0 (e.g. `sgd(momentum: 0.9, nesterov: true)`) or drop `nesterov`".into(),
                    );
                    ok = false;
                }
                ok.then_some(Optimizer::Sgd { momentum, nesterov })
            }
            "adam" => {
                let (_, named) = self.call_args(&call, &["beta1", "beta2"], 0, "", &mut Seen::default());
                let (mut beta1, mut beta2) = (Optimizer::DEFAULT_BETA1, Optimizer::DEFAULT_BETA2);
                let mut ok = true;
                for (key, value) in named {
                    let what = format!("`{}`", key.name);
                    match self.float_value(value, &what, Bounds::UNIT_HALF_OPEN, key_help("beta1")) {
                        Some(v) if key.name == "beta1" => beta1 = v,
                        Some(v) => beta2 = v,
                        None => ok = false,
                    }
                }
                ok.then_some(Optimizer::Adam { beta1, beta2 })
            }
            _ => {
                self.unknown_choice(&call, "optimizer", &["sgd", "adam"], help);
                None
            }
        }
    }

    fn schedule(&mut self, e: &Expr) -> Option<Schedule> {
        let help = key_help("schedule");
        let call = self.word_or_call(e, "`schedule`", help)?;
        match call.callee.name.as_str() {
            name @ ("constant" | "cosine") => {
                self.call_args(&call, &[], 0, "", &mut Seen::default());
                Some(if name == "constant" {
                    Schedule::Constant
                } else {
                    Schedule::Cosine
                })
            }
            "step" => {
                let (_, named) = self.call_args(&call, &["every", "gamma"], 0, "", &mut Seen::default());
                let mut every = None;
                let mut gamma = 0.1;
                let mut ok = true;
                for (key, value) in named {
                    if key.name == "every" {
                        match self.int_value(value, "`every`", 1, key_help("every")) {
                            Some(v) => every = Some(v),
                            None => ok = false,
                        }
                    } else {
                        match self.float_value(value, "`gamma`", Bounds::POSITIVE, key_help("gamma")) {
                            Some(v) => gamma = v,
                            None => ok = false,
                        }
                    }
                }
                let every_written = call
                    .args
                    .iter()
                    .any(|a| a.name.as_ref().is_some_and(|n| n.name == "every"));
                if every.is_none() && !every_written {
                    self.error(
                        MISSING_ARGUMENT,
                        call.span,
                        "`step` needs `every`".into(),
                        "no `every`",
                        key_help("every").into(),
                    );
                }
                match every {
                    Some(every) if ok => Some(Schedule::Step { every, gamma }),
                    _ => None,
                }
            }
            _ => {
                self.unknown_choice(&call, "schedule", &["constant", "cosine", "step"], help);
                None
            }
        }
    }

    fn normalize(&mut self, e: &Expr) -> Option<Normalize> {
        let help = key_help("normalize");
        match &e.kind {
            ExprKind::List(items) if items.len() == 2 => {
                let mean = self.float_value(&items[0], "the mean", Bounds::FINITE, help);
                let std = self.float_value(&items[1], "the standard deviation", Bounds::POSITIVE, help);
                Some(Normalize { mean: mean?, std: std? })
            }
            ExprKind::List(items) => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`normalize` takes two numbers, found {}", items.len()),
                    "expected `[mean, std]`",
                    help.into(),
                );
                None
            }
            _ if !is_literal(e) => {
                self.not_literal(e, "`normalize`", help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`normalize` must be a list `[mean, std]`, found {}", describe(e)),
                    "expected `[mean, std]`",
                    help.into(),
                );
                None
            }
        }
    }

    fn data_value(&mut self, e: &Expr, use_: DataUse, key: &str) -> Option<DataSource> {
        let help = key_help(key);
        match &e.kind {
            ExprKind::Str(path) => self.path_source(path, e.span, key),
            ExprKind::Call(_) | ExprKind::Path(_) => {
                let call = self.word_or_call(e, key, help)?;
                self.source_call(&call, use_, &mut BatchArgs::default(), &mut Seen::default())
            }
            _ if !is_literal(e) => {
                self.not_literal(e, &format!("`{key}`"), help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`{key}` must be a path string or a data source, found {}", describe(e)),
                    "expected data",
                    help.into(),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match() {
        assert!(glob_match("conv*", "conv1"));
        assert!(glob_match("layer?.*.conv1", "layer1.0.conv1"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("conv*", "fc"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match(&"*a".repeat(20), &"a".repeat(40)));
    }

    #[test]
    fn scheme_defaults_are_as_documented() {
        let (w, a) = Scheme::X86.defaults();
        assert_eq!(
            (w.bits, w.signed, w.granularity, w.symmetric),
            (8, true, Granularity::PerChannel, true)
        );
        assert_eq!(
            (a.bits, a.signed, a.granularity, a.symmetric),
            (7, false, Granularity::PerTensor, false)
        );
        assert_eq!(a.observer, Observer::Histogram { bins: 2048 });
        let (w, a) = Scheme::PowerOfTwo.defaults();
        assert!(w.power_of_two && a.power_of_two && a.signed && a.symmetric);
        assert_eq!(Scheme::Symmetric8.defaults().1.observer, Observer::MinMax);
    }
}
