//! Inference through libtorch: `run_program` and the `Session` that keeps a program's constants on a device (calibration runs batches through it with a value hook).

use super::*;

/// Executes a float program through libtorch on `device`, inference mode.
pub fn run_program(program: &Program, inputs: &[Tensor], device: Device) -> Result<Vec<Tensor>, TorchError> {
    run_once(program, None, inputs, device)
}

/// One inference pass, fake-quantized by `plan` (observers still) when given.
pub(super) fn run_once(
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

/// A float program with its constants on a device, for running many batches (calibration;
/// `qc eval` watches its values, fake-quantized by a QAT plan with [`Session::with_qat`]).
pub struct Session {
    program: Program,
    consts: Vec<tch::Tensor>,
    device: tch::Device,
    qat: Option<QatPlan>,
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
            qat: None,
        })
    }

    /// A session of a QAT program that runs as its evaluation does: fake-quantized by `plan`
    /// with the scales its constants hold (observers still), batch norm with the running
    /// statistics ([`crate::torch::run_program_qat`] for many batches, with a value hook).
    pub fn with_qat(program: Program, plan: QatPlan, device: Device) -> Result<Session, TorchError> {
        let mut session = Session::new(program, device)?;
        session.qat = Some(plan);
        Ok(session)
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
        let pass = self.qat.as_ref().map(|p| QatPass::new(p, true, self.device));
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
            pass.as_ref(),
            Check::Steps,
            Some(&mut hook),
        )?
        .iter()
        .map(from_tch)
        .collect()
    }
}
