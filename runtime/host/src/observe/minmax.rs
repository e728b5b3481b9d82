//! Min/max observers: running ([`MinMaxObserver`]), moving average
//! ([`MovingAverageMinMaxObserver`]) and per channel ([`PerChannelMinMaxObserver`]).

use super::*;

/// PyTorch's `MinMaxObserver`: the running minimum and maximum of every value seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinMaxObserver {
    range: Option<(f32, f32)>,
}

impl MinMaxObserver {
    /// An observer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// `min = min(min, min(values))`, `max = max(max, max(values))`; unchanged on error.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        check_minmax(values)?;
        if values.is_empty() {
            return Ok(());
        }
        let (lo, hi) = min_max(values);
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
        Ok(())
    }

    /// The observed `(min, max)`.
    pub fn range(&self) -> Result<(f32, f32), ObserveError> {
        self.range.ok_or(ObserveError::NoData { observer: "minmax" })
    }
}

/// PyTorch's `MovingAverageMinMaxObserver`: the first batch sets min and max, each later batch
/// moves them by `x = x + momentum·(batch − x)` (in `f32`, as PyTorch).
#[derive(Debug, Clone, PartialEq)]
pub struct MovingAverageMinMaxObserver {
    momentum: f32,
    range: Option<(f32, f32)>,
}

impl MovingAverageMinMaxObserver {
    /// `momentum` (PyTorch's `averaging_constant`, default 0.01) must be in `(0, 1]`.
    pub fn new(momentum: f64) -> Result<Self, ObserveError> {
        Ok(MovingAverageMinMaxObserver {
            momentum: check_momentum("moving_average_minmax", momentum)?,
            range: None,
        })
    }

    /// Moves the averages toward this batch's min and max; unchanged on error.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        check_minmax(values)?;
        if values.is_empty() {
            return Ok(());
        }
        let (lo, hi) = min_max(values);
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((a, b)) => (average(a, lo, self.momentum), average(b, hi, self.momentum)),
        });
        Ok(())
    }

    /// The averaged `(min, max)`.
    pub fn range(&self) -> Result<(f32, f32), ObserveError> {
        self.range.ok_or(ObserveError::NoData {
            observer: "moving_average_minmax",
        })
    }
}

/// PyTorch's `PerChannelMinMaxObserver` (no momentum) and `MovingAveragePerChannelMinMaxObserver`
/// (with momentum): min and max per index of a channel axis.
///
/// The axis and channel count are fixed by the first batch; later batches must agree (PyTorch
/// silently resets its buffers when the channel count changes).
#[derive(Debug, Clone, PartialEq)]
pub struct PerChannelMinMaxObserver {
    momentum: Option<f32>,
    axis: Option<usize>,
    ranges: Vec<(f32, f32)>,
}

impl PerChannelMinMaxObserver {
    /// Running min and max per channel.
    pub fn new() -> Self {
        PerChannelMinMaxObserver {
            momentum: None,
            axis: None,
            ranges: vec![],
        }
    }

    /// Moving averages per channel, momentum in `(0, 1]`.
    pub fn moving_average(momentum: f64) -> Result<Self, ObserveError> {
        Ok(PerChannelMinMaxObserver {
            momentum: Some(check_momentum("moving_average_minmax", momentum)?),
            axis: None,
            ranges: vec![],
        })
    }

    /// The recipe name of this observer.
    pub fn name(&self) -> &'static str {
        match self.momentum {
            None => "minmax",
            Some(_) => "moving_average_minmax",
        }
    }

    /// Observes a row-major tensor of `shape` whose channels lie along `axis`; unchanged on error.
    pub fn observe(&mut self, values: &[f32], shape: &[usize], axis: usize) -> Result<(), ObserveError> {
        let needed: usize = shape.iter().product();
        if values.len() != needed {
            return Err(ObserveError::ShapeMismatch {
                len: values.len(),
                shape: shape.to_vec(),
            });
        }
        if axis >= shape.len() {
            return Err(ObserveError::AxisOutOfRange {
                axis,
                rank: shape.len(),
            });
        }
        if let Some(expected) = self.axis {
            if expected != axis {
                return Err(ObserveError::AxisChanged { expected, got: axis });
            }
        }
        let c = shape[axis];
        if !self.ranges.is_empty() && self.ranges.len() != c {
            return Err(ObserveError::ChannelCountChanged {
                expected: self.ranges.len(),
                got: c,
            });
        }
        check_minmax(values)?;
        if values.is_empty() {
            return Ok(());
        }
        // Layout [outer, c, inner].
        let inner: usize = shape[axis + 1..].iter().product();
        let mut batch = vec![(f32::INFINITY, f32::NEG_INFINITY); c];
        for (i, chunk) in values.chunks(inner).enumerate() {
            let (lo, hi) = min_max(chunk);
            let r = &mut batch[i % c];
            *r = (r.0.min(lo), r.1.max(hi));
        }
        if self.ranges.is_empty() {
            self.ranges = batch;
        } else {
            for (r, (lo, hi)) in self.ranges.iter_mut().zip(batch) {
                *r = match self.momentum {
                    None => (r.0.min(lo), r.1.max(hi)),
                    Some(m) => (average(r.0, lo, m), average(r.1, hi, m)),
                };
            }
        }
        self.axis = Some(axis);
        Ok(())
    }

    /// The `(min, max)` of each channel, as [`Observed::PerChannel`] with the channel axis.
    pub fn ranges(&self) -> Result<Observed<(f32, f32)>, ObserveError> {
        match self.axis {
            Some(axis) => Ok(Observed::PerChannel {
                axis,
                channels: self.ranges.clone(),
            }),
            None => Err(ObserveError::NoData { observer: self.name() }),
        }
    }
}

impl Default for PerChannelMinMaxObserver {
    fn default() -> Self {
        Self::new()
    }
}
