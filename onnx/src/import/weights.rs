//! An ONNX tensor's values: in the file (`raw_data` or the typed fields), in an external data
//! file next to the model, or missing (a graph shipped without its weights).

use std::path::Path;

use qc_runtime::tensor::Tensor;

use super::ImportError;
use crate::proto::{tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};

/// A tensor's values, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Values(Tensor),
    /// Stored in an external data file that is not there (`location`).
    Missing {
        location: String,
    },
}

/// The tensor's dims, as `usize` (a negative dim is refused).
pub fn dims(t: &TensorProto) -> Result<Vec<usize>, ImportError> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| ImportError::Tensor {
                tensor: t.name().to_string(),
                message: format!("dimension {d} is negative"),
            })
        })
        .collect()
}

fn bytes_of<'a>(
    t: &'a TensorProto,
    base_dir: Option<&Path>,
    buf: &'a mut Vec<u8>,
) -> Result<Option<&'a [u8]>, Payload> {
    if t.data_location() == DataLocation::External {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key() == k)
                .map(|e| e.value().to_string())
        };
        let location = get("location").unwrap_or_default();
        // ONNX requires a relative path inside the model's folder; never read anything else.
        let rel = Path::new(&location);
        if location.is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Payload::Missing {
                location: format!("{location} (not a relative path inside the model's folder)"),
            });
        }
        let path = base_dir.map(|d| d.join(rel)).unwrap_or_else(|| rel.to_path_buf());
        let Ok(file) = std::fs::read(&path) else {
            return Err(Payload::Missing { location });
        };
        let offset: usize = get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let length: usize = get("length")
            .and_then(|o| o.parse().ok())
            .unwrap_or(file.len().saturating_sub(offset));
        match file.get(offset..offset.saturating_add(length)) {
            Some(b) => {
                *buf = b.to_vec();
                Ok(Some(buf))
            }
            None => Err(Payload::Missing {
                location: format!("{location} (too short: {} bytes)", file.len()),
            }),
        }
    } else if let Some(raw) = &t.raw_data {
        Ok(Some(raw))
    } else {
        Ok(None)
    }
}

/// Decodes an f32 or i64 tensor (i64 values become f32: they are shapes and axes here, or
/// `Payload::Values` of an i64 [`Tensor`] when `keep_i64`).
pub fn payload(t: &TensorProto, base_dir: Option<&Path>) -> Result<Payload, ImportError> {
    let shape = dims(t)?;
    let n: usize = shape.iter().product();
    let mut buf = Vec::new();
    let bytes = match bytes_of(t, base_dir, &mut buf) {
        Ok(b) => b,
        Err(missing) => return Ok(missing),
    };
    let bad = |message: String| ImportError::Tensor {
        tensor: t.name().to_string(),
        message,
    };
    let dtype = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    match dtype {
        DataType::Float => {
            let values: Vec<f32> = match bytes {
                Some(b) => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                None => t.float_data.clone(),
            };
            if values.len() != n {
                return Err(bad(format!("holds {} values for dims {:?}", values.len(), t.dims)));
            }
            Ok(Payload::Values(Tensor::f32(shape, values)))
        }
        DataType::Int64 | DataType::Int32 => {
            let values: Vec<i64> = match (bytes, dtype) {
                (Some(b), DataType::Int64) => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
                (Some(b), _) => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                (None, DataType::Int64) => t.int64_data.clone(),
                (None, _) => t.int32_data.iter().map(|&v| v as i64).collect(),
            };
            if values.len() != n {
                return Err(bad(format!("holds {} values for dims {:?}", values.len(), t.dims)));
            }
            Ok(Payload::Values(Tensor {
                shape,
                data: qc_runtime::tensor::TensorData::I64(values),
            }))
        }
        other => Err(bad(format!(
            "has element type {}; qc imports float32 weights and int64 shapes",
            other.as_str_name()
        ))),
    }
}

/// The values of a small constant (a clip bound, a shape, axes) as f64s.
pub fn constant_values(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<f64>, ImportError> {
    match payload(t, base_dir)? {
        Payload::Values(v) => Ok(match &v.data {
            qc_runtime::tensor::TensorData::F32(x) => x.iter().map(|&a| a as f64).collect(),
            qc_runtime::tensor::TensorData::I64(x) => x.iter().map(|&a| a as f64).collect(),
            _ => vec![],
        }),
        Payload::Missing { location } => Err(ImportError::Tensor {
            tensor: t.name().to_string(),
            message: format!("is a constant the graph needs, stored in `{location}`, which is missing"),
        }),
    }
}

/// `t` transposed as a matrix (`[a, b]` → `[b, a]`): Gemm with `transB = 0`, MatMul weights.
pub fn transpose2(t: &Tensor) -> Option<Tensor> {
    let (a, b) = (*t.shape.first()?, *t.shape.get(1)?);
    let x = t.as_f32()?;
    let mut out = vec![0.0; a * b];
    for i in 0..a {
        for j in 0..b {
            out[j * a + i] = x[i * b + j];
        }
    }
    Some(Tensor::f32(vec![b, a], out))
}
