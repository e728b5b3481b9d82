//! Input normalization, `(x - mean[c]) / std[c]`: what a model's `input` line declares with
//! `normalize(mean: ..., std: ...)`. [`Normalize::apply`] is the one function that computes it;
//! calibration, float training, QAT (and their test accuracy), [`crate::model::Model::run`] and
//! `qc run` all call it, so they cannot disagree (docs/recipe-language.md, "Input normalization").

use serde::{Deserialize, Serialize};

use crate::tensor::{Tensor, TensorData};

/// `(x - mean) / std`: one value for every element, or one per channel (dim 1 of the input).
/// `mean` and `std` have the same length, at least 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// [`Normalize::check`] refuses NaN, so equality is reflexive on every value in use.
impl Eq for Normalize {}

/// Why a normalization cannot be applied to a tensor.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NormalizeError {
    #[error("a per-channel normalization of {channels} channels needs dim 1 of {channels}, found shape {shape:?}")]
    Channels { channels: usize, shape: Vec<usize> },
    #[error("only f32 inputs are normalized, found {dtype}")]
    DType { dtype: crate::tensor::DType },
}

impl Normalize {
    /// One mean and one std for every element.
    pub fn new(mean: f64, std: f64) -> Normalize {
        Normalize {
            mean: vec![mean],
            std: vec![std],
        }
    }

    /// One value per channel, or one for all when there is one.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Whether the values are per channel (more than one).
    pub fn is_per_channel(&self) -> bool {
        self.mean.len() > 1
    }

    /// The values a normalization needs: lists of one length (at least 1), finite means, finite
    /// stds above 0. The message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return Err(format!(
                "it has {} mean(s) and {} std(s); it needs the same number of each, at least one",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("its mean {m} is not finite"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("its std {s} is not a finite number above 0"));
        }
        Ok(())
    }

    /// Whether it fits an input of `shape` (`None`: a symbolic size): per-channel values need a
    /// fixed dim 1 of their length.
    pub fn check_shape(&self, shape: &[Option<usize>]) -> Result<(), String> {
        if !self.is_per_channel() {
            return Ok(());
        }
        match shape.get(1) {
            Some(Some(c)) if *c == self.channels() => Ok(()),
            Some(Some(c)) => Err(format!(
                "it has {} values per channel, but the input has {c} channels (dim 1)",
                self.channels()
            )),
            _ => Err(format!(
                "it has {} values per channel, but the input has no fixed dim 1",
                self.channels()
            )),
        }
    }

    /// `(x - mean[c]) / std[c]` of every element of an `f32` tensor, computed in f64 and rounded
    /// once to f32; `c` is the element's index along dim 1 (per channel) or ignored.
    pub fn apply(&self, t: &mut Tensor) -> Result<(), NormalizeError> {
        let shape = t.shape.clone();
        let TensorData::F32(values) = &mut t.data else {
            return Err(NormalizeError::DType { dtype: t.dtype() });
        };
        if !self.is_per_channel() {
            let (mean, std) = (self.mean[0], self.std[0]);
            for x in values.iter_mut() {
                *x = ((*x as f64 - mean) / std) as f32;
            }
            return Ok(());
        }
        let channels = self.channels();
        if shape.len() < 2 || shape[1] != channels {
            return Err(NormalizeError::Channels { channels, shape });
        }
        let inner: usize = shape[2..].iter().product();
        if inner == 0 {
            return Ok(());
        }
        for (i, block) in values.chunks_mut(inner).enumerate() {
            let c = i % channels;
            let (mean, std) = (self.mean[c], self.std[c]);
            for x in block {
                *x = ((*x as f64 - mean) / std) as f32;
            }
        }
        Ok(())
    }

    /// [`Normalize::apply`] on a copy.
    pub fn applied(&self, t: &Tensor) -> Result<Tensor, NormalizeError> {
        let mut out = t.clone();
        self.apply(&mut out)?;
        Ok(out)
    }
}

/// `normalize(mean: 0.286, std: 0.353)`, or with lists per channel: the recipe's own syntax,
/// shortest round-trip numbers (the IR dumps print it and read it back).
impl std::fmt::Display for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = |v: &[f64]| {
            let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            if parts.len() == 1 {
                parts[0].clone()
            } else {
                format!("[{}]", parts.join(", "))
            }
        };
        write!(f, "normalize(mean: {}, std: {})", values(&self.mean), values(&self.std))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_for_every_element_in_f64_rounded_once() {
        let n = Normalize::new(0.2860, 0.3530);
        let x: Vec<f32> = (0..=255u32).map(|v| v as f32 / 255.0).collect();
        let mut t = Tensor::f32(vec![1, 1, 16, 16], x.clone());
        n.apply(&mut t).unwrap();
        let want: Vec<f32> = x.iter().map(|&v| ((v as f64 - 0.2860) / 0.3530) as f32).collect();
        assert_eq!(t.as_f32().unwrap(), want.as_slice());
    }

    #[test]
    fn per_channel_values_follow_dim_1() {
        let n = Normalize {
            mean: vec![1.0, 2.0],
            std: vec![0.5, 4.0],
        };
        // [N=2, C=2, 2 elements]
        let mut t = Tensor::f32(vec![2, 2, 2], vec![1.0, 2.0, 2.0, 6.0, 0.0, 1.5, 10.0, -2.0]);
        n.apply(&mut t).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0.0, 2.0, 0.0, 1.0, -2.0, 1.0, 2.0, -1.0]);
        let mut wrong = Tensor::f32(vec![1, 3, 1], vec![0.0; 3]);
        assert_eq!(
            n.apply(&mut wrong),
            Err(NormalizeError::Channels {
                channels: 2,
                shape: vec![1, 3, 1]
            })
        );
        let mut rank1 = Tensor::f32(vec![2], vec![0.0; 2]);
        assert!(n.apply(&mut rank1).is_err());
    }

    #[test]
    fn checks_refuse_what_cannot_be_applied() {
        assert!(Normalize::new(0.5, 0.25).check().is_ok());
        for bad in [
            Normalize::new(0.5, 0.0),
            Normalize::new(0.5, -1.0),
            Normalize::new(f64::NAN, 1.0),
            Normalize::new(0.0, f64::INFINITY),
            Normalize {
                mean: vec![0.0, 1.0],
                std: vec![1.0],
            },
            Normalize {
                mean: vec![],
                std: vec![],
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let n = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        assert!(n.check_shape(&[None, Some(3), Some(8)]).is_ok());
        assert!(n.check_shape(&[None, Some(1), Some(8)]).is_err());
        assert!(n.check_shape(&[None, None]).is_err());
        assert!(Normalize::new(0.0, 1.0).check_shape(&[None]).is_ok());
    }

    #[test]
    fn prints_in_the_recipe_syntax() {
        assert_eq!(
            Normalize::new(0.2860, 0.3530).to_string(),
            "normalize(mean: 0.286, std: 0.353)"
        );
        let n = Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        };
        assert_eq!(
            n.to_string(),
            "normalize(mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])"
        );
    }
}
