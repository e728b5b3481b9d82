//! Multiplying two quantized tensors with their own scales (docs/numerics.md §11): [`QMul`].

use super::*;

/// Integer-only `out = a · b`:
/// ```text
/// acc = (qa − zp_a) · (qb − zp_b)                       |acc| ≤ 255² < 2^16
/// out = Requant(M = s_a · s_b / s_out, zp_out).apply(acc)
/// ```
/// the same requantization (multiplier, shift, half-up rounding, saturation) as a convolution's
/// output channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QMul {
    pub a_zero_point: i32,
    pub b_zero_point: i32,
    pub out: Requant,
}

impl QMul {
    /// Errors when `s_a · s_b / s_out` falls outside [`quantize_multiplier`]'s range
    /// (`2^-32 <= M < 2^30`).
    pub fn new(a: &QParams, b: &QParams, out: &QParams) -> Result<QMul, QuantError> {
        let m = a.scale as f64 * b.scale as f64 / out.scale as f64;
        Ok(QMul {
            a_zero_point: a.zero_point,
            b_zero_point: b.zero_point,
            out: Requant::from_real(m, out.zero_point, out.range)?,
        })
    }

    /// `qa`, `qb` in 8-bit ranges: the product fits i32 with room to spare.
    #[inline]
    pub fn apply(&self, qa: i32, qb: i32) -> i32 {
        self.out
            .apply(qa.wrapping_sub(self.a_zero_point) * qb.wrapping_sub(self.b_zero_point))
    }
}

/// The float formula `quantize(dequantize(qa) · dequantize(qb))` in f32 (PyTorch x86's quantized
/// mul); [`QMul::apply`] stays within one step of it.
pub fn qmul_f32_reference(qa: i32, qb: i32, a: &QParams, b: &QParams, out: &QParams) -> i32 {
    out.quantize(a.dequantize(qa) * b.dequantize(qb))
}
