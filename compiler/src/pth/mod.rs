//! Reading PyTorch `.pth` checkpoints as `torch.save(model.state_dict(), path)` writes them: a
//! zip archive (`<prefix>/data.pkl`, `<prefix>/data/<key>` storages, `<prefix>/byteorder`)
//! whose pickle is evaluated by a small, strict pickle machine of our own.
//!
//! Why our own: `serde-pickle` cannot resolve persistent ids or call globals, and the readers
//! inside larger crates (candle's, burn's `pytorch-reader`) come with their own tensor types and
//! know nothing of quantized tensors. The machine here runs no code: it knows the opcodes that
//! `pickle` protocols 2 to 5 emit for state dicts, and a fixed list of callables, each rebuilt in
//! Rust (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`/`_v3`/`_rebuild_tensor`,
//! `_rebuild_parameter`, `_rebuild_parameter_with_state`, `_rebuild_qtensor`). Calling any other
//! global gives a value that fails, naming the global, when its key is read. Limits on the stack,
//! marks, memo, nesting, dimensions and materialised bytes make hostile input an error, never a
//! panic or an unbounded allocation.
//!
//! What comes back, per key in the file's order:
//! - float32 tensors as `f32`; **float64, float16 and bfloat16 are converted to `f32`** (qc has no
//!   other float type: float16/bfloat16 widen exactly, float64 rounds to nearest);
//! - int64, int32, int8, uint8 as themselves; int16 widened to `i32`; **bool as `u8` 0/1**;
//! - views (strides, storage offsets, shared storages, stride-0 expansions) materialised
//!   contiguous, row-major;
//! - quantized tensors (qint8, quint8, qint32; per-tensor or per-channel affine) as their integer
//!   representation plus the quantization scheme;
//! - a quantized Linear's `_packed_params._packed_params` (weight, optional bias) as `Packed`;
//! - a pickled dtype (`_packed_params.dtype`) as its name, e.g. `torch.qint8`; `None` as `None`.
//!
//! Refused with a message saying what to do: the legacy non-zip format, TorchScript archives, a
//! pickled module object (`torch.save(model)`), nested dicts (training checkpoints), compressed
//! archive members, and dtypes qc cannot hold (complex, unsigned 16/32/64, float8).

mod archive;
mod pickle;
mod state_dict;
mod storage;
pub(crate) use storage::f16_to_f32;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use indexmap::IndexMap;
use qc_runtime::{Tensor, TensorData};

// The submodules see each other's items (and these imports) through `use super::*`.
use archive::*;
use pickle::*;
use state_dict::*;
use storage::*;

/// One entry of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum PthValue {
    /// A dense tensor (see the module docs for the dtype conversions).
    Tensor(Tensor),
    /// A quantized tensor.
    Quantized(QTensor),
    /// The packed parameters of a quantized Linear: the weight and its float bias, if any.
    Packed { weight: QTensor, bias: Option<Tensor> },
    /// A pickled `torch.dtype`, by its PyTorch name (`torch.qint8`).
    DType(String),
    /// A `None` value (a quantized layer saved without a bias, for example).
    None,
}

/// A quantized tensor: its integer representation (`I8` for qint8, `U8` for quint8, `I32` for
/// qint32) and how to map it to real values.
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub int_repr: Tensor,
    pub scheme: QScheme,
}

/// PyTorch's affine quantization schemes: `real = scale * (q - zero_point)`.
#[derive(Clone, Debug, PartialEq)]
pub enum QScheme {
    PerTensor {
        scale: f64,
        zero_point: i64,
    },
    PerChannel {
        axis: usize,
        scales: Vec<f64>,
        zero_points: Vec<i64>,
    },
}

/// Why a checkpoint could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "`{path}` is a PyTorch checkpoint in the legacy format (saved before PyTorch 1.6 or with \
         `_use_new_zipfile_serialization=False`), which qc does not read; re-save it with a current \
         PyTorch: `torch.save(torch.load(old, weights_only=True), new)`"
    )]
    Legacy { path: String },
    #[error("`{path}` is not a PyTorch checkpoint that qc reads: {message}")]
    Format { path: String, message: String },
    #[error("`{path}`: `{key}`: {message}")]
    Key { path: String, key: String, message: String },
}

/// What a checkpoint file is, judged by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A zip archive: what `torch.save` writes since PyTorch 1.6.
    Pth,
    /// `torch.save` with `_use_new_zipfile_serialization=False`, or a pre-1.6 (tar) file.
    LegacyPth,
    /// A `.safetensors` file.
    Safetensors,
    Unknown,
}

/// True when the bytes start like a zip archive (`PK\x03\x04`), as `torch.save` writes.
pub fn is_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Tells `.pth`, legacy `.pth` and `.safetensors` apart by content, whatever the file is called.
pub fn sniff(bytes: &[u8]) -> CheckpointFormat {
    // The legacy format starts with a pickled magic number, 0x1950a86a20f9469cfc6c (LONG1).
    const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    if is_pth(bytes) {
        return CheckpointFormat::Pth;
    }
    if bytes.starts_with(LEGACY_MAGIC) || bytes.get(257..262) == Some(b"ustar") {
        return CheckpointFormat::LegacyPth;
    }
    if let Some(head) = bytes.get(..8) {
        let mut len = [0u8; 8];
        len.copy_from_slice(head);
        let n = u64::from_le_bytes(len);
        if n >= 2 && n <= (bytes.len() as u64).saturating_sub(8) && bytes.get(8) == Some(&b'{') {
            return CheckpointFormat::Safetensors;
        }
    }
    CheckpointFormat::Unknown
}

/// Reads a `torch.save(state_dict)` file: every key in the file's order.
pub fn read_pth(path: &Path) -> Result<IndexMap<String, PthValue>, PthError> {
    let name = path.display().to_string();
    let bytes = qc_runtime::fsutil::read_capped(path).map_err(|source| PthError::Io {
        path: name.clone(),
        source,
    })?;
    read_named(&bytes, &name)
}

/// [`read_pth`] on bytes in memory (errors name the file `<memory>`).
pub fn read_pth_bytes(bytes: &[u8]) -> Result<IndexMap<String, PthValue>, PthError> {
    read_named(bytes, "<memory>")
}

#[cfg(test)]
mod tests;
