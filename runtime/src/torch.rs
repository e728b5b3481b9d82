//! The libtorch backend (tch). tch types never leave this module. Without the `torch` cargo
//! feature every entry point returns `TorchError::NotCompiled`, so callers need no `cfg`.

use crate::data::Array;
use crate::program::{ConstId, Program, ValueId};
#[cfg(feature = "torch")]
use crate::program::{FloatOp, StepOp};
use crate::tensor::Tensor;
#[cfg(feature = "torch")]
use crate::tensor::TensorData;

/// Errors of the libtorch backend.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("this qc was built without libtorch (cargo feature `torch`); `{what}` needs it")]
    NotCompiled { what: &'static str },
    #[error("device `{0}` is not available: {1}")]
    Device(String, String),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("int8 step `{step}` ({op}) runs on the CPU runtime only; the libtorch backend runs float steps")]
    Int8Step { step: String, op: &'static str },
    /// A step the libtorch int8 path ([`Int8Session`]) cannot run as given.
    #[error("step `{step}` ({op}): {message}")]
    Step {
        step: String,
        op: &'static str,
        message: String,
    },
    /// Training diverged: the loss of a batch is NaN or infinite. Epoch and step count from 1;
    /// `value`: the first value of the forward that went non-finite (an input, or a node's
    /// output), when one did.
    #[error("the loss is {loss} at epoch {epoch}, step {step} of {steps} (samples {first}..{end} of the shuffled order){}; this epoch is not saved", value.as_ref().map(|v| format!(": `{v}` is the first value with a NaN or an infinity")).unwrap_or_default())]
    NonFinite {
        epoch: usize,
        step: usize,
        steps: usize,
        first: usize,
        end: usize,
        loss: f64,
        value: Option<String>,
    },
    /// A caller's hook stopped the run.
    #[error("stopped")]
    Stopped,
    /// A forward pass checked for non-finite values found one at this value.
    #[error("`{value}` holds a NaN or an infinity")]
    NonFiniteValue { value: String },
    /// The program or the data cannot be trained as given.
    #[error("{0}")]
    Train(String),
}

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
    /// `(mean, std)`: `u8` images, scaled to [0, 1], become `(x - mean) / std`; float data is
    /// taken as is.
    pub normalize: Option<(f64, f64)>,
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

/// Where a [`FakeQuantSite`] fake-quantizes.
#[derive(Clone, Debug, PartialEq)]
pub enum FakeQuantAt {
    /// The output of this step (a fake-quant node's identity step): an activation.
    Value(ValueId),
    /// The weight of the `Conv`/`Linear` step with this index. `bn_step`: the `BatchNorm` step on
    /// its output when the batch norm is folded on the fly (PyTorch's QAT `ConvBn`).
    Weight { step: usize, bn_step: Option<usize> },
}

/// One fake quantization of a QAT program: PyTorch's `FusedMovingAvgObsFakeQuantize` (see
/// `docs/design-later-stages.md`, 7.1). Its state lives in program constants.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeQuantSite {
    /// The state's key prefix, for messages: `conv1.weight_fake_quant`.
    pub name: String,
    pub at: FakeQuantAt,
    pub quant_min: i64,
    pub quant_max: i64,
    /// One scale per output channel (axis 0 of a weight).
    pub per_channel: bool,
    pub symmetric: bool,
    /// How far the running min/max move towards each batch's (PyTorch's 0.01).
    pub averaging_constant: f64,
    /// The scale is trained (LSQ: PyTorch's `_LearnableFakeQuantize`, gradient scaled by
    /// `1 / sqrt(numel · quant_max)`); while the observer is on it still sets the scale.
    pub learnable: bool,
    /// `i64[1]` flags.
    pub observer_enabled: ConstId,
    pub fake_quant_enabled: ConstId,
    /// `f32` running range (`[]` per tensor, `[C]` per channel).
    pub min_val: ConstId,
    pub max_val: ConstId,
    /// `f32` scale and `i32` zero point (`[1]` per tensor, `[C]` per channel).
    pub scale: ConstId,
    pub zero_point: ConstId,
}

/// The fake quantizations of a QAT program, a side table of the program
/// (`compiler::lower::lower_qat` builds it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QatPlan {
    pub sites: Vec<FakeQuantSite>,
}

impl QatPlan {
    /// The constants holding fake-quant state that the optimizer does not train (all of it but
    /// the scales of learnable sites).
    pub fn state_constants(&self) -> Vec<ConstId> {
        self.sites
            .iter()
            .flat_map(|s| {
                [
                    s.observer_enabled,
                    s.fake_quant_enabled,
                    s.min_val,
                    s.max_val,
                    s.zero_point,
                ]
                .into_iter()
                .chain((!s.learnable).then_some(s.scale))
            })
            .collect()
    }
}

/// How quantization-aware training runs: the plan and when to freeze (epochs count from 1;
/// during epoch `e`, batch norm is frozen when `e > freeze_bn_after`, observers when
/// `e > freeze_observers_after`).
#[derive(Clone, Debug, PartialEq)]
pub struct QatTraining {
    pub plan: QatPlan,
    pub freeze_bn_after: Option<usize>,
    pub freeze_observers_after: Option<usize>,
}

/// What libtorch this build runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// libtorch's version, as the build checked it (`2.11.0`).
    pub version: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: usize,
}

/// Where the tch backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// The sample order of epoch `epoch` (from 0) of [`train_float`]: Fisher–Yates on SplitMix64
/// seeded by `seed + epoch`, so a run is reproducible and a step names its samples.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = crate::tensor::SplitMix64::new(seed.wrapping_add(epoch as u64));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// True when this build has the libtorch backend.
pub const COMPILED: bool = cfg!(feature = "torch");

/// The lowered int8 graph on libtorch (`_int_mm`), bit-exact with the CPU executor.
#[cfg(feature = "torch")]
mod int8;

#[cfg(feature = "torch")]
mod imp {
    use super::*;
    use std::collections::HashMap;

    pub use super::int8::{run_program_int8, Int8Session};

    /// Loads libtorch's CUDA library when the machine has one (once). A qc built against the
    /// CPU-only libtorch (`make setup`) does not link it, and one built against a CUDA libtorch
    /// may have lost it to `--as-needed`; loading it by name registers libtorch's CUDA backend,
    /// so a binary carried to a CUDA machine (with its `torch/lib` on `LD_LIBRARY_PATH`) uses
    /// the GPU. Without the library this does nothing and CUDA reports "not available".
    fn load_cuda() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
            // process's lifetime (never dlclose'd), so registered kernels stay valid.
            unsafe {
                libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            }
        });
    }

    pub fn info() -> Result<BackendInfo, TorchError> {
        load_cuda();
        Ok(BackendInfo {
            version: "2.11.0",
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count().max(0) as usize,
        })
    }

    pub(super) fn to_tch(t: &Tensor) -> Result<tch::Tensor, TorchError> {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        Ok(match &t.data {
            TensorData::F32(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I64(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I32(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I8(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::U8(v) => tch::Tensor::from_slice(v).reshape(&shape),
        })
    }

    pub(super) fn from_tch(t: &tch::Tensor) -> Result<Tensor, TorchError> {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let flat = t.to_device(tch::Device::Cpu).contiguous().view(-1);
        let err = |e: tch::TchError| TorchError::Torch(e.to_string());
        let data = match t.kind() {
            tch::Kind::Float => TensorData::F32(Vec::<f32>::try_from(&flat).map_err(err)?),
            tch::Kind::Int64 => TensorData::I64(Vec::<i64>::try_from(&flat).map_err(err)?),
            tch::Kind::Int => TensorData::I32(Vec::<i32>::try_from(&flat).map_err(err)?),
            tch::Kind::Int8 => TensorData::I8(Vec::<i8>::try_from(&flat).map_err(err)?),
            tch::Kind::Uint8 => TensorData::U8(Vec::<u8>::try_from(&flat).map_err(err)?),
            k => return Err(TorchError::Torch(format!("unsupported tensor kind {k:?}"))),
        };
        Ok(Tensor { shape, data })
    }

    /// Round-trips a host tensor through libtorch (used to check the binding end to end).
    pub fn round_trip(t: &Tensor) -> Result<Tensor, TorchError> {
        from_tch(&to_tch(t)?)
    }

    pub(super) fn tch_device(d: Device) -> Result<tch::Device, TorchError> {
        load_cuda();
        match d {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            Device::Cuda => Err(TorchError::Device("cuda".into(), "libtorch sees no CUDA device".into())),
        }
    }

    fn i64s(v: &[usize]) -> Vec<i64> {
        v.iter().map(|&x| x as i64).collect()
    }

    fn err(e: tch::TchError) -> TorchError {
        TorchError::Torch(e.to_string())
    }

    /// Refuses int8 steps by name.
    fn float_only(program: &Program) -> Result<(), TorchError> {
        crate::validate::validate(program).map_err(|e| TorchError::Torch(e.to_string()))?;
        if let Some(step) = program.steps.iter().find(|s| matches!(s.op, StepOp::Quant(_))) {
            return Err(TorchError::Int8Step {
                step: program.value_name(step.output).to_string(),
                op: step.op.name(),
            });
        }
        Ok(())
    }

    /// Host tensors on a device.
    fn upload(tensors: &[Tensor], dev: tch::Device) -> Result<Vec<tch::Tensor>, TorchError> {
        tensors.iter().map(|t| to_tch(t).map(|t| t.to_device(dev))).collect()
    }

    /// Executes a float program through libtorch on `device`, inference mode.
    pub fn run_program(program: &Program, inputs: &[Tensor], device: Device) -> Result<Vec<Tensor>, TorchError> {
        run_once(program, None, inputs, device)
    }

    /// One inference pass, fake-quantized by `plan` (observers still) when given.
    fn run_once(
        program: &Program,
        plan: Option<&QatPlan>,
        inputs: &[Tensor],
        device: Device,
    ) -> Result<Vec<Tensor>, TorchError> {
        float_only(program)?;
        program
            .check_inputs(inputs)
            .map_err(|e| TorchError::Torch(e.to_string()))?;
        let dev = tch_device(device)?;
        let _guard = tch::no_grad_guard();
        let consts = upload(&program.constants, dev)?;
        let pass = plan.map(|p| QatPass::new(p, true, dev));
        forward(
            program,
            &consts,
            upload(inputs, dev)?,
            false,
            pass.as_ref(),
            Check::Nothing,
            None,
        )?
        .iter()
        .map(from_tch)
        .collect()
    }

    /// A float program with its constants on a device, for running many batches (calibration).
    pub struct Session {
        program: Program,
        consts: Vec<tch::Tensor>,
        device: tch::Device,
    }

    impl Session {
        pub fn new(program: Program, device: Device) -> Result<Session, TorchError> {
            float_only(&program)?;
            let dev = tch_device(device)?;
            let consts = upload(&program.constants, dev)?;
            Ok(Session {
                program,
                consts,
                device: dev,
            })
        }

        /// Runs the program (inference) on `inputs`, calling `on_value(value, tensor)` with a
        /// host copy of each value in `watch` (an input or a step's output) as soon as it is
        /// computed. `Break` stops the run with [`TorchError::Stopped`]; a NaN or infinity in
        /// any value stops it with [`TorchError::NonFiniteValue`], after `on_value` saw it when
        /// watched.
        pub fn run_watched(
            &self,
            inputs: &[Tensor],
            watch: &[ValueId],
            on_value: &mut dyn FnMut(ValueId, &Tensor) -> std::ops::ControlFlow<()>,
        ) -> Result<Vec<Tensor>, TorchError> {
            self.program
                .check_inputs(inputs)
                .map_err(|e| TorchError::Torch(e.to_string()))?;
            let _guard = tch::no_grad_guard();
            let inputs = upload(inputs, self.device)?;
            let mut hook = |id: ValueId, t: &tch::Tensor| -> Result<(), TorchError> {
                if watch.contains(&id) && on_value(id, &from_tch(t)?).is_break() {
                    return Err(TorchError::Stopped);
                }
                Ok(())
            };
            forward(
                &self.program,
                &self.consts,
                inputs,
                false,
                None,
                Check::Steps,
                Some(&mut hook),
            )?
            .iter()
            .map(from_tch)
            .collect()
        }
    }

    /// Executes a QAT program as its evaluation does: fake-quantized with the current scales
    /// (observers still), batch norm with the running statistics. The int8 model converted
    /// from this state computes the same within one quantization step.
    pub fn run_program_qat(
        program: &Program,
        plan: &QatPlan,
        inputs: &[Tensor],
        device: Device,
    ) -> Result<Vec<Tensor>, TorchError> {
        run_once(program, Some(plan), inputs, device)
    }

    /// The fake quantizations of one QAT forward pass, found by step and value, and the pass's
    /// mode.
    struct QatPass<'a> {
        sites: &'a [FakeQuantSite],
        /// The site fake-quantizing each value, after the step that computes it.
        on_value: HashMap<ValueId, usize>,
        /// The site fake-quantizing each step's weight.
        on_weight: HashMap<usize, usize>,
        /// `Some(zeros)`: the observers stay still in this pass (evaluation), whatever their
        /// `observer_enabled` says.
        observers_off: Option<tch::Tensor>,
    }

    impl<'a> QatPass<'a> {
        fn new(plan: &'a QatPlan, observers_off: bool, device: tch::Device) -> Self {
            let mut on_value = HashMap::new();
            let mut on_weight = HashMap::new();
            for (i, site) in plan.sites.iter().enumerate() {
                match site.at {
                    FakeQuantAt::Value(v) => on_value.insert(v, i),
                    FakeQuantAt::Weight { step, .. } => on_weight.insert(step, i),
                };
            }
            QatPass {
                sites: &plan.sites,
                on_value,
                on_weight,
                observers_off: observers_off.then(|| tch::Tensor::zeros([1], (tch::Kind::Int64, device))),
            }
        }

        /// PyTorch's `FusedMovingAvgObsFakeQuantize.forward`: observe (moving average), then
        /// fake-quantize with straight-through gradients. Updates the site's state in place.
        fn fake_quant(&self, site: usize, x: &tch::Tensor, consts: &[tch::Tensor]) -> Result<tch::Tensor, TorchError> {
            let s = &self.sites[site];
            let observer_on = self.observers_off.as_ref().unwrap_or(&consts[s.observer_enabled]);
            if s.learnable {
                return self.learnable_fake_quant(s, x, consts, observer_on);
            }
            fused_fake_quant(s, x, consts, observer_on, &consts[s.fake_quant_enabled])
        }
    }

    /// libtorch's `fused_moving_avg_obs_fake_quant` on a site's state (updated in place).
    fn fused_fake_quant(
        s: &FakeQuantSite,
        x: &tch::Tensor,
        consts: &[tch::Tensor],
        observer_on: &tch::Tensor,
        fake_quant_on: &tch::Tensor,
    ) -> Result<tch::Tensor, TorchError> {
        x.f_fused_moving_avg_obs_fake_quant(
            observer_on,
            fake_quant_on,
            &consts[s.min_val],
            &consts[s.max_val],
            &consts[s.scale],
            &consts[s.zero_point],
            s.averaging_constant,
            s.quant_min,
            s.quant_max,
            if s.per_channel { 0 } else { -1 },
            s.per_channel,
            s.symmetric,
        )
        .map_err(err)
    }

    impl QatPass<'_> {
        /// PyTorch's `_LearnableFakeQuantize.forward`: while the observer is on, it observes
        /// (moving average) and sets the scale and zero point, outside autograd; then the scale,
        /// kept at least `f32::EPSILON`, fake-quantizes with a gradient of its own.
        fn learnable_fake_quant(
            &self,
            s: &FakeQuantSite,
            x: &tch::Tensor,
            consts: &[tch::Tensor],
            observer_on: &tch::Tensor,
        ) -> Result<tch::Tensor, TorchError> {
            {
                let _guard = tch::no_grad_guard();
                let observing = i64::try_from(observer_on).map_err(err)? != 0;
                if observing {
                    // The fused op computes scale and zero point only with fake quantization on
                    // (its output, on the detached input, is dropped).
                    let on = observer_on.f_ones_like().map_err(err)?;
                    let _ = fused_fake_quant(s, &x.f_detach().map_err(err)?, consts, observer_on, &on)?;
                } else {
                    let _ = consts[s.scale]
                        .shallow_clone()
                        .f_clamp_min_(f32::EPSILON as f64)
                        .map_err(err)?;
                }
            }
            if i64::try_from(&consts[s.fake_quant_enabled]).map_err(err)? == 0 {
                return Ok(x.shallow_clone());
            }
            let zero_point = consts[s.zero_point].f_to_kind(tch::Kind::Float).map_err(err)?;
            // PyTorch's `use_grad_scaling`: over the whole tensor, per channel too.
            let grad_factor = 1.0 / ((x.numel().max(1) as f64) * s.quant_max as f64).sqrt();
            if s.per_channel {
                x.f_internal_fake_quantize_learnable_per_channel_affine(
                    &consts[s.scale],
                    &zero_point,
                    0,
                    s.quant_min,
                    s.quant_max,
                    grad_factor,
                )
            } else {
                x.f_internal_fake_quantize_learnable_per_tensor_affine(
                    &consts[s.scale],
                    &zero_point,
                    s.quant_min,
                    s.quant_max,
                    grad_factor,
                )
            }
            .map_err(err)
        }
    }

    /// The weight a weighted step computes with, and the per-channel factor its output is
    /// divided by: the constant itself outside QAT; in QAT its fake quantization, of `w · f`
    /// with `f = γ / sqrt(running_var + eps)` when the step's batch norm is folded on the fly
    /// (PyTorch's `_ConvBnNd._forward_approximate`).
    fn step_weight(
        program: &Program,
        consts: &[tch::Tensor],
        step: usize,
        weight: usize,
        qat: Option<&QatPass>,
    ) -> Result<(tch::Tensor, Option<tch::Tensor>), TorchError> {
        let w = &consts[weight];
        let Some((pass, site)) = qat.and_then(|q| q.on_weight.get(&step).map(|&s| (q, s))) else {
            return Ok((w.shallow_clone(), None));
        };
        let bn = match pass.sites[site].at {
            FakeQuantAt::Weight { bn_step: Some(b), .. } => match &program.steps[b].op {
                StepOp::Float(FloatOp::BatchNorm { eps, weight, var, .. }) => Some((*eps, *weight, *var)),
                _ => None,
            },
            _ => None,
        };
        match bn {
            None => Ok((pass.fake_quant(site, w, consts)?, None)),
            Some((eps, gamma, var)) => {
                let factor = consts[var]
                    .f_add_scalar(eps as f64)
                    .and_then(|v| v.f_sqrt())
                    .and_then(|std| consts[gamma].f_div(&std))
                    .map_err(err)?;
                let mut shape = vec![-1i64];
                shape.resize(w.dim(), 1);
                let scaled = w.f_mul(&factor.f_reshape(&shape).map_err(err)?).map_err(err)?;
                Ok((pass.fake_quant(site, &scaled, consts)?, Some(factor)))
            }
        }
    }

    /// Undoes the folding factor on a weighted step's output (`[N, C, ...]`) and adds the bias.
    fn unfold(out: tch::Tensor, factor: &tch::Tensor, bias: Option<&tch::Tensor>) -> Result<tch::Tensor, TorchError> {
        let mut shape = vec![1i64, -1];
        shape.resize(out.dim(), 1);
        let mut y = out.f_div(&factor.f_reshape(&shape).map_err(err)?).map_err(err)?;
        if let Some(b) = bias {
            y = y.f_add(&b.f_reshape(&shape).map_err(err)?).map_err(err)?;
        }
        Ok(y)
    }

    /// The program's float steps on tch tensors: inference (`training` false: batch norm with the
    /// running statistics) or training (batch statistics; the running statistics, constants
    /// without gradient, updated in place with momentum 0.1 and the unbiased variance, as
    /// `nn.BatchNorm` in `train()` mode). With `qat`, the plan's fake quantizations run too.
    /// `check` says which values are checked: the first that holds a NaN or an infinity stops
    /// the pass ([`TorchError::NonFiniteValue`]); `hook` sees each value before its check. The caller has checked the program (`float_only`).
    fn forward(
        program: &Program,
        consts: &[tch::Tensor],
        inputs: Vec<tch::Tensor>,
        training: bool,
        qat: Option<&QatPass>,
        check: Check,
        mut hook: Option<&mut Hook>,
    ) -> Result<Vec<tch::Tensor>, TorchError> {
        let mut values: Vec<Option<tch::Tensor>> = (0..program.values.len()).map(|_| None).collect();
        for (t, &id) in inputs.into_iter().zip(&program.inputs) {
            if let Some(h) = hook.as_deref_mut() {
                h(id, &t)?;
            }
            if check == Check::All && !all_finite(&t)? {
                return Err(TorchError::NonFiniteValue {
                    value: program.value_name(id).to_string(),
                });
            }
            values[id] = Some(t);
        }
        for (index, step) in program.steps.iter().enumerate() {
            let args: Vec<&tch::Tensor> = step
                .inputs
                .iter()
                .map(|&i| values[i].as_ref().expect("topological order"))
                .collect();
            let x = args[0];
            let StepOp::Float(op) = &step.op else {
                return Err(TorchError::Int8Step {
                    step: program.value_name(step.output).to_string(),
                    op: step.op.name(),
                });
            };
            let out = match op {
                FloatOp::Conv {
                    window: w,
                    groups,
                    weight,
                    bias,
                } => {
                    let (wt, factor) = step_weight(program, consts, index, *weight, qat)?;
                    let bias = bias.map(|b| &consts[b]);
                    let conv_bias = if factor.is_some() { None } else { bias };
                    let (s, p, d) = (i64s(&w.stride), i64s(&w.pad), i64s(&w.dilation));
                    let y = if w.kernel.len() == 1 {
                        x.f_conv1d(&wt, conv_bias, s, p, d, *groups as i64)
                    } else {
                        x.f_conv2d(&wt, conv_bias, s, p, d, *groups as i64)
                    }
                    .map_err(err)?;
                    match factor {
                        Some(f) => unfold(y, &f, bias),
                        None => Ok(y),
                    }?
                }
                FloatOp::Linear { weight, bias } => {
                    let (wt, factor) = step_weight(program, consts, index, *weight, qat)?;
                    let bias = bias.map(|b| &consts[b]);
                    match factor {
                        Some(f) => unfold(x.f_linear::<&tch::Tensor>(&wt, None).map_err(err)?, &f, bias)?,
                        None => x.f_linear(&wt, bias).map_err(err)?,
                    }
                }
                other => float_step(other, consts, &args, training)?,
            };
            let out = match qat.and_then(|q| q.on_value.get(&step.output).map(|&s| (q, s))) {
                Some((pass, site)) => pass.fake_quant(site, &out, consts)?,
                None => out,
            };
            if let Some(h) = hook.as_deref_mut() {
                h(step.output, &out)?;
            }
            if check != Check::Nothing && !all_finite(&out)? {
                return Err(TorchError::NonFiniteValue {
                    value: program.value_name(step.output).to_string(),
                });
            }
            values[step.output] = Some(out);
        }
        Ok(program
            .outputs
            .iter()
            .map(|&id| values[id].as_ref().expect("outputs are computed").shallow_clone())
            .collect())
    }

    /// Which values a forward pass checks for NaN and infinity.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Check {
        Nothing,
        /// What the steps compute (the reference interpreter's check).
        Steps,
        /// The inputs too.
        All,
    }

    /// Sees every value of a forward pass (inputs, then each step's output) before it is
    /// checked; an error stops the pass.
    type Hook<'a> = dyn FnMut(ValueId, &tch::Tensor) -> Result<(), TorchError> + 'a;

    fn all_finite(t: &tch::Tensor) -> Result<bool, TorchError> {
        let ok = t.f_isfinite().and_then(|f| f.f_all()).map_err(err)?;
        bool::try_from(&ok).map_err(err)
    }

    /// One float step other than conv and linear.
    pub(super) fn float_step(
        op: &FloatOp,
        consts: &[tch::Tensor],
        args: &[&tch::Tensor],
        training: bool,
    ) -> Result<tch::Tensor, TorchError> {
        let x = args[0];
        match op {
            FloatOp::Conv { .. } | FloatOp::Linear { .. } => unreachable!("weighted steps run in `forward`"),
            FloatOp::BatchNorm {
                eps,
                weight,
                bias,
                mean,
                var,
            } => x.f_batch_norm(
                Some(&consts[*weight]),
                Some(&consts[*bias]),
                Some(&consts[*mean]),
                Some(&consts[*var]),
                training,
                0.1,
                *eps as f64,
                false,
            ),
            FloatOp::Relu => x.f_relu(),
            FloatOp::Clamp { min, max } => x.f_clamp(*min as f64, *max as f64),
            FloatOp::Identity => Ok(x.shallow_clone()),
            FloatOp::MaxPool { window: w } => {
                let (k, s, p, d) = (i64s(&w.kernel), i64s(&w.stride), i64s(&w.pad), i64s(&w.dilation));
                if w.kernel.len() == 1 {
                    x.f_max_pool1d(k, s, p, d, w.ceil_mode)
                } else {
                    x.f_max_pool2d(k, s, p, d, w.ceil_mode)
                }
            }
            FloatOp::AvgPool {
                window: w,
                count_include_pad,
            } => {
                let (k, s, p) = (i64s(&w.kernel), i64s(&w.stride), i64s(&w.pad));
                if w.kernel.len() == 1 {
                    x.f_avg_pool1d(k, s, p, w.ceil_mode, *count_include_pad)
                } else {
                    x.f_avg_pool2d(k, s, p, w.ceil_mode, *count_include_pad, None::<i64>)
                }
            }
            FloatOp::AdaptiveAvgPool { output } => {
                if output.len() == 1 {
                    x.f_adaptive_avg_pool1d(i64s(output))
                } else {
                    x.f_adaptive_avg_pool2d(i64s(output))
                }
            }
            FloatOp::Flatten { start_dim, end_dim } => x.f_flatten(*start_dim as i64, *end_dim as i64),
            FloatOp::Add => x.f_add(args[1]),
            FloatOp::Concat { dim } => tch::Tensor::f_cat(args, *dim as i64),
        }
        .map_err(err)
    }

    /// The inputs of `data` (first `n` samples) as one f32 tensor, `u8` images normalized.
    fn data_tensor(data: &LabeledData, n: usize, normalize: Option<(f64, f64)>) -> Result<tch::Tensor, TorchError> {
        let mut t = data.inputs.batch_f32(0, n);
        if let (Some((mean, std)), true, crate::tensor::TensorData::F32(v)) =
            (normalize, data.inputs.is_u8(), &mut t.data)
        {
            for x in v.iter_mut() {
                *x = ((*x as f64 - mean) / std) as f32;
            }
        }
        to_tch(&t)
    }

    /// Checks data against the program's single input and output; returns the sample count.
    fn check_data(program: &Program, data: &LabeledData, classes: usize, what: &str) -> Result<usize, TorchError> {
        let want: Vec<Option<usize>> = program.values[program.inputs[0]].shape[1..].to_vec();
        let got = data.inputs.sample_shape();
        let fits = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| w.is_none_or(|w| w == *g));
        if !fits {
            return Err(TorchError::Train(format!(
                "the {what} samples have shape {got:?}, but input `{}` takes {}",
                program.values[program.inputs[0]].name,
                program.values[program.inputs[0]].shape_string()
            )));
        }
        let n = data.inputs.samples();
        if data.labels.len() != n {
            return Err(TorchError::Train(format!(
                "the {what} data has {n} samples but {} labels",
                data.labels.len()
            )));
        }
        if let Some((i, l)) = data
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l < 0 || l as usize >= classes)
        {
            return Err(TorchError::Train(format!(
                "{what} label {i} is {l}, but the model has {classes} classes (0..{classes})"
            )));
        }
        Ok(n)
    }

    /// Top-1 accuracy of the program (inference mode; with `qat`, fake-quantized with the
    /// observers still) on `x`/`y`, in batches.
    fn evaluate(
        program: &Program,
        consts: &[tch::Tensor],
        x: &tch::Tensor,
        y: &tch::Tensor,
        qat: Option<&QatPass>,
        dev: tch::Device,
    ) -> Result<f64, TorchError> {
        let _guard = tch::no_grad_guard();
        let n = x.size()[0];
        let mut correct = 0i64;
        let mut start = 0;
        while start < n {
            let len = EVAL_BATCH.min(n - start);
            let xb = x.f_narrow(0, start, len).map_err(err)?.to_device(dev);
            let yb = y.f_narrow(0, start, len).map_err(err)?.to_device(dev);
            let out = forward(program, consts, vec![xb], false, qat, Check::Nothing, None)?;
            correct += correct_count(&out[0], &yb)?;
            start += len;
        }
        Ok(correct as f64 / n.max(1) as f64)
    }

    const EVAL_BATCH: i64 = 500;

    fn correct_count(logits: &tch::Tensor, y: &tch::Tensor) -> Result<i64, TorchError> {
        let hits = logits
            .f_argmax(-1, false)
            .and_then(|a| a.f_eq_tensor(y))
            .and_then(|e| e.f_sum(tch::Kind::Int64))
            .map_err(err)?;
        i64::try_from(&hits).map_err(err)
    }

    /// PyTorch's `torch.optim.SGD` / `Adam` (defaults otherwise: no dampening, Adam eps 1e-8, no
    /// amsgrad; weight decay added to the gradient), written out so that its state can be saved
    /// in a checkpoint and a resumed run continues exactly.
    struct Optim {
        kind: Optimizer,
        weight_decay: f64,
        /// The trainable constants.
        params: Vec<usize>,
        /// Per trainable constant: SGD `[momentum buffer]`, Adam `[m, v]`.
        state: Vec<Vec<tch::Tensor>>,
        /// Steps done (Adam's bias correction).
        steps: usize,
    }

    impl Optim {
        fn new(kind: Optimizer, weight_decay: f64, params: Vec<usize>, consts: &[tch::Tensor]) -> Self {
            let per = match kind {
                Optimizer::Sgd { .. } => 1,
                Optimizer::Adam { .. } => 2,
            };
            let state = params
                .iter()
                .map(|&c| (0..per).map(|_| consts[c].zeros_like().detach()).collect())
                .collect();
            Optim {
                kind,
                weight_decay,
                params,
                state,
                steps: 0,
            }
        }

        fn zero_grad(&self, consts: &mut [tch::Tensor]) {
            for &c in &self.params {
                consts[c].zero_grad();
            }
        }

        fn step(&mut self, consts: &[tch::Tensor], lr: f64) -> Result<(), TorchError> {
            let _guard = tch::no_grad_guard();
            self.steps += 1;
            for (k, &c) in self.params.iter().enumerate() {
                let mut p = consts[c].shallow_clone();
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    g.f_add(&p.f_mul_scalar(self.weight_decay).map_err(err)?).map_err(err)?
                } else {
                    g
                };
                match self.kind {
                    Optimizer::Sgd { momentum, nesterov } => {
                        let update = if momentum != 0.0 {
                            let buf = &mut self.state[k][0];
                            // The first step's buffer is the gradient: 0 · momentum + d.
                            let _ = buf.f_mul_scalar_(momentum).and_then(|_| buf.f_add_(&d)).map_err(err)?;
                            if nesterov {
                                d.f_add(&buf.f_mul_scalar(momentum).map_err(err)?).map_err(err)?
                            } else {
                                buf.shallow_clone()
                            }
                        } else {
                            d
                        };
                        let _ = p.f_sub_(&update.f_mul_scalar(lr).map_err(err)?).map_err(err)?;
                    }
                    Optimizer::Adam { beta1, beta2 } => {
                        let t = self.steps as i32;
                        let (m, v) = {
                            let s = &mut self.state[k];
                            let (a, b) = s.split_at_mut(1);
                            (&mut a[0], &mut b[0])
                        };
                        let _ = m.f_lerp_(&d, 1.0 - beta1).map_err(err)?;
                        let _ = v
                            .f_mul_scalar_(beta2)
                            .and_then(|_| v.f_addcmul_(&d, &d.f_mul_scalar(1.0 - beta2)?))
                            .map_err(err)?;
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = v
                            .f_sqrt()
                            .and_then(|s| s.f_div_scalar(bc2.sqrt()))
                            .and_then(|s| s.f_add_scalar(1e-8))
                            .map_err(err)?;
                        let update = m.f_div(&denom).and_then(|u| u.f_mul_scalar(lr / bc1)).map_err(err)?;
                        let _ = p.f_sub_(&update).map_err(err)?;
                    }
                }
            }
            Ok(())
        }

        fn state(&self) -> Result<Vec<Tensor>, TorchError> {
            self.state.iter().flatten().map(from_tch).collect()
        }

        fn restore(&mut self, saved: &[Tensor], steps: usize, device: tch::Device) -> Result<(), TorchError> {
            let n: usize = self.state.iter().map(Vec::len).sum();
            if saved.len() != n {
                return Err(TorchError::Train(format!(
                    "the saved optimizer state has {} tensors, this optimizer needs {n}",
                    saved.len()
                )));
            }
            for (slot, t) in self.state.iter_mut().flatten().zip(saved) {
                let t = to_tch(t)?.to_device(device);
                if t.size() != slot.size() {
                    return Err(TorchError::Train(format!(
                        "a saved optimizer tensor is {:?}, its parameter {:?}",
                        t.size(),
                        slot.size()
                    )));
                }
                *slot = t;
            }
            self.steps = steps;
            Ok(())
        }
    }

    /// Trains the program's `trainable` constants (one flag per constant; each must be `f32`)
    /// with cross-entropy on its single output (logits `[N, classes]`) against the labels; with
    /// `qat`, through the plan's fake quantizations (quantization-aware training). See
    /// `docs/design-later-stages.md` (7, 7.1). `resume`: the state an earlier run reported after an
    /// epoch; training goes on from the next epoch. `hooks.on_epoch` sees each epoch's statistics
    /// and state as it ends. A non-finite loss stops training with [`TorchError::NonFinite`],
    /// naming the first value that went non-finite.
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        program: &Program,
        trainable: &[bool],
        qat: Option<&QatTraining>,
        config: &TrainConfig,
        train: LabeledData,
        test: Option<LabeledData>,
        resume: Option<&TrainState>,
        hooks: TrainHooks,
    ) -> Result<TrainResult, TorchError> {
        float_only(program)?;
        if program.inputs.len() != 1 || program.outputs.len() != 1 {
            return Err(TorchError::Train(format!(
                "training takes a model with one input and one output (logits); this one has {} inputs and {} outputs",
                program.inputs.len(),
                program.outputs.len()
            )));
        }
        if trainable.len() != program.constants.len() {
            return Err(TorchError::Train(format!(
                "{} trainable flags for {} constants",
                trainable.len(),
                program.constants.len()
            )));
        }
        let out_info = &program.values[program.outputs[0]];
        let classes = match out_info.shape.as_slice() {
            [_, Some(c)] if *c >= 1 => *c,
            _ => {
                return Err(TorchError::Train(format!(
                    "output `{}` is {}, not logits [N, classes]",
                    out_info.name,
                    out_info.shape_string()
                )))
            }
        };
        if config.batch_size == 0 {
            return Err(TorchError::Train("the batch size must be at least 1".into()));
        }
        let dev = tch_device(config.device)?;
        let available = check_data(program, &train, classes, "training")?;
        let n = config.max_samples.map_or(available, |m| m.min(available));
        if n == 0 {
            return Err(TorchError::Train("there are no training samples".into()));
        }
        if let Some(t) = config.threads {
            tch::set_num_threads(t.max(1) as i32);
        }
        tch::manual_seed(config.seed as i64);
        let x_train = data_tensor(&train, n, config.normalize)?;
        let y_train = tch::Tensor::from_slice(&train.labels[..n]);
        let test_xy = match &test {
            Some(t) => {
                let m = check_data(program, t, classes, "test")?;
                Some((data_tensor(t, m, config.normalize)?, tch::Tensor::from_slice(t.labels)))
            }
            None => None,
        };
        let initial = match resume {
            Some(r) => {
                if r.constants.len() != program.constants.len() {
                    return Err(TorchError::Train(format!(
                        "the saved state has {} constants, the program {}",
                        r.constants.len(),
                        program.constants.len()
                    )));
                }
                &r.constants
            }
            None => &program.constants,
        };
        let mut consts = Vec::with_capacity(program.constants.len());
        for (i, ((c, start), &train_it)) in program.constants.iter().zip(initial).zip(trainable).enumerate() {
            if start.shape != c.shape || start.dtype() != c.dtype() {
                return Err(TorchError::Train(format!(
                    "saved constant {i} is {} {:?}, the program's {} {:?}",
                    start.dtype(),
                    start.shape,
                    c.dtype(),
                    c.shape
                )));
            }
            let t = to_tch(start)?.to_device(dev);
            if train_it {
                if c.dtype() != crate::DType::F32 {
                    return Err(TorchError::Train(format!(
                        "constant {i} is {}, only f32 is trainable",
                        c.dtype()
                    )));
                }
                consts.push(t.f_set_requires_grad(true).map_err(err)?);
            } else {
                consts.push(t);
            }
        }
        let params: Vec<usize> = (0..consts.len()).filter(|&i| trainable[i]).collect();
        let mut opt = Optim::new(config.optimizer, config.weight_decay, params, &consts);
        let first_epoch = match resume {
            Some(r) => {
                opt.restore(&r.optimizer, r.steps, dev)?;
                r.epoch
            }
            None => 0,
        };
        if let Some(q) = qat {
            for site in &q.plan.sites {
                let bad = [
                    site.observer_enabled,
                    site.fake_quant_enabled,
                    site.min_val,
                    site.max_val,
                    site.scale,
                    site.zero_point,
                ]
                .into_iter()
                .find(|&c| c >= consts.len() || (trainable[c] != (site.learnable && c == site.scale)));
                if let Some(c) = bad {
                    return Err(TorchError::Train(format!(
                        "fake quantization `{}` names constant {c}, which is missing, or trainable where it must not be (only a learnable scale is)",
                        site.name
                    )));
                }
            }
        }
        let bs = config.batch_size;
        let steps = n.div_ceil(bs);
        let mut epochs = vec![];
        let mut total_steps = opt.steps;
        for epoch in first_epoch..config.epochs {
            let started = std::time::Instant::now();
            let lr = config.schedule.lr(config.lr, epoch, config.epochs);
            let bn_training = qat.is_none_or(|q| q.freeze_bn_after.is_none_or(|f| epoch < f));
            if let Some(q) = qat {
                if q.freeze_observers_after.is_some_and(|f| epoch >= f) {
                    for site in &q.plan.sites {
                        let _ = consts[site.observer_enabled].f_fill_(0).map_err(err)?;
                    }
                }
            }
            let pass = qat.map(|q| QatPass::new(&q.plan, false, dev));
            let order = epoch_order(n, config.seed, epoch);
            let (mut loss_sum, mut correct) = (0.0f64, 0i64);
            for step in 0..steps {
                let (first, end) = (step * bs, ((step + 1) * bs).min(n));
                let idx = tch::Tensor::from_slice(&order[first..end]);
                let xb = x_train.f_index_select(0, &idx).map_err(err)?.to_device(dev);
                let yb = y_train.f_index_select(0, &idx).map_err(err)?.to_device(dev);
                let out = forward(
                    program,
                    &consts,
                    vec![xb.shallow_clone()],
                    bn_training,
                    pass.as_ref(),
                    Check::Nothing,
                    None,
                )?;
                let loss = out[0]
                    .f_cross_entropy_loss::<tch::Tensor>(&yb, None, tch::Reduction::Mean, -100, 0.0)
                    .map_err(err)?;
                let value = f64::try_from(&loss).map_err(err)?;
                if !value.is_finite() {
                    // Run the batch again, checked, to name where it went non-finite.
                    let _guard = tch::no_grad_guard();
                    let quiet = qat.map(|q| QatPass::new(&q.plan, true, dev));
                    let value_name = match forward(program, &consts, vec![xb], false, quiet.as_ref(), Check::All, None)
                    {
                        Err(TorchError::NonFiniteValue { value }) => Some(value),
                        _ => None,
                    };
                    return Err(TorchError::NonFinite {
                        epoch: epoch + 1,
                        step: step + 1,
                        steps,
                        first,
                        end,
                        loss: value,
                        value: value_name,
                    });
                }
                opt.zero_grad(&mut consts);
                loss.f_backward().map_err(err)?;
                opt.step(&consts, lr)?;
                loss_sum += value * (end - first) as f64;
                correct += {
                    let _guard = tch::no_grad_guard();
                    correct_count(&out[0], &yb)?
                };
                total_steps += 1;
                (hooks.on_step)(&StepProgress {
                    epoch: epoch + 1,
                    epochs: config.epochs,
                    step: step + 1,
                    steps,
                    loss: loss_sum / end as f64,
                    accuracy: correct as f64 / end as f64,
                    samples_per_second: end as f64 / started.elapsed().as_secs_f64().max(1e-9),
                });
            }
            let seconds = started.elapsed().as_secs_f64();
            let eval_started = std::time::Instant::now();
            let test_accuracy = match &test_xy {
                Some((x, y)) => {
                    let quiet = qat.map(|q| QatPass::new(&q.plan, true, dev));
                    Some(evaluate(program, &consts, x, y, quiet.as_ref(), dev)?)
                }
                None => None,
            };
            let stats = EpochStats {
                epoch: epoch + 1,
                lr,
                loss: loss_sum / n as f64,
                train_accuracy: correct as f64 / n as f64,
                test_accuracy,
                seconds,
                eval_seconds: eval_started.elapsed().as_secs_f64(),
            };
            let state = TrainState {
                epoch: epoch + 1,
                steps: total_steps,
                constants: host_constants(&consts)?,
                optimizer: opt.state()?,
            };
            (hooks.on_epoch)(&stats, &state).map_err(TorchError::Train)?;
            epochs.push(stats);
        }
        Ok(TrainResult {
            constants: host_constants(&consts)?,
            epochs,
            steps: total_steps,
        })
    }

    fn host_constants(consts: &[tch::Tensor]) -> Result<Vec<Tensor>, TorchError> {
        consts.iter().map(|c| from_tch(&c.f_detach().map_err(err)?)).collect()
    }

    /// [`train`] without fake quantization, resumption or per-step progress.
    pub fn train_float(
        program: &Program,
        trainable: &[bool],
        config: &TrainConfig,
        train_data: LabeledData,
        test: Option<LabeledData>,
        on_epoch: &mut dyn FnMut(&EpochStats),
    ) -> Result<TrainResult, TorchError> {
        train(
            program,
            trainable,
            None,
            config,
            train_data,
            test,
            None,
            TrainHooks {
                on_step: &mut |_| {},
                on_epoch: &mut |s, _| {
                    on_epoch(s);
                    Ok(())
                },
            },
        )
    }
}

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;

    pub fn info() -> Result<BackendInfo, TorchError> {
        Err(TorchError::NotCompiled {
            what: "the libtorch backend",
        })
    }

    pub fn round_trip(_t: &Tensor) -> Result<Tensor, TorchError> {
        Err(TorchError::NotCompiled {
            what: "the libtorch backend",
        })
    }

    pub fn run_program(_p: &Program, _inputs: &[Tensor], _device: Device) -> Result<Vec<Tensor>, TorchError> {
        Err(TorchError::NotCompiled {
            what: "running a model through libtorch",
        })
    }

    /// Without libtorch there is no session.
    pub struct Session;

    impl Session {
        pub fn new(_program: Program, _device: Device) -> Result<Session, TorchError> {
            Err(TorchError::NotCompiled {
                what: "running a model through libtorch",
            })
        }

        pub fn run_watched(
            &self,
            _inputs: &[Tensor],
            _watch: &[ValueId],
            _on_value: &mut dyn FnMut(ValueId, &Tensor) -> std::ops::ControlFlow<()>,
        ) -> Result<Vec<Tensor>, TorchError> {
            Err(TorchError::NotCompiled {
                what: "running a model through libtorch",
            })
        }
    }

    /// Without libtorch there is no int8 session (none can be built).
    pub struct Int8Session(std::convert::Infallible);

    impl Int8Session {
        pub fn new(_program: Program, _device: Device) -> Result<Int8Session, TorchError> {
            Err(TorchError::NotCompiled {
                what: "running int8 steps through libtorch",
            })
        }

        pub fn program(&self) -> &Program {
            match self.0 {}
        }

        pub fn run(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>, TorchError> {
            Err(TorchError::NotCompiled {
                what: "running int8 steps through libtorch",
            })
        }
    }

    pub fn run_program_int8(_p: &Program, _inputs: &[Tensor], _device: Device) -> Result<Vec<Tensor>, TorchError> {
        Err(TorchError::NotCompiled {
            what: "running int8 steps through libtorch",
        })
    }

    pub fn run_program_qat(
        _p: &Program,
        _plan: &QatPlan,
        _inputs: &[Tensor],
        _device: Device,
    ) -> Result<Vec<Tensor>, TorchError> {
        Err(TorchError::NotCompiled {
            what: "running a model through libtorch",
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn train(
        _program: &Program,
        _trainable: &[bool],
        _qat: Option<&QatTraining>,
        _config: &TrainConfig,
        _train: LabeledData,
        _test: Option<LabeledData>,
        _resume: Option<&TrainState>,
        _hooks: TrainHooks,
    ) -> Result<TrainResult, TorchError> {
        Err(TorchError::NotCompiled {
            what: "training through libtorch",
        })
    }

    pub fn train_float(
        _program: &Program,
        _trainable: &[bool],
        _config: &TrainConfig,
        _train: LabeledData,
        _test: Option<LabeledData>,
        _on_epoch: &mut dyn FnMut(&EpochStats),
    ) -> Result<TrainResult, TorchError> {
        Err(TorchError::NotCompiled {
            what: "training through libtorch",
        })
    }
}

pub use imp::{
    info, round_trip, run_program, run_program_int8, run_program_qat, train, train_float, Int8Session, Session,
};

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::*;

    #[test]
    fn libtorch_loads_and_round_trips_tensors() {
        let info = info().expect("libtorch");
        assert_eq!(info.version, "2.11.0");
        let t = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.5, -0.25, 1e-3]);
        assert_eq!(round_trip(&t).unwrap(), t);
        let q = Tensor {
            shape: vec![3],
            data: TensorData::I8(vec![-128, 0, 127]),
        };
        assert_eq!(round_trip(&q).unwrap(), q);
    }

    #[test]
    fn int8_steps_are_refused_by_name() {
        use crate::program::{Layout, QuantOp, Step, ValueInfo};
        use crate::quant::{QParams, QRange};
        let q = QParams::new(0.1, 128, QRange::U8).unwrap();
        let p = Program {
            values: vec![
                ValueInfo::float("x", vec![None, Some(4)]),
                ValueInfo::quantized("x.q", vec![None, Some(4)], crate::DType::U8, Layout::Torch, q),
                ValueInfo::float("y", vec![None, Some(4)]),
            ],
            inputs: vec![0],
            outputs: vec![2],
            steps: vec![
                Step {
                    op: QuantOp::Quantize.into(),
                    inputs: vec![0],
                    output: 1,
                },
                Step {
                    op: QuantOp::Dequantize.into(),
                    inputs: vec![1],
                    output: 2,
                },
            ],
            constants: vec![],
        };
        let x = Tensor::f32(vec![1, 4], vec![0.0, 0.1, -0.2, 1.0]);
        let e = run_program(&p, std::slice::from_ref(&x), Device::Cpu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "int8 step `x.q` (quantize) runs on the CPU runtime only; the libtorch backend runs float steps"
        );
        // The CPU runtime runs it.
        assert_eq!(
            crate::exec::run(&p, &[x]).unwrap()[0].as_f32().unwrap(),
            &[0.0, 0.1, -0.2, 1.0]
        );
    }
}
