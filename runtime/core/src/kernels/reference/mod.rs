//! The scalar reference of every int8 op of qc's CPU runtime: the specification SIMD kernels must
//! match bit for bit. Layouts and parameter types are in [`super`] (the `kernels` module doc).
//!
//! Every function is pure over slices: it checks all lengths and parameters first (returning a
//! [`KernelError`], never panicking on bad input), then writes into the caller's output buffer
//! without allocating. Rounding, requantization and saturation come only from `crate::quant`.
//!
//! One file per kind of op: [`layout`] (layout changes, quantize, dequantize, flatten), [`conv`]
//! (convolution and linear), [`pool`] (max and average pooling), [`elementwise`] (add, mul, lookup,
//! clamp, concat); every function is re-exported here, so `reference::qconv2d` and friends keep
//! their paths.

pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod pool;

pub use conv::*;
pub use elementwise::*;
pub use layout::*;
pub use pool::*;

#[cfg(test)]
mod tests;
