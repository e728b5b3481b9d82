//! [`ObserverState`]: the closed enum over every observer that the compiler stores per observed
//! tensor, and its range and parameter choice.

use super::*;

/// One observed tensor's state: which observer, per tensor or per channel, and what it has seen.
#[derive(Debug, Clone, PartialEq)]
pub enum ObserverState {
    /// Per-tensor `minmax`.
    MinMax(MinMaxObserver),
    /// Per-tensor `moving_average_minmax`.
    MovingAverageMinMax(MovingAverageMinMaxObserver),
    /// Per-channel `minmax` or `moving_average_minmax`.
    PerChannel(PerChannelMinMaxObserver),
    /// Per-tensor `histogram`.
    Histogram(HistogramObserver),
    /// Per-tensor `percentile`.
    Percentile(PercentileObserver),
}

impl ObserverState {
    /// A per-tensor observer of `kind`; errors for parameters out of their domain.
    pub fn per_tensor(kind: ObserverKind) -> Result<Self, ObserveError> {
        Ok(match kind {
            ObserverKind::MinMax => ObserverState::MinMax(MinMaxObserver::new()),
            ObserverKind::MovingAverageMinMax { momentum } => {
                ObserverState::MovingAverageMinMax(MovingAverageMinMaxObserver::new(momentum)?)
            }
            ObserverKind::Histogram { bins } => ObserverState::Histogram(HistogramObserver::new(bins)?),
            ObserverKind::Percentile { p } => ObserverState::Percentile(PercentileObserver::new(p)?),
        })
    }

    /// A per-channel observer of `kind` (min/max kinds only; the axis comes with each batch).
    pub fn per_channel(kind: ObserverKind) -> Result<Self, ObserveError> {
        Ok(ObserverState::PerChannel(match kind {
            ObserverKind::MinMax => PerChannelMinMaxObserver::new(),
            ObserverKind::MovingAverageMinMax { momentum } => PerChannelMinMaxObserver::moving_average(momentum)?,
            _ => return Err(ObserveError::NoPerChannel { observer: kind.name() }),
        }))
    }

    /// The observer's recipe name.
    pub fn name(&self) -> &'static str {
        match self {
            ObserverState::MinMax(_) => "minmax",
            ObserverState::MovingAverageMinMax(_) => "moving_average_minmax",
            ObserverState::PerChannel(o) => o.name(),
            ObserverState::Histogram(_) => "histogram",
            ObserverState::Percentile(_) => "percentile",
        }
    }

    /// Whether this observer keeps one range per channel.
    pub fn is_per_channel(&self) -> bool {
        matches!(self, ObserverState::PerChannel(_))
    }

    /// Observes a batch (per-tensor observers). A non-finite element returns
    /// [`ObserveError::NonFinite`] and leaves the state unchanged; empty batches are ignored.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        match self {
            ObserverState::MinMax(o) => o.observe(values),
            ObserverState::MovingAverageMinMax(o) => o.observe(values),
            ObserverState::Histogram(o) => o.observe(values),
            ObserverState::Percentile(o) => o.observe(values),
            ObserverState::PerChannel(o) => Err(ObserveError::Granularity {
                observer: o.name(),
                built: "per-channel",
                given: "per-tensor",
            }),
        }
    }

    /// Observes a row-major tensor of `shape` with channels along `axis` (per-channel observers).
    /// Same error rules as [`Self::observe`], plus shape, axis and channel-count checks.
    pub fn observe_per_channel(&mut self, values: &[f32], shape: &[usize], axis: usize) -> Result<(), ObserveError> {
        match self {
            ObserverState::PerChannel(o) => o.observe(values, shape, axis),
            _ => Err(ObserveError::Granularity {
                observer: self.name(),
                built: "per-tensor",
                given: "per-channel",
            }),
        }
    }

    /// The range to quantize: min/max (averaged) for the min/max kinds, the search result for
    /// `histogram` (with [`DEFAULT_LEVELS`]), the clipped range for `percentile`.
    pub fn range(&self) -> Result<Observed<(f32, f32)>, ObserveError> {
        self.range_for_levels(DEFAULT_LEVELS)
    }

    fn range_for_levels(&self, levels: u32) -> Result<Observed<(f32, f32)>, ObserveError> {
        Ok(match self {
            ObserverState::MinMax(o) => Observed::PerTensor(o.range()?),
            ObserverState::MovingAverageMinMax(o) => Observed::PerTensor(o.range()?),
            ObserverState::Histogram(o) => Observed::PerTensor(o.search_range(levels)?),
            ObserverState::Percentile(o) => Observed::PerTensor(o.range()?),
            ObserverState::PerChannel(o) => o.ranges()?,
        })
    }

    /// Quantization parameters for the observed range(s), from quant.rs's [`qparams_affine`] or
    /// [`qparams_symmetric`] (with `pow2_scale` when `power_of_two`). The histogram search uses
    /// `range`'s number of levels, `qmax − qmin + 1`. `min == max` is fine (quant.rs widens the
    /// range to include 0; `[0, 0]` gives scale `SCALE_EPS`).
    pub fn qparams(
        &self,
        range: QRange,
        symmetric: bool,
        power_of_two: bool,
    ) -> Result<Observed<QParams>, ObserveError> {
        let levels = (range.qmax() - range.qmin() + 1) as u32;
        self.range_for_levels(levels)?
            .try_map(|(min, max)| qparams_for_range(min, max, range, symmetric, power_of_two))
    }
}
