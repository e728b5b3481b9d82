//! The tolerances between qc's computations (docs/numerics.md §7): fake-quant against int8 in
//! steps, float rewrites relative to the largest magnitude.

use super::*;

/// Largest `|a[i] - b[i]|` in quantization steps (integer codes); `None` when lengths differ.
/// The fake-quant ↔ int8 check is `max_step_diff(..) <= Some(FAKE_QUANT_TOLERANCE_STEPS)`.
pub fn max_step_diff<T: QElem>(a: &[T], b: &[T]) -> Option<u32> {
    if a.len() != b.len() {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x.to_q().abs_diff(y.to_q()))
            .max()
            .unwrap_or(0),
    )
}

/// `|rewritten[i] - reference[i]| <= FLOAT_REWRITE_RTOL * max_j |reference[j]| + f32::MIN_POSITIVE`
/// for every `i`; false on length mismatch or any NaN.
pub fn float_rewrite_close(reference: &[f32], rewritten: &[f32]) -> bool {
    if reference.len() != rewritten.len() {
        return false;
    }
    let max_abs = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = FLOAT_REWRITE_RTOL * max_abs + f32::MIN_POSITIVE;
    reference.iter().zip(rewritten).all(|(a, b)| (a - b).abs() <= tol)
}
