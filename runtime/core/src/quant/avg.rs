//! Average pooling's integer rounding (docs/numerics.md §5).

use super::*;
use std::cmp::Ordering;

/// `sum / count` rounded to nearest, ties to even, in integers only. `count >= 1`.
#[inline]
pub fn avg_round(sum: i32, count: i32) -> i32 {
    debug_assert!(count >= 1);
    let q = sum.div_euclid(count);
    let r = sum.rem_euclid(count); // 0 <= r < count
    match r.cmp(&(count - r)) {
        Ordering::Less => q,
        Ordering::Greater => q + 1,
        Ordering::Equal => q + (q & 1),
    }
}

/// One output of a quantized average pool (input and output share `zero_point`, and the scale):
/// `clamp(avg_round(sum - elems * zp, divisor) + zp, qmin, qmax)`, where `sum = Σ q` over the
/// `elems` real input elements of the window and `divisor` is the op's (with padding counted when
/// `count_include_pad`). The centring is wrapping i32, exact for `elems <= 2^23`.
#[inline]
pub fn avg_pool_out(sum: i32, elems: i32, divisor: i32, zero_point: i32, range: QRange) -> i32 {
    let centred = sum.wrapping_sub(elems.wrapping_mul(zero_point));
    avg_round(centred, divisor)
        .saturating_add(zero_point)
        .clamp(range.qmin, range.qmax)
}
