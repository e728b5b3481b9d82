//! The libtorch backend (tch). tch types never leave this module. Without the `torch` cargo
//! feature every entry point returns `TorchError::NotCompiled`, so callers need no `cfg`.

use crate::program::Program;
#[cfg(feature = "torch")]
use crate::program::{FloatOp, StepOp};
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
    #[error("int8 step `{step}` ({op}) runs on the CPU runtime only; the libtorch backend runs float steps")]
    Int8Step { step: String, op: &'static str },
}

/// What libtorch this build runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// libtorch's version, as the build checked it (`2.11.0`).
    pub version: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: usize,
}

/// Where the tch backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The first CUDA device.
    Cuda,
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

    fn tch_device(d: Device) -> Result<tch::Device, TorchError> {
        match d {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            Device::Cuda => Err(TorchError::Device("cuda".into(), "libtorch sees no CUDA device".into())),
        }
    }

    fn i64s(v: &[usize]) -> Vec<i64> {
        v.iter().map(|&x| x as i64).collect()
    }

    /// Executes a float program through libtorch on `device`, inference mode.
    pub fn run_program(program: &Program, inputs: &[Tensor], device: Device) -> Result<Vec<Tensor>, TorchError> {
        crate::validate::validate(program).map_err(|e| TorchError::Torch(e.to_string()))?;
        if let Some(step) = program.steps.iter().find(|s| matches!(s.op, StepOp::Quant(_))) {
            return Err(TorchError::Int8Step {
                step: program.value_name(step.output).to_string(),
                op: step.op.name(),
            });
        }
        program
            .check_inputs(inputs)
            .map_err(|e| TorchError::Torch(e.to_string()))?;
        let dev = tch_device(device)?;
        let err = |e: tch::TchError| TorchError::Torch(e.to_string());
        let _guard = tch::no_grad_guard();
        let consts: Vec<tch::Tensor> = program
            .constants
            .iter()
            .map(|c| to_tch(c).map(|t| t.to_device(dev)))
            .collect::<Result<_, _>>()?;
        let mut values: Vec<Option<tch::Tensor>> = (0..program.values.len()).map(|_| None).collect();
        for (t, &id) in inputs.iter().zip(&program.inputs) {
            values[id] = Some(to_tch(t)?.to_device(dev));
        }
        for step in &program.steps {
            let args: Vec<&tch::Tensor> = step
                .inputs
                .iter()
                .map(|&i| values[i].as_ref().expect("topological order"))
                .collect();
            let x = args[0];
            let StepOp::Float(op) = &step.op else {
                return Err(TorchError::Int8Step {
                    step: program.value_name(step.output).to_string(),
                    op: step.op.name(),
                });
            };
            let out = match op {
                FloatOp::Conv {
                    window: w,
                    groups,
                    weight,
                    bias,
                } => {
                    let bias = bias.map(|b| &consts[b]);
                    let (s, p, d) = (i64s(&w.stride), i64s(&w.pad), i64s(&w.dilation));
                    if w.kernel.len() == 1 {
                        x.f_conv1d(&consts[*weight], bias, s, p, d, *groups as i64)
                    } else {
                        x.f_conv2d(&consts[*weight], bias, s, p, d, *groups as i64)
                    }
                }
                FloatOp::BatchNorm {
                    eps,
                    weight,
                    bias,
                    mean,
                    var,
                } => x.f_batch_norm(
                    Some(&consts[*weight]),
                    Some(&consts[*bias]),
                    Some(&consts[*mean]),
                    Some(&consts[*var]),
                    false,
                    0.0,
                    *eps as f64,
                    false,
                ),
                FloatOp::Relu => x.f_relu(),
                FloatOp::Clamp { min, max } => x.f_clamp(*min as f64, *max as f64),
                FloatOp::Identity => Ok(x.shallow_clone()),
                FloatOp::MaxPool { window: w } => {
                    let (k, s, p, d) = (i64s(&w.kernel), i64s(&w.stride), i64s(&w.pad), i64s(&w.dilation));
                    if w.kernel.len() == 1 {
                        x.f_max_pool1d(k, s, p, d, w.ceil_mode)
                    } else {
                        x.f_max_pool2d(k, s, p, d, w.ceil_mode)
                    }
                }
                FloatOp::AvgPool {
                    window: w,
                    count_include_pad,
                } => {
                    let (k, s, p) = (i64s(&w.kernel), i64s(&w.stride), i64s(&w.pad));
                    if w.kernel.len() == 1 {
                        x.f_avg_pool1d(k, s, p, w.ceil_mode, *count_include_pad)
                    } else {
                        x.f_avg_pool2d(k, s, p, w.ceil_mode, *count_include_pad, None::<i64>)
                    }
                }
                FloatOp::AdaptiveAvgPool { output } => {
                    if output.len() == 1 {
                        x.f_adaptive_avg_pool1d(i64s(output))
                    } else {
                        x.f_adaptive_avg_pool2d(i64s(output))
                    }
                }
                FloatOp::Flatten { start_dim, end_dim } => x.f_flatten(*start_dim as i64, *end_dim as i64),
                FloatOp::Linear { weight, bias } => x.f_linear(&consts[*weight], bias.map(|b| &consts[b])),
                FloatOp::Add => x.f_add(args[1]),
                FloatOp::Concat { dim } => tch::Tensor::f_cat(&args, *dim as i64),
            }
            .map_err(err)?;
            values[step.output] = Some(out);
        }
        program
            .outputs
            .iter()
            .map(|&id| from_tch(values[id].as_ref().expect("outputs are computed")))
            .collect()
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

    pub fn run_program(_p: &Program, _inputs: &[Tensor], _device: Device) -> Result<Vec<Tensor>, TorchError> {
        Err(TorchError::NotCompiled {
            what: "running a model through libtorch",
        })
    }
}

pub use imp::{info, round_trip, run_program};

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

    #[test]
    fn int8_steps_are_refused_by_name() {
        use crate::program::{Layout, QuantOp, Step, ValueInfo};
        use crate::quant::{QParams, QRange};
        let q = QParams::new(0.1, 128, QRange::U8).unwrap();
        let p = Program {
            values: vec![
                ValueInfo::float("x", vec![None, Some(4)]),
                ValueInfo::quantized("x.q", vec![None, Some(4)], crate::DType::U8, Layout::Torch, q),
                ValueInfo::float("y", vec![None, Some(4)]),
            ],
            inputs: vec![0],
            outputs: vec![2],
            steps: vec![
                Step {
                    op: QuantOp::Quantize.into(),
                    inputs: vec![0],
                    output: 1,
                },
                Step {
                    op: QuantOp::Dequantize.into(),
                    inputs: vec![1],
                    output: 2,
                },
            ],
            constants: vec![],
        };
        let x = Tensor::f32(vec![1, 4], vec![0.0, 0.1, -0.2, 1.0]);
        let e = run_program(&p, std::slice::from_ref(&x), Device::Cpu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "int8 step `x.q` (quantize) runs on the CPU runtime only; the libtorch backend runs float steps"
        );
        // The CPU runtime runs it.
        assert_eq!(
            crate::exec::run(&p, &[x]).unwrap()[0].as_f32().unwrap(),
            &[0.0, 0.1, -0.2, 1.0]
        );
    }
}
