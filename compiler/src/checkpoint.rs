//! Checkpoint I/O: reading and writing `.safetensors` (PyTorch names, any stage), reading a
//! checkpoint of either format (`.safetensors` or PyTorch `.pth`) into [`CkptValue`]s, and atomic
//! file writes that every output of qc goes through.

use std::path::Path;

use indexmap::IndexMap;
use qc_runtime::{DType, Tensor};

use crate::types::{ParamQuant, QuantParams};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot write `{path}`: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("`{path}` is not a valid safetensors file: {message}")]
    Format { path: String, message: String },
    #[error("tensor `{key}` in `{path}` has dtype {dtype}, which qc does not read")]
    DType { path: String, key: String, dtype: String },
}

/// Reads every tensor of a safetensors file, in the file's key order (sorted by name, as the
/// format stores no other order).
pub fn read_safetensors(path: &Path) -> Result<IndexMap<String, Tensor>, CheckpointError> {
    let p = path.display().to_string();
    let bytes = qc_runtime::fsutil::read_capped(path).map_err(|source| CheckpointError::Io {
        path: p.clone(),
        source,
    })?;
    safetensors_from_bytes(&p, &bytes)
}

/// [`read_safetensors`] on the bytes of a file already read (`p` names it in errors).
pub fn safetensors_from_bytes(p: &str, bytes: &[u8]) -> Result<IndexMap<String, Tensor>, CheckpointError> {
    let p = p.to_string();
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut out = IndexMap::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| CheckpointError::Format {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let shape = view.shape().to_vec();
        let data = view.data();
        let tensor = match view.dtype() {
            safetensors::Dtype::F32 => Tensor::from_le_bytes(DType::F32, shape, data),
            safetensors::Dtype::F64 => {
                let v: Vec<f32> = data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect();
                Some(Tensor::f32(shape, v))
            }
            // Half precision widens exactly, as the `.pth` reader does.
            safetensors::Dtype::F16 | safetensors::Dtype::BF16 if data.len() % 2 == 0 => {
                let bf16 = view.dtype() == safetensors::Dtype::BF16;
                let v: Vec<f32> = data
                    .chunks_exact(2)
                    .map(|c| {
                        let h = u16::from_le_bytes([c[0], c[1]]);
                        if bf16 {
                            f32::from_bits(u32::from(h) << 16)
                        } else {
                            crate::pth::f16_to_f32(h)
                        }
                    })
                    .collect();
                Some(Tensor::f32(shape, v))
            }
            safetensors::Dtype::I64 => Tensor::from_le_bytes(DType::I64, shape, data),
            safetensors::Dtype::I32 => Tensor::from_le_bytes(DType::I32, shape, data),
            safetensors::Dtype::I8 => Tensor::from_le_bytes(DType::I8, shape, data),
            safetensors::Dtype::U8 => Tensor::from_le_bytes(DType::U8, shape, data),
            other => {
                return Err(CheckpointError::DType {
                    path: p,
                    key: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let tensor = tensor.ok_or_else(|| CheckpointError::Format {
            path: p.clone(),
            message: format!("`{name}` has the wrong byte count"),
        })?;
        out.insert(name, tensor);
    }
    Ok(out)
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::I64 => safetensors::Dtype::I64,
        DType::I32 => safetensors::Dtype::I32,
        DType::I8 => safetensors::Dtype::I8,
        DType::U8 => safetensors::Dtype::U8,
    }
}

/// Writes tensors to a safetensors file atomically.
pub fn write_safetensors(path: &Path, tensors: &IndexMap<String, Tensor>) -> Result<(), CheckpointError> {
    write_safetensors_with_metadata(path, tensors, None)
}

/// Writes tensors and a string metadata map (safetensors' `__metadata__`) atomically.
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &IndexMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let bytes: Vec<(String, Vec<u8>, DType, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_le_bytes(), t.dtype(), t.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, d, s)| {
            let v =
                safetensors::tensor::TensorView::new(st_dtype(*d), s.clone(), b).expect("sizes match by construction");
            (k.clone(), v)
        })
        .collect();
    let data = safetensors::serialize(views, metadata).map_err(|e| CheckpointError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomic(path, &data).map_err(|source| CheckpointError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a file so that readers see the old content or the new, never a part: the runtime's
/// [`qc_runtime::fsutil::write_atomic`] (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    qc_runtime::fsutil::write_atomic(path, data)
}

/// One value of a checkpoint, whatever its file format.
#[derive(Clone, Debug, PartialEq)]
pub enum CkptValue {
    Tensor(Tensor),
    /// Integers and how they map to reals.
    Quantized {
        int_repr: Tensor,
        quant: ParamQuant,
    },
    /// A quantized linear's (weight, bias).
    Packed {
        weight: Tensor,
        quant: ParamQuant,
        bias: Option<Tensor>,
    },
    /// A pickled dtype such as `torch.qint8`.
    DType(String),
}

/// Why a checkpoint file could not be read: one sentence naming the file, and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    pub message: String,
    pub help: String,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

const PATH_HELP: &str =
    "check the path (relative paths start at the recipe's folder); qc reads .safetensors and PyTorch .pth files";
const RESAVE_HELP: &str = "qc reads PyTorch .pth files as `torch.save(model.state_dict(), path)` writes them (a zip archive) and .safetensors files; docs/checkpoints.md lists what is refused and why";

/// Reads a checkpoint file, `.safetensors` or PyTorch `.pth`, told apart by content. An empty
/// file and a bare pickle stream are named as such.
pub fn read_checkpoint(path: &std::path::Path) -> Result<IndexMap<String, CkptValue>, ReadError> {
    use crate::pth::CheckpointFormat;
    let err = |message: String, help: &str| ReadError {
        message,
        help: help.to_string(),
    };
    let head = {
        use std::io::Read;
        let mut buf = vec![0u8; 512];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut buf))
            .map_err(|e| err(format!("cannot read `{}`: {e}", path.display()), PATH_HELP))?;
        buf.truncate(n);
        buf
    };
    if head.is_empty() {
        return Err(err(
            format!("`{}` is empty (0 bytes): it holds no checkpoint", path.display()),
            "save the weights again (`torch.save(model.state_dict(), path)`, or `safetensors.torch.save_file`): the file was not written, or not completely",
        ));
    }
    let format = crate::pth::sniff(&head);
    if format == CheckpointFormat::Unknown && head[0] == 0x80 && head.get(1).is_some_and(|p| (2..=5).contains(p)) {
        return Err(err(
            format!(
                "`{}` is a bare pickle stream (pickle protocol {}), not the zip archive `torch.save` writes; qc does not read raw pickles",
                path.display(),
                head[1]
            ),
            "load it in Python (`pickle.load`) and save the state dict again with `torch.save(state_dict, path)` (its default zip format) or `safetensors.torch.save_file(state_dict, path)`",
        ));
    }
    match format {
        CheckpointFormat::Pth | CheckpointFormat::LegacyPth => {
            let values = crate::pth::read_pth(path).map_err(|e| {
                let help = match e {
                    crate::pth::PthError::Io { .. } => PATH_HELP,
                    _ => RESAVE_HELP,
                };
                err(e.to_string(), help)
            })?;
            pth_values(values).map_err(|m| err(format!("`{}`: {m}", path.display()), RESAVE_HELP))
        }
        _ => read_safetensors(path)
            .map(|t| t.into_iter().map(|(k, v)| (k, CkptValue::Tensor(v))).collect())
            .map_err(|e| match e {
                CheckpointError::Format { .. } if format == CheckpointFormat::Unknown && head.get(8) != Some(&b'{') => err(
                    format!(
                        "`{}` is neither a .safetensors file nor a PyTorch .pth (zip) archive: it does not start like either",
                        path.display()
                    ),
                    RESAVE_HELP,
                ),
                CheckpointError::Io { .. } => err(e.to_string(), PATH_HELP),
                _ => err(e.to_string(), RESAVE_HELP),
            }),
    }
}

/// [`read_checkpoint`] on the bytes of a file already read (`name` names it in errors).
pub fn checkpoint_from_bytes(name: &str, bytes: &[u8]) -> Result<IndexMap<String, CkptValue>, String> {
    use crate::pth::CheckpointFormat;
    match crate::pth::sniff(bytes) {
        CheckpointFormat::Pth | CheckpointFormat::LegacyPth => {
            pth_values(crate::pth::read_pth_bytes(bytes).map_err(|e| e.to_string())?)
        }
        _ => safetensors_from_bytes(name, bytes)
            .map(|t| t.into_iter().map(|(k, v)| (k, CkptValue::Tensor(v))).collect())
            .map_err(|e| e.to_string()),
    }
}

/// A `.pth` state dict's values as checkpoint values. A `None` entry (a quantized layer saved
/// without a bias) is a key with no tensor: qc's stage has no parameter for it either.
fn pth_values(values: IndexMap<String, crate::pth::PthValue>) -> Result<IndexMap<String, CkptValue>, String> {
    use crate::pth::PthValue;
    values
        .into_iter()
        .filter(|(_, v)| !matches!(v, PthValue::None))
        .map(|(k, v)| {
            let v = match v {
                PthValue::None => unreachable!("filtered above"),
                PthValue::Tensor(t) => CkptValue::Tensor(t),
                PthValue::Quantized(q) => CkptValue::Quantized {
                    quant: param_quant(&q).map_err(|m| format!("`{k}`: {m}"))?,
                    int_repr: q.int_repr,
                },
                PthValue::Packed { weight, bias } => CkptValue::Packed {
                    quant: param_quant(&weight).map_err(|m| format!("`{k}`: {m}"))?,
                    weight: weight.int_repr,
                    bias,
                },
                PthValue::DType(d) => CkptValue::DType(d),
            };
            Ok((k, v))
        })
        .collect()
}

/// A PyTorch qtensor's scheme as qc's `ParamQuant` (the range from its integer dtype).
fn param_quant(q: &crate::pth::QTensor) -> Result<ParamQuant, String> {
    let (qmin, qmax) = match q.int_repr.dtype() {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        d => {
            return Err(format!(
                "{d} quantized tensors are not supported (qint8 and quint8 are)"
            ))
        }
    };
    let zp = |z: i64| i32::try_from(z).map_err(|_| format!("zero point {z} is out of range"));
    Ok(match &q.scheme {
        crate::pth::QScheme::PerTensor { scale, zero_point } => ParamQuant::PerTensor(QuantParams {
            scale: *scale as f32,
            zero_point: zp(*zero_point)?,
            qmin,
            qmax,
        }),
        crate::pth::QScheme::PerChannel {
            axis,
            scales,
            zero_points,
        } => ParamQuant::PerChannel {
            axis: *axis,
            scales: scales.iter().map(|s| *s as f32).collect(),
            zero_points: zero_points.iter().map(|z| zp(*z)).collect::<Result<_, _>>()?,
            qmin,
            qmax,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with one tensor of `dtype` holding `bytes`.
    fn file_with(dtype: safetensors::Dtype, shape: Vec<usize>, bytes: &[u8]) -> Vec<u8> {
        let view = safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap();
        safetensors::serialize([("t", view)], None).unwrap()
    }

    #[test]
    fn half_precision_widens_exactly() {
        // 1.0, -2.5, the smallest subnormal, 65504 (f16's largest finite value).
        let f16: Vec<u8> = [0x3c00u16, 0xc100, 0x0001, 0x7bff]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let t = safetensors_from_bytes("f16", &file_with(safetensors::Dtype::F16, vec![4], &f16)).unwrap();
        assert_eq!(t["t"], Tensor::f32(vec![4], vec![1.0, -2.5, 2f32.powi(-24), 65504.0]));
        // bfloat16 is the top half of an f32.
        let bf16: Vec<u8> = [1.0f32, -3.0e38, 0.15625]
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let t = safetensors_from_bytes("bf16", &file_with(safetensors::Dtype::BF16, vec![3], &bf16)).unwrap();
        let want: Vec<f32> = [1.0f32, -3.0e38, 0.15625]
            .iter()
            .map(|x| f32::from_bits(x.to_bits() & 0xffff_0000))
            .collect();
        assert_eq!(t["t"], Tensor::f32(vec![3], want));
    }

    #[test]
    fn dtypes_qc_does_not_read_are_named() {
        let err = safetensors_from_bytes("c", &file_with(safetensors::Dtype::U16, vec![1], &[0; 2])).unwrap_err();
        assert!(err.to_string().contains("has dtype U16"), "{err}");
    }
}
