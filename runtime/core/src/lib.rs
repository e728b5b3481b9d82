//! qc's edge runtime core: host tensors, the executable model format and its validation, the
//! float reference interpreter, the CPU int8 kernels, the executor and the `.qmodel` artifact.
//! It ships alone to edge targets: no libtorch, no dataset readers, no training (those live in
//! the host crate, `qc-runtime-host`).
//!
//! Architecture invariant: this crate never depends on the compiler or the host crate; the
//! compiler lowers into the formats defined here.

pub mod artifact;
pub mod exec;
pub mod fsutil;
pub mod interp;
pub mod io_help;
pub mod kernels;
pub mod model;
pub mod normalize;
pub mod program;
pub mod quant;
pub mod tensor;
pub mod validate;

pub use tensor::{DType, SplitMix64, Tensor, TensorData};
