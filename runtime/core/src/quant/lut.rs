//! Pointwise curves (hardswish, hardsigmoid, sigmoid) and their int8 form, a 256-entry lookup
//! table built from the input's and output's parameters (docs/numerics.md §10): [`Curve`],
//! [`lut_table`].

use serde::{Deserialize, Serialize};

use super::*;

/// A pointwise curve with PyTorch's semantics (`F.hardswish`, `F.hardsigmoid`, `torch.sigmoid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// `x · relu6(x + 3) / 6`.
    HardSwish,
    /// `relu6(x + 3) / 6`.
    HardSigmoid,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Curve {
    /// Every curve, in a fixed order.
    pub const ALL: [Curve; 3] = [Curve::HardSwish, Curve::HardSigmoid, Curve::Sigmoid];

    /// The recipe's name: `hardswish`, `hardsigmoid`, `sigmoid`.
    pub fn name(self) -> &'static str {
        match self {
            Curve::HardSwish => "hardswish",
            Curve::HardSigmoid => "hardsigmoid",
            Curve::Sigmoid => "sigmoid",
        }
    }

    /// The curve whose recipe name is `name`.
    pub fn from_name(name: &str) -> Option<Curve> {
        Curve::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The curve in f32, as PyTorch's scalar CPU kernels compute hardswish and hardsigmoid
    /// (`x * min(max(x + 3, 0), 6) / 6`, `min(max(x + 3, 0), 6) / 6`, each operation rounded to
    /// f32); sigmoid in f64, rounded once to f32. NaN stays NaN.
    #[inline]
    pub fn eval(self, x: f32) -> f32 {
        // `clamp` keeps NaN, as PyTorch's `std::min(std::max(v, 0), 6)` does.
        let relu6 = |v: f32| v.clamp(0.0, 6.0);
        match self {
            Curve::HardSwish => x * relu6(x + 3.0) / 6.0,
            Curve::HardSigmoid => relu6(x + 3.0) / 6.0,
            Curve::Sigmoid => (1.0 / (1.0 + (-(x as f64)).exp())) as f32,
        }
    }
}

/// The int8 form of `curve`: `table[q] = quantize_out(curve.eval(dequantize_in(q)))` for every
/// 8-bit code `q` (`0..=255` read as `u8`; for an `i8` input, `q as u8` indexes `q`): one f32
/// dequantize, the f32 curve, one f32 quantize with ties to even and saturation to the output's
/// range. So the int8 op equals fake quantization of the float op on every input exactly (the
/// table *is* that computation, done once per code).
pub fn lut_table(curve: Curve, input: &QParams, output: &QParams) -> [u8; 256] {
    let mut table = [0u8; 256];
    for (code, t) in table.iter_mut().enumerate() {
        let q = if input.range().is_signed() {
            code as u8 as i8 as i32
        } else {
            code as i32
        };
        // The output range fits 8 bits (QRange's invariant); an i8 output stores its code's bits.
        *t = output.quantize(curve.eval(input.dequantize(q))) as u8;
    }
    table
}
