//! The QAT plan: a side table of a program's fake quantizations (sites and the constants that
//! hold their state). Plain data: the compiler builds it, the host crate's libtorch training runs it.

use super::{ConstId, ValueId};

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
    /// The scale it quantizes with is `pow2_scale(scale)` (TI's PACT2-style QAT,
    /// `docs/design-later-stages.md` 7.1); the `scale` constant stays continuous.
    pub power_of_two: bool,
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

impl FakeQuantSite {
    /// The scale this site quantizes with, given its `scale` constant's value `s`.
    pub fn quantizing_scale(&self, s: f32) -> f32 {
        if self.power_of_two {
            crate::quant::pow2_scale(s)
        } else {
            s
        }
    }
}

/// The fake quantizations of a QAT program, a side table of the program
/// (`compiler::lower::lower_qat` builds it; the host crate's QAT training runs it).
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
