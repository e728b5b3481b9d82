//! Requantization (docs/numerics.md §4): the two rules ([`RequantRule`]: the integer multiplier
//! and shift, or PyTorch's and ONNX Runtime's `f32` multiply), and [`Requant`].

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

/// How a conv/linear accumulator becomes the output's integer (`requantize:` in a recipe's
/// `quantize` section; docs/numerics.md §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequantRule {
    /// `clamp(((acc·m + 2^(shift-1)) >> shift) + zp)`: integers only, half up. For targets
    /// without float units (the `power_of_two` scheme's default).
    #[default]
    Integer,
    /// `clamp(rint(f32(acc) · M_f32) + zp)`, `M_f32 = f32(s_in·s_w) / s_out` in `f32`, ties to
    /// even: PyTorch's x86 engine (fbgemm) and ONNX Runtime's `QLinearConv`/`QGemm`.
    Float,
}

impl RequantRule {
    /// Every rule, in the order the help text lists them.
    pub const ALL: [RequantRule; 2] = [RequantRule::Float, RequantRule::Integer];

    /// The word a recipe writes: `float`, `integer`.
    pub fn name(self) -> &'static str {
        match self {
            RequantRule::Integer => "integer",
            RequantRule::Float => "float",
        }
    }

    pub fn from_name(name: &str) -> Option<RequantRule> {
        RequantRule::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The `f32` multiplier of [`RequantRule::Float`]: `(s_in · s_w) / s_out`, each operation rounded
/// to `f32`, in that order (fbgemm's `act_times_w_scale / output_scale`, ONNX Runtime's
/// `X_scale * W_scale / Y_scale`).
pub fn float_requant_multiplier(s_in: f32, s_w: f32, s_out: f32) -> f32 {
    s_in * s_w / s_out
}

/// A float bias `b` in accumulator units, `b / (s_in · s_w)`, each operation rounded to `f32`:
/// fbgemm's (PyTorch x86) `bias[j] / act_times_w_scale[j]`, added to `f32(acc)` before the
/// multiply by [`requantize_float`] (`requantize: float_bias`, docs/numerics.md §4).
pub fn float_bias_term(b: f32, s_in: f32, s_w: f32) -> f32 {
    b / (s_in * s_w)
}

/// [`RequantRule::Float`] on one accumulator: `v = (f32(acc) + bias) · multiplier` (one `f32`
/// rounding each for the conversion, the sum and the product; no fused multiply-add), clamped to
/// `[qmin − zp, qmax − zp]` (integers, so clamping before rounding equals clamping after), rounded
/// to nearest even, plus `zp`. `bias` is the layer's float bias in accumulator units
/// ([`float_bias_term`]) or `0.0` (the bias is then in `acc`, and `f32(acc) + 0.0 = f32(acc)`).
#[inline]
pub fn requantize_float(acc: i32, bias: f32, multiplier: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let v = ((acc as f32 + bias) * multiplier)
        .max((qmin - zero_point) as f32)
        .min((qmax - zero_point) as f32);
    v.round_ties_even() as i32 + zero_point
}

/// Requantization of an int32 accumulator to the output's integer range, by [`RequantRule`].
/// Built by [`Requant::from_real`] (integer) or [`Requant::from_scales`]; the fields are public
/// for kernels and keep its invariants (`multiplier` in `[2^30, 2^31)`, `shift` in `1..=62`,
/// `float_multiplier` a positive normal `f32`, `qmin <= zero_point <= qmax`). Both rules' fields
/// are always valid, so a kernel may derive either form's constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requant {
    pub multiplier: i32,
    pub shift: u32,
    /// [`RequantRule::Float`]'s multiplier ([`float_requant_multiplier`]).
    pub float_multiplier: f32,
    /// [`RequantRule::Float`]: added to `f32(acc)` before the multiply ([`float_bias_term`] of
    /// the layer's float bias, [`Requant::with_float_bias`]); `0.0` otherwise (finite).
    pub float_bias: f32,
    pub rule: RequantRule,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl Eq for Requant {}

impl std::hash::Hash for Requant {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let float = (self.float_multiplier.to_bits(), self.float_bias.to_bits());
        (self.multiplier, self.shift, float, self.rule).hash(h);
        (self.zero_point, self.qmin, self.qmax).hash(h);
    }
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
        let float_multiplier = m as f32;
        if !float_multiplier.is_normal() {
            return Err(QuantError::MultiplierOutOfRange { multiplier: m });
        }
        Ok(Requant {
            multiplier,
            shift,
            float_multiplier,
            float_bias: 0.0,
            rule: RequantRule::Integer,
            zero_point,
            qmin: range.qmin,
            qmax: range.qmax,
        })
    }

    /// A conv/linear output channel's requantization by `rule`: the integer form of
    /// [`requant_multiplier`]`(s_in, s_w, s_out)` and the `f32` [`float_requant_multiplier`].
    pub fn from_scales(
        rule: RequantRule,
        s_in: f32,
        s_w: f32,
        s_out: f32,
        zero_point: i32,
        range: QRange,
    ) -> Result<Requant, QuantError> {
        let mut r = Requant::from_real(requant_multiplier(s_in, s_w, s_out), zero_point, range)?;
        if rule == RequantRule::Float {
            let m = float_requant_multiplier(s_in, s_w, s_out);
            if !m.is_normal() {
                return Err(QuantError::MultiplierOutOfRange { multiplier: m as f64 });
            }
            r.float_multiplier = m;
            r.rule = RequantRule::Float;
        }
        Ok(r)
    }

    /// By `rule`: integer, `clamp(mul_shift_round(acc, multiplier, shift) + zero_point, qmin,
    /// qmax)`, sum and clamp in i64, exact for every `acc` and within 1 of
    /// `clamp(rint(acc * M) + zp)`; float, [`requantize_float`].
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        match self.rule {
            RequantRule::Integer => {
                let v = mul_shift_round(acc, self.multiplier, self.shift) + self.zero_point as i64;
                v.clamp(self.qmin as i64, self.qmax as i64) as i32
            }
            RequantRule::Float => requantize_float(
                acc,
                self.float_bias,
                self.float_multiplier,
                self.zero_point,
                self.qmin,
                self.qmax,
            ),
        }
    }

    /// [`Self::apply`] before the clamp to `[qmin, qmax]`, in `i64`: non-decreasing in `acc`
    /// (for the accumulator clamps of the SIMD epilogues).
    pub fn unclamped(&self, acc: i32) -> i64 {
        match self.rule {
            RequantRule::Integer => mul_shift_round(acc, self.multiplier, self.shift) + self.zero_point as i64,
            RequantRule::Float => {
                let v = (acc as f32 + self.float_bias) * self.float_multiplier;
                // Saturating: `v` may exceed `i64` only where a clamp bound is passed anyway.
                v.round_ties_even() as i64 + self.zero_point as i64
            }
        }
    }

    /// The same float requantization with the layer's float bias `b` of this channel added before
    /// the multiply ([`float_bias_term`]`(b, s_in, s_w)`): PyTorch's fbgemm. Errors for the
    /// integer rule (its bias is an `i32` in the accumulator) and for a term that is not finite.
    pub fn with_float_bias(self, b: f32, s_in: f32, s_w: f32) -> Result<Requant, QuantError> {
        let term = float_bias_term(b, s_in, s_w);
        if self.rule != RequantRule::Float || !term.is_finite() {
            return Err(QuantError::FloatBias {
                bias: b,
                term,
                rule: self.rule.name(),
            });
        }
        Ok(Requant {
            float_bias: term,
            ..self
        })
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
