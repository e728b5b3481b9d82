//! Batch-norm folding math: pure functions that fold an inference-mode `batch_norm` into the
//! convolution or linear layer in front of it, and the on-the-fly form that QAT uses (PyTorch's
//! `_ConvBnNd._forward_approximate` / `LinearBn1d.forward`). Each function states its identity.
//!
//! Numerics (docs/numerics.md, "compile-time math is f64"): every folded value is computed in
//! `f64` from the `f32` inputs and rounded to `f32` **once**. Folding is a float rewrite: the folded
//! layer matches conv→bn within [`qc_runtime::quant::float_rewrite_close`]
//! (`FLOAT_REWRITE_RTOL = 1e-4`), not bit for bit.
//!
//! Layouts are PyTorch's: conv weight `[C_out, C_in/groups, k...]`, linear weight `[out, in]`; the
//! output channel is axis 0 of the weight and axis 1 of the activation `[N, C, ...]`. Groups need no
//! special case (each output channel owns one weight row whatever the grouping). Not for
//! `ConvTranspose` (weight `[C_in, C_out/groups, k...]`, PyTorch's `fuse_conv_bn_weights(transpose=True)`).
//!
//! Batch norm in inference form, per channel `c`:
//! `bn(y)[c] = (y[c] − μ[c]) · γ[c] / √(σ²[c] + ε) + β[c]` with `γ = bn.weight`, `β = bn.bias`,
//! `μ = bn.running_mean`, `σ² = bn.running_var`.
//!
//! This is qc's one batch-norm folding module. The compiler's `fuse` (PTQ) folds a batch-norm
//! node through `qc_compiler::fold::fold_into` and `convert` folds a QAT layer's kept batch norm,
//! both through [`fold_stats`] and so [`fold_bn_into_conv`] / [`fold_bn_into_linear`]; QAT
//! training folds on the fly through the formulas of [`on_the_fly`], which libtorch's tensors
//! implement (`torch/qat.rs`). The on-the-fly form is run-time math: `f32`, as libtorch computes it.

pub mod on_the_fly;

use qc_runtime::{DType, Tensor};

/// Which parameter a [`FoldError`] is about; `Display` gives the PyTorch-style name relative to
/// the layer (`weight`, `bn.running_var`, …) so the compiler can prefix the layer's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FoldParam {
    /// The conv or linear weight.
    Weight,
    /// The conv or linear bias.
    Bias,
    /// γ, `bn.weight`.
    BnWeight,
    /// β, `bn.bias`.
    BnBias,
    /// μ, `bn.running_mean`.
    RunningMean,
    /// σ², `bn.running_var`.
    RunningVar,
    /// ε, `bn.eps`.
    Eps,
    /// The per-channel QAT `scale_factor` given to [`qat_scale_weight`] or [`qat_output_correction`].
    ScaleFactor,
    /// The activation given to [`qat_output_correction`].
    ConvOutput,
}

impl FoldParam {
    /// The parameter's name as printed in errors.
    pub fn name(self) -> &'static str {
        match self {
            FoldParam::Weight => "weight",
            FoldParam::Bias => "bias",
            FoldParam::BnWeight => "bn.weight",
            FoldParam::BnBias => "bn.bias",
            FoldParam::RunningMean => "bn.running_mean",
            FoldParam::RunningVar => "bn.running_var",
            FoldParam::Eps => "bn.eps",
            FoldParam::ScaleFactor => "scale_factor",
            FoldParam::ConvOutput => "conv output",
        }
    }
}

impl std::fmt::Display for FoldParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a fold was refused. Nothing is folded partially: every check runs before any output exists.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FoldError {
    /// A tensor is not `f32`.
    #[error("`{param}` must be an f32 tensor, found {dtype}")]
    NotF32 { param: FoldParam, dtype: DType },
    /// A tensor has the wrong rank or shape.
    #[error("`{param}` has shape {shape:?}, expected {expected}")]
    BadShape {
        param: FoldParam,
        shape: Vec<usize>,
        expected: &'static str,
    },
    /// A tensor's element count does not match its shape.
    #[error("`{param}` holds {len} elements but its shape {shape:?} needs {needed}")]
    DataLength {
        param: FoldParam,
        shape: Vec<usize>,
        len: usize,
        needed: usize,
    },
    /// A per-channel vector does not have one entry per output channel.
    #[error("`{param}` has {got} entries, expected {expected} (one per output channel)")]
    ChannelMismatch {
        param: FoldParam,
        expected: usize,
        got: usize,
    },
    /// An input value is NaN or infinite (`index` is the first such element).
    #[error("`{param}`[{index}] is {value}, not a finite number")]
    NonFinite { param: FoldParam, index: usize, value: f64 },
    /// `running_var + eps <= 0`: the square root would be zero or imaginary.
    #[error("bn.running_var[{index}] + bn.eps = {var} + {eps} is not positive")]
    NonPositiveVariance { index: usize, var: f32, eps: f64 },
    /// A folded value is too large for `f32`.
    #[error("folded `{param}`[{index}] = {value} does not fit in f32")]
    Overflow { param: FoldParam, index: usize, value: f64 },
    /// `weight.len()` is not a whole number of rows, one per output channel (slice form).
    #[error("`weight` holds {len} elements, not a whole number of rows for {channels} output channels")]
    NotRows { len: usize, channels: usize },
    /// `γ / √(σ² + ε)` is 0 (γ = 0, or underflow): the QAT output correction divides by it.
    #[error(
        "scale_factor[{index}] = bn.weight / sqrt(bn.running_var + bn.eps) is 0 (bn.weight[{index}] is 0 \
         or tiny); the QAT output correction divides by it"
    )]
    ZeroScaleFactor { index: usize },
}

/// An inference-mode batch norm over `C` channels: one entry per channel in each slice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm<'a> {
    /// γ (`bn.weight`); `None` for `affine=False` (γ = 1).
    pub weight: Option<&'a [f32]>,
    /// β (`bn.bias`); `None` for `affine=False` (β = 0).
    pub bias: Option<&'a [f32]>,
    /// μ (`bn.running_mean`).
    pub running_mean: &'a [f32],
    /// σ² (`bn.running_var`).
    pub running_var: &'a [f32],
    /// ε (`bn.eps`); PyTorch's default is `1e-5`.
    pub eps: f64,
}

impl<'a> BatchNorm<'a> {
    /// Borrows the parameters of checkpoint tensors: each must be `f32` of shape `[C]`.
    pub fn from_tensors(
        weight: Option<&'a Tensor>,
        bias: Option<&'a Tensor>,
        running_mean: &'a Tensor,
        running_var: &'a Tensor,
        eps: f64,
    ) -> Result<BatchNorm<'a>, FoldError> {
        let vector = |t: &'a Tensor, param| -> Result<&'a [f32], FoldError> {
            let data = f32_data(t, param)?;
            if t.shape.len() != 1 {
                return Err(FoldError::BadShape {
                    param,
                    shape: t.shape.clone(),
                    expected: "[C], one value per channel",
                });
            }
            Ok(data)
        };
        Ok(BatchNorm {
            weight: weight.map(|t| vector(t, FoldParam::BnWeight)).transpose()?,
            bias: bias.map(|t| vector(t, FoldParam::BnBias)).transpose()?,
            running_mean: vector(running_mean, FoldParam::RunningMean)?,
            running_var: vector(running_var, FoldParam::RunningVar)?,
            eps,
        })
    }

    /// Number of channels (the length of `running_mean`).
    pub fn channels(&self) -> usize {
        self.running_mean.len()
    }

    /// Checks every parameter and returns the per-channel `γ / √(σ² + ε)` in `f64`.
    ///
    /// Errors: vectors of different lengths ([`FoldError::ChannelMismatch`]), a non-finite value or
    /// `eps` ([`FoldError::NonFinite`]), `running_var + eps <= 0` ([`FoldError::NonPositiveVariance`]).
    pub fn scale_f64(&self) -> Result<Vec<f64>, FoldError> {
        let c = self.channels();
        let vectors = [
            (FoldParam::RunningMean, Some(self.running_mean)),
            (FoldParam::RunningVar, Some(self.running_var)),
            (FoldParam::BnWeight, self.weight),
            (FoldParam::BnBias, self.bias),
        ];
        for (param, v) in vectors {
            if let Some(v) = v {
                if v.len() != c {
                    return Err(FoldError::ChannelMismatch {
                        param,
                        expected: c,
                        got: v.len(),
                    });
                }
            }
        }
        if !self.eps.is_finite() {
            return Err(FoldError::NonFinite {
                param: FoldParam::Eps,
                index: 0,
                value: self.eps,
            });
        }
        for (param, v) in vectors {
            check_finite(param, v.unwrap_or(&[]))?;
        }
        (0..c)
            .map(|i| {
                let var = self.running_var[i];
                let denom = var as f64 + self.eps;
                if denom <= 0.0 {
                    return Err(FoldError::NonPositiveVariance {
                        index: i,
                        var,
                        eps: self.eps,
                    });
                }
                Ok(self.gamma(i) / denom.sqrt())
            })
            .collect()
    }

    fn gamma(&self, c: usize) -> f64 {
        self.weight.map_or(1.0, |w| w[c] as f64)
    }

    fn beta(&self, c: usize) -> f64 {
        self.bias.map_or(0.0, |b| b[c] as f64)
    }
}

/// A folded layer: the new weight (same shape as the original) and the new bias `[C_out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// `W · γ/√(σ²+ε)`, scaled per output channel.
    pub weight: Tensor,
    /// `(b − μ) · γ/√(σ²+ε) + β`; always present, even when the layer had no bias.
    pub bias: Tensor,
}

/// `conv(x, W, b)` then `bn(γ, β, μ, σ², ε)`  ==  `conv(x, W·γ/√(σ²+ε), (b−μ)·γ/√(σ²+ε) + β)`,
/// scaled per output channel (axis 0 of `W`); a missing `b` is 0.
///
/// Any spatial rank (conv1d/2d/3d…): `weight` is `[C_out, C_in/groups, k...]`, rank ≥ 3. Computed in
/// `f64`, each output rounded to `f32` once. Errors name the offending parameter.
pub fn fold_bn_into_conv(weight: &Tensor, bias: Option<&Tensor>, bn: &BatchNorm<'_>) -> Result<Folded, FoldError> {
    if weight.shape.len() < 3 {
        return Err(FoldError::BadShape {
            param: FoldParam::Weight,
            shape: weight.shape.clone(),
            expected: "a conv weight [C_out, C_in/groups, k...] of rank 3 or more",
        });
    }
    fold_tensor(weight, bias, bn)
}

/// `linear(x, W, b)` then `batch_norm1d(γ, β, μ, σ², ε)` over the `out` features  ==
/// `linear(x, W·γ/√(σ²+ε), (b−μ)·γ/√(σ²+ε) + β)`, each row `W[o, :]` scaled by its feature's factor.
///
/// `weight` is `[out, in]`; the linear output is `[N, out]`, so batch_norm1d's channel is the output
/// feature. Computed in `f64`, each output rounded to `f32` once.
pub fn fold_bn_into_linear(weight: &Tensor, bias: Option<&Tensor>, bn: &BatchNorm<'_>) -> Result<Folded, FoldError> {
    if weight.shape.len() != 2 {
        return Err(FoldError::BadShape {
            param: FoldParam::Weight,
            shape: weight.shape.clone(),
            expected: "a linear weight [out, in]",
        });
    }
    fold_tensor(weight, bias, bn)
}

/// The slice form of [`fold_bn_into_conv`] and [`fold_bn_into_linear`]:
/// `W'[c, ...] = W[c, ...]·γ[c]/√(σ²[c]+ε)`, `b'[c] = (b[c]−μ[c])·γ[c]/√(σ²[c]+ε) + β[c]`.
///
/// `weight` is row-major with the output channel as its leading axis: `weight.len()` must be a
/// multiple of `bn.channels()`. Returns `(W', b')`, computed in `f64` and rounded to `f32` once.
pub fn fold_bn(weight: &[f32], bias: Option<&[f32]>, bn: &BatchNorm<'_>) -> Result<(Vec<f32>, Vec<f32>), FoldError> {
    let c = bn.channels();
    let scale = bn.scale_f64()?;
    let row = weight.len().checked_div(c).unwrap_or(0);
    if row * c != weight.len() {
        return Err(FoldError::NotRows {
            len: weight.len(),
            channels: c,
        });
    }
    if let Some(b) = bias {
        if b.len() != c {
            return Err(FoldError::ChannelMismatch {
                param: FoldParam::Bias,
                expected: c,
                got: b.len(),
            });
        }
    }
    check_finite(FoldParam::Weight, weight)?;
    check_finite(FoldParam::Bias, bias.unwrap_or(&[]))?;

    let w = weight
        .iter()
        .enumerate()
        .map(|(i, &v)| to_f32(v as f64 * scale[i / row.max(1)], FoldParam::Weight, i))
        .collect::<Result<Vec<f32>, _>>()?;
    let b = (0..c)
        .map(|i| {
            let b = bias.map_or(0.0, |b| b[i] as f64);
            let folded = (b - bn.running_mean[i] as f64) * scale[i] + bn.beta(i);
            to_f32(folded, FoldParam::Bias, i)
        })
        .collect::<Result<Vec<f32>, _>>()?;
    Ok((w, b))
}

/// The per-channel `scale_factor = γ / √(running_var + ε)` of PyTorch's QAT conv-bn and linear-bn
/// modules.
///
/// PyTorch's `_ConvBnNd._forward_approximate` (the default path; `LinearBn1d.forward` is the same
/// with `F.linear`), for weight `W`, optional bias `b`, and batch norm `bn`:
/// ```text
/// running_std   = sqrt(bn.running_var + bn.eps)
/// scale_factor  = bn.weight / running_std                       # [C_out]
/// scaled_weight = weight_fake_quant(W * scale_factor[:, None, ...])   # reshaped along axis 0
/// conv          = conv(x, scaled_weight, zero_bias)             # bias NOT applied here
/// conv_orig     = conv / scale_factor[None, :, None, ...]        # along activation axis 1
/// conv_orig     = conv_orig + b[None, :, None, ...]              # only if the conv has a bias
/// y             = bn(conv_orig)
/// ```
/// `bn` is the ordinary batch-norm module: while training it normalises with the batch's own mean
/// and variance and updates the running statistics (so the division by `scale_factor` cancels
/// the weight scaling only up to fake-quant); once frozen (`freeze_bn_stats`, qc's
/// `freeze_bn_after`) it uses the running statistics, and then, in exact arithmetic,
/// `y = conv(x, fq(W·sf)) + (b − μ)·sf + β` — the fake-quantized folded weight plus the bias of
/// [`fold_bn_into_conv`], which is exactly what convert produces.
///
/// Computed as libtorch computes it, in `f32` (add, sqrt, divide: three roundings), by the same
/// formula QAT training runs ([`on_the_fly::scale_factor`]). Error [`FoldError::ZeroScaleFactor`]
/// when a factor is 0 (the correction would divide by it; PyTorch silently produces inf/NaN).
pub fn qat_scale_factor(bn: &BatchNorm<'_>) -> Result<Vec<f32>, FoldError> {
    bn.scale_f64()?; // the checks: lengths, finite values, a positive variance
    let c = bn.channels();
    let gamma = Tensor::f32(vec![c], bn.weight.map_or_else(|| vec![1.0; c], <[f32]>::to_vec));
    let var = Tensor::f32(vec![c], bn.running_var.to_vec());
    let factor = on_the_fly::scale_factor(&gamma, &var, bn.eps)?;
    let factor = factor.as_f32().unwrap_or_default().to_vec();
    for (i, &sf) in factor.iter().enumerate() {
        if !sf.is_finite() {
            return Err(FoldError::Overflow {
                param: FoldParam::ScaleFactor,
                index: i,
                value: sf as f64,
            });
        }
        if sf == 0.0 {
            return Err(FoldError::ZeroScaleFactor { index: i });
        }
    }
    Ok(factor)
}

/// `scaled_weight[c, ...] = W[c, ...] · scale_factor[c]`: the weight that QAT fake-quantizes
/// (before `weight_fake_quant`), conv `[C_out, C_in/groups, k...]` or linear `[out, in]`.
///
/// The product of two `f32` is exact in `f64` and rounded to `f32` once, so this equals PyTorch's
/// `f32` multiply for the same `scale_factor`.
pub fn qat_scale_weight(weight: &Tensor, scale_factor: &[f32]) -> Result<Tensor, FoldError> {
    let data = f32_data(weight, FoldParam::Weight)?;
    if weight.shape.len() < 2 {
        return Err(FoldError::BadShape {
            param: FoldParam::Weight,
            shape: weight.shape.clone(),
            expected: "a conv or linear weight of rank 2 or more",
        });
    }
    if weight.shape[0] != scale_factor.len() {
        return Err(FoldError::ChannelMismatch {
            param: FoldParam::ScaleFactor,
            expected: weight.shape[0],
            got: scale_factor.len(),
        });
    }
    check_finite(FoldParam::Weight, data)?;
    check_finite(FoldParam::ScaleFactor, scale_factor)?;
    let factor = Tensor::f32(vec![scale_factor.len()], scale_factor.to_vec());
    let scaled = on_the_fly::scale_weight(weight, &factor)?;
    if let Some((i, &v)) = scaled
        .as_f32()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(FoldError::Overflow {
            param: FoldParam::Weight,
            index: i,
            value: v as f64,
        });
    }
    Ok(scaled)
}

/// [`qat_scale_factor`] and [`qat_scale_weight`] together.
#[derive(Debug, Clone, PartialEq)]
pub struct QatFold {
    /// `γ / √(running_var + ε)`, one per output channel.
    pub scale_factor: Vec<f32>,
    /// `W · scale_factor` along axis 0, before fake-quant.
    pub scaled_weight: Tensor,
}

/// The weight side of PyTorch's `_forward_approximate`: `scale_factor` and the scaled weight
/// (see [`qat_scale_factor`] for the whole forward).
pub fn qat_fold(weight: &Tensor, bn: &BatchNorm<'_>) -> Result<QatFold, FoldError> {
    let scale_factor = qat_scale_factor(bn)?;
    let scaled_weight = qat_scale_weight(weight, &scale_factor)?;
    Ok(QatFold {
        scale_factor,
        scaled_weight,
    })
}

/// The output side of PyTorch's `_forward_approximate`:
/// `conv_orig[n, c, ...] = conv[n, c, ...] / scale_factor[c] (+ b[c])` on an activation
/// `[N, C, ...]` (channel axis 1), the input of `bn`.
///
/// Unlike the folds, this is run-time math and follows PyTorch's `f32` formula exactly (divide,
/// then add: two `f32` roundings), so it matches libtorch bit for bit.
pub fn qat_output_correction(
    conv: &[f32],
    shape: &[usize],
    scale_factor: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, FoldError> {
    if shape.len() < 2 {
        return Err(FoldError::BadShape {
            param: FoldParam::ConvOutput,
            shape: shape.to_vec(),
            expected: "an activation [N, C, ...] of rank 2 or more",
        });
    }
    let needed: usize = shape.iter().product();
    if conv.len() != needed {
        return Err(FoldError::DataLength {
            param: FoldParam::ConvOutput,
            shape: shape.to_vec(),
            len: conv.len(),
            needed,
        });
    }
    let c = shape[1];
    if scale_factor.len() != c {
        return Err(FoldError::ChannelMismatch {
            param: FoldParam::ScaleFactor,
            expected: c,
            got: scale_factor.len(),
        });
    }
    if let Some(b) = bias {
        if b.len() != c {
            return Err(FoldError::ChannelMismatch {
                param: FoldParam::Bias,
                expected: c,
                got: b.len(),
            });
        }
    }
    check_finite(FoldParam::ScaleFactor, scale_factor)?;
    check_finite(FoldParam::Bias, bias.unwrap_or(&[]))?;
    if let Some(i) = scale_factor.iter().position(|&s| s == 0.0) {
        return Err(FoldError::ZeroScaleFactor { index: i });
    }
    let y = Tensor::f32(shape.to_vec(), conv.to_vec());
    let factor = Tensor::f32(vec![c], scale_factor.to_vec());
    let bias = bias.map(|b| Tensor::f32(vec![c], b.to_vec()));
    let out = on_the_fly::correct_output(&y, &factor, bias.as_ref())?;
    Ok(out.as_f32().unwrap_or_default().to_vec())
}

fn fold_tensor(weight: &Tensor, bias: Option<&Tensor>, bn: &BatchNorm<'_>) -> Result<Folded, FoldError> {
    let w = f32_data(weight, FoldParam::Weight)?;
    let c_out = weight.shape[0];
    if bn.channels() != c_out {
        return Err(FoldError::ChannelMismatch {
            param: FoldParam::RunningMean,
            expected: c_out,
            got: bn.channels(),
        });
    }
    let b = match bias {
        Some(t) => {
            let data = f32_data(t, FoldParam::Bias)?;
            if t.shape != [c_out] {
                return Err(FoldError::BadShape {
                    param: FoldParam::Bias,
                    shape: t.shape.clone(),
                    expected: "[C_out], one value per output channel",
                });
            }
            Some(data)
        }
        None => None,
    };
    let (w, b) = fold_bn(w, b, bn)?;
    Ok(Folded {
        weight: Tensor::f32(weight.shape.clone(), w),
        bias: Tensor::f32(vec![c_out], b),
    })
}

/// The elements of an `f32` tensor whose data fills its shape.
fn f32_data(t: &Tensor, param: FoldParam) -> Result<&[f32], FoldError> {
    let data = t.as_f32().ok_or(FoldError::NotF32 {
        param,
        dtype: t.dtype(),
    })?;
    let needed: usize = t.shape.iter().product();
    if data.len() != needed {
        return Err(FoldError::DataLength {
            param,
            shape: t.shape.clone(),
            len: data.len(),
            needed,
        });
    }
    Ok(data)
}

fn check_finite(param: FoldParam, values: &[f32]) -> Result<(), FoldError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(FoldError::NonFinite {
            param,
            index,
            value: values[index] as f64,
        }),
        None => Ok(()),
    }
}

/// The one rounding of a folded value to `f32`; refuses results beyond `f32`'s range.
fn to_f32(value: f64, param: FoldParam, index: usize) -> Result<f32, FoldError> {
    let r = value as f32;
    if r.is_finite() {
        Ok(r)
    } else {
        Err(FoldError::Overflow { param, index, value })
    }
}

/// The layer a batch norm folds into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv,
    Linear,
}

/// Folds a batch norm given as checkpoint tensors `[γ, β, μ, σ²]` (each `f32 [C]`) and `eps` into
/// a conv's or linear's `weight` and `bias`: the one entry that `fuse` (PTQ) and `convert` (a QAT
/// layer's kept batch norm) share.
pub fn fold_stats(
    layer: Layer,
    weight: &Tensor,
    bias: Option<&Tensor>,
    [gamma, beta, mean, var]: [&Tensor; 4],
    eps: f64,
) -> Result<Folded, FoldError> {
    let bn = BatchNorm::from_tensors(Some(gamma), Some(beta), mean, var, eps)?;
    match layer {
        Layer::Conv => fold_bn_into_conv(weight, bias, &bn),
        Layer::Linear => fold_bn_into_linear(weight, bias, &bn),
    }
}

#[cfg(test)]
mod tests;
