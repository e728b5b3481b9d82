//! The device choice of libtorch-backed runs (plain data; the edge core never runs libtorch).

/// Where a libtorch-backed run (training, calibration, the libtorch int8 path) runs: a plain
/// choice the compiler and the CLI pass to the host crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The first CUDA device.
    Cuda,
}
