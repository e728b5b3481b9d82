//! The `vpdpbusd` kernels for convolution and linear layers (AVX-512 VNNI, AVX-VNNI), and the
//! pieces the AMX kernels share with them: the VNNI weight pack and the padded input
//! ([`pack`]). One driver ([`conv`]) is generic over the 16-lane operations ([`Lanes`]); its
//! portable instance ([`Emulated`]) runs on every CPU, so the tiling, packing, padding and
//! epilogue logic is tested bit for bit against the reference even where the instructions are
//! missing.
//!
//! `vpdpbusd` multiplies raw `u8` inputs by `i8` weights and sums in `i32` without saturation, so
//! the input's zero point is not subtracted per element: `Σ (x - zp) · w = Σ x · w - zp · Σ w`,
//! and `bias - zp · Σ w` is folded into the pack once. In wrapping `i32` arithmetic the two
//! sides are equal whatever the intermediate sums, so the kernels give `dot_acc`'s bits.

pub mod conv;
pub mod lanes;
pub mod pack;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use conv::{run, RangeFn, VnniRun};
pub use lanes::{Emulated, Lanes};
pub use pack::{AddLanes, PaddedInput, Requant16, VnniPack};
