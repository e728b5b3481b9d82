//! qc's host runtime: what needs libtorch or data, on top of the edge core (`qc-runtime`): the
//! libtorch sessions, training and quantization-aware training (behind the `torch` feature),
//! batch-norm folding (for the compiler and for training), the calibration observers and the
//! dataset readers.
//!
//! Architecture invariant: this crate depends on the core, never on the compiler; tch types never
//! leave its `torch` module.

pub mod data;
pub mod fold;
pub mod observe;
pub mod torch;
