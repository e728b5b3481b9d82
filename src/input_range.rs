//! `qc run`'s look at its inputs before running them: whether the values fit the normalization
//! the model's `input` line declares, by the rules of docs/runtime-program.md, and the warning
//! (one `warning:` line and a `help:` line on stderr) when they do not. The run goes on.

use qc_runtime::normalize::Normalize;
use qc_runtime::Tensor;

/// How an input's values misfit its declaration.
#[derive(Clone, Debug, PartialEq)]
pub enum Misfit {
    /// The model normalizes this input, and the data already looks normalized (mean and std
    /// over the batch, averaged over the declaration's channels).
    AlreadyNormalized { mean: f64, std: f64 },
    /// The model takes the input as given, and it holds whole numbers in `[0, 255]`.
    RawPixels { max: f32 },
    /// The model normalizes from a `[0, 1]` range (every mean in `[0, 1]`), and the input holds
    /// whole numbers in `[0, 255]`.
    UnscaledPixels { max: f32 },
}

/// Below this distance from the standard normal, data looks normalized.
const NEAR_NORMALIZED: f64 = 0.5;
/// Above this distance from the declaration's own mean and std, data is not what it expects.
const FAR_FROM_RAW: f64 = 1.0;

/// What is wrong with `t` (an `f32` input read from float data) for an input that declares
/// `normalize`, if anything.
pub fn misfit(t: &Tensor, normalize: Option<&Normalize>) -> Option<Misfit> {
    let values = t.as_f32()?;
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let pixels = max > 1.5 && values.iter().all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0);
    let Some(n) = normalize else {
        return pixels.then_some(Misfit::RawPixels { max });
    };
    if pixels && n.mean.iter().all(|m| (0.0..=1.0).contains(m)) {
        return Some(Misfit::UnscaledPixels { max });
    }
    let stats = channel_stats(t, n.channels())?;
    let c = stats.len() as f64;
    // Distance of (m, s) from (a, b): the shift in units of b, plus the spread as a log ratio.
    let distance = |(m, s): (f64, f64), (a, b): (f64, f64)| (m - a).abs() / b + (s / b).ln().abs();
    let to_normal: f64 = stats.iter().map(|&ms| distance(ms, (0.0, 1.0))).sum::<f64>() / c;
    let to_raw: f64 = stats
        .iter()
        .enumerate()
        .map(|(i, &ms)| distance(ms, (n.mean[i], n.std[i])))
        .sum::<f64>()
        / c;
    // NaN (a constant channel has std 0) compares false: no warning.
    if to_normal < NEAR_NORMALIZED && to_raw > FAR_FROM_RAW {
        let mean = stats.iter().map(|s| s.0).sum::<f64>() / c;
        let std = stats.iter().map(|s| s.1).sum::<f64>() / c;
        return Some(Misfit::AlreadyNormalized { mean, std });
    }
    None
}

/// Mean and (population) std of each channel (dim 1) when `channels` > 1, else of all values;
/// `None` when the tensor does not have that many channels.
fn channel_stats(t: &Tensor, channels: usize) -> Option<Vec<(f64, f64)>> {
    let values = t.as_f32()?;
    let (inner, channels) = if channels > 1 {
        if t.shape.get(1) != Some(&channels) {
            return None;
        }
        (t.shape[2..].iter().product::<usize>(), channels)
    } else {
        (values.len(), 1)
    };
    if inner == 0 {
        return None;
    }
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); channels];
    for (i, block) in values.chunks(inner).enumerate() {
        let s = &mut sums[i % channels];
        for &v in block {
            s.0 += v as f64;
            s.1 += v as f64 * v as f64;
            s.2 += 1;
        }
    }
    Some(
        sums.iter()
            .map(|&(sum, sq, n)| {
                let mean = sum / n as f64;
                (mean, (sq / n as f64 - mean * mean).max(0.0).sqrt())
            })
            .collect(),
    )
}

/// The warning and its help for input `name`.
pub fn warning(name: &str, misfit: &Misfit, normalize: Option<&Normalize>) -> (String, String) {
    let declared = normalize.map(|n| n.to_string()).unwrap_or_default();
    match misfit {
        Misfit::AlreadyNormalized { mean, std } => (
            format!(
                "input `{name}` looks normalized already (mean {mean:.2}, std {std:.2}), but the model normalizes it \
                 itself with `{declared}`, so it is normalized twice"
            ),
            "pass raw samples (images in [0, 1], or the uint8 data, which `qc run` scales to [0, 1]); the model's \
             `input` line declares the normalization"
                .into(),
        ),
        Misfit::RawPixels { max } => (
            format!(
                "input `{name}` holds whole numbers up to {max} (raw 8-bit pixels?), but the model takes it as given: \
                 its `input` line declares no `normalize(...)`"
            ),
            "pass the data on the scale the model was trained on (e.g. pixels / 255, or the uint8 .npy, which `qc run` \
             scales to [0, 1]); if it was trained on normalized data, declare `normalize(mean: ..., std: ...)` on \
             the recipe's `input` line and compile again"
                .into(),
        ),
        Misfit::UnscaledPixels { max } => (
            format!(
                "input `{name}` holds whole numbers up to {max} (raw 8-bit pixels?), but the model's `{declared}` \
                 is for values in [0, 1]"
            ),
            "divide the pixels by 255, or pass the uint8 .npy, which `qc run` scales to [0, 1]".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-pixels in [0, 1]: the 256 byte values / 255, spread like images
    /// (many dark values).
    fn pixels(n: usize) -> Vec<f32> {
        let mut rng = qc_runtime::SplitMix64::new(7);
        (0..n)
            .map(|_| {
                let r = (rng.next_u64() % 256) as f32;
                if rng.next_u64().is_multiple_of(2) {
                    0.0
                } else {
                    r / 255.0
                }
            })
            .collect()
    }

    fn fashion() -> Normalize {
        Normalize::new(0.2860, 0.3530)
    }

    fn stats(v: &[f32]) -> (f64, f64) {
        let t = Tensor::f32(vec![v.len()], v.to_vec());
        channel_stats(&t, 1).unwrap()[0]
    }

    #[test]
    fn raw_samples_do_not_warn_and_normalized_ones_do() {
        let raw = pixels(28 * 28 * 64);
        let (m, s) = stats(&raw);
        let n = Normalize::new(m, s);
        let t = Tensor::f32(vec![64, 1, 28, 28], raw.clone());
        assert_eq!(misfit(&t, Some(&n)), None);
        assert_eq!(misfit(&t, Some(&fashion())), None);
        let normalized = n.applied(&t).unwrap();
        match misfit(&normalized, Some(&n)) {
            Some(Misfit::AlreadyNormalized { mean, std }) => {
                assert!(mean.abs() < 1e-3 && (std - 1.0).abs() < 1e-3, "{mean} {std}")
            }
            other => panic!("{other:?}"),
        }
        // A normalization near (0, 1) cannot tell the two apart, and says nothing.
        assert_eq!(misfit(&normalized, Some(&Normalize::new(0.1, 0.9))), None);
        // Without a declaration, normalized or [0, 1] data is the model's business.
        assert_eq!(misfit(&normalized, None), None);
        assert_eq!(misfit(&t, None), None);
    }

    #[test]
    fn per_channel_declarations_compare_each_channel() {
        let n = Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        };
        let raw: Vec<f32> = pixels(3 * 16 * 16 * 4);
        let t = Tensor::f32(vec![4, 3, 16, 16], raw);
        assert_eq!(misfit(&t, Some(&n)), None);
        let twice = n.applied(&n.applied(&t).unwrap()).unwrap();
        assert_eq!(
            misfit(&twice, Some(&n)),
            None,
            "far from both: not the normalized-twice pattern"
        );
        let normalized = Normalize::new(stats(t.as_f32().unwrap()).0, stats(t.as_f32().unwrap()).1)
            .applied(&t)
            .unwrap();
        assert!(matches!(
            misfit(&normalized, Some(&n)),
            Some(Misfit::AlreadyNormalized { .. })
        ));
    }

    #[test]
    fn whole_numbers_up_to_255_are_pixels_not_scaled() {
        let bytes: Vec<f32> = pixels(1000).iter().map(|v| (v * 255.0).round()).collect();
        let t = Tensor::f32(vec![10, 100], bytes);
        assert!(matches!(misfit(&t, None), Some(Misfit::RawPixels { max }) if max > 200.0));
        assert!(matches!(
            misfit(&t, Some(&fashion())),
            Some(Misfit::UnscaledPixels { .. })
        ));
        // A declaration on the 0..255 scale expects them.
        assert_eq!(misfit(&t, Some(&Normalize::new(123.7, 58.4))), None);
        // Small counts, fractions, negatives: not pixels.
        assert_eq!(misfit(&Tensor::f32(vec![3], vec![0.0, 1.0, 1.0]), None), None);
        assert_eq!(misfit(&Tensor::f32(vec![2], vec![0.5, 200.0]), None), None);
        assert_eq!(misfit(&Tensor::f32(vec![2], vec![-3.0, 200.0]), None), None);
        // Non-finite values (run with --allow-non-finite) are not judged.
        assert_eq!(misfit(&Tensor::f32(vec![2], vec![f32::NAN, 200.0]), None), None);
    }
}
