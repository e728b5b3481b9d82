//! Requantization (docs/numerics.md §4): the integer multiplier and shift, and [`Requant`].

use super::*;

/// `M ≈ m * 2^-shift` with `m` in `[2^30, 2^31)` and `shift` in `1..=62`:
/// `M = f * 2^e` with `f` in `[0.5, 1)` (frexp), `m = rint(f * 2^31)`, `shift = 31 - e`; if `m`
/// rounds up to `2^31` it becomes `2^30` and `shift - 1`. Relative error `|m 2^-shift - M| <= 2^-31 M`.
/// Errors for `M` not finite, `M <= 0`, or outside `[2^-32, 2^30)` after rounding.
pub fn quantize_multiplier(multiplier: f64) -> Result<(i32, u32), QuantError> {
    let err = QuantError::MultiplierOutOfRange { multiplier };
    // Also refuses NaN and ±inf. Below 2^-33 nothing can round into range (and no subnormals).
    if !(MIN_MULTIPLIER / 2.0..MAX_MULTIPLIER).contains(&multiplier) {
        return Err(err);
    }
    // frexp for a normal positive f64: multiplier = f * 2^e, f in [0.5, 1).
    let bits = multiplier.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1022;
    let f = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1022u64 << 52));
    let mut m = (f * 2_147_483_648.0).round_ties_even() as i64;
    let mut shift = 31 - e;
    if m == 1i64 << 31 {
        m = 1 << 30;
        shift -= 1;
    }
    if !(1..=62).contains(&shift) {
        return Err(err);
    }
    Ok((m as i32, shift as u32))
}

/// `(x * m + 2^(shift-1)) >> shift` in i64, `>>` arithmetic (floor): `x * m * 2^-shift` rounded
/// to nearest, ties toward +inf (2.5 → 3, -2.5 → -2). Needs `m` in `[0, 2^31)`, `shift` in `1..=62`:
/// then `|x * m| < 2^62` and the sum stays below `2^63`.
#[inline]
pub fn mul_shift_round(x: i32, m: i32, shift: u32) -> i64 {
    debug_assert!(m >= 0 && (1..=62).contains(&shift));
    (x as i64 * m as i64 + (1i64 << (shift - 1))) >> shift
}

/// The real multiplier of a conv/linear output channel, `s_in * s_w[c] / s_out`, in f64 (the f32
/// product is exact in f64; one correctly rounded division).
pub fn requant_multiplier(s_in: f32, s_w: f32, s_out: f32) -> f64 {
    s_in as f64 * s_w as f64 / s_out as f64
}

/// Integer-only requantization of an int32 accumulator to the output's integer range.
/// Built by [`Requant::from_real`]; the fields are public for kernels and keep its invariants
/// (`multiplier` in `[2^30, 2^31)`, `shift` in `1..=62`, `qmin <= zero_point <= qmax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requant {
    pub multiplier: i32,
    pub shift: u32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl Requant {
    /// Represents `M` with [`quantize_multiplier`]; `zero_point` must lie in `range`.
    pub fn from_real(m: f64, zero_point: i32, range: QRange) -> Result<Requant, QuantError> {
        if !range.contains(zero_point) {
            return Err(QuantError::ZeroPointOutOfRange {
                zero_point,
                qmin: range.qmin,
                qmax: range.qmax,
            });
        }
        let (multiplier, shift) = quantize_multiplier(m)?;
        Ok(Requant {
            multiplier,
            shift,
            zero_point,
            qmin: range.qmin,
            qmax: range.qmax,
        })
    }

    /// `clamp(mul_shift_round(acc, multiplier, shift) + zero_point, qmin, qmax)`, sum and clamp in
    /// i64. Exact for every `acc`; within 1 of `clamp(rint(acc * M) + zp)`.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let v = mul_shift_round(acc, self.multiplier, self.shift) + self.zero_point as i64;
        v.clamp(self.qmin as i64, self.qmax as i64) as i32
    }

    /// The multiplier actually applied, `multiplier * 2^-shift` (exact in f64).
    pub fn real(&self) -> f64 {
        self.multiplier as f64 * 0.5f64.powi(self.shift as i32)
    }

    /// The same requantization with a fused ReLU: `qmin` raised to `zero_point` (real 0).
    pub fn with_relu(self) -> Requant {
        Requant {
            qmin: self.qmin.max(self.zero_point),
            ..self
        }
    }
}
