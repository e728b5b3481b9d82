//! qc's integer numerics, once: the scalar reference that every int8 kernel (CPU SIMD, CUDA,
//! fake-quant in training) must match. `docs/numerics.md` states the rules; every formula there is
//! a function here with the same name, and has a test.
//!
//! Pure scalar code: no `unsafe`, no allocation in per-element functions. SIMD kernels are
//! proptested against these functions bit for bit.
//!
//! One file per section of docs/numerics.md: [`params`] (ranges, parameters, element types),
//! [`quantize`] (§1), [`choose`] (§2), [`accumulate`] (§3), [`requant`] (§4), [`avg`] (§5),
//! [`add`] (§6), [`tolerance`] (§7), [`lut`] (§10), [`mul`] (§11); every item is re-exported here, so `quant::Requant` and
//! friends keep their paths. The tests are in `tests.rs`.

/// Smallest scale a calibration produces (PyTorch's observers clamp with the same `eps`).
pub const SCALE_EPS: f32 = f32::EPSILON;

/// Smallest real multiplier [`quantize_multiplier`] accepts: `2^-32` (shift 62).
pub const MIN_MULTIPLIER: f64 = 1.0 / 4_294_967_296.0;

/// Real multipliers must stay below `2^30` (shift 1).
pub const MAX_MULTIPLIER: f64 = 1_073_741_824.0;

/// Left shift that lifts `q - zp` of each [`QAdd`] input into the common int32 domain (TFLite's 20).
pub const QADD_LEFT_SHIFT: u32 = 20;

/// Fake-quant (float simulation) and int8 outputs may differ by this many quantization steps.
pub const FAKE_QUANT_TOLERANCE_STEPS: u32 = 1;

/// Float rewrites (BN folding, …) keep every output within this fraction of the output's largest
/// magnitude; see [`float_rewrite_close`].
pub const FLOAT_REWRITE_RTOL: f32 = 1e-4;

/// Errors of quantization-parameter construction. Per-element functions never fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{bits}-bit quantization is not supported (2..=8 bits)")]
    BadBits { bits: u32 },
    #[error("integer range [{qmin}, {qmax}] is not a valid 8-bit range containing 0")]
    BadRange { qmin: i32, qmax: i32 },
    #[error("calibration range [{min}, {max}] is not finite")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("calibration range [{min}, {max}] has min > max")]
    InvertedRange { min: f32, max: f32 },
    #[error("scale {scale} is not a positive normal finite f32")]
    BadScale { scale: f32 },
    #[error("zero point {zero_point} is outside [{qmin}, {qmax}]")]
    ZeroPointOutOfRange { zero_point: i32, qmin: i32, qmax: i32 },
    #[error("real multiplier {multiplier} cannot be represented (needs 2^-32 <= M < 2^30)")]
    MultiplierOutOfRange { multiplier: f64 },
    #[error("bias {bias} is NaN")]
    NanBias { bias: f32 },
    #[error(
        "float bias {bias} (in accumulator units {term}) needs the float rule and a finite value; the rule is {rule}"
    )]
    FloatBias { bias: f32, term: f32, rule: &'static str },
    #[error("length mismatch: expected {expected} elements, got {got}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("integer range [{qmin}, {qmax}] does not fit the element type {dtype}")]
    RangeDoesNotFit { qmin: i32, qmax: i32, dtype: &'static str },
}

mod accumulate;
mod add;
mod avg;
mod choose;
mod lut;
mod mul;
mod params;
mod quantize;
mod requant;
mod tolerance;

pub use accumulate::*;
pub use add::*;
pub use avg::*;
pub use choose::*;
pub use lut::*;
pub use mul::*;
pub use params::*;
pub use quantize::*;
pub use requant::*;
pub use tolerance::*;

#[cfg(test)]
mod tests;
