//! Quantization-aware training's fake quantization on tch tensors: the sites of a `QatPlan`,
//! PyTorch's fused and learnable fake-quantize, and batch norm folded on the fly through
//! `crate::fold::on_the_fly`.

use super::*;
use crate::fold::on_the_fly::{self, ChannelArith};

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
pub(super) struct QatPass<'a> {
    pub(super) sites: &'a [FakeQuantSite],
    /// The site fake-quantizing each value, after the step that computes it.
    pub(super) on_value: HashMap<ValueId, usize>,
    /// The site fake-quantizing each step's weight.
    pub(super) on_weight: HashMap<usize, usize>,
    /// `Some(zeros)`: the observers stay still in this pass (evaluation), whatever their
    /// `observer_enabled` says.
    pub(super) observers_off: Option<tch::Tensor>,
}

impl<'a> QatPass<'a> {
    pub(super) fn new(plan: &'a QatPlan, observers_off: bool, device: tch::Device) -> Self {
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
    pub(super) fn fake_quant(
        &self,
        site: usize,
        x: &tch::Tensor,
        consts: &[tch::Tensor],
    ) -> Result<tch::Tensor, TorchError> {
        let s = &self.sites[site];
        let observer_on = self.observers_off.as_ref().unwrap_or(&consts[s.observer_enabled]);
        if s.learnable || s.power_of_two {
            return self.learnable_fake_quant(s, x, consts, observer_on);
        }
        fused_fake_quant(s, x, consts, observer_on, &consts[s.fake_quant_enabled])
    }
}

/// libtorch's `fused_moving_avg_obs_fake_quant` on a site's state (updated in place).
pub(super) fn fused_fake_quant(
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
    /// kept at least `f32::EPSILON`, fake-quantizes with a gradient of its own. A power-of-two
    /// site (learnable or not; TI's PACT2-style QAT, `docs/design-later-stages.md` 7.1)
    /// quantizes with `pow2_scale` of its continuous scale, the gradient passing straight
    /// through to it.
    pub(super) fn learnable_fake_quant(
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
        let scale = consts[s.scale].shallow_clone();
        // A power-of-two site quantizes with `pow2_scale(scale)`, straight-through to the
        // continuous scale (`scale - scale.detach()` is exactly 0).
        let scale = if s.power_of_two {
            let fixed = scale.f_detach().map_err(err)?;
            pow2_scales(&fixed)?
                .f_add(&scale.f_sub(&fixed).map_err(err)?)
                .map_err(err)?
        } else {
            scale
        };
        // PyTorch's `use_grad_scaling`: over the whole tensor, per channel too.
        let grad_factor = 1.0 / ((x.numel().max(1) as f64) * s.quant_max as f64).sqrt();
        if s.per_channel {
            x.f_internal_fake_quantize_learnable_per_channel_affine(
                &scale,
                &zero_point,
                0,
                s.quant_min,
                s.quant_max,
                grad_factor,
            )
        } else {
            x.f_internal_fake_quantize_learnable_per_tensor_affine(
                &scale,
                &zero_point,
                s.quant_min,
                s.quant_max,
                grad_factor,
            )
        }
        .map_err(err)
    }
}

/// `pow2_scale` (`qc_runtime::quant`) of every element, on the f32 bits as the runtime computes
/// it: the smallest power of two at least the scale, exact.
pub(super) fn pow2_scales(scale: &tch::Tensor) -> Result<tch::Tensor, TorchError> {
    let bits = scale
        .f_to_kind(tch::Kind::Float)
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_view_dtype(tch::Kind::Int))
        .map_err(err)?;
    let exponent_up = bits
        .f_bitwise_and(0x7f80_0000i64)
        .and_then(|t| t.f_add_scalar(0x0080_0000i64))
        .map_err(err)?;
    let is_pow2 = bits
        .f_bitwise_and(0x007f_ffffi64)
        .and_then(|t| t.f_eq(0))
        .map_err(err)?;
    bits.f_where_self(&is_pow2, &exponent_up)
        .and_then(|t| t.f_view_dtype(tch::Kind::Float))
        .map_err(err)
}

/// The weight a weighted step computes with, and the per-channel factor its output is
/// divided by: the constant itself outside QAT; in QAT its fake quantization, of `w · f`
/// with `f = γ / sqrt(running_var + eps)` when the step's batch norm is folded on the fly
/// (PyTorch's `_ConvBnNd._forward_approximate`).
pub(super) fn step_weight(
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
            let factor = on_the_fly::scale_factor(&consts[gamma], &consts[var], eps as f64)?;
            let scaled = on_the_fly::scale_weight(w, &factor)?;
            Ok((pass.fake_quant(site, &scaled, consts)?, Some(factor)))
        }
    }
}

/// Undoes the folding factor on a weighted step's output (`[N, C, ...]`) and adds the bias.
pub(super) fn unfold(
    out: tch::Tensor,
    factor: &tch::Tensor,
    bias: Option<&tch::Tensor>,
) -> Result<tch::Tensor, TorchError> {
    on_the_fly::correct_output(&out, factor, bias)
}

/// libtorch's tensors do the on-the-fly fold's arithmetic, with autograd: QAT training runs the
/// formulas of [`crate::fold::on_the_fly`], the ones the compiler checks its folding against.
impl ChannelArith for tch::Tensor {
    type Error = TorchError;

    fn add_scalar(&self, value: f64) -> Result<tch::Tensor, TorchError> {
        self.f_add_scalar(value).map_err(err)
    }

    fn sqrt(&self) -> Result<tch::Tensor, TorchError> {
        self.f_sqrt().map_err(err)
    }

    fn div(&self, other: &tch::Tensor) -> Result<tch::Tensor, TorchError> {
        self.f_div(other).map_err(err)
    }

    fn mul_channels(&self, per_channel: &tch::Tensor, axis: usize) -> Result<tch::Tensor, TorchError> {
        self.f_mul(&channel_view(per_channel, self.dim(), axis)?).map_err(err)
    }

    fn div_channels(&self, per_channel: &tch::Tensor, axis: usize) -> Result<tch::Tensor, TorchError> {
        self.f_div(&channel_view(per_channel, self.dim(), axis)?).map_err(err)
    }

    fn add_channels(&self, per_channel: &tch::Tensor, axis: usize) -> Result<tch::Tensor, TorchError> {
        self.f_add(&channel_view(per_channel, self.dim(), axis)?).map_err(err)
    }
}

/// A per-channel vector shaped to broadcast along `axis` of a rank-`rank` tensor.
fn channel_view(per_channel: &tch::Tensor, rank: usize, axis: usize) -> Result<tch::Tensor, TorchError> {
    let mut shape = vec![1i64; rank.max(axis + 1)];
    shape[axis] = -1;
    per_channel.f_reshape(&shape).map_err(err)
}

#[cfg(test)]
mod pow2_tests;
