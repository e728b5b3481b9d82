//! qc's runtime: host tensors, data-set readers, the executable model format, the float reference
//! interpreter, CPU int8 kernels and (behind the `torch` feature) the libtorch backend.
//!
//! Architecture invariant: this crate never depends on the compiler; the compiler lowers into
//! the formats defined here.

pub mod artifact;
pub mod data;
pub mod exec;
pub mod fsutil;
pub mod interp;
pub mod kernels;
pub mod model;
pub mod observe;
pub mod program;
pub mod quant;
pub mod tensor;
pub mod torch;
pub mod validate;

pub use tensor::{DType, SplitMix64, Tensor, TensorData};
