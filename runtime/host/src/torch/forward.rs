//! The forward pass of a program's float steps on tch tensors (inference or training mode, checked for non-finite values, with a value hook).

use super::*;
use qc_runtime::quant::Curve;

/// The program's float steps on tch tensors: inference (`training` false: batch norm with the
/// running statistics) or training (batch statistics; the running statistics, constants
/// without gradient, updated in place with momentum 0.1 and the unbiased variance, as
/// `nn.BatchNorm` in `train()` mode). With `qat`, the plan's fake quantizations run too.
/// `check` says which values are checked: the first that holds a NaN or an infinity stops
/// the pass ([`TorchError::NonFiniteValue`]); `hook` sees each value before its check. The caller has checked the program (`float_only`).
pub(super) fn forward(
    program: &Program,
    consts: &[tch::Tensor],
    inputs: Vec<tch::Tensor>,
    training: bool,
    qat: Option<&QatPass>,
    check: Check,
    mut hook: Option<&mut Hook>,
) -> Result<Vec<tch::Tensor>, TorchError> {
    let mut values: Vec<Option<tch::Tensor>> = (0..program.values.len()).map(|_| None).collect();
    let last_use = program.last_uses();
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
        // A value is dropped after its last use (and one nothing uses, at once), so that a pass
        // holds only the values still to be read: calibration of a deep model stays small.
        if last_use[step.output].is_some() || program.outputs.contains(&step.output) {
            values[step.output] = Some(out);
        }
        for &i in &step.inputs {
            if last_use[i] == Some(index) {
                values[i] = None;
            }
        }
    }
    Ok(program
        .outputs
        .iter()
        .map(|&id| values[id].as_ref().expect("outputs are computed").shallow_clone())
        .collect())
}

/// Which values a forward pass checks for NaN and infinity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Nothing,
    /// What the steps compute (the reference interpreter's check).
    Steps,
    /// The inputs too.
    All,
}

/// Sees every value of a forward pass (inputs, then each step's output) before it is
/// checked; an error stops the pass.
pub(super) type Hook<'a> = dyn FnMut(ValueId, &tch::Tensor) -> Result<(), TorchError> + 'a;

pub(super) fn all_finite(t: &tch::Tensor) -> Result<bool, TorchError> {
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
        FloatOp::Mul => x.f_mul(args[1]),
        FloatOp::Curve(Curve::HardSwish) => x.f_hardswish(),
        FloatOp::Curve(Curve::HardSigmoid) => x.f_hardsigmoid(),
        FloatOp::Curve(Curve::Sigmoid) => x.f_sigmoid(),
        FloatOp::Concat { dim } => tch::Tensor::f_cat(args, *dim as i64),
    }
    .map_err(err)
}
