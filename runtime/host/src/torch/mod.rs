//! The libtorch backend (tch): inference sessions, the libtorch int8 path, training and
//! quantization-aware training. tch types never leave this module. Without the `torch` cargo
//! feature every entry point returns `TorchError::NotCompiled` (`stub.rs`), so callers need no
//! `cfg`.
//!
//! | file | its one job |
//! |---|---|
//! | `config.rs` | what a training run is told and reports (plain data) |
//! | `tensors.rs` | loading libtorch, host ↔ tch tensors, devices |
//! | `forward.rs` | a program's float steps on tch tensors |
//! | `session.rs` | inference: `run_program`, `Session` |
//! | `int8.rs` | the lowered int8 program through `_int_mm`, bit-exact with the CPU executor |
//! | `qat.rs` | fake quantization and batch norm folded on the fly |
//! | `optim.rs` | SGD and Adam with checkpointable state |
//! | `train.rs` | the training loop (float and QAT), evaluation |
//! | `stub.rs` | the entry points of a build without libtorch |

mod config;

pub use config::{
    epoch_order, EpochStats, LabeledData, LrSchedule, Optimizer, QatTraining, StepProgress, TrainConfig, TrainHooks,
    TrainResult, TrainState,
};
use qc_runtime::program::{Device, Program, QatPlan};
#[cfg(feature = "torch")]
use qc_runtime::program::{FakeQuantAt, FakeQuantSite, FloatOp, StepOp, ValueId};
use qc_runtime::tensor::Tensor;
#[cfg(feature = "torch")]
use qc_runtime::tensor::TensorData;
#[cfg(feature = "torch")]
use std::collections::HashMap;

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

/// What libtorch this build runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// libtorch's version, as the build checked it (`2.11.0`).
    pub version: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: usize,
}

/// True when this build has the libtorch backend.
pub const COMPILED: bool = cfg!(feature = "torch");

/// The lowered int8 graph on libtorch (`_int_mm`), bit-exact with the CPU executor.
#[cfg(feature = "torch")]
mod int8;

#[cfg(feature = "torch")]
mod forward;
#[cfg(feature = "torch")]
mod optim;
#[cfg(feature = "torch")]
mod qat;
#[cfg(feature = "torch")]
mod session;
#[cfg(feature = "torch")]
mod tensors;
#[cfg(feature = "torch")]
mod train;

#[cfg(feature = "torch")]
use {forward::*, optim::*, qat::*, session::run_once, tensors::*};

#[cfg(feature = "torch")]
pub use {
    int8::{run_program_int8, Int8Session},
    qat::run_program_qat,
    session::{run_program, Session},
    tensors::{info, round_trip},
    train::{train, train_float},
};

#[cfg(not(feature = "torch"))]
mod stub;
#[cfg(not(feature = "torch"))]
pub use stub::{
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
        use qc_runtime::program::{Layout, QuantOp, Step, ValueInfo};
        use qc_runtime::quant::{QParams, QRange};
        let q = QParams::new(0.1, 128, QRange::U8).unwrap();
        let p = Program {
            values: vec![
                ValueInfo::float("x", vec![None, Some(4)]),
                ValueInfo::quantized("x.q", vec![None, Some(4)], qc_runtime::DType::U8, Layout::Torch, q),
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
            qc_runtime::exec::run(&p, &[x]).unwrap()[0].as_f32().unwrap(),
            &[0.0, 0.1, -0.2, 1.0]
        );
    }
}
