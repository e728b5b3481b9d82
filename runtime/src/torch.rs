//! The libtorch backend (tch). tch types never leave this module. Without the `torch` cargo
//! feature every entry point returns `TorchError::NotCompiled`, so callers need no `cfg`.

use crate::tensor::Tensor;
#[cfg(feature = "torch")]
use crate::tensor::TensorData;

/// Errors of the libtorch backend.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("this qc was built without libtorch (cargo feature `torch`); `{what}` needs it")]
    NotCompiled { what: &'static str },
    #[error("device `{0}` is not available: {1}")]
    Device(String, String),
    #[error("libtorch: {0}")]
    Torch(String),
}

/// What libtorch this build runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// libtorch's version, as the build checked it (`2.11.0`).
    pub version: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: usize,
}

/// True when this build has the libtorch backend.
pub const COMPILED: bool = cfg!(feature = "torch");

#[cfg(feature = "torch")]
mod imp {
    use super::*;

    pub fn info() -> Result<BackendInfo, TorchError> {
        Ok(BackendInfo {
            version: "2.11.0",
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count().max(0) as usize,
        })
    }

    pub(super) fn to_tch(t: &Tensor) -> Result<tch::Tensor, TorchError> {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        Ok(match &t.data {
            TensorData::F32(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I64(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I32(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::I8(v) => tch::Tensor::from_slice(v).reshape(&shape),
            TensorData::U8(v) => tch::Tensor::from_slice(v).reshape(&shape),
        })
    }

    pub(super) fn from_tch(t: &tch::Tensor) -> Result<Tensor, TorchError> {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let flat = t.to_device(tch::Device::Cpu).contiguous().view(-1);
        let err = |e: tch::TchError| TorchError::Torch(e.to_string());
        let data = match t.kind() {
            tch::Kind::Float => TensorData::F32(Vec::<f32>::try_from(&flat).map_err(err)?),
            tch::Kind::Int64 => TensorData::I64(Vec::<i64>::try_from(&flat).map_err(err)?),
            tch::Kind::Int => TensorData::I32(Vec::<i32>::try_from(&flat).map_err(err)?),
            tch::Kind::Int8 => TensorData::I8(Vec::<i8>::try_from(&flat).map_err(err)?),
            tch::Kind::Uint8 => TensorData::U8(Vec::<u8>::try_from(&flat).map_err(err)?),
            k => return Err(TorchError::Torch(format!("unsupported tensor kind {k:?}"))),
        };
        Ok(Tensor { shape, data })
    }

    /// Round-trips a host tensor through libtorch (used to check the binding end to end).
    pub fn round_trip(t: &Tensor) -> Result<Tensor, TorchError> {
        from_tch(&to_tch(t)?)
    }
}

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;

    pub fn info() -> Result<BackendInfo, TorchError> {
        Err(TorchError::NotCompiled {
            what: "the libtorch backend",
        })
    }

    pub fn round_trip(_t: &Tensor) -> Result<Tensor, TorchError> {
        Err(TorchError::NotCompiled {
            what: "the libtorch backend",
        })
    }
}

pub use imp::{info, round_trip};

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::*;

    #[test]
    fn libtorch_loads_and_round_trips_tensors() {
        let info = info().expect("libtorch");
        assert_eq!(info.version, "2.11.0");
        let t = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.5, -0.25, 1e-3]);
        assert_eq!(round_trip(&t).unwrap(), t);
        let q = Tensor {
            shape: vec![3],
            data: TensorData::I8(vec![-128, 0, 127]),
        };
        assert_eq!(round_trip(&q).unwrap(), q);
    }
}
