//! Adding two quantized tensors with their own scales (docs/numerics.md §6): [`QAdd`].

use super::*;

/// Integer-only `out = a + b` for inputs with their own scales (TFLite's scheme, our rounding):
/// ```text
/// t  = 2 * max(s_a, s_b)
/// a' = mul_shift_round((qa - zp_a) << 20, m_a, sh_a)     m_a 2^-sh_a ≈ s_a / t  (<= 0.5)
/// b' = mul_shift_round((qb - zp_b) << 20, m_b, sh_b)     m_b 2^-sh_b ≈ s_b / t  (<= 0.5)
/// out = Requant(M = t / (2^20 * s_out), zp_out).apply(a' + b')
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QAdd {
    pub a_zero_point: i32,
    pub a_multiplier: i32,
    pub a_shift: u32,
    pub b_zero_point: i32,
    pub b_multiplier: i32,
    pub b_shift: u32,
    pub out: Requant,
}

impl QAdd {
    /// Errors when a multiplier falls outside [`quantize_multiplier`]'s range: needs
    /// `max(s_a, s_b) / min(s_a, s_b) <= 2^31` and `2^-13 <= max(s_a, s_b) / s_out < 2^49`.
    pub fn new(a: &QParams, b: &QParams, out: &QParams) -> Result<QAdd, QuantError> {
        let t = 2.0 * (a.scale as f64).max(b.scale as f64);
        let (a_multiplier, a_shift) = quantize_multiplier(a.scale as f64 / t)?;
        let (b_multiplier, b_shift) = quantize_multiplier(b.scale as f64 / t)?;
        let m_out = t / ((1u64 << QADD_LEFT_SHIFT) as f64 * out.scale as f64);
        let out = Requant::from_real(m_out, out.zero_point, out.range)?;
        Ok(QAdd {
            a_zero_point: a.zero_point,
            a_multiplier,
            a_shift,
            b_zero_point: b.zero_point,
            b_multiplier,
            b_shift,
            out,
        })
    }

    /// `qa`, `qb` in their ranges: `|qa - zp_a| <= 255`, so `(qa - zp_a) << 20` is below `2^28`
    /// and `a' + b'` below `2^28 + 1`.
    #[inline]
    pub fn apply(&self, qa: i32, qb: i32) -> i32 {
        let a = mul_shift_round(
            qa.wrapping_sub(self.a_zero_point) << QADD_LEFT_SHIFT,
            self.a_multiplier,
            self.a_shift,
        );
        let b = mul_shift_round(
            qb.wrapping_sub(self.b_zero_point) << QADD_LEFT_SHIFT,
            self.b_multiplier,
            self.b_shift,
        );
        self.out.apply((a + b) as i32)
    }

    /// The same add with a fused ReLU.
    pub fn with_relu(self) -> QAdd {
        QAdd {
            out: self.out.with_relu(),
            ..self
        }
    }
}

/// PyTorch x86's float formula for a quantized add: `quantize(dequantize(qa) + dequantize(qb))`
/// in f32. [`QAdd::apply`] stays within one step of it.
pub fn qadd_f32_reference(qa: i32, qb: i32, a: &QParams, b: &QParams, out: &QParams) -> i32 {
    out.quantize(a.dequantize(qa) + b.dequantize(qb))
}
