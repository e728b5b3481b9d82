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
/// modules, computed in `f64` and rounded to `f32` once.
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
/// PyTorch computes `scale_factor` in `f32` (add, sqrt, divide: three roundings), qc in `f64`
/// with one rounding, so they can differ by an ulp or two. Error [`FoldError::ZeroScaleFactor`]
/// when a factor is 0 (the correction would divide by it; PyTorch silently produces inf/NaN).
pub fn qat_scale_factor(bn: &BatchNorm<'_>) -> Result<Vec<f32>, FoldError> {
    let scale = bn.scale_f64()?;
    scale
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let sf = to_f32(s, FoldParam::ScaleFactor, i)?;
            if sf == 0.0 {
                return Err(FoldError::ZeroScaleFactor { index: i });
            }
            Ok(sf)
        })
        .collect()
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
    let row: usize = weight.shape[1..].iter().product();
    let scaled = data
        .iter()
        .enumerate()
        .map(|(i, &v)| to_f32(v as f64 * scale_factor[i / row.max(1)] as f64, FoldParam::Weight, i))
        .collect::<Result<Vec<f32>, _>>()?;
    Ok(Tensor::f32(weight.shape.clone(), scaled))
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
    let inner: usize = shape[2..].iter().product();
    Ok(conv
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let ch = (i / inner.max(1)) % c;
            let v = y / scale_factor[ch];
            match bias {
                Some(b) => v + b[ch],
                None => v,
            }
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qc_runtime::quant::{float_rewrite_close, FLOAT_REWRITE_RTOL};
    use qc_runtime::SplitMix64;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::f32(shape.to_vec(), data.to_vec())
    }

    fn data(t: &Tensor) -> &[f32] {
        t.as_f32().unwrap()
    }

    fn bn<'a>(g: &'a [f32], b: &'a [f32], m: &'a [f32], v: &'a [f32], eps: f64) -> BatchNorm<'a> {
        BatchNorm {
            weight: Some(g),
            bias: Some(b),
            running_mean: m,
            running_var: v,
            eps,
        }
    }

    // ----- hand-computed folds -----

    // γ = [3, −2], β = [0.5, −1], μ = [0.5, 0.5], σ² = [3, 0], ε = 1:
    // √(σ²+ε) = [2, 1], γ/√(σ²+ε) = [1.5, −2].
    const G: [f32; 2] = [3.0, -2.0];
    const BETA: [f32; 2] = [0.5, -1.0];
    const MU: [f32; 2] = [0.5, 0.5];
    const VAR: [f32; 2] = [3.0, 0.0];

    #[test]
    fn conv_fold_by_hand() {
        let w = t(&[2, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
        let b = t(&[2], &[1.0, 0.5]);
        let f = fold_bn_into_conv(&w, Some(&b), &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
        assert_eq!(f.weight.shape, vec![2, 1, 1, 2]);
        assert_eq!(data(&f.weight), &[3.0, 6.0, 2.0, -1.0]);
        // (1 − 0.5)·1.5 + 0.5 = 1.25; (0.5 − 0.5)·(−2) − 1 = −1
        assert_eq!(data(&f.bias), &[1.25, -1.0]);
    }

    #[test]
    fn conv_fold_without_bias_gets_one() {
        let w = t(&[2, 1, 1, 1], &[2.0, -1.0]);
        let f = fold_bn_into_conv(&w, None, &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
        assert_eq!(data(&f.weight), &[3.0, 2.0]);
        // −μ·s + β: −0.5·1.5 + 0.5 = −0.25; −0.5·(−2) − 1 = 0
        assert_eq!(f.bias.shape, vec![2]);
        assert_eq!(data(&f.bias), &[-0.25, 0.0]);
    }

    #[test]
    fn conv1d_and_conv3d_and_groups() {
        // conv1d [2, 1, 3] and conv3d [2, 1, 1, 1, 2]: only axis 0 matters.
        let bnp = bn(&G, &BETA, &MU, &VAR, 1.0);
        let w1 = t(&[2, 1, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        let f1 = fold_bn_into_conv(&w1, None, &bnp).unwrap();
        assert_eq!(data(&f1.weight), &[1.5, 3.0, 4.5, -2.0, -4.0, -6.0]);
        let w3 = t(&[2, 1, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
        let f3 = fold_bn_into_conv(&w3, None, &bnp).unwrap();
        assert_eq!(data(&f3.weight), &[3.0, 6.0, 2.0, -1.0]);
        assert_eq!(f3.weight.shape, vec![2, 1, 1, 1, 2]);
    }

    #[test]
    fn linear_fold_by_hand() {
        let w = t(&[2, 3], &[1.0, 2.0, -2.0, 0.25, -0.5, 1.0]);
        let b = t(&[2], &[0.5, 2.5]);
        let f = fold_bn_into_linear(&w, Some(&b), &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
        assert_eq!(data(&f.weight), &[1.5, 3.0, -3.0, -0.5, 1.0, -2.0]);
        // (0.5 − 0.5)·1.5 + 0.5 = 0.5; (2.5 − 0.5)·(−2) − 1 = −5
        assert_eq!(data(&f.bias), &[0.5, -5.0]);
        // A conv weight is not a linear weight and vice versa.
        assert!(matches!(
            fold_bn_into_linear(&t(&[2, 1, 1], &[1.0, 1.0]), None, &bn(&G, &BETA, &MU, &VAR, 1.0)),
            Err(FoldError::BadShape {
                param: FoldParam::Weight,
                ..
            })
        ));
        assert!(matches!(
            fold_bn_into_conv(&w, None, &bn(&G, &BETA, &MU, &VAR, 1.0)),
            Err(FoldError::BadShape {
                param: FoldParam::Weight,
                ..
            })
        ));
    }

    #[test]
    fn non_affine_bn_is_gamma_one_beta_zero() {
        let m = [1.0f32, -1.0];
        let v = [0.0f32, 3.0];
        let plain = BatchNorm {
            weight: None,
            bias: None,
            running_mean: &m,
            running_var: &v,
            eps: 1.0,
        };
        let f = fold_bn_into_linear(&t(&[2, 1], &[4.0, 4.0]), None, &plain).unwrap();
        assert_eq!(data(&f.weight), &[4.0, 2.0]);
        assert_eq!(data(&f.bias), &[-1.0, 0.5]);
        let ones = [1.0f32, 1.0];
        let zeros = [0.0f32, 0.0];
        let explicit = fold_bn_into_linear(&t(&[2, 1], &[4.0, 4.0]), None, &bn(&ones, &zeros, &m, &v, 1.0)).unwrap();
        assert_eq!(f, explicit);
    }

    #[test]
    fn rounds_once_from_f64() {
        // γ/√(σ²+ε) = 1/√3 is not an f32; the folded weight is the f64 product rounded once, which
        // can differ from the f32 chain w·fl(fl(1/fl(√3))).
        let w = [0.1f32, 0.7, 1.3, 3.3];
        let g = [1.0f32];
        let (z, v) = ([0.0f32], [3.0f32]);
        let (fw, fb) = fold_bn(&w, None, &bn(&g, &z, &z, &v, 0.0)).unwrap();
        for (a, b) in w.iter().zip(&fw) {
            assert_eq!(*b, (*a as f64 * (1.0 / 3f64.sqrt())) as f32);
        }
        assert_eq!(fb, vec![0.0]);
    }

    #[test]
    fn bn_from_tensors() {
        let (g, b, m, v) = (t(&[2], &G), t(&[2], &BETA), t(&[2], &MU), t(&[2], &VAR));
        let p = BatchNorm::from_tensors(Some(&g), Some(&b), &m, &v, 1.0).unwrap();
        assert_eq!(p, bn(&G, &BETA, &MU, &VAR, 1.0));
        let i = Tensor::zeros(DType::I64, vec![2]);
        assert_eq!(
            BatchNorm::from_tensors(Some(&g), Some(&b), &m, &i, 1.0),
            Err(FoldError::NotF32 {
                param: FoldParam::RunningVar,
                dtype: DType::I64
            })
        );
        let m2 = t(&[1, 2], &MU);
        assert!(matches!(
            BatchNorm::from_tensors(None, None, &m2, &v, 1.0),
            Err(FoldError::BadShape {
                param: FoldParam::RunningMean,
                ..
            })
        ));
        let broken = Tensor {
            shape: vec![3],
            data: qc_runtime::TensorData::F32(vec![1.0, 2.0]),
        };
        assert_eq!(
            BatchNorm::from_tensors(Some(&broken), None, &m, &v, 1.0),
            Err(FoldError::DataLength {
                param: FoldParam::BnWeight,
                shape: vec![3],
                len: 2,
                needed: 3
            })
        );
    }

    // ----- errors -----

    #[test]
    fn errors_name_the_parameter() {
        let w = t(&[2, 1, 1, 1], &[1.0, 1.0]);
        let good = bn(&G, &BETA, &MU, &VAR, 1.0);
        let fold = |b: &BatchNorm<'_>| fold_bn_into_conv(&w, None, b);

        assert_eq!(
            fold(&BatchNorm { eps: 0.0, ..good }),
            Err(FoldError::NonPositiveVariance {
                index: 1,
                var: 0.0,
                eps: 0.0
            })
        );
        let neg = [3.0f32, -2.0];
        assert_eq!(
            fold(&BatchNorm {
                running_var: &neg,
                ..good
            }),
            Err(FoldError::NonPositiveVariance {
                index: 1,
                var: -2.0,
                eps: 1.0
            })
        );
        let nan = [1.0f32, f32::NAN];
        let err = fold(&BatchNorm {
            weight: Some(&nan),
            ..good
        })
        .unwrap_err();
        assert!(
            matches!(err, FoldError::NonFinite { param: FoldParam::BnWeight, index: 1, value } if value.is_nan()),
            "{err}"
        );
        assert_eq!(err.to_string(), "`bn.weight`[1] is NaN, not a finite number");
        let inf = [f32::INFINITY, 0.0];
        assert_eq!(
            fold(&BatchNorm {
                running_mean: &inf,
                ..good
            }),
            Err(FoldError::NonFinite {
                param: FoldParam::RunningMean,
                index: 0,
                value: f64::INFINITY
            })
        );
        assert!(matches!(
            fold(&BatchNorm { eps: f64::NAN, ..good }),
            Err(FoldError::NonFinite {
                param: FoldParam::Eps,
                ..
            })
        ));
        let three = [1.0f32, 1.0, 1.0];
        assert_eq!(
            fold(&BatchNorm {
                bias: Some(&three),
                ..good
            }),
            Err(FoldError::ChannelMismatch {
                param: FoldParam::BnBias,
                expected: 2,
                got: 3
            })
        );
        let w3 = t(&[3, 1, 1, 1], &[1.0, 1.0, 1.0]);
        assert_eq!(
            fold_bn_into_conv(&w3, None, &good),
            Err(FoldError::ChannelMismatch {
                param: FoldParam::RunningMean,
                expected: 3,
                got: 2
            })
        );
        assert!(matches!(
            fold_bn_into_conv(&w, Some(&t(&[1, 2], &[0.0, 0.0])), &good),
            Err(FoldError::BadShape {
                param: FoldParam::Bias,
                ..
            })
        ));
        let wnan = t(&[2, 1, 1, 1], &[1.0, f32::NEG_INFINITY]);
        assert!(matches!(
            fold_bn_into_conv(&wnan, None, &good),
            Err(FoldError::NonFinite {
                param: FoldParam::Weight,
                index: 1,
                ..
            })
        ));
        let bnan = t(&[2], &[f32::NAN, 0.0]);
        assert!(matches!(
            fold_bn_into_conv(&w, Some(&bnan), &good),
            Err(FoldError::NonFinite {
                param: FoldParam::Bias,
                index: 0,
                ..
            })
        ));
        // γ/√(σ²+ε) = 3e38/1e-3 does not fit in f32.
        let huge = [3e38f32, 1.0];
        let tiny = [0.0f32, 1.0];
        assert!(matches!(
            fold(&BatchNorm {
                weight: Some(&huge),
                running_var: &tiny,
                eps: 1e-6,
                ..good
            }),
            Err(FoldError::Overflow {
                param: FoldParam::Weight,
                index: 0,
                ..
            })
        ));
        // Slices: a weight that does not split into rows per channel.
        assert_eq!(
            fold_bn(&[1.0, 2.0, 3.0], None, &good),
            Err(FoldError::NotRows { len: 3, channels: 2 })
        );
    }

    // ----- QAT form -----

    #[test]
    fn qat_scale_factor_and_weight_by_hand() {
        let w = t(&[2, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
        let q = qat_fold(&w, &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
        assert_eq!(q.scale_factor, vec![1.5, -2.0]);
        assert_eq!(data(&q.scaled_weight), &[3.0, 6.0, 2.0, -1.0]);
        // The correction: conv / sf + b along axis 1 of [N=1, C=2, L=2].
        let y = [3.0f32, -6.0, 4.0, 1.0];
        let out = qat_output_correction(&y, &[1, 2, 2], &q.scale_factor, Some(&[1.0, 0.5])).unwrap();
        assert_eq!(out, vec![3.0, -3.0, -1.5, 0.0]);
        let out = qat_output_correction(&y, &[1, 2, 2], &q.scale_factor, None).unwrap();
        assert_eq!(out, vec![2.0, -4.0, -2.0, -0.5]);
        // Linear [out, in] and an activation [N, C] (no spatial axes).
        let lw = t(&[2, 2], &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(
            data(&qat_scale_weight(&lw, &q.scale_factor).unwrap()),
            &[1.5, 1.5, -2.0, -2.0]
        );
        assert_eq!(
            qat_output_correction(&[3.0, 4.0, 1.5, -2.0], &[2, 2], &q.scale_factor, None).unwrap(),
            vec![2.0, -2.0, 1.0, 1.0]
        );
    }

    #[test]
    fn qat_errors() {
        let zero = [0.0f32, 1.0];
        let b = bn(&zero, &BETA, &MU, &VAR, 1.0);
        assert_eq!(qat_scale_factor(&b), Err(FoldError::ZeroScaleFactor { index: 0 }));
        let w = t(&[2, 1, 1, 1], &[1.0, 1.0]);
        assert_eq!(
            qat_scale_weight(&w, &[1.0]),
            Err(FoldError::ChannelMismatch {
                param: FoldParam::ScaleFactor,
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            qat_scale_weight(&t(&[2], &[1.0, 1.0]), &[1.0, 1.0]),
            Err(FoldError::BadShape { .. })
        ));
        assert!(matches!(
            qat_output_correction(&[1.0; 3], &[1, 2, 2], &[1.0, 1.0], None),
            Err(FoldError::DataLength { len: 3, needed: 4, .. })
        ));
        assert!(matches!(
            qat_output_correction(&[1.0; 4], &[1, 2, 2], &[1.0, 0.0], None),
            Err(FoldError::ZeroScaleFactor { index: 1, .. })
        ));
        assert!(matches!(
            qat_output_correction(&[1.0; 4], &[4], &[1.0], None),
            Err(FoldError::BadShape {
                param: FoldParam::ConvOutput,
                ..
            })
        ));
    }

    // ----- a naive N-d convolution, generic over the accumulator type -----

    #[derive(Debug, Clone)]
    struct Conv {
        n: usize,
        cin: usize,
        cout: usize,
        groups: usize,
        input: Vec<usize>,
        kernel: Vec<usize>,
        stride: Vec<usize>,
        pad: Vec<usize>,
        dilation: Vec<usize>,
    }

    impl Conv {
        fn out_spatial(&self) -> Vec<usize> {
            (0..self.input.len())
                .map(|d| {
                    let span = self.dilation[d] * (self.kernel[d] - 1) + 1;
                    (self.input[d] + 2 * self.pad[d] - span) / self.stride[d] + 1
                })
                .collect()
        }
        fn weight_shape(&self) -> Vec<usize> {
            let mut s = vec![self.cout, self.cin / self.groups];
            s.extend(&self.kernel);
            s
        }
        fn input_len(&self) -> usize {
            self.n * self.cin * self.input.iter().product::<usize>()
        }
        fn output_shape(&self) -> Vec<usize> {
            let mut s = vec![self.n, self.cout];
            s.extend(self.out_spatial());
            s
        }
    }

    fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            idx[d] = i % dims[d];
            i /= dims[d];
        }
        idx
    }

    /// `y[n, co, o...] = b[co] + Σ_{ci in group, k...} x[n, ci, o·s − p + k·d] · w[co, ci, k...]`,
    /// accumulated in `T` (f64: the reference; f32: what a float kernel does).
    fn conv<T>(g: &Conv, x: &[f32], w: &[f32], b: &[f32]) -> Vec<T>
    where
        T: Copy + From<f32> + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
    {
        let out = g.out_spatial();
        let (n_out, n_k, n_in) = (
            out.iter().product::<usize>(),
            g.kernel.iter().product::<usize>(),
            g.input.iter().product::<usize>(),
        );
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let mut y = Vec::with_capacity(g.n * g.cout * n_out);
        for n in 0..g.n {
            for co in 0..g.cout {
                let group = co / cout_g;
                for o in 0..n_out {
                    let opos = unravel(o, &out);
                    let mut acc = T::from(b[co]);
                    for cl in 0..cin_g {
                        let ci = group * cin_g + cl;
                        'k: for k in 0..n_k {
                            let kpos = unravel(k, &g.kernel);
                            let mut flat = 0;
                            for d in 0..out.len() {
                                let p = (opos[d] * g.stride[d] + kpos[d] * g.dilation[d]) as isize - g.pad[d] as isize;
                                if p < 0 || p >= g.input[d] as isize {
                                    continue 'k;
                                }
                                flat = flat * g.input[d] + p as usize;
                            }
                            let xv = x[(n * g.cin + ci) * n_in + flat];
                            let wv = w[(co * cin_g + cl) * n_k + k];
                            acc = acc + T::from(xv) * T::from(wv);
                        }
                    }
                    y.push(acc);
                }
            }
        }
        y
    }

    /// Inference batch norm over axis 1 of `y` (`inner` elements per channel and image), in f64.
    fn bn_f64(y: &[f64], c: usize, inner: usize, p: &BatchNorm<'_>) -> Vec<f64> {
        y.iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / inner) % c;
                let s = p.weight.unwrap()[ch] as f64 / (p.running_var[ch] as f64 + p.eps).sqrt();
                (v - p.running_mean[ch] as f64) * s + p.bias.unwrap()[ch] as f64
            })
            .collect()
    }

    /// Uniform magnitude in `[lo, hi)` with a random sign (γ away from 0: QAT divides by it).
    fn signed(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
        let m = rng.uniform(lo, hi);
        if rng.next_u64() & 1 == 0 {
            m
        } else {
            -m
        }
    }

    fn to_f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn conv_strategy() -> impl Strategy<Value = Conv> {
        (1usize..=3, 1usize..=2, 1usize..=3, 1usize..=3, 1usize..=2).prop_flat_map(
            |(rank, groups, cin_g, cout_g, n)| {
                let dims = prop::collection::vec((1usize..=3, 1usize..=2, 0usize..=1, 1usize..=2, 0usize..=3), rank);
                dims.prop_map(move |dims| {
                    let mut g = Conv {
                        n,
                        cin: cin_g * groups,
                        cout: cout_g * groups,
                        groups,
                        input: vec![],
                        kernel: vec![],
                        stride: vec![],
                        pad: vec![],
                        dilation: vec![],
                    };
                    for (k, s, p, d, extra) in dims {
                        // Input at least as large as the dilated kernel, so every output size is ≥ 1.
                        g.input.push(d * (k - 1) + 1 + extra);
                        g.kernel.push(k);
                        g.stride.push(s);
                        g.pad.push(p);
                        g.dilation.push(d);
                    }
                    g
                })
            },
        )
    }

    fn check_fold(g: &Conv, seed: u64, with_bias: bool, eps: f64) -> (f32, f32) {
        let mut rng = SplitMix64::new(seed);
        let ws = g.weight_shape();
        let w: Vec<f32> = (0..ws.iter().product::<usize>())
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let b: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let x: Vec<f32> = (0..g.input_len()).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let gamma: Vec<f32> = (0..g.cout).map(|_| signed(&mut rng, 0.1, 2.0)).collect();
        let beta: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mean: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let var: Vec<f32> = (0..g.cout).map(|_| rng.uniform(0.01, 10.0)).collect();
        let p = bn(&gamma, &beta, &mean, &var, eps);
        let zeros = vec![0.0f32; g.cout];
        let conv_bias = if with_bias { &b } else { &zeros };

        let inner: usize = g.out_spatial().iter().product();
        let reference = to_f32s(&bn_f64(&conv::<f64>(g, &x, &w, conv_bias), g.cout, inner, &p));
        let wt = Tensor::f32(ws.clone(), w.clone());
        let bt = Tensor::f32(vec![g.cout], b.clone());
        let f = fold_bn_into_conv(&wt, with_bias.then_some(&bt), &p).unwrap();
        let folded64 = to_f32s(&conv::<f64>(g, &x, data(&f.weight), data(&f.bias)));
        let folded32 = conv::<f32>(g, &x, data(&f.weight), data(&f.bias));
        assert!(float_rewrite_close(&reference, &folded64), "{g:?}");
        assert!(float_rewrite_close(&reference, &folded32), "{g:?}");

        // The QAT path with frozen BN: bn(conv(x, W·sf)/sf + b) over running statistics.
        let q = qat_fold(&wt, &p).unwrap();
        let scaled = conv::<f32>(g, &x, data(&q.scaled_weight), &zeros);
        let orig =
            qat_output_correction(&scaled, &g.output_shape(), &q.scale_factor, with_bias.then_some(&b[..])).unwrap();
        let orig64: Vec<f64> = orig.iter().map(|&v| v as f64).collect();
        let qat = to_f32s(&bn_f64(&orig64, g.cout, inner, &p));
        assert!(float_rewrite_close(&reference, &qat), "{g:?}");

        let max = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = reference
            .iter()
            .zip(&folded32)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        (worst, max)
    }

    #[test]
    fn folded_conv_matches_conv_then_bn_fixed_cases() {
        // A 2-d grouped, strided, padded, dilated case and a 3-d one, and the margin to the tolerance.
        let g2 = Conv {
            n: 2,
            cin: 4,
            cout: 6,
            groups: 2,
            input: vec![7, 6],
            kernel: vec![3, 2],
            stride: vec![2, 1],
            pad: vec![1, 0],
            dilation: vec![1, 2],
        };
        let g3 = Conv {
            n: 1,
            cin: 3,
            cout: 2,
            groups: 1,
            input: vec![3, 4, 3],
            kernel: vec![2, 3, 2],
            stride: vec![1, 1, 2],
            pad: vec![0, 1, 1],
            dilation: vec![1, 1, 1],
        };
        for (g, seed) in [(&g2, 1), (&g3, 2), (&g2, 3)] {
            let (worst, max) = check_fold(g, seed, seed != 3, 1e-5);
            assert!(worst * 10.0 < FLOAT_REWRITE_RTOL * max, "worst {worst} max {max}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_folded_conv_matches_conv_then_bn(
            g in conv_strategy(),
            seed in any::<u64>(),
            with_bias: bool,
            eps in prop::sample::select(vec![1e-5, 1e-3, 0.0]),
        ) {
            check_fold(&g, seed, with_bias, eps);
        }

        #[test]
        fn prop_folded_linear_matches_linear_then_bn(
            out in 1usize..6, inp in 1usize..20, n in 1usize..4, seed in any::<u64>(), with_bias: bool,
        ) {
            // A linear layer is a 1x1 conv over [N, in, 1]: reuse the reference.
            let g = Conv {
                n, cin: inp, cout: out, groups: 1,
                input: vec![1], kernel: vec![1], stride: vec![1], pad: vec![0], dilation: vec![1],
            };
            let mut rng = SplitMix64::new(seed);
            let w: Vec<f32> = (0..out * inp).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let x: Vec<f32> = (0..n * inp).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let gamma: Vec<f32> = (0..out).map(|_| signed(&mut rng, 0.1, 2.0)).collect();
            let beta: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mean: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let var: Vec<f32> = (0..out).map(|_| rng.uniform(0.01, 10.0)).collect();
            let p = bn(&gamma, &beta, &mean, &var, 1e-5);
            let zeros = vec![0.0f32; out];
            let reference = to_f32s(&bn_f64(&conv::<f64>(&g, &x, &w, if with_bias { &b } else { &zeros }), out, 1, &p));
            let bt = Tensor::f32(vec![out], b.clone());
            let f = fold_bn_into_linear(&Tensor::f32(vec![out, inp], w), with_bias.then_some(&bt), &p).unwrap();
            let folded = conv::<f32>(&g, &x, data(&f.weight), data(&f.bias));
            prop_assert!(float_rewrite_close(&reference, &folded));
        }
    }

    #[test]
    fn wrong_folds_are_caught_by_the_tolerance() {
        // The tolerance is not so loose that a folding bug passes: forgetting μ, or scaling by the
        // wrong channel, fails the same comparison.
        let g = Conv {
            n: 1,
            cin: 2,
            cout: 3,
            groups: 1,
            input: vec![5, 5],
            kernel: vec![3, 3],
            stride: vec![1, 1],
            pad: vec![1, 1],
            dilation: vec![1, 1],
        };
        let mut rng = SplitMix64::new(9);
        let w: Vec<f32> = (0..3 * 2 * 9).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let x: Vec<f32> = (0..2 * 25).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let (gamma, beta, mean, var) = (
            [1.5f32, -0.7, 2.0],
            [0.1f32, 0.2, -0.3],
            [0.8f32, -0.6, 0.5],
            [0.5f32, 2.0, 4.0],
        );
        let p = bn(&gamma, &beta, &mean, &var, 1e-5);
        let zeros = [0.0f32; 3];
        let reference = to_f32s(&bn_f64(&conv::<f64>(&g, &x, &w, &zeros), 3, 25, &p));
        let (fw, fb) = fold_bn(&w, None, &p).unwrap();
        assert!(float_rewrite_close(&reference, &conv::<f32>(&g, &x, &fw, &fb)));
        let no_mean = bn(&gamma, &beta, &zeros, &var, 1e-5);
        let (_, bad_b) = fold_bn(&w, None, &no_mean).unwrap();
        assert!(!float_rewrite_close(&reference, &conv::<f32>(&g, &x, &fw, &bad_b)));
        let rolled_gamma = [gamma[1], gamma[2], gamma[0]];
        let (bad_w, _) = fold_bn(&w, None, &bn(&rolled_gamma, &beta, &mean, &var, 1e-5)).unwrap();
        assert!(!float_rewrite_close(&reference, &conv::<f32>(&g, &x, &bad_w, &fb)));
    }
}
