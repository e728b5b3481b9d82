//! What a training run is told and what it reports: the optimizer, the learning-rate schedule,
//! the configuration, the labeled data, per-step progress, per-epoch statistics and resumable state
//! (plain data, built without libtorch too).

use crate::data::Array;
use qc_runtime::program::{Device, QatPlan};
use qc_runtime::tensor::Tensor;

/// The optimizer of [`train_float`], PyTorch's (`torch.optim.SGD` / `torch.optim.Adam`, weight
/// decay as an L2 term added to the gradient).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd { momentum: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64 },
}

/// The learning rate per epoch.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum LrSchedule {
    #[default]
    Constant,
    /// `lr · (1 + cos(π · epoch / epochs)) / 2` for epoch 0, 1, … (PyTorch's `CosineAnnealingLR`
    /// stepped once per epoch, to 0).
    Cosine,
    /// `lr · gamma^(epoch / every)` (PyTorch's `StepLR`).
    Step { every: usize, gamma: f64 },
}

impl LrSchedule {
    /// The rate of epoch `epoch` (from 0) of `epochs`.
    pub fn lr(self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()),
            LrSchedule::Step { every, gamma } => lr * gamma.powi((epoch / every.max(1)) as i32),
        }
    }
}

/// How [`train_float`] trains: a plain runtime struct (the command fills it from the recipe's
/// `train { }` section).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: Optimizer,
    pub weight_decay: f64,
    /// Where to train.
    pub device: Device,
    /// Seeds the shuffling (SplitMix64, `seed + epoch`) and libtorch's generator.
    pub seed: u64,
    /// The input's normalization (its `input` line's `normalize(...)`): every sample, `u8`
    /// images scaled to [0, 1] first, goes through [`qc_runtime::normalize::Normalize::apply`].
    pub normalize: Option<qc_runtime::normalize::Normalize>,
    /// Train on the first `max_samples` samples only.
    pub max_samples: Option<usize>,
    /// libtorch's intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 64,
            lr: 0.01,
            schedule: LrSchedule::Constant,
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            weight_decay: 0.0,
            device: Device::Cpu,
            seed: 0,
            normalize: None,
            max_samples: None,
            threads: None,
        }
    }
}

/// Samples with one class each: `inputs` `[N, ...]` (the model's input shape without the batch),
/// `labels` `N` classes.
#[derive(Clone, Copy, Debug)]
pub struct LabeledData<'a> {
    pub inputs: &'a Array,
    pub labels: &'a [i64],
}

/// One epoch of [`train_float`].
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// From 1.
    pub epoch: usize,
    /// The learning rate of the epoch.
    pub lr: f64,
    /// Mean cross-entropy over the epoch's samples.
    pub loss: f64,
    /// Top-1 accuracy of the training forwards (batch statistics, weights as they were at each
    /// step), as PyTorch training loops usually report it.
    pub train_accuracy: f64,
    /// Top-1 accuracy on the test data after the epoch (inference batch norm).
    pub test_accuracy: Option<f64>,
    /// Seconds of training (forward, backward, update).
    pub seconds: f64,
    /// Seconds of the test evaluation.
    pub eval_seconds: f64,
}

/// Where a training run stands after an epoch: enough to resume it exactly. `constants` are all
/// the program's constants (trained, running statistics, fake-quant state); `optimizer` the
/// optimizer's state, per trainable constant in order (SGD: the momentum buffer; Adam: the first
/// and second moments), all `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Epochs done.
    pub epoch: usize,
    /// Optimizer steps done.
    pub steps: usize,
    pub constants: Vec<Tensor>,
    pub optimizer: Vec<Tensor>,
}

/// Progress within an epoch, after each step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepProgress {
    /// From 1.
    pub epoch: usize,
    pub epochs: usize,
    /// From 1.
    pub step: usize,
    pub steps: usize,
    /// Mean loss and accuracy of the epoch's steps so far.
    pub loss: f64,
    pub accuracy: f64,
    /// Training samples per second in this epoch so far.
    pub samples_per_second: f64,
}

/// What a training run reports as it goes. `on_epoch` may stop the run with a message (a
/// checkpoint that could not be written).
pub struct TrainHooks<'a> {
    pub on_step: &'a mut dyn FnMut(&StepProgress),
    pub on_epoch: &'a mut dyn FnMut(&EpochStats, &TrainState) -> Result<(), String>,
}

/// What [`train_float`] returns: every constant of the program (trained ones updated, batch-norm
/// running statistics updated, the others unchanged), the epochs' statistics, and the number of
/// optimizer steps (PyTorch's `num_batches_tracked` advances by it).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainResult {
    pub constants: Vec<Tensor>,
    pub epochs: Vec<EpochStats>,
    pub steps: usize,
}

/// How quantization-aware training runs: the plan and when to freeze (epochs count from 1;
/// during epoch `e`, batch norm is frozen when `e > freeze_bn_after`, observers when
/// `e > freeze_observers_after`, the ranges (observers and learned scales) when
/// `e > freeze_ranges_after`).
#[derive(Clone, Debug, PartialEq)]
pub struct QatTraining {
    pub plan: QatPlan,
    pub freeze_bn_after: Option<usize>,
    pub freeze_observers_after: Option<usize>,
    pub freeze_ranges_after: Option<usize>,
}

/// The sample order of epoch `epoch` (from 0) of [`train_float`]: Fisher–Yates on SplitMix64
/// seeded by `seed + epoch`, so a run is reproducible and a step names its samples.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = qc_runtime::tensor::SplitMix64::new(seed.wrapping_add(epoch as u64));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}
