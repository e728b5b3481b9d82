//! libtorch at the boundary: loading libtorch (and its CUDA library), host ↔ tch tensors, devices, uploads.

use super::*;

/// Loads libtorch's CUDA library when the machine has one (once). A qc built against the
/// CPU-only libtorch (`make setup`) does not link it, and one built against a CUDA libtorch
/// may have lost it to `--as-needed`; loading it by name registers libtorch's CUDA backend,
/// so a binary carried to a CUDA machine (with its `torch/lib` on `LD_LIBRARY_PATH`) uses
/// the GPU. Without the library this does nothing and CUDA reports "not available".
pub(super) fn load_cuda() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
        // process's lifetime (never dlclose'd), so registered kernels stay valid.
        unsafe {
            libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
    });
}

pub fn info() -> Result<BackendInfo, TorchError> {
    load_cuda();
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

pub(super) fn tch_device(d: Device) -> Result<tch::Device, TorchError> {
    load_cuda();
    match d {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        Device::Cuda => Err(TorchError::Device("cuda".into(), "libtorch sees no CUDA device".into())),
    }
}

pub(super) fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

pub(super) fn err(e: tch::TchError) -> TorchError {
    TorchError::Torch(e.to_string())
}

/// Refuses int8 steps by name.
pub(super) fn float_only(program: &Program) -> Result<(), TorchError> {
    qc_runtime::validate::validate(program).map_err(|e| TorchError::Torch(e.to_string()))?;
    if let Some(step) = program.steps.iter().find(|s| matches!(s.op, StepOp::Quant(_))) {
        return Err(TorchError::Int8Step {
            step: program.value_name(step.output).to_string(),
            op: step.op.name(),
        });
    }
    Ok(())
}

/// Host tensors on a device.
pub(super) fn upload(tensors: &[Tensor], dev: tch::Device) -> Result<Vec<tch::Tensor>, TorchError> {
    tensors.iter().map(|t| to_tch(t).map(|t| t.to_device(dev))).collect()
}
