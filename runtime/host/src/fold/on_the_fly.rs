//! Batch norm folded on the fly, as QAT trains it (PyTorch's `_ConvBnNd._forward_approximate` /
//! `LinearBn1d.forward`): the formulas written once, over any per-channel tensor arithmetic.
//! Host tensors implement it here (the compiler's checks and tests); libtorch's tensors implement
//! it in `torch/qat.rs`, so training runs these same formulas with autograd.

use qc_runtime::Tensor;

use super::{FoldError, FoldParam};

/// The per-channel arithmetic the on-the-fly fold needs. `axis` is the channel axis: 0 of a
/// weight `[C_out, ...]`, 1 of an activation `[N, C, ...]`; `per_channel` has one value per
/// channel of that axis.
pub trait ChannelArith: Sized {
    type Error;
    fn add_scalar(&self, value: f64) -> Result<Self, Self::Error>;
    fn sqrt(&self) -> Result<Self, Self::Error>;
    /// Elementwise `self / other` (same shape).
    fn div(&self, other: &Self) -> Result<Self, Self::Error>;
    fn mul_channels(&self, per_channel: &Self, axis: usize) -> Result<Self, Self::Error>;
    fn div_channels(&self, per_channel: &Self, axis: usize) -> Result<Self, Self::Error>;
    fn add_channels(&self, per_channel: &Self, axis: usize) -> Result<Self, Self::Error>;
}

/// `scale_factor = γ / √(running_var + ε)`, one per output channel.
pub fn scale_factor<T: ChannelArith>(gamma: &T, running_var: &T, eps: f64) -> Result<T, T::Error> {
    gamma.div(&running_var.add_scalar(eps)?.sqrt()?)
}

/// `W · scale_factor` along the weight's output-channel axis 0: what QAT fake-quantizes.
pub fn scale_weight<T: ChannelArith>(weight: &T, scale_factor: &T) -> Result<T, T::Error> {
    weight.mul_channels(scale_factor, 0)
}

/// `y / scale_factor (+ b)` along the activation's channel axis 1: the layer's output as if its
/// weight had not been scaled, the input of the batch norm.
pub fn correct_output<T: ChannelArith>(y: &T, scale_factor: &T, bias: Option<&T>) -> Result<T, T::Error> {
    let unscaled = y.div_channels(scale_factor, 1)?;
    match bias {
        Some(b) => unscaled.add_channels(b, 1),
        None => Ok(unscaled),
    }
}

/// Host tensors (`f32`): every operation rounds to `f32` once, as libtorch's `f32` kernels do.
impl ChannelArith for Tensor {
    type Error = FoldError;

    fn add_scalar(&self, value: f64) -> Result<Tensor, FoldError> {
        map(self, |x| x + value as f32)
    }

    fn sqrt(&self) -> Result<Tensor, FoldError> {
        map(self, f32::sqrt)
    }

    fn div(&self, other: &Tensor) -> Result<Tensor, FoldError> {
        let (a, b) = (values(self)?, values(other)?);
        if a.len() != b.len() {
            return Err(FoldError::ChannelMismatch {
                param: FoldParam::ScaleFactor,
                expected: a.len(),
                got: b.len(),
            });
        }
        Ok(Tensor::f32(
            self.shape.clone(),
            a.iter().zip(b).map(|(x, y)| x / y).collect(),
        ))
    }

    fn mul_channels(&self, per_channel: &Tensor, axis: usize) -> Result<Tensor, FoldError> {
        along(self, per_channel, axis, |x, c| x * c)
    }

    fn div_channels(&self, per_channel: &Tensor, axis: usize) -> Result<Tensor, FoldError> {
        along(self, per_channel, axis, |x, c| x / c)
    }

    fn add_channels(&self, per_channel: &Tensor, axis: usize) -> Result<Tensor, FoldError> {
        along(self, per_channel, axis, |x, c| x + c)
    }
}

fn values(t: &Tensor) -> Result<&[f32], FoldError> {
    t.as_f32().ok_or(FoldError::NotF32 {
        param: FoldParam::ScaleFactor,
        dtype: t.dtype(),
    })
}

fn map(t: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor, FoldError> {
    Ok(Tensor::f32(t.shape.clone(), values(t)?.iter().map(|&x| f(x)).collect()))
}

/// `f(x, per_channel[c])` for every element `x` of channel `c` along `axis`.
fn along(t: &Tensor, per_channel: &Tensor, axis: usize, f: impl Fn(f32, f32) -> f32) -> Result<Tensor, FoldError> {
    let (x, c) = (values(t)?, values(per_channel)?);
    let channels = t.shape.get(axis).copied().unwrap_or(0);
    if c.len() != channels {
        return Err(FoldError::ChannelMismatch {
            param: FoldParam::ScaleFactor,
            expected: channels,
            got: c.len(),
        });
    }
    let inner: usize = t.shape.iter().skip(axis + 1).product();
    let out = x
        .iter()
        .enumerate()
        .map(|(i, &v)| f(v, c[(i / inner.max(1)) % channels.max(1)]))
        .collect();
    Ok(Tensor::f32(t.shape.clone(), out))
}
