//! Without the `torch` feature: every libtorch entry point returns `TorchError::NotCompiled`, so callers need no `cfg`.

use super::*;
use qc_runtime::program::ValueId;

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

    pub fn with_qat(
        _program: Program,
        _plan: qc_runtime::program::QatPlan,
        _device: Device,
    ) -> Result<Session, TorchError> {
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
