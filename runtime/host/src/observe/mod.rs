//! Calibration observers: the statistics that calibration (and QAT) streams tensors through to
//! choose each tensor's range, with torch.ao.quantization's semantics, in pure Rust.
//!
//! - [`MinMaxObserver`] (`MinMaxObserver`): the running min and max.
//! - [`MovingAverageMinMaxObserver`] (`MovingAverageMinMaxObserver`): the first batch sets min and
//!   max, then `x = x + c·(new − x)`.
//! - [`PerChannelMinMaxObserver`] (`PerChannelMinMaxObserver`, `MovingAveragePerChannelMinMaxObserver`):
//!   either of the above per channel along an axis.
//! - [`HistogramObserver`] (`HistogramObserver`): a histogram, then `_non_linear_param_search` (L2).
//! - [`PercentileObserver`] (NVIDIA pytorch-quantization's percentile calibration): the p-th
//!   percentile of `|x|`.
//!
//! [`ObserverState`] is the closed enum over them that the compiler stores per observed tensor.
//! Quantization parameters come only from `quant.rs` ([`qparams_affine`], [`qparams_symmetric`]).
//!
//! **Non-finite input** (DESIGN problem 2): every batch is checked before any state changes; the
//! first NaN or ±inf returns [`ObserveError::NonFinite`] with its index and value and the observer
//! is left exactly as it was. (PyTorch's min/max observers absorb the NaN and fail later with
//! `min nan should be less than max nan`; its `HistogramObserver` silently drops ±inf.)
//!
//! Empty batches are ignored (PyTorch returns early on `numel() == 0`); `range()` of an observer
//! that never saw a value is [`ObserveError::NoData`] (PyTorch warns and returns scale 1, zp 0).
//!
//! One file per observer family: [`minmax`], [`histogram`] (its binning and range search are
//! described there), [`percentile`], and [`state`] (the closed enum); every item is re-exported
//! here, so `observe::HistogramObserver` and friends keep their paths.

use qc_runtime::quant::{qparams_affine, qparams_symmetric, QParams, QRange, QuantError};

/// Bins that [`ObserverState::range`] assumes for the histogram search: `2^8`, as PyTorch's 8-bit dtypes.
pub const DEFAULT_LEVELS: u32 = 256;

/// PyTorch's `stepsize` of `_non_linear_param_search`: the quantile granularity of the search.
pub const HISTOGRAM_SEARCH_STEP: f64 = 1e-5;

/// Mantissa bits that select a [`PercentileObserver`] bucket (relative resolution `2^-10`).
pub const PERCENTILE_MANTISSA_BITS: u32 = 10;

const PERCENTILE_SHIFT: u32 = 23 - PERCENTILE_MANTISSA_BITS;

/// The most histogram bins an observer accepts (the recipe language's limit, `1 << 20`).
pub const MAX_BINS: u32 = 1 << 20;

/// Why an observer refused a batch or a request. Every field is named so the compiler can render
/// "layer, step, statistic".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObserveError {
    /// `values[index]` is NaN or ±inf; the observer is unchanged. `statistic` is the one it would
    /// have corrupted: `"min"` (NaN, −inf) or `"max"` (+inf) for min/max observers,
    /// `"histogram"` for the histogram and percentile observers.
    #[error("element {index} of the batch is {value}; the {statistic} statistic was not updated")]
    NonFinite {
        index: usize,
        value: f32,
        statistic: &'static str,
    },
    /// A range was asked of an observer that never saw a value.
    #[error("the {observer} observer has not seen any values")]
    NoData { observer: &'static str },
    /// A construction parameter is out of its domain.
    #[error("{observer} observer: `{parameter}` = {value} is invalid, expected {expected}")]
    BadParameter {
        observer: &'static str,
        parameter: &'static str,
        value: f64,
        expected: &'static str,
    },
    /// `values.len()` is not the product of `shape`.
    #[error("{len} values do not fill shape {shape:?}")]
    ShapeMismatch { len: usize, shape: Vec<usize> },
    /// The channel axis is not an axis of the shape.
    #[error("channel axis {axis} is out of range for a rank-{rank} tensor")]
    AxisOutOfRange { axis: usize, rank: usize },
    /// A per-channel batch uses a different axis than earlier batches.
    #[error("channel axis {got} differs from axis {expected} of earlier batches")]
    AxisChanged { expected: usize, got: usize },
    /// A per-channel batch has a different number of channels than earlier batches.
    #[error("{got} channels differ from the {expected} channels of earlier batches")]
    ChannelCountChanged { expected: usize, got: usize },
    /// `observe` on a per-channel observer or `observe_per_channel` on a per-tensor one.
    #[error("the {observer} observer is {built}; it cannot take a {given} batch")]
    Granularity {
        observer: &'static str,
        built: &'static str,
        given: &'static str,
    },
    /// Only the min/max observers have a per-channel form.
    #[error("the {observer} observer has no per-channel form")]
    NoPerChannel { observer: &'static str },
    /// `quant.rs` refused the observed range.
    #[error("no quantization parameters for range [{min}, {max}]: {source}")]
    QParams { min: f32, max: f32, source: QuantError },
}

/// Which observer, with its parameters: the runtime's mirror of the recipe's `Observer`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverKind {
    /// `minmax`.
    MinMax,
    /// `moving_average_minmax(momentum)`, momentum in `(0, 1]` (PyTorch's `averaging_constant`).
    MovingAverageMinMax { momentum: f64 },
    /// `histogram(bins)`, bins in `1..=MAX_BINS`.
    Histogram { bins: u32 },
    /// `percentile(p)`, p in `(0, 100]`.
    Percentile { p: f64 },
}

impl ObserverKind {
    /// The name as written in a recipe.
    pub fn name(&self) -> &'static str {
        match self {
            ObserverKind::MinMax => "minmax",
            ObserverKind::MovingAverageMinMax { .. } => "moving_average_minmax",
            ObserverKind::Histogram { .. } => "histogram",
            ObserverKind::Percentile { .. } => "percentile",
        }
    }
}

/// A per-tensor result, or one per channel along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed<T> {
    /// One value for the whole tensor.
    PerTensor(T),
    /// One value per index of `axis`.
    PerChannel { axis: usize, channels: Vec<T> },
}

impl<T> Observed<T> {
    /// The per-tensor value, or `None` for a per-channel result.
    pub fn per_tensor(self) -> Option<T> {
        match self {
            Observed::PerTensor(v) => Some(v),
            Observed::PerChannel { .. } => None,
        }
    }

    /// Every value: one for per-tensor, one per channel otherwise.
    pub fn values(&self) -> &[T] {
        match self {
            Observed::PerTensor(v) => std::slice::from_ref(v),
            Observed::PerChannel { channels, .. } => channels,
        }
    }

    /// Applies `f` to every value, keeping the granularity.
    pub fn try_map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Observed<U>, E> {
        Ok(match self {
            Observed::PerTensor(v) => Observed::PerTensor(f(v)?),
            Observed::PerChannel { axis, channels } => Observed::PerChannel {
                axis,
                channels: channels.into_iter().map(f).collect::<Result<_, _>>()?,
            },
        })
    }
}

/// Quantization parameters of `[min, max]`, built only on quant.rs's functions.
pub fn qparams_for_range(
    min: f32,
    max: f32,
    range: QRange,
    symmetric: bool,
    power_of_two: bool,
) -> Result<QParams, ObserveError> {
    let p = if symmetric {
        qparams_symmetric(min, max, range, power_of_two)
    } else {
        qparams_affine(min, max, range, power_of_two)
    };
    p.map_err(|source| ObserveError::QParams { min, max, source })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The first non-finite element as a min/max observer reports it.
fn check_minmax(values: &[f32]) -> Result<(), ObserveError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => {
            let value = values[index];
            let statistic = if value == f32::INFINITY { "max" } else { "min" };
            Err(ObserveError::NonFinite {
                index,
                value,
                statistic,
            })
        }
    }
}

/// The first non-finite element as a histogram observer reports it.
fn check_histogram(values: &[f32]) -> Result<(), ObserveError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(ObserveError::NonFinite {
            index,
            value: values[index],
            statistic: "histogram",
        }),
    }
}

/// `(min, max)` of finite, non-empty values.
fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

/// PyTorch's moving average, in `f32` as PyTorch computes it: `x + c·(new − x)`.
fn average(old: f32, new: f32, momentum: f32) -> f32 {
    old + momentum * (new - old)
}

fn check_momentum(observer: &'static str, momentum: f64) -> Result<f32, ObserveError> {
    if momentum > 0.0 && momentum <= 1.0 {
        Ok(momentum as f32)
    } else {
        Err(ObserveError::BadParameter {
            observer,
            parameter: "momentum",
            value: momentum,
            expected: "a number in (0, 1]",
        })
    }
}

mod histogram;
mod minmax;
mod percentile;
mod state;

pub use histogram::*;
pub use minmax::*;
pub use percentile::*;
pub use state::*;

#[cfg(test)]
mod tests;
