//! The typed settings that checking produces: what each `quantize`, `qat` and `train` entry and
//! each input's `normalize(...)` means, with the span of the recipe text that decided it.

use crate::source::Span;

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
    /// Every `weights` line, in order (the compiler refuses a second one).
    pub weights: Vec<WeightsSettings>,
    /// Every model input, in source order, with what its `input` line declares besides its type.
    pub inputs: Vec<InputSettings>,
}

impl Sections {
    /// The normalization `input NAME: ... normalize(...)` of model `model` declares, if any.
    pub fn normalize_of(&self, model: &str, input: &str) -> Option<&Spanned<Normalize>> {
        self.inputs
            .iter()
            .find(|i| i.model == model && i.input == input)
            .and_then(|i| i.normalize.as_ref())
    }
}

/// What one `input` line declares besides its name and type.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSettings {
    pub model: String,
    pub input: String,
    /// `normalize(mean: ..., std: ...)`, with the span of the call; `None` when not written (or
    /// written wrong, which is reported).
    pub normalize: Option<Spanned<Normalize>>,
}

/// A `weights` line: the checkpoint and how its keys are remapped before binding.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsSettings {
    /// The path as written (relative paths resolve against the recipe's folder).
    pub path: String,
    pub resolved: std::path::PathBuf,
    /// The path's string.
    pub span: Span,
    pub remap: KeyRemap,
}

/// `{ strip: "module.", rename: "fc" -> "head" }`: a prefix removed from every key that has it,
/// then renames of a key or of every key under a module path (the longest `from` that matches
/// wins). See `docs/recipe-language.md`, "Weights".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRemap {
    pub strip: Option<Spanned<String>>,
    pub renames: Vec<Rename>,
}

/// `rename: "fc" -> "head"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rename {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    /// The whole option.
    pub span: Span,
}

impl KeyRemap {
    pub fn is_empty(&self) -> bool {
        self.strip.is_none() && self.renames.is_empty()
    }
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

    /// How conv/linear accumulators are requantized by default: `float` (PyTorch's x86 engine
    /// and ONNX Runtime's rule) for `x86` and `symmetric8`, `integer` (multiplier and shift, for
    /// integer-only targets) for `power_of_two`.
    pub fn requantize(self) -> Requantize {
        match self {
            Scheme::X86 | Scheme::Symmetric8 => Requantize::Float,
            Scheme::PowerOfTwo => Requantize::Integer,
        }
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

/// `requantize: float | float_bias | integer`: how a conv/linear layer's int32 accumulator
/// becomes its output integer (docs/numerics.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Requantize {
    /// `f32` multiply, rounded to nearest even, the bias an `i32` in the accumulator: ONNX
    /// Runtime's `QLinearConv`/`QGemm` (and PyTorch's x86 engine but for the bias).
    Float,
    /// The float rule with the bias kept in `f32` and added to the converted accumulator before
    /// the multiply: PyTorch's x86 engine (fbgemm) bit for bit. ONNX cannot express it.
    FloatBias,
    /// Integer multiplier and shift, rounded half up: integer-only targets.
    #[default]
    Integer,
}

impl Requantize {
    pub const ALL: [Requantize; 3] = [Requantize::Float, Requantize::FloatBias, Requantize::Integer];

    /// The word a recipe writes.
    pub fn name(self) -> &'static str {
        match self {
            Requantize::Float => "float",
            Requantize::FloatBias => "float_bias",
            Requantize::Integer => "integer",
        }
    }

    pub fn from_name(name: &str) -> Option<Requantize> {
        Requantize::ALL.into_iter().find(|r| r.name() == name)
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
    /// `requantize: float | integer` for the selected conv/linear layers.
    pub requantize: Option<Spanned<Requantize>>,
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
    /// `requantize: float | integer` for every conv/linear layer (else the scheme's).
    pub requantize: Option<Spanned<Requantize>>,
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
    /// The last `requantize:` that applies (a matching override's, else the section's); `None`
    /// means the scheme's ([`Scheme::requantize`]).
    pub requantize: Option<Spanned<Requantize>>,
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
            requantize: self.requantize,
        };
        for l in self.layers_matching(node_name, op_kind) {
            if l.skip.is_some() {
                n.skip = l.skip;
            }
            if l.requantize.is_some() {
                n.requantize = l.requantize;
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

/// `normalize(mean: ..., std: ...)` on an `input` line: the model computes
/// `(x - mean[c]) / std[c]` of its raw input. `mean` and `std` have the same length: 1 (every
/// element) or the input's channel count (dim 1); a number written beside a list is repeated.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
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
    /// Freeze the ranges (observers off, learned scales no longer trained) after this many epochs.
    pub freeze_ranges_after: Option<Spanned<u64>>,
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
    /// Epochs after which the ranges (observers and learned scales) are frozen; `None`: never.
    pub fn freeze_ranges_after(&self) -> Option<u64> {
        self.freeze_ranges_after.map(|s| s.value)
    }
    /// Whether scales are learnt; default false.
    pub fn learnable_scales(&self) -> bool {
        self.learnable_scales.is_some_and(|s| s.value)
    }
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
