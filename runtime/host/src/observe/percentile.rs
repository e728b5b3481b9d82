//! The percentile observer (NVIDIA pytorch-quantization's percentile calibration):
//! [`PercentileObserver`].
//!
//! The clip point is the p-th percentile of `|x|` over every value seen (nearest rank: the smallest
//! `a` such that at least `p%` of the values have `|x| ≤ a`), and the range is
//! `[max(min, −a), min(max, a)]`: both tails are clipped at the same magnitude, and never widened
//! beyond what was seen (a non-negative tensor keeps `min = 0`). `p = 100` gives `max |x|` exactly.
//! This is NVIDIA pytorch-quantization's percentile calibration (histogram of `|x|`, amax at the
//! percentile), with a log-linear histogram instead of its 2048 linear bins: buckets are the top
//! 10 mantissa bits of `|x|` as an `f32`, so the result is at or above the exact percentile by less
//! than a factor `1 + 2^-10` (an eighth of an int8 step), independent of batch order and of
//! outliers; memory grows with the span of magnitudes seen (at most 2 MiB).

use super::*;

/// Clips the range at the p-th percentile of `|x|` (see the module docs): a log-linear histogram of
/// `|x|` plus the exact min, max and max `|x|`.
#[derive(Debug, Clone, PartialEq)]
pub struct PercentileObserver {
    p: f64,
    /// Counts of buckets `first_key..first_key + counts.len()`; a bucket is `|x|.to_bits() >> 13`.
    counts: Vec<u64>,
    first_key: u32,
    total: u64,
    min: f32,
    max: f32,
    max_abs: f32,
}

fn percentile_key(abs: f32) -> u32 {
    abs.to_bits() >> PERCENTILE_SHIFT
}

impl PercentileObserver {
    /// `p` in `(0, 100]` (the recipe's default: 99.99).
    pub fn new(p: f64) -> Result<Self, ObserveError> {
        if !(p > 0.0 && p <= 100.0) {
            return Err(ObserveError::BadParameter {
                observer: "percentile",
                parameter: "p",
                value: p,
                expected: "a percentage in (0, 100]",
            });
        }
        Ok(PercentileObserver {
            p,
            counts: vec![],
            first_key: 0,
            total: 0,
            min: 0.0,
            max: 0.0,
            max_abs: 0.0,
        })
    }

    /// Adds a batch; unchanged on error.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        check_histogram(values)?;
        if values.is_empty() {
            return Ok(());
        }
        let (lo, hi) = min_max(values);
        let (abs_lo, abs_hi) = values.iter().fold((f32::INFINITY, 0.0f32), |(a, b), &v| {
            let m = v.abs();
            (a.min(m), b.max(m))
        });
        let (key_lo, key_hi) = (percentile_key(abs_lo), percentile_key(abs_hi));
        if self.counts.is_empty() {
            self.first_key = key_lo;
            self.counts = vec![0; (key_hi - key_lo) as usize + 1];
            self.min = lo;
            self.max = hi;
            self.max_abs = abs_hi;
        } else {
            if key_lo < self.first_key {
                let mut grown = vec![0; (self.first_key - key_lo) as usize];
                grown.extend_from_slice(&self.counts);
                self.counts = grown;
                self.first_key = key_lo;
            }
            let needed = (key_hi - self.first_key) as usize + 1;
            if needed > self.counts.len() {
                self.counts.resize(needed, 0);
            }
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
            self.max_abs = self.max_abs.max(abs_hi);
        }
        for &v in values {
            self.counts[(percentile_key(v.abs()) - self.first_key) as usize] += 1;
        }
        self.total += values.len() as u64;
        Ok(())
    }

    /// The clip magnitude `a`: at or above the p-th percentile of `|x|`, by less than a factor
    /// `1 + 2^-10`, and never above `max |x|`.
    pub fn clip_magnitude(&self) -> Result<f32, ObserveError> {
        if self.total == 0 {
            return Err(ObserveError::NoData { observer: "percentile" });
        }
        let rank = ((self.p * self.total as f64 / 100.0).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let key = self.first_key + i as u32;
                let upper = f32::from_bits((key + 1) << PERCENTILE_SHIFT);
                return Ok(upper.min(self.max_abs));
            }
        }
        Ok(self.max_abs)
    }

    /// `[max(min, −a), min(max, a)]` with `a` = [`Self::clip_magnitude`].
    pub fn range(&self) -> Result<(f32, f32), ObserveError> {
        let a = self.clip_magnitude()?;
        Ok((self.min.max(-a), self.max.min(a)))
    }
}
