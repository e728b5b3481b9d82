//! Tests of the observers: torch.ao's formulas by hand, non-finite input, histogram re-binning
//! and range search, percentiles, and the closed enum's round trips.

use super::histogram::quantization_error;
use super::*;
use qc_runtime::quant::{pow2_scale, SCALE_EPS};
use qc_runtime::tensor::SplitMix64;

fn state(kind: ObserverKind) -> ObserverState {
    ObserverState::per_tensor(kind).unwrap()
}

fn all_per_tensor_kinds() -> Vec<ObserverKind> {
    vec![
        ObserverKind::MinMax,
        ObserverKind::MovingAverageMinMax { momentum: 0.01 },
        ObserverKind::Histogram { bins: 2048 },
        ObserverKind::Percentile { p: 99.99 },
    ]
}

fn normal(rng: &mut SplitMix64) -> f32 {
    // Box–Muller; 1 − u avoids ln 0.
    let u1 = 1.0 - rng.next_f32() as f64;
    let u2 = rng.next_f32() as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Σ (x − fake_quantize(x))² with quant.rs's quantize/dequantize.
fn l2_error(values: &[f32], p: &QParams) -> f64 {
    values
        .iter()
        .map(|&x| {
            let back = p.dequantize(p.quantize(x));
            ((x - back) as f64).powi(2)
        })
        .sum()
}

// ----- min/max -----

#[test]
fn minmax_by_hand() {
    let mut o = state(ObserverKind::MinMax);
    o.observe(&[1.0, -2.0, 3.0]).unwrap();
    o.observe(&[]).unwrap();
    o.observe(&[0.5, 4.0]).unwrap();
    assert_eq!(o.range().unwrap(), Observed::PerTensor((-2.0, 4.0)));
    let p = o.qparams(QRange::U8, false, false).unwrap().per_tensor().unwrap();
    assert_eq!(p, qparams_affine(-2.0, 4.0, QRange::U8, false).unwrap());
    assert_eq!(p.scale(), 6.0 / 255.0);
    assert_eq!(p.zero_point(), 85);
    let s = o.qparams(QRange::I8, true, true).unwrap().per_tensor().unwrap();
    assert_eq!(s, qparams_symmetric(-2.0, 4.0, QRange::I8, true).unwrap());
    assert_eq!(s.scale(), pow2_scale(4.0 / 127.5));
}

#[test]
fn moving_average_sequence() {
    let mut o = state(ObserverKind::MovingAverageMinMax { momentum: 0.5 });
    o.observe(&[-1.0, 1.0]).unwrap(); // first batch sets the range
    assert_eq!(o.range().unwrap(), Observed::PerTensor((-1.0, 1.0)));
    o.observe(&[-3.0, 5.0, 0.0]).unwrap(); // −1 + 0.5·(−3 + 1), 1 + 0.5·(5 − 1)
    assert_eq!(o.range().unwrap(), Observed::PerTensor((-2.0, 3.0)));
    o.observe(&[0.0, 0.0]).unwrap(); // −2 + 0.5·2, 3 + 0.5·(−3)
    assert_eq!(o.range().unwrap(), Observed::PerTensor((-1.0, 1.5)));

    // The default momentum, in f32 exactly as PyTorch: x + c·(new − x).
    let mut o = MovingAverageMinMaxObserver::new(0.01).unwrap();
    let batches: [&[f32]; 3] = [&[-0.3, 2.0], &[-1.7, 0.9], &[0.25, 7.5]];
    let (mut lo, mut hi) = (-0.3f32, 2.0f32);
    for (i, b) in batches.iter().enumerate() {
        o.observe(b).unwrap();
        if i > 0 {
            let (blo, bhi) = min_max(b);
            lo += 0.01f32 * (blo - lo);
            hi += 0.01f32 * (bhi - hi);
        }
        assert_eq!(o.range().unwrap(), (lo, hi));
    }
    assert!((lo - (-0.3 + 0.01 * (-1.7 + 0.3))).abs() < 0.1);
}

/// A [2, 3, 4] tensor whose element at (i, j, k) is `100 i + 10 j + k`, negated where `k` is odd.
fn tensor_234() -> Vec<f32> {
    let mut v = vec![];
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                let x = (100 * i + 10 * j + k) as f32;
                v.push(if k % 2 == 1 { -x } else { x });
            }
        }
    }
    v
}

#[test]
fn per_channel_axes() {
    let x = tensor_234();
    let mut o = ObserverState::per_channel(ObserverKind::MinMax).unwrap();
    o.observe_per_channel(&x, &[2, 3, 4], 0).unwrap();
    // Axis 0: i = 0 → {0, −1, 2, −3, 10, …, 22, −23}; i = 1 → {100, …, −123}.
    assert_eq!(
        o.range().unwrap(),
        Observed::PerChannel {
            axis: 0,
            channels: vec![(-23.0, 22.0), (-123.0, 122.0)]
        }
    );
    let mut o = ObserverState::per_channel(ObserverKind::MinMax).unwrap();
    o.observe_per_channel(&x, &[2, 3, 4], 1).unwrap();
    // Axis 1: j spans i ∈ {0, 1}, k ∈ 0..4: min −(100 + 10 j + 3), max 100 + 10 j + 2.
    assert_eq!(
        o.range().unwrap(),
        Observed::PerChannel {
            axis: 1,
            channels: vec![(-103.0, 102.0), (-113.0, 112.0), (-123.0, 122.0)]
        }
    );
    // Axis 2: k even → [0, 122]; k odd → [−123, −1].
    let mut o = ObserverState::per_channel(ObserverKind::MinMax).unwrap();
    o.observe_per_channel(&x, &[2, 3, 4], 2).unwrap();
    let r = o.range().unwrap();
    assert_eq!(
        r.values(),
        &[(0.0, 120.0), (-121.0, -1.0), (2.0, 122.0), (-123.0, -3.0)]
    );

    // A second batch on axis 1 extends per channel; qparams per channel come from quant.rs.
    let mut o = ObserverState::per_channel(ObserverKind::MinMax).unwrap();
    o.observe_per_channel(&x, &[2, 3, 4], 1).unwrap();
    let y: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    o.observe_per_channel(&y[..12], &[1, 3, 4], 1).unwrap(); // i = 0 only: [−46, 44] at most
    o.observe_per_channel(&[500.0, 0.0, 0.0], &[1, 3], 1).unwrap();
    assert_eq!(
        o.range().unwrap().values(),
        &[(-103.0, 500.0), (-113.0, 112.0), (-123.0, 122.0)]
    );
    let q = o.qparams(QRange::I8, true, false).unwrap();
    let want: Vec<QParams> = [(-103.0, 500.0), (-113.0, 112.0), (-123.0, 122.0)]
        .iter()
        .map(|&(a, b)| qparams_symmetric(a, b, QRange::I8, false).unwrap())
        .collect();
    assert_eq!(
        q,
        Observed::PerChannel {
            axis: 1,
            channels: want
        }
    );

    // Moving average per channel.
    let mut o = ObserverState::per_channel(ObserverKind::MovingAverageMinMax { momentum: 0.5 }).unwrap();
    o.observe_per_channel(&[1.0, -1.0, 2.0, -2.0], &[2, 2], 0).unwrap();
    o.observe_per_channel(&[3.0, 3.0, 0.0, 0.0], &[2, 2], 0).unwrap();
    assert_eq!(o.range().unwrap().values(), &[(1.0, 2.0), (-1.0, 1.0)]);
}

#[test]
fn per_channel_errors_leave_state_unchanged() {
    let x = tensor_234();
    let mut o = ObserverState::per_channel(ObserverKind::MinMax).unwrap();
    o.observe_per_channel(&x, &[2, 3, 4], 1).unwrap();
    let before = o.clone();
    assert_eq!(
        o.observe_per_channel(&x, &[2, 3, 4], 0),
        Err(ObserveError::AxisChanged { expected: 1, got: 0 })
    );
    assert_eq!(
        o.observe_per_channel(&x, &[3, 2, 4], 1),
        Err(ObserveError::ChannelCountChanged { expected: 3, got: 2 })
    );
    assert_eq!(
        o.observe_per_channel(&x, &[2, 3, 4], 3),
        Err(ObserveError::AxisOutOfRange { axis: 3, rank: 3 })
    );
    assert_eq!(
        o.observe_per_channel(&x[..5], &[2, 3, 4], 1),
        Err(ObserveError::ShapeMismatch {
            len: 5,
            shape: vec![2, 3, 4]
        })
    );
    let mut bad = x.clone();
    bad[7] = f32::NEG_INFINITY;
    assert_eq!(
        o.observe_per_channel(&bad, &[2, 3, 4], 1),
        Err(ObserveError::NonFinite {
            index: 7,
            value: f32::NEG_INFINITY,
            statistic: "min"
        })
    );
    assert_eq!(o, before);
    assert!(matches!(o.observe(&x), Err(ObserveError::Granularity { .. })));
    assert!(matches!(
        state(ObserverKind::MinMax).observe_per_channel(&x, &[2, 3, 4], 0),
        Err(ObserveError::Granularity { .. })
    ));
    assert_eq!(
        ObserverState::per_channel(ObserverKind::Histogram { bins: 8 }),
        Err(ObserveError::NoPerChannel { observer: "histogram" })
    );
    assert_eq!(
        ObserverState::per_channel(ObserverKind::MinMax).unwrap().range(),
        Err(ObserveError::NoData { observer: "minmax" })
    );
}

// ----- shared behaviour -----

#[test]
fn non_finite_batches_leave_every_observer_unchanged() {
    let mut rng = SplitMix64::new(3);
    let good: Vec<f32> = (0..1000).map(|_| rng.uniform(-2.0, 5.0)).collect();
    for kind in all_per_tensor_kinds() {
        let mut o = state(kind);
        o.observe(&good).unwrap();
        let before = o.clone();
        let histogram = matches!(kind, ObserverKind::Histogram { .. } | ObserverKind::Percentile { .. });
        for (bad, index, statistic) in [
            (vec![1.0, f32::NAN, f32::INFINITY], 1, "min"),
            (vec![1.0, 100.0, f32::INFINITY, f32::NAN], 2, "max"),
            (vec![f32::NEG_INFINITY], 0, "min"),
            (vec![-1000.0, 0.0, 1000.0, 2.0, f32::NAN], 4, "min"),
        ] {
            let err = o.observe(&bad).unwrap_err();
            match err {
                ObserveError::NonFinite {
                    index: i,
                    value,
                    statistic: s,
                } => {
                    assert_eq!(i, index, "{kind:?}");
                    assert!(value.to_bits() == bad[index].to_bits(), "{kind:?}");
                    assert_eq!(s, if histogram { "histogram" } else { statistic }, "{kind:?}");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            assert_eq!(o, before, "{kind:?}");
        }
        assert_eq!(o.range(), before.range());
    }
    let err = ObserveError::NonFinite {
        index: 4,
        value: f32::NAN,
        statistic: "min",
    };
    assert_eq!(
        err.to_string(),
        "element 4 of the batch is NaN; the min statistic was not updated"
    );
}

#[test]
fn no_data() {
    for kind in all_per_tensor_kinds() {
        let mut o = state(kind);
        assert_eq!(o.range(), Err(ObserveError::NoData { observer: kind.name() }));
        o.observe(&[]).unwrap();
        assert_eq!(
            o.qparams(QRange::U8, false, false),
            Err(ObserveError::NoData { observer: kind.name() })
        );
        // A rejected batch is not data either.
        assert!(o.observe(&[f32::NAN]).is_err());
        assert_eq!(o.range(), Err(ObserveError::NoData { observer: kind.name() }));
    }
}

#[test]
fn min_equals_max_gives_a_valid_scale() {
    for kind in all_per_tensor_kinds() {
        for c in [2.5f32, -0.75, 0.0] {
            let mut o = state(kind);
            o.observe(&[c; 10]).unwrap();
            o.observe(&[c]).unwrap();
            assert_eq!(o.range().unwrap(), Observed::PerTensor((c, c)), "{kind:?}");
            for (range, symmetric, pow2) in [
                (QRange::U8, false, false),
                (QRange::I8, true, false),
                (QRange::U8, true, true),
            ] {
                let p = o.qparams(range, symmetric, pow2).unwrap().per_tensor().unwrap();
                assert!(p.scale().is_normal() && p.scale() > 0.0, "{kind:?} {c} {p:?}");
                assert!(range.contains(p.zero_point()));
                if c == 0.0 && !pow2 {
                    assert_eq!(p.scale(), SCALE_EPS);
                }
                // c itself survives the round trip (to within half a step).
                assert!((p.dequantize(p.quantize(c)) - c).abs() <= p.scale() * 0.5 + 1e-6);
            }
        }
    }
}

#[test]
fn bad_parameters() {
    for kind in [
        ObserverKind::MovingAverageMinMax { momentum: 0.0 },
        ObserverKind::MovingAverageMinMax { momentum: 1.5 },
        ObserverKind::MovingAverageMinMax { momentum: f64::NAN },
        ObserverKind::Histogram { bins: 0 },
        ObserverKind::Histogram { bins: MAX_BINS + 1 },
        ObserverKind::Percentile { p: 0.0 },
        ObserverKind::Percentile { p: 100.5 },
        ObserverKind::Percentile { p: f64::NAN },
    ] {
        assert!(
            matches!(ObserverState::per_tensor(kind), Err(ObserveError::BadParameter { .. })),
            "{kind:?}"
        );
    }
    assert!(ObserverState::per_tensor(ObserverKind::MovingAverageMinMax { momentum: 1.0 }).is_ok());
    assert!(ObserverState::per_tensor(ObserverKind::Percentile { p: 100.0 }).is_ok());
    assert!(ObserverState::per_tensor(ObserverKind::Histogram { bins: 1 }).is_ok());
}

// ----- histogram -----

#[test]
fn histogram_bins_and_rebinning_keep_every_count() {
    let mut h = HistogramObserver::new(4).unwrap();
    h.observe(&[0.0, 1.0, 1.5, 4.0]).unwrap(); // w = 1: bins [0,1) [1,2) [2,3) [3,4]
    assert_eq!(h.histogram().unwrap(), (0.0, 4.0, &[1.0, 2.0, 0.0, 1.0][..]));
    h.observe(&[2.0]).unwrap(); // same range: just added
    assert_eq!(h.histogram().unwrap().2, &[1.0, 2.0, 1.0, 1.0]);
    h.observe(&[-4.0]).unwrap(); // [−4, 4], w = 2: old bins pair up
    assert_eq!(h.histogram().unwrap(), (-4.0, 4.0, &[1.0, 0.0, 3.0, 2.0][..]));
    h.observe(&[5.0]).unwrap(); // [−4, 5], w = 2.25: old bins split by overlap
    let (lo, hi, counts) = h.histogram().unwrap();
    assert_eq!((lo, hi), (-4.0, 5.0));
    assert!((counts.iter().sum::<f64>() - 7.0).abs() < 1e-12);
    // Old [−4,−2) → new bin 0; old [0,2) (3) → new [0.5,2.75): 0.5/2 in bin 1, 1.5/2 in bin 2;
    // old [2,4] (2) → 0.75/2 in bin 2, 1.25/2 in bin 3; 5.0 → bin 3.
    let want = [1.0, 0.75, 2.25 + 0.75, 1.25 + 1.0];
    for (c, w) in counts.iter().zip(want) {
        assert!((c - w).abs() < 1e-12, "{counts:?}");
    }

    // A constant first batch keeps its count when the range widens.
    let mut h = HistogramObserver::new(8).unwrap();
    h.observe(&[3.0; 5]).unwrap();
    h.observe(&[-5.0]).unwrap(); // [−5, 3]: 3.0 is the right edge → last bin
    assert_eq!(h.histogram().unwrap().2, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]);
}

#[test]
fn histogram_on_uniform_data_keeps_nearly_everything() {
    let mut rng = SplitMix64::new(11);
    let mut o = state(ObserverKind::Histogram { bins: 2048 });
    let mut all = vec![];
    for _ in 0..10 {
        let batch: Vec<f32> = (0..1000).map(|_| rng.uniform(-1.0, 3.0)).collect();
        o.observe(&batch).unwrap();
        all.extend(batch);
    }
    let (lo, hi) = o.range().unwrap().per_tensor().unwrap();
    let (min, max) = min_max(&all);
    let inside = all.iter().filter(|&&x| x >= lo && x <= hi).count();
    assert!(inside as f64 >= 0.99 * all.len() as f64, "[{lo}, {hi}] keeps {inside}");
    assert!(
        lo >= min && hi <= max && hi - lo >= 0.99 * (max - min),
        "[{lo}, {hi}] of [{min}, {max}]"
    );
    // Its error is no worse than min/max's by more than a hair.
    let p = o.qparams(QRange::U8, false, false).unwrap().per_tensor().unwrap();
    let pm = qparams_affine(min, max, QRange::U8, false).unwrap();
    assert!(l2_error(&all, &p) <= 1.01 * l2_error(&all, &pm));
    // Fewer levels make rounding noise dearer relative to clipping: 4 bits clip more.
    let ObserverState::Histogram(h) = &o else {
        unreachable!()
    };
    let (lo4, hi4) = h.search_range(16).unwrap();
    assert!(hi4 - lo4 < hi - lo, "4-bit [{lo4}, {hi4}] vs 8-bit [{lo}, {hi}]");
    let u4 = QRange::new(4, false).unwrap();
    assert_eq!(
        o.qparams(u4, false, false).unwrap().per_tensor().unwrap(),
        qparams_affine(lo4, hi4, u4, false).unwrap()
    );
}

/// `n` standard normal samples in batches of 100 000, plus one value at 1000σ; returns every
/// value and the histogram observer's 8-bit affine parameters.
fn outlier_case(n: usize, seed: u64) -> (Vec<f32>, QParams) {
    let mut rng = SplitMix64::new(seed);
    let mut o = state(ObserverKind::Histogram { bins: 2048 });
    let mut all = Vec::with_capacity(n + 1);
    while all.len() < n {
        let mut batch: Vec<f32> = (0..100_000.min(n - all.len())).map(|_| normal(&mut rng)).collect();
        if all.is_empty() {
            batch.push(1000.0);
        }
        o.observe(&batch).unwrap();
        all.extend(batch);
    }
    let p = o.qparams(QRange::U8, false, false).unwrap().per_tensor().unwrap();
    (all, p)
}

fn dequantized_range(p: &QParams) -> (f32, f32) {
    (p.dequantize(p.range().qmin()), p.dequantize(p.range().qmax()))
}

#[test]
fn histogram_clips_a_huge_outlier_when_that_lowers_l2_error() {
    // 2,000,000 standard normal samples plus one at 1000σ: rounding noise of the min/max grid
    // (step ≈ 3.9σ) is ≈ 0.86σ² per sample ≈ 1.7e6, more than clipping the outlier (≈ 9.9e5).
    let (all, p) = outlier_case(2_000_000, 5);
    let (min, max) = min_max(&all);
    assert_eq!(max, 1000.0);
    let (lo, hi) = dequantized_range(&p);
    assert!(
        hi < 10.0 && hi > 3.0 && lo < -3.0 && lo >= min - p.scale(),
        "[{lo}, {hi}]"
    );
    assert!(hi - lo < 0.02 * (max - min));
    let pm = qparams_affine(min, max, QRange::U8, false).unwrap();
    let (e_hist, e_minmax) = (l2_error(&all, &p), l2_error(&all, &pm));
    assert!(e_hist < 0.7 * e_minmax, "histogram {e_hist} vs minmax {e_minmax}");
}

#[test]
fn histogram_keeps_an_outlier_that_l2_says_to_keep() {
    // 10,000 samples and one at 1000σ: keeping the outlier costs ≤ σ² per sample ≈ 1e4,
    // clipping it ≈ 1e6, at any bit width.
    let (all, p) = outlier_case(10_000, 8);
    let (min, _) = min_max(&all);
    assert!(dequantized_range(&p).1 > 990.0, "{p:?}");
    let clipped = qparams_affine(min, 4.0, QRange::U8, false).unwrap();
    assert!(l2_error(&all, &p) < 0.05 * l2_error(&all, &clipped));

    // 200,000 samples: PyTorch's search (first candidate accepted unscored) clips the outlier
    // here; qc scores the full range first and keeps it, at a 5x lower error.
    let (all, p) = outlier_case(200_000, 9);
    let (min, _) = min_max(&all);
    assert!(dequantized_range(&p).1 > 990.0, "{p:?}");
    let clipped = qparams_affine(min, 4.5, QRange::U8, false).unwrap();
    assert!(l2_error(&all, &p) < 0.3 * l2_error(&all, &clipped));
}

#[test]
fn histogram_search_matches_pytorch_on_a_small_case() {
    // Two values at the ends of 2048 bins. The first candidate drops the top bin (r moves one
    // bin, l none) and clips 1.0 by a bin: error 32.6·w² against 24.7·w² for the full range, so
    // qc stops at [min, max]. (PyTorch accepts that first candidate unscored, then stops at
    // [0, 0]: it returns [0, 2047/2048].)
    let mut o = HistogramObserver::new(2048).unwrap();
    o.observe(&[0.0, 1.0]).unwrap();
    assert_eq!(o.search_range(256).unwrap(), (0.0, 1.0));
    let w = 1.0 / 2048.0;
    let full = quantization_error(&[(0, 1.0), (2047, 1.0)], w, 0, 2047, 256.0);
    let first = quantization_error(&[(0, 1.0), (2047, 1.0)], w, 0, 2046, 256.0);
    assert!(
        (full / (w * w) - 74.0 / 3.0).abs() < 1e-6 && first > full,
        "{full} {first}"
    );
    // One bin: nothing to search.
    let mut o = HistogramObserver::new(1).unwrap();
    o.observe(&[-1.0, 2.0]).unwrap();
    assert_eq!(o.search_range(256).unwrap(), (-1.0, 2.0));
    assert!(matches!(o.search_range(1), Err(ObserveError::BadParameter { .. })));
}

#[test]
fn quantization_error_matches_direct_integration() {
    // One source bin [0.3, 0.4) (count 2) against 4 destination bins over [0, 1): the error is
    // 2/0.1 · ∫ (x − center)² over the parts in each destination bin.
    let nonzero = [(3usize, 2.0)];
    let got = quantization_error(&nonzero, 0.1, 0, 9, 4.0);
    let density: f64 = 2.0 / 0.1;
    let part = |a: f64, b: f64, c: f64| density * ((b - c).powi(3) - (a - c).powi(3)) / 3.0;
    // [0.3, 0.4) lies inside destination bin [0.25, 0.5), center 0.375.
    let want = part(0.3, 0.4, 0.375);
    assert!((got - want).abs() < 1e-12, "{got} {want}");
    // Clipped: the same bin with the candidate [5, 9] is charged its distance to the first
    // destination center (0.0625 from the candidate's start at 0.5).
    let got = quantization_error(&nonzero, 0.1, 5, 9, 4.0);
    let want = density * ((-0.1f64 - 0.0625).powi(3) - (-0.2f64 - 0.0625).powi(3)) / 3.0;
    assert!((got - want).abs() < 1e-12, "{got} {want}");
}

// ----- percentile -----

#[test]
fn percentile_of_abs_values() {
    let values: Vec<f32> = (1..=10_000)
        .map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) })
        .collect();
    let mut o = PercentileObserver::new(99.0).unwrap();
    for chunk in values.chunks(999) {
        o.observe(chunk).unwrap();
    }
    // The 9900th smallest |x| is 9900.
    let a = o.clip_magnitude().unwrap();
    assert!((9900.0..=9900.0 * (1.0 + 1.0 / 1024.0)).contains(&a), "{a}");
    assert_eq!(o.range().unwrap(), (-a, a));

    let mut o = PercentileObserver::new(100.0).unwrap();
    o.observe(&values).unwrap();
    assert_eq!(o.range().unwrap(), (-9999.0, 10_000.0));

    // Non-negative data keeps min = 0; clipping never widens past what was seen.
    let mut o = PercentileObserver::new(50.0).unwrap();
    o.observe(&[0.0, 1.0, 2.0, 3.0, 100.0]).unwrap();
    let (lo, hi) = o.range().unwrap();
    assert_eq!(lo, 0.0);
    assert!((2.0..=2.0 * (1.0 + 1.0 / 1024.0)).contains(&hi), "{hi}");

    // Magnitudes spreading both ways grow the buckets at both ends.
    let mut o = PercentileObserver::new(100.0).unwrap();
    o.observe(&[1.0]).unwrap();
    o.observe(&[1e-20, -3e20]).unwrap();
    assert_eq!(o.range().unwrap(), (-3e20, 1.0));
}

#[test]
fn percentile_clips_outliers() {
    let mut rng = SplitMix64::new(2);
    let mut all: Vec<f32> = (0..100_000).map(|_| normal(&mut rng)).collect();
    all.extend([1000.0, -500.0]);
    let mut o = state(ObserverKind::Percentile { p: 99.9 });
    o.observe(&all).unwrap();
    let (lo, hi) = o.range().unwrap().per_tensor().unwrap();
    // |x| of a standard normal has its 99.9th percentile at 3.29.
    assert!((3.0..3.6).contains(&hi) && lo == -hi, "[{lo}, {hi}]");
}
