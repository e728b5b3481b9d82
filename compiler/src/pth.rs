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

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use indexmap::IndexMap;
use qc_runtime::{Tensor, TensorData};

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
    let bytes = std::fs::read(path).map_err(|source| PthError::Io {
        path: name.clone(),
        source,
    })?;
    read_named(&bytes, &name)
}

/// [`read_pth`] on bytes in memory (errors name the file `<memory>`).
pub fn read_pth_bytes(bytes: &[u8]) -> Result<IndexMap<String, PthValue>, PthError> {
    read_named(bytes, "<memory>")
}

fn read_named(bytes: &[u8], path: &str) -> Result<IndexMap<String, PthValue>, PthError> {
    let format_err = |message: String| PthError::Format {
        path: path.to_string(),
        message,
    };
    match sniff(bytes) {
        CheckpointFormat::Pth => {}
        CheckpointFormat::LegacyPth => return Err(PthError::Legacy { path: path.to_string() }),
        CheckpointFormat::Safetensors => {
            return Err(format_err(
                "it is a .safetensors file; read it with `checkpoint::read_safetensors`".into(),
            ))
        }
        CheckpointFormat::Unknown => {
            return Err(format_err(
                "it does not start like a zip archive (`PK\\x03\\x04`), which `torch.save` writes".into(),
            ))
        }
    }
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format_err(format!("bad zip archive: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|p| !p.is_empty() && !p.contains('/'))
        })
        .cloned();
    let Some(pkl) = pkl else {
        let torchscript = names.iter().any(|n| n.ends_with("/constants.pkl"));
        return Err(format_err(if torchscript {
            "it is a TorchScript archive (`torch.jit.save`); save `model.state_dict()` with `torch.save` instead".into()
        } else {
            "the archive has no `<folder>/data.pkl`, so `torch.save` did not write it".into()
        }));
    };
    let prefix = pkl.trim_end_matches("/data.pkl").to_string();
    if names.iter().any(|n| *n == format!("{prefix}/constants.pkl")) {
        return Err(format_err(
            "it is a TorchScript archive (`torch.jit.save`); save `model.state_dict()` with `torch.save` instead"
                .into(),
        ));
    }
    let limit = bytes.len();
    let pickle = read_member(&mut archive, &pkl, None, limit).map_err(format_err)?;
    let big_endian = match read_member(&mut archive, &format!("{prefix}/byteorder"), None, limit) {
        Ok(order) => match order.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(format_err(format!(
                    "`{prefix}/byteorder` says `{}`, not `little` or `big`",
                    String::from_utf8_lossy(&other[..other.len().min(16)])
                )))
            }
        },
        // Files from older PyTorch versions have no byteorder record: little-endian.
        Err(_) if !names.iter().any(|n| *n == format!("{prefix}/byteorder")) => false,
        Err(m) => return Err(format_err(m)),
    };
    let mut load = |key: &str, nbytes: usize| -> Result<Rc<Vec<u8>>, String> {
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(format!("storage key `{}` is not a plain name", clip(key)));
        }
        read_member(&mut archive, &format!("{prefix}/data/{key}"), Some(nbytes), limit).map(Rc::new)
    };
    let budget = bytes.len().saturating_mul(4).saturating_add(64 << 20);
    let root = Machine::new(&pickle, big_endian, budget, &mut load)
        .run()
        .map_err(|m| format_err(format!("in `{}`: {m}", clip(&pkl))))?;
    to_state_dict(root).map_err(|(key, message)| match key {
        Some(key) => PthError::Key {
            path: path.to_string(),
            key,
            message,
        },
        None => format_err(message),
    })
}

/// Reads one stored (uncompressed) member, of `expect` bytes when given.
fn read_member<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    expect: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let file = archive
        .by_name(name)
        .map_err(|e| format!("cannot open `{}` in the archive: {e}", clip(name)))?;
    if file.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "`{}` is compressed ({}); torch.save stores members uncompressed, so the file was re-zipped: \
             re-save it with torch.save",
            clip(name),
            file.compression()
        ));
    }
    let size = file.size();
    if let Some(n) = expect {
        if size != n as u64 {
            return Err(format!(
                "storage `{}` has {size} bytes where its tensor needs {n}",
                clip(name)
            ));
        }
    }
    if size > limit as u64 {
        return Err(format!("`{}` claims {size} bytes, more than the file has", clip(name)));
    }
    let mut out = Vec::with_capacity(size as usize);
    // Reading to the end (the zip reader stops at the member's size) checks its CRC-32. One
    // byte more than the size is allowed through so that a lying size is seen, not trusted.
    file.take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read `{}`: {e}", clip(name)))?;
    if out.len() as u64 != size {
        return Err(format!(
            "`{}` does not have the {size} bytes its header says",
            clip(name)
        ));
    }
    Ok(out)
}

/// At most 80 characters of a name from the file, for messages.
fn clip(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

// ---------------------------------------------------------------------------------------------
// Element types of torch storages.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    QInt8,
    QUInt8,
    QInt32,
}

impl SType {
    fn size(self) -> usize {
        match self {
            SType::F64 | SType::I64 => 8,
            SType::F32 | SType::I32 | SType::QInt32 => 4,
            SType::F16 | SType::BF16 | SType::I16 => 2,
            SType::I8 | SType::U8 | SType::Bool | SType::QInt8 | SType::QUInt8 => 1,
        }
    }
    fn is_quantized(self) -> bool {
        matches!(self, SType::QInt8 | SType::QUInt8 | SType::QInt32)
    }
    /// From a storage class (`torch.FloatStorage`); `None` inside for `UntypedStorage` (bytes).
    fn from_storage(name: &str) -> Option<Option<SType>> {
        Some(Some(match name {
            "torch.FloatStorage" => SType::F32,
            "torch.DoubleStorage" => SType::F64,
            "torch.HalfStorage" => SType::F16,
            "torch.BFloat16Storage" => SType::BF16,
            "torch.LongStorage" => SType::I64,
            "torch.IntStorage" => SType::I32,
            "torch.ShortStorage" => SType::I16,
            "torch.CharStorage" => SType::I8,
            "torch.ByteStorage" => SType::U8,
            "torch.BoolStorage" => SType::Bool,
            "torch.QInt8Storage" => SType::QInt8,
            "torch.QUInt8Storage" => SType::QUInt8,
            "torch.QInt32Storage" => SType::QInt32,
            "torch.UntypedStorage" | "torch.storage.UntypedStorage" => return Some(None),
            _ => return None,
        }))
    }
    /// From a dtype global (`torch.float32`).
    fn from_dtype(name: &str) -> Option<SType> {
        Some(match name {
            "torch.float32" => SType::F32,
            "torch.float64" => SType::F64,
            "torch.float16" => SType::F16,
            "torch.bfloat16" => SType::BF16,
            "torch.int64" => SType::I64,
            "torch.int32" => SType::I32,
            "torch.int16" => SType::I16,
            "torch.int8" => SType::I8,
            "torch.uint8" => SType::U8,
            "torch.bool" => SType::Bool,
            "torch.qint8" => SType::QInt8,
            "torch.quint8" => SType::QUInt8,
            "torch.qint32" => SType::QInt32,
            _ => return None,
        })
    }
}

/// Every `torch.dtype` name a checkpoint may carry as a value.
fn is_dtype_name(name: &str) -> bool {
    SType::from_dtype(name).is_some()
        || matches!(
            name,
            "torch.uint16"
                | "torch.uint32"
                | "torch.uint64"
                | "torch.complex64"
                | "torch.complex128"
                | "torch.float8_e4m3fn"
                | "torch.float8_e5m2"
                | "torch.quint4x2"
                | "torch.quint2x4"
        )
}

/// A tensor rebuilt from the pickle: contiguous little-endian bytes of `stype` elements.
#[derive(Debug)]
struct Raw {
    stype: SType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    /// The elements as f64 (floats and integers), for quantization parameters.
    fn to_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        match self.stype {
            SType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(arr(c))).collect(),
            _ => match self.to_tensor().data {
                TensorData::F32(v) => v.into_iter().map(f64::from).collect(),
                TensorData::I64(v) => v.into_iter().map(|x| x as f64).collect(),
                TensorData::I32(v) => v.into_iter().map(f64::from).collect(),
                TensorData::I8(v) => v.into_iter().map(f64::from).collect(),
                TensorData::U8(v) => v.into_iter().map(f64::from).collect(),
            },
        }
    }
    /// The elements as i64, for zero points; `None` for float elements.
    fn to_i64(&self) -> Option<Vec<i64>> {
        match self.to_tensor().data {
            TensorData::I64(v) => Some(v),
            TensorData::I32(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::I8(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::U8(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::F32(_) => None,
        }
    }
    /// qc's tensor: the conversions of the module docs.
    fn to_tensor(&self) -> Tensor {
        let b = &self.bytes;
        let data = match self.stype {
            SType::F32 => TensorData::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes(arr(c))).collect()),
            SType::F64 => TensorData::F32(b.chunks_exact(8).map(|c| f64::from_le_bytes(arr(c)) as f32).collect()),
            SType::F16 => TensorData::F32(
                b.chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes(arr(c))))
                    .collect(),
            ),
            SType::BF16 => TensorData::F32(
                b.chunks_exact(2)
                    .map(|c| f32::from_bits(u32::from(u16::from_le_bytes(arr(c))) << 16))
                    .collect(),
            ),
            SType::I64 => TensorData::I64(b.chunks_exact(8).map(|c| i64::from_le_bytes(arr(c))).collect()),
            SType::I32 | SType::QInt32 => {
                TensorData::I32(b.chunks_exact(4).map(|c| i32::from_le_bytes(arr(c))).collect())
            }
            SType::I16 => TensorData::I32(
                b.chunks_exact(2)
                    .map(|c| i32::from(i16::from_le_bytes(arr(c))))
                    .collect(),
            ),
            SType::I8 | SType::QInt8 => TensorData::I8(b.iter().map(|x| *x as i8).collect()),
            SType::U8 | SType::QUInt8 => TensorData::U8(b.clone()),
            SType::Bool => TensorData::U8(b.iter().map(|x| u8::from(*x != 0)).collect()),
        };
        Tensor {
            shape: self.shape.clone(),
            data,
        }
    }
}

fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

/// IEEE half to single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | (0xff << 23) | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[derive(Debug)]
struct RawQ {
    int_repr: Raw,
    scheme: QScheme,
}

/// A storage loaded from the archive.
#[derive(Debug)]
struct Storage {
    /// `None` for an untyped (byte) storage.
    stype: Option<SType>,
    data: Rc<Vec<u8>>,
}

// ---------------------------------------------------------------------------------------------
// The pickle machine.

/// Most values on the stack (marks included), memo entries, and nesting of containers.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_DEPTH: u32 = 64;
/// Most dimensions of a tensor (PyTorch allows 64; no checkpoint qc reads needs more than 32).
const MAX_DIMS: usize = 32;

#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool (only `requires_grad`, whose value qc does not need).
    Bool,
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Bytes (not part of a state dict; kept only as a kind).
    Bytes,
    Tuple(Rc<Vec<Value>>, u32),
    List(Vec<Value>, u32),
    Dict(Vec<(Value, Value)>, u32),
    /// `module.name`
    Global(Rc<str>),
    Storage(Rc<Storage>),
    Tensor(Rc<Raw>),
    QTensor(Rc<RawQ>),
    /// A value that cannot be built; the message is reported with the key that holds it.
    Invalid(Rc<str>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(..) => "a tuple",
            Value::List(..) => "a list",
            Value::Dict(..) => "a dict",
            Value::Global(_) => "a global name",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::QTensor(_) => "a quantized tensor",
            Value::Invalid(_) => "an invalid value",
        }
    }
    fn invalid(message: impl Into<String>) -> Value {
        Value::Invalid(Rc::from(message.into()))
    }
}

enum Memo {
    Value(Value),
    /// A list or dict: shared by reference in Python, which this machine does not model.
    Mutable,
}

type Loader<'l> = dyn FnMut(&str, usize) -> Result<Rc<Vec<u8>>, String> + 'l;

struct Machine<'a, 'l> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Memo>,
    big_endian: bool,
    /// Bytes that materialised tensors may still take.
    budget: usize,
    storages: HashMap<String, Rc<Storage>>,
    load: &'l mut Loader<'l>,
}

type Fail = String;

impl<'a, 'l> Machine<'a, 'l> {
    fn new(input: &'a [u8], big_endian: bool, budget: usize, load: &'l mut Loader<'l>) -> Self {
        Machine {
            input,
            pos: 0,
            stack: vec![],
            marks: vec![],
            memo: HashMap::new(),
            big_endian,
            budget,
            storages: HashMap::new(),
            load,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or_else(|| "the pickle ends in the middle of an instruction".to_string())?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, Fail> {
        Ok(self.take(1)?[0])
    }
    fn u32le(&mut self) -> Result<u32, Fail> {
        Ok(u32::from_le_bytes(arr(self.take(4)?)))
    }
    fn len_u64(&mut self) -> Result<usize, Fail> {
        let n = u64::from_le_bytes(arr(self.take(8)?));
        usize::try_from(n).map_err(|_| "a length does not fit in memory".to_string())
    }
    fn line(&mut self) -> Result<&'a str, Fail> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .take(1024)
            .position(|b| *b == b'\n')
            .ok_or_else(|| "a GLOBAL name is not terminated within 1024 bytes".to_string())?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| "a GLOBAL name is not UTF-8".to_string())?;
        self.pos += end + 1;
        Ok(s)
    }
    fn text(&mut self, n: usize) -> Result<Value, Fail> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "a string is not valid UTF-8".to_string())?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) -> Result<(), Fail> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("the pickle stack grows past {MAX_STACK} values"));
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<Value, Fail> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("an instruction needs a value the stack does not have".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".to_string())
    }
    fn top(&mut self) -> Result<&mut Value, Fail> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("an instruction needs a value the stack does not have".into());
        }
        self.stack.last_mut().ok_or_else(|| "the stack is empty".to_string())
    }
    /// The values since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, Fail> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| "an instruction needs a MARK that is not there".to_string())?;
        Ok(self.stack.split_off(m))
    }
    fn tuple(items: Vec<Value>) -> Result<Value, Fail> {
        let depth = child_depth(items.iter())?;
        Ok(Value::Tuple(Rc::new(items), depth))
    }
    fn memo_put(&mut self, idx: u32) -> Result<(), Fail> {
        let v = match self.top()? {
            Value::List(..) | Value::Dict(..) => Memo::Mutable,
            v => Memo::Value(v.clone()),
        };
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(format!("the pickle memo grows past {MAX_MEMO} entries"));
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<(), Fail> {
        let v = match self.memo.get(&idx) {
            Some(Memo::Value(v)) => v.clone(),
            Some(Memo::Mutable) => {
                return Err(format!(
                    "memo entry {idx} is a list or dict used twice (shared by reference), which qc's reader does not support"
                ))
            }
            None => return Err(format!("memo entry {idx} is read before it is written")),
        };
        self.push(v)
    }

    fn run(mut self) -> Result<Value, Fail> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            let r = self.step(op);
            match r {
                Ok(true) => {
                    return self.stack.pop().ok_or_else(|| "STOP with an empty stack".to_string());
                }
                Ok(false) => {}
                Err(m) => return Err(format!("{m} (opcode 0x{op:02x} at byte {at})")),
            }
        }
    }

    /// One instruction; `Ok(true)` at STOP.
    fn step(&mut self, op: u8) -> Result<bool, Fail> {
        match op {
            0x80 => {
                let p = self.byte()?;
                if !(2..=5).contains(&p) {
                    return Err(format!("pickle protocol {p}; qc reads protocols 2 to 5"));
                }
            }
            0x95 => {
                self.len_u64()?; // FRAME: a hint only
            }
            b'.' => return Ok(true),
            b'(' => {
                if self.marks.len() >= MAX_STACK {
                    return Err("too many MARKs".into());
                }
                self.marks.push(self.stack.len());
            }
            b'}' => self.push(Value::Dict(vec![], 1))?,
            b']' => self.push(Value::List(vec![], 1))?,
            b')' => self.push(Value::Tuple(Rc::new(vec![]), 1))?,
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool)?,
            0x89 => self.push(Value::Bool)?,
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(i64::from(v)))?
            }
            b'M' => {
                let v = u16::from_le_bytes(arr(self.take(2)?));
                self.push(Value::Int(i64::from(v)))?
            }
            b'J' => {
                let v = i32::from_le_bytes(arr(self.take(4)?));
                self.push(Value::Int(i64::from(v)))?
            }
            0x8a => {
                let n = usize::from(self.byte()?);
                let b = self.take(n)?;
                self.push(Value::Int(long(b)?))?
            }
            0x8b => {
                let n = i32::from_le_bytes(arr(self.take(4)?));
                let n = usize::try_from(n).map_err(|_| "LONG4 with a negative length".to_string())?;
                let b = self.take(n)?;
                self.push(Value::Int(long(b)?))?
            }
            b'G' => {
                let v = f64::from_be_bytes(arr(self.take(8)?));
                self.push(Value::Float(v))?
            }
            b'X' => {
                let n = self.u32le()? as usize;
                let v = self.text(n)?;
                self.push(v)?
            }
            0x8c => {
                let n = usize::from(self.byte()?);
                let v = self.text(n)?;
                self.push(v)?
            }
            0x8d => {
                let n = self.len_u64()?;
                let v = self.text(n)?;
                self.push(v)?
            }
            b'C' => {
                let n = usize::from(self.byte()?);
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            b'B' => {
                let n = self.u32le()? as usize;
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            0x8e => {
                let n = self.len_u64()?;
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                let t = Self::tuple(items)?;
                self.push(t)?
            }
            b't' => {
                let items = self.pop_mark()?;
                let t = Self::tuple(items)?;
                self.push(t)?
            }
            b'l' => {
                let items = self.pop_mark()?;
                let depth = child_depth(items.iter())?;
                self.push(Value::List(items, depth))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let d = pairs(items)?;
                let depth = child_depth(d.iter().flat_map(|(k, v)| [k, v]))?;
                self.push(Value::Dict(d, depth))?
            }
            b'0' => {
                self.pop()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?
            }
            b'q' => {
                let i = self.byte()?;
                self.memo_put(u32::from(i))?
            }
            b'r' => {
                let i = self.u32le()?;
                self.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                self.memo_put(i)?
            }
            b'h' => {
                let i = self.byte()?;
                self.memo_get(u32::from(i))?
            }
            b'j' => {
                let i = self.u32le()?;
                self.memo_get(i)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(Rc::from(format!("{module}.{name}"))))?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(Rc::from(format!("{m}.{n}"))))?,
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'a' => {
                let v = self.pop()?;
                append(self.top()?, vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                append(self.top()?, items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                set_items(self.top()?, vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let p = pairs(items)?;
                set_items(self.top()?, p)?
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid);
                self.push(v)?
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.push(v)?
            }
            0x81 => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = match cls {
                    Value::Global(g) => Value::invalid(format!(
                        "the pickle builds a `{}` object, which qc does not read",
                        clip(&g)
                    )),
                    other => Value::invalid(format!("NEWOBJ on {}", other.kind())),
                };
                self.push(v)?
            }
            b'b' => {
                let _state = self.pop()?;
                match self.top()? {
                    // An OrderedDict's state is its attributes: a state_dict's `_metadata`
                    // (module versions), which qc does not need.
                    Value::Dict(..) | Value::Invalid(_) => {}
                    other => {
                        let k = other.kind();
                        *other = Value::invalid(format!("BUILD (object state) on {k}, which qc does not read"));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x}; qc reads what torch.save writes"
                ))
            }
        }
        Ok(false)
    }

    /// `('storage', torch.FloatStorage, key, location, numel)`: the storage, loaded once per key.
    fn persistent_load(&mut self, pid: Value) -> Value {
        let Value::Tuple(items, _) = &pid else {
            return Value::invalid(format!("a persistent id is {}, not a tuple", pid.kind()));
        };
        let (kind, class, key, numel) = match items.as_slice() {
            [Value::Str(k), Value::Global(c), Value::Str(key), _location, Value::Int(n)] => (k, c, key, *n),
            _ => return Value::invalid("a persistent id is not ('storage', type, key, location, numel)"),
        };
        if &**kind != "storage" {
            return Value::invalid(format!("persistent id of kind `{}`", clip(kind)));
        }
        let Some(stype) = SType::from_storage(class) else {
            return Value::invalid(format!("storage type `{}`, which qc does not read", clip(class)));
        };
        let elem = stype.map_or(1, SType::size);
        let Some(nbytes) = usize::try_from(numel).ok().and_then(|n| n.checked_mul(elem)) else {
            return Value::invalid(format!("storage `{}` has an impossible size {numel}", clip(key)));
        };
        if let Some(s) = self.storages.get(&**key) {
            if s.stype != stype || s.data.len() != nbytes {
                return Value::invalid(format!("storage `{}` is used with two types or sizes", clip(key)));
            }
            return Value::Storage(s.clone());
        }
        match (self.load)(key, nbytes) {
            Ok(data) => {
                let s = Rc::new(Storage { stype, data });
                self.storages.insert(key.to_string(), s.clone());
                Value::Storage(s)
            }
            Err(m) => Value::invalid(m),
        }
    }

    /// REDUCE: only the callables of the module docs; anything else becomes an invalid value.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, Fail> {
        let Value::Global(name) = callable else {
            return Ok(match callable {
                Value::Invalid(m) => Value::Invalid(m),
                other => Value::invalid(format!("the pickle calls {}", other.kind())),
            });
        };
        let Value::Tuple(args, _) = args else {
            return Err("REDUCE arguments are not a tuple".into());
        };
        let a = args.as_slice();
        let r = match &*name {
            "collections.OrderedDict" => match a {
                [] => Ok(Value::Dict(vec![], 1)),
                _ => Err("collections.OrderedDict with arguments".to_string()),
            },
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match a {
                [storage, offset, size, stride, ..] => self.rebuild(storage, offset, size, stride, None),
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            "torch._utils._rebuild_tensor_v3" => match a {
                [storage, offset, size, stride, _rg, _hooks, dtype, ..] => match dtype {
                    Value::Global(d) => match SType::from_dtype(d) {
                        Some(t) => self.rebuild(storage, offset, size, stride, Some(t)),
                        None => Err(format!("dtype `{}`, which qc does not read", clip(d))),
                    },
                    _ => Err("`_rebuild_tensor_v3` without a dtype".into()),
                },
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match a.first() {
                Some(v @ (Value::Tensor(_) | Value::QTensor(_) | Value::Invalid(_))) => Ok(v.clone()),
                _ => Err(format!("`{name}` without a tensor")),
            },
            "torch._utils._rebuild_qtensor" => match a {
                [storage, offset, size, stride, qparams, ..] => self.rebuild_q(storage, offset, size, stride, qparams),
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            other => Err(format!("unsupported pickle global `{}`", clip(other))),
        };
        Ok(r.unwrap_or_else(Value::invalid))
    }

    /// A tensor from its storage and view: shape, strides and offset checked against the
    /// storage, then copied contiguous.
    fn rebuild(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        dtype: Option<SType>,
    ) -> Result<Value, String> {
        self.materialise(storage, offset, size, stride, dtype)
            .map(|raw| Value::Tensor(Rc::new(raw)))
    }

    fn materialise(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        dtype: Option<SType>,
    ) -> Result<Raw, String> {
        let s = match storage {
            Value::Storage(s) => s.clone(),
            Value::Invalid(m) => return Err(m.to_string()),
            other => return Err(format!("a tensor's storage is {}", other.kind())),
        };
        let stype = match (s.stype, dtype) {
            (Some(t), None) => t,
            (None, Some(t)) => t,
            (Some(t), Some(d)) if t == d => t,
            (None, None) => return Err("an untyped storage without a dtype".into()),
            (Some(_), Some(_)) => return Err("a typed storage with another dtype".into()),
        };
        let elem = stype.size();
        if s.data.len() % elem != 0 {
            return Err("a storage's byte count is not a whole number of elements".into());
        }
        let storage_len = s.data.len() / elem;
        let shape = dims(size, "size")?;
        let strides = dims(stride, "stride")?;
        let offset = match offset {
            Value::Int(o) => usize::try_from(*o).map_err(|_| "a negative storage offset".to_string())?,
            other => return Err(format!("a storage offset is {}", other.kind())),
        };
        if shape.len() != strides.len() {
            return Err(format!(
                "size has {} dimensions and stride {}",
                shape.len(),
                strides.len()
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or("the tensor's size overflows")?;
        // A dimension of size 1 never steps: its stride does not matter (PyTorch writes any).
        let strides: Vec<usize> = shape
            .iter()
            .zip(&strides)
            .map(|(d, s)| if *d == 1 { 0 } else { *s })
            .collect();
        if numel > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |a, (d, s)| {
                    (d - 1).checked_mul(*s).and_then(|x| x.checked_add(a))
                })
                .ok_or("the tensor's view overflows")?;
            if last >= storage_len {
                return Err(format!(
                    "the view (offset {offset}, size {shape:?}, stride {strides:?}) reaches element {last} of a storage of {storage_len}"
                ));
            }
        }
        let nbytes = numel.checked_mul(elem).ok_or("the tensor's size overflows")?;
        if nbytes > self.budget {
            return Err("the tensors would take more memory than 4x the file plus 64 MiB; refusing".into());
        }
        self.budget -= nbytes;
        let mut bytes = Vec::with_capacity(nbytes);
        let contiguous = shape
            .iter()
            .zip(strides.iter().zip(contiguous_strides(&shape)))
            .all(|(d, (s, c))| *d == 1 || *s == c);
        if numel > 0 && contiguous {
            bytes.extend_from_slice(&s.data[offset * elem..(offset + numel) * elem]);
        } else if numel > 0 {
            // Odometer over the index space, row-major. Every dimension of size 2 or more has a
            // stride below the storage length (checked above), so nothing here overflows.
            let mut idx = vec![0usize; shape.len()];
            let mut at = offset;
            for _ in 0..numel {
                bytes.extend_from_slice(&s.data[at * elem..(at + 1) * elem]);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    at += strides[d];
                    if idx[d] < shape[d] {
                        break;
                    }
                    at -= strides[d] * shape[d];
                    idx[d] = 0;
                }
            }
        }
        if self.big_endian && elem > 1 {
            for c in bytes.chunks_exact_mut(elem) {
                c.reverse();
            }
        }
        Ok(Raw { stype, shape, bytes })
    }

    fn rebuild_q(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        qparams: &Value,
    ) -> Result<Value, String> {
        let raw = self.materialise(storage, offset, size, stride, None)?;
        if !raw.stype.is_quantized() {
            return Err(format!("a quantized tensor over a {:?} storage", raw.stype));
        }
        let Value::Tuple(q, _) = qparams else {
            return Err(format!("quantizer parameters are {}", qparams.kind()));
        };
        let scheme = match q.as_slice() {
            [Value::Global(s), scale, Value::Int(zp)] if &**s == "torch.per_tensor_affine" => {
                let scale = match scale {
                    Value::Float(f) => *f,
                    Value::Int(i) => *i as f64,
                    other => return Err(format!("a scale is {}", other.kind())),
                };
                check_scale(scale)?;
                QScheme::PerTensor { scale, zero_point: *zp }
            }
            [Value::Global(s), scales, zps, Value::Int(axis)]
                if &**s == "torch.per_channel_affine" || &**s == "torch.per_channel_affine_float_qparams" =>
            {
                let axis = usize::try_from(*axis)
                    .ok()
                    .filter(|a| *a < raw.shape.len())
                    .ok_or_else(|| format!("axis {axis} of a tensor with {} dimensions", raw.shape.len()))?;
                let channels = raw.shape[axis];
                let (scales, zero_points) = match (scales, zps) {
                    (Value::Tensor(s), Value::Tensor(z)) => (
                        s.to_f64(),
                        z.to_i64().ok_or("per-channel zero points are not integers")?,
                    ),
                    (Value::Invalid(m), _) | (_, Value::Invalid(m)) => return Err(m.to_string()),
                    _ => return Err("per-channel scales and zero points are not tensors".into()),
                };
                if scales.len() != channels || zero_points.len() != channels {
                    return Err(format!(
                        "{} scales and {} zero points for {channels} channels on axis {axis}",
                        scales.len(),
                        zero_points.len()
                    ));
                }
                for s in &scales {
                    check_scale(*s)?;
                }
                QScheme::PerChannel {
                    axis,
                    scales,
                    zero_points,
                }
            }
            [Value::Global(s), ..] => return Err(format!("quantization scheme `{}`, which qc does not read", clip(s))),
            _ => return Err("quantizer parameters of an unknown form".into()),
        };
        Ok(Value::QTensor(Rc::new(RawQ { int_repr: raw, scheme })))
    }
}

fn check_scale(s: f64) -> Result<(), String> {
    if s.is_finite() && s > 0.0 {
        Ok(())
    } else {
        Err(format!("scale {s} is not a positive finite number"))
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        out[d] = out[d + 1].saturating_mul(shape[d + 1]);
    }
    out
}

/// A size or stride tuple of non-negative ints.
fn dims(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let Value::Tuple(items, _) = v else {
        return Err(format!("a tensor's {what} is {}", v.kind()));
    };
    if items.len() > MAX_DIMS {
        return Err(format!(
            "a tensor with {} dimensions (qc reads up to {MAX_DIMS})",
            items.len()
        ));
    }
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) => usize::try_from(*n).map_err(|_| format!("a negative {what} {n}")),
            other => Err(format!("a tensor's {what} holds {}", other.kind())),
        })
        .collect()
}

/// Little-endian two's complement integer of LONG1/LONG4, which must fit in i64.
fn long(b: &[u8]) -> Result<i64, Fail> {
    if b.is_empty() {
        return Ok(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    if b.len() > 8 && b[8..].iter().any(|x| *x != fill) {
        return Err("an integer does not fit in 64 bits".into());
    }
    let mut a = [fill; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    let v = i64::from_le_bytes(a);
    if b.len() > 8 && (v < 0) != negative {
        return Err("an integer does not fit in 64 bits".into());
    }
    Ok(v)
}

fn child_depth<'v>(items: impl Iterator<Item = &'v Value>) -> Result<u32, Fail> {
    let d = 1 + items.map(Value::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(format!("values nest deeper than {MAX_DEPTH}"));
    }
    Ok(d)
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, Fail> {
    if items.len() & 1 == 1 {
        return Err("a dict gets an odd number of keys and values".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut Value, items: Vec<Value>) -> Result<(), Fail> {
    let Value::List(list, depth) = target else {
        return Err(format!("APPEND to {}", target.kind()));
    };
    let d = child_depth(items.iter())?;
    *depth = (*depth).max(d);
    list.extend(items);
    Ok(())
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> Result<(), Fail> {
    let Value::Dict(dict, depth) = target else {
        return Err(format!("SETITEM on {}", target.kind()));
    };
    let d = child_depth(items.iter().flat_map(|(k, v)| [k, v]))?;
    *depth = (*depth).max(d);
    dict.extend(items);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// From the unpickled value to the state dict.

type KeyFail = (Option<String>, String);

fn to_state_dict(root: Value) -> Result<IndexMap<String, PthValue>, KeyFail> {
    let items = match root {
        Value::Dict(items, _) => items,
        Value::Invalid(m) => {
            return Err((
                None,
                format!(
                    "{m}; the file is not a state_dict (was it `torch.save(model)`? save `model.state_dict()` instead)"
                ),
            ))
        }
        other => return Err((None, format!("the file holds {}, not a state_dict", other.kind()))),
    };
    // A training checkpoint ({'epoch': 3, 'model': {...}, 'optimizer': {...}}): name its dicts.
    let nested: Vec<&str> = items
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(..)) => Some(&**k),
            _ => None,
        })
        .collect();
    if let Some(first) = nested.first() {
        let names: Vec<String> = nested.iter().take(5).map(|k| format!("`{}`", clip(k))).collect();
        return Err((
            None,
            format!(
                "it holds dicts under {} (a training checkpoint?), not one flat state_dict; save the model's \
                 state_dict on its own, e.g. `torch.save(checkpoint['{}'], path)`",
                names.join(", "),
                clip(first)
            ),
        ));
    }
    let mut out = IndexMap::with_capacity(items.len());
    for (k, v) in items {
        let key = match k {
            Value::Str(s) => s.to_string(),
            other => return Err((None, format!("a state_dict key is {}, not a string", other.kind()))),
        };
        let value = entry(v).map_err(|m| (Some(clip(&key)), m))?;
        // Python's dict keeps the first position of a key and its last value.
        out.insert(key, value);
    }
    Ok(out)
}

fn entry(v: Value) -> Result<PthValue, String> {
    Ok(match v {
        Value::Tensor(raw) => {
            if raw.stype.is_quantized() {
                return Err("a quantized storage outside a quantized tensor".into());
            }
            PthValue::Tensor(raw.to_tensor())
        }
        Value::QTensor(q) => PthValue::Quantized(qtensor(&q)),
        Value::None => PthValue::None,
        Value::Global(g) if is_dtype_name(&g) => PthValue::DType(g.to_string()),
        Value::Tuple(items, _) => match items.as_slice() {
            [Value::QTensor(w), bias] => PthValue::Packed {
                weight: qtensor(w),
                bias: match bias {
                    Value::None => None,
                    Value::Tensor(b) if !b.stype.is_quantized() => Some(b.to_tensor()),
                    Value::Invalid(m) => return Err(m.to_string()),
                    other => return Err(format!("packed parameters with a bias that is {}", other.kind())),
                },
            },
            [Value::Invalid(m), ..] | [_, Value::Invalid(m)] => return Err(m.to_string()),
            _ => {
                return Err(format!(
                    "a tuple of {} values, not packed parameters (quantized weight, bias)",
                    items.len()
                ))
            }
        },
        Value::Invalid(m) => return Err(m.to_string()),
        other => return Err(format!("{}, not a tensor", other.kind())),
    })
}

fn qtensor(q: &RawQ) -> QTensor {
    QTensor {
        int_repr: q.int_repr.to_tensor(),
        scheme: q.scheme.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A hand-written pickle, protocol 2, opcode by opcode.
    struct P(Vec<u8>);

    impl P {
        fn new() -> P {
            P(vec![0x80, 2])
        }
        fn op(mut self, b: &[u8]) -> P {
            self.0.extend_from_slice(b);
            self
        }
        fn global(self, module: &str, name: &str) -> P {
            self.op(b"c").op(format!("{module}\n{name}\n").as_bytes())
        }
        fn s(self, text: &str) -> P {
            let n = (text.len() as u32).to_le_bytes();
            self.op(b"X").op(&n).op(text.as_bytes())
        }
        fn int(self, v: i32) -> P {
            self.op(b"J").op(&v.to_le_bytes())
        }
        fn float(self, v: f64) -> P {
            self.op(b"G").op(&v.to_be_bytes())
        }
        fn ints(mut self, v: &[i64]) -> P {
            self = self.op(b"(");
            for x in v {
                self = self.int(*x as i32);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size,
        /// stride, False, OrderedDict())`
        fn tensor(self, class: &str, key: &str, numel: i32, offset: i32, size: &[i64], stride: &[i64]) -> P {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b"(")
                .storage(class, key, numel)
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(&[0x89])
                .global("collections", "OrderedDict")
                .op(b")R")
                .op(b"tR")
        }
        fn storage(self, class: &str, key: &str, numel: i32) -> P {
            self.op(b"(")
                .s("storage")
                .global("torch", class)
                .s(key)
                .s("cpu")
                .int(numel)
                .op(b"tQ")
        }
        /// A state dict: `OrderedDict()`, then `SETITEMS` of the body.
        fn dict(body: P) -> Vec<u8> {
            let mut p = P::new().global("collections", "OrderedDict").op(b")R(");
            p.0.extend_from_slice(&body.0[2..]);
            p.op(b"u.").0
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn run(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Result<IndexMap<String, PthValue>, KeyFail> {
        run_order(pkl, storages, false)
    }

    fn run_order(
        pkl: &[u8],
        storages: &[(&str, Vec<u8>)],
        big_endian: bool,
    ) -> Result<IndexMap<String, PthValue>, KeyFail> {
        let map: HashMap<String, Vec<u8>> = storages.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let mut load = |key: &str, n: usize| match map.get(key) {
            Some(v) if v.len() == n => Ok(Rc::new(v.clone())),
            Some(v) => Err(format!(
                "storage `{key}` has {} bytes where its tensor needs {n}",
                v.len()
            )),
            None => Err(format!("no storage `{key}`")),
        };
        let root = Machine::new(pkl, big_endian, 1 << 20, &mut load)
            .run()
            .map_err(|m| (None, m))?;
        to_state_dict(root)
    }

    fn f32s(v: &PthValue) -> (Vec<usize>, Vec<f32>) {
        match v {
            PthValue::Tensor(Tensor {
                shape,
                data: TensorData::F32(d),
            }) => (shape.clone(), d.clone()),
            other => panic!("not an f32 tensor: {other:?}"),
        }
    }

    fn storage12() -> Vec<(&'static str, Vec<u8>)> {
        vec![("0", f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>()))]
    }

    #[test]
    fn views_with_strides_and_offsets_are_materialised_row_major() {
        let body = P::new()
            .s("plain")
            .tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
            .s("transposed")
            .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4])
            .s("offset_strided")
            .tensor("FloatStorage", "0", 12, 1, &[2, 3], &[1, 4])
            .s("expanded")
            .tensor("FloatStorage", "0", 12, 5, &[2, 3], &[0, 1])
            .s("size_one_any_stride")
            .tensor("FloatStorage", "0", 12, 11, &[1, 1], &[1 << 40, 7])
            .s("scalar")
            .tensor("FloatStorage", "0", 12, 7, &[], &[])
            .s("empty")
            .tensor("FloatStorage", "0", 12, 0, &[0, 5], &[5, 1]);
        let sd = run(&P::dict(body), &storage12()).unwrap();
        let keys: Vec<&str> = sd.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "plain",
                "transposed",
                "offset_strided",
                "expanded",
                "size_one_any_stride",
                "scalar",
                "empty"
            ]
        );
        let iota: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(f32s(&sd["plain"]), (vec![3, 4], iota));
        assert_eq!(
            f32s(&sd["transposed"]).1,
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        assert_eq!(f32s(&sd["offset_strided"]).1, [1., 5., 9., 2., 6., 10.]);
        assert_eq!(f32s(&sd["expanded"]).1, [5., 6., 7., 5., 6., 7.]);
        assert_eq!(f32s(&sd["size_one_any_stride"]), (vec![1, 1], vec![11.]));
        assert_eq!(f32s(&sd["scalar"]), (vec![], vec![7.]));
        assert_eq!(f32s(&sd["empty"]), (vec![0, 5], vec![]));
    }

    #[test]
    fn views_outside_their_storage_are_refused_with_the_key() {
        for (size, stride, offset) in [
            (vec![3i64, 4], vec![4i64, 1], 1),
            (vec![2, 7], vec![1, 1], 6),
            (vec![13], vec![1], 0),
            (vec![2, 2], vec![-1, 1], 0),
            (vec![-2], vec![1], 0),
            (vec![2], vec![1], -1),
        ] {
            let body = P::new().s("w").tensor("FloatStorage", "0", 12, offset, &size, &stride);
            let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
            assert_eq!(key.as_deref(), Some("w"), "{msg}");
        }
        // size and stride of different ranks
        let body = P::new().s("w").tensor("FloatStorage", "0", 12, 0, &[3, 4], &[1]);
        assert!(run(&P::dict(body), &storage12()).unwrap_err().1.contains("dimensions"));
    }

    #[test]
    fn storages_are_checked_against_the_archive() {
        // The archive's record is shorter than the persistent id says.
        let body = P::new().s("w").tensor("FloatStorage", "0", 13, 0, &[13], &[1]);
        let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
        assert_eq!(key.as_deref(), Some("w"));
        assert!(msg.contains("48 bytes where its tensor needs 52"), "{msg}");
        // A missing record.
        let body = P::new().s("w").tensor("FloatStorage", "9", 12, 0, &[12], &[1]);
        assert!(run(&P::dict(body), &storage12())
            .unwrap_err()
            .1
            .contains("no storage `9`"));
        // One key used with two storage types.
        let body = P::new()
            .s("a")
            .tensor("FloatStorage", "0", 12, 0, &[12], &[1])
            .s("b")
            .tensor("IntStorage", "0", 12, 0, &[12], &[1]);
        let (key, msg) = run(&P::dict(body), &storage12()).unwrap_err();
        assert_eq!(key.as_deref(), Some("b"), "{msg}");
        // Complex storages are refused by name.
        let body = P::new().s("c").tensor("ComplexFloatStorage", "0", 6, 0, &[6], &[1]);
        let (_, msg) = run(&P::dict(body), &storage12()).unwrap_err();
        assert!(msg.contains("torch.ComplexFloatStorage"), "{msg}");
    }

    #[test]
    fn memo_reuse_and_its_limits() {
        // The rebuild function, the storage tuple and a finished tensor all come from the memo.
        let body = P::new()
            .s("a")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"q\x01(")
            .storage("FloatStorage", "0", 12)
            .op(b"r\x02\x00\x00\x00")
            .int(0)
            .ints(&[12])
            .ints(&[1])
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
            .op(b"q\x03") // the tensor
            .s("b")
            .op(b"h\x01(j\x02\x00\x00\x00")
            .int(2)
            .ints(&[2, 2])
            .ints(&[1, 2])
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")RtR")
            .s("c")
            .op(b"h\x03");
        let sd = run(&P::dict(body), &storage12()).unwrap();
        assert_eq!(f32s(&sd["b"]), (vec![2, 2], vec![2., 4., 3., 5.]));
        assert_eq!(sd["a"], sd["c"]);

        // A dict read from the memo would be a stale copy: refused.
        let pkl = P::new().op(b"}q\x00h\x00.").0;
        assert!(run(&pkl, &[]).unwrap_err().1.contains("shared by reference"));
        // Reading an entry never written.
        let pkl = P::new().op(b"h\x05.").0;
        assert!(run(&pkl, &[]).unwrap_err().1.contains("read before it is written"));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "ends in the middle"),
            (P::new().op(b"}").0, "ends in the middle"),
            (P::new().op(b"X\xff\xff\xff\x7f").0, "ends in the middle"),
            (vec![0x80, 1, b'}', b'.'], "protocol 1"),
            (P::new().op(b"\xff").0, "unsupported pickle opcode 0xff"),
            (P::new().op(b"s.").0, "stack does not have"),
            (P::new().op(b"(}s.").0, "stack does not have"),
            (P::new().op(b"t.").0, "MARK"),
            (P::new().op(b"K\x01K\x02a.").0, "APPEND to an int"),
            (
                P::new().op(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").0,
                "64 bits",
            ),
            (P::new().op(b"X\x02\x00\x00\x00\xc3\x28.").0, "UTF-8"),
            (P::new().op(b"cfoo").0, "not terminated"),
            (P::new().op(b"}(K\x01K\x02K\x03u.").0, "odd number"),
            (P::new().op(b"K\x07.").0, "holds an int, not a state_dict"),
        ];
        for (pkl, want) in cases {
            let err = run(&pkl, &[]).unwrap_err().1;
            assert!(err.contains(want), "{pkl:?}: {err}");
        }
        // Nesting and stack limits.
        let deep = P::new().op(b")").op(&[0x85; 100]).op(b".").0;
        assert!(run(&deep, &[]).unwrap_err().1.contains("nest deeper"));
        let mut wide = P::new().op(b"(");
        wide.0.extend(std::iter::repeat_n(b'N', MAX_STACK + 1));
        assert!(run(&wide.op(b".").0, &[]).unwrap_err().1.contains("stack grows"));
        // LONG1 within 64 bits, negative and positive.
        assert_eq!(long(&[0xff]).unwrap(), -1);
        assert_eq!(long(&[0xff, 0x00]).unwrap(), 255);
        assert_eq!(long(&[0; 9]).unwrap(), 0);
        assert_eq!(long(&[0xff; 12]).unwrap(), -1);
        assert!(long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]).is_err());
    }

    #[test]
    fn unsupported_globals_name_the_key_and_the_global() {
        let body = P::new()
            .s("fc._packed_params._packed_params")
            .global("foo", "Bar")
            .op(b")R");
        let (key, msg) = run(&P::dict(body), &[]).unwrap_err();
        assert_eq!(key.as_deref(), Some("fc._packed_params._packed_params"));
        assert_eq!(msg, "unsupported pickle global `foo.Bar`");
        // A pickled module (torch.save(model)): NEWOBJ then BUILD.
        let pkl = P::new().global("__main__", "Net").op(b")\x81}b.").0;
        let (key, msg) = run(&pkl, &[]).unwrap_err();
        assert_eq!(key, None);
        assert!(
            msg.contains("`__main__.Net`") && msg.contains("model.state_dict()"),
            "{msg}"
        );
        // A training checkpoint: a dict inside the dict.
        let pkl = P::new().op(b"}(").s("model").op(b"}").s("epoch").op(b"K\x03u.").0;
        let (key, msg) = run(&pkl, &[]).unwrap_err();
        assert_eq!(key, None);
        assert!(
            msg.contains("under `model`") && msg.contains("checkpoint['model']"),
            "{msg}"
        );
    }

    #[test]
    fn quantized_tensors_and_packed_params() {
        let q = |p: P, params: P| -> P {
            p.global("torch._utils", "_rebuild_qtensor")
                .op(b"(")
                .storage("QInt8Storage", "q", 6)
                .int(0)
                .ints(&[2, 3])
                .ints(&[3, 1])
                .op(b"(")
                .op(&params.0[2..])
                .op(b"t")
                .op(&[0x89])
                .global("collections", "OrderedDict")
                .op(b")RtR")
        };
        let storages = vec![
            ("q", vec![1u8, 2, 3, 0xff, 0xfe, 0x80]),
            (
                "s",
                [0.5f64, 0.25, 0.125].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("z", [0i64, 1, -1].iter().flat_map(|x| x.to_le_bytes()).collect()),
        ];
        let body = q(
            P::new().s("pt"),
            P::new().global("torch", "per_tensor_affine").float(0.25).int(-3),
        );
        let body = q(
            body.s("pc"),
            P::new()
                .global("torch", "per_channel_affine")
                .tensor("DoubleStorage", "s", 3, 0, &[3], &[1])
                .tensor("LongStorage", "z", 3, 0, &[3], &[1])
                .int(1),
        );
        let body = q(
            body.s("packed").op(b"("),
            P::new().global("torch", "per_tensor_affine").float(1.0).int(0),
        )
        .op(b"Nt")
        .s("dtype")
        .global("torch", "qint8");
        let sd = run(&P::dict(body), &storages).unwrap();
        let int_repr = Tensor {
            shape: vec![2, 3],
            data: TensorData::I8(vec![1, 2, 3, -1, -2, -128]),
        };
        assert_eq!(
            sd["pt"],
            PthValue::Quantized(QTensor {
                int_repr: int_repr.clone(),
                scheme: QScheme::PerTensor {
                    scale: 0.25,
                    zero_point: -3
                }
            })
        );
        assert_eq!(
            sd["pc"],
            PthValue::Quantized(QTensor {
                int_repr: int_repr.clone(),
                scheme: QScheme::PerChannel {
                    axis: 1,
                    scales: vec![0.5, 0.25, 0.125],
                    zero_points: vec![0, 1, -1]
                }
            })
        );
        assert!(matches!(&sd["packed"], PthValue::Packed { bias: None, weight } if weight.int_repr == int_repr));
        assert_eq!(sd["dtype"], PthValue::DType("torch.qint8".into()));

        // Bad quantization parameters: axis out of range, scales that do not fit, zero scale.
        for params in [
            P::new()
                .global("torch", "per_channel_affine")
                .tensor("DoubleStorage", "s", 3, 0, &[3], &[1])
                .tensor("LongStorage", "z", 3, 0, &[3], &[1])
                .int(2),
            P::new()
                .global("torch", "per_channel_affine")
                .tensor("DoubleStorage", "s", 3, 0, &[2], &[1])
                .tensor("LongStorage", "z", 3, 0, &[2], &[1])
                .int(1),
            P::new().global("torch", "per_tensor_affine").float(0.0).int(0),
            P::new().global("torch", "per_tensor_symmetric").float(1.0).int(0),
        ] {
            let (key, msg) = run(&P::dict(q(P::new().s("bad"), params)), &storages).unwrap_err();
            assert_eq!(key.as_deref(), Some("bad"), "{msg}");
        }
    }

    #[test]
    fn dtypes_convert_as_documented() {
        let raw = |stype, bytes: Vec<u8>| Raw {
            stype,
            shape: vec![bytes.len() / SType::size(stype)],
            bytes,
        };
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00, 0x3555, 0x8000]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let t = raw(SType::F16, halves).to_tensor();
        let v = t.as_f32().unwrap();
        assert_eq!(&v[..4], [1.0, -2.0, 2f32.powi(-24), f32::INFINITY]);
        assert_eq!(v[4], 0.333_251_95);
        assert!(v[5] == 0.0 && v[5].is_sign_negative());
        assert_eq!(raw(SType::BF16, vec![0x80, 0x3f]).to_tensor().as_f32().unwrap(), [1.0]);
        assert_eq!(
            raw(SType::F64, 0.1f64.to_le_bytes().to_vec())
                .to_tensor()
                .as_f32()
                .unwrap(),
            [0.1f32]
        );
        assert_eq!(
            raw(SType::Bool, vec![0, 1, 2]).to_tensor().data,
            TensorData::U8(vec![0, 1, 1])
        );
        assert_eq!(
            raw(SType::I16, (-300i16).to_le_bytes().to_vec()).to_tensor().data,
            TensorData::I32(vec![-300])
        );
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let body = P::new().s("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
        let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let sd = run_order(&P::dict(body), &[("0", be)], true).unwrap();
        assert_eq!(f32s(&sd["w"]).1, [1.5, -2.0]);
    }

    /// A zip archive as torch.save writes it (stored members), with extra members added.
    fn archive(prefix: &str, pkl: &[u8], members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
        w.write_all(pkl).unwrap();
        for (name, data) in members {
            w.start_file(format!("{prefix}/{name}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn archives_with_any_prefix_and_byte_order() {
        let pkl = P::dict(P::new().s("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]));
        let le = f32_bytes(&[1.5, -2.0]);
        let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        for (prefix, order, data) in [
            ("archive", Some(&b"little"[..]), &le),
            ("my model (v2)", None, &le),
            ("x", Some(&b"big"[..]), &be),
        ] {
            let mut members: Vec<(&str, &[u8])> = vec![("data/0", data), ("version", b"3\n")];
            if let Some(o) = order {
                members.push(("byteorder", o));
            }
            let sd = read_pth_bytes(&archive(prefix, &pkl, &members)).unwrap();
            assert_eq!(f32s(&sd["w"]).1, [1.5, -2.0], "{prefix}");
        }
        let bad = archive("x", &pkl, &[("data/0", &le), ("byteorder", b"middle")]);
        assert!(read_pth_bytes(&bad).unwrap_err().to_string().contains("`middle`"));
        // A storage record of the wrong size is reported with the key.
        let short = archive("x", &pkl, &[("data/0", &le[..7])]);
        let err = read_pth_bytes(&short).unwrap_err().to_string();
        assert!(
            err.contains("`w`") && err.contains("7 bytes where its tensor needs 8"),
            "{err}"
        );
    }

    #[test]
    fn other_formats_are_refused_with_what_to_do() {
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
        assert_eq!(sniff(&legacy), CheckpointFormat::LegacyPth);
        let e = read_pth_bytes(&legacy).unwrap_err();
        assert!(matches!(e, PthError::Legacy { .. }));
        assert!(e.to_string().contains("torch.save(torch.load("), "{e}");

        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st), CheckpointFormat::Safetensors);
        assert!(read_pth_bytes(&st).unwrap_err().to_string().contains("safetensors"));

        assert_eq!(sniff(b"hello"), CheckpointFormat::Unknown);
        assert!(read_pth_bytes(b"hello").unwrap_err().to_string().contains("zip"));

        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("m/data.pkl", opts).unwrap();
        w.write_all(b"\x80\x02c__torch__\nNet\n)\x81.").unwrap();
        w.start_file("m/constants.pkl", opts).unwrap();
        w.write_all(b"\x80\x02).").unwrap();
        let ts = w.finish().unwrap().into_inner();
        assert!(is_pth(&ts));
        assert!(read_pth_bytes(&ts).unwrap_err().to_string().contains("TorchScript"));
    }

    /// The pickle of a real PyTorch file, mutated: errors are fine, panics and hangs are not.
    #[test]
    fn mutated_real_pickles_never_panic() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/fashion_cnn.int8.pth");
        let bytes = std::fs::read(&path).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
        let pkl = read_member(&mut archive, "fashion_cnn.int8/data.pkl", None, bytes.len()).unwrap();
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        for i in 0..archive.len() {
            let f = archive.by_index(i).unwrap();
            if let Some(key) = f.name().strip_prefix("fashion_cnn.int8/data/") {
                let key = key.to_string();
                let mut v = vec![];
                f.take(1 << 20).read_to_end(&mut v).unwrap();
                storages.insert(key, v);
            }
        }
        let reference = {
            let mut load = |k: &str, _: usize| storages.get(k).cloned().map(Rc::new).ok_or_else(|| k.to_string());
            to_state_dict(Machine::new(&pkl, false, 1 << 26, &mut load).run().unwrap()).unwrap()
        };
        assert_eq!(reference.len(), 18);
        let mut rng = qc_runtime::SplitMix64::new(0x9e37);
        let mut errors = 0;
        for _ in 0..3000 {
            let mut m = pkl.clone();
            for _ in 0..1 + rng.next_u64() % 3 {
                let at = (rng.next_u64() % m.len() as u64) as usize;
                match rng.next_u64() % 4 {
                    0 => m[at] = rng.next_u64() as u8,
                    1 => m[at] ^= 1 << (rng.next_u64() % 8),
                    2 => m.truncate(at),
                    _ => {
                        let b = m[at];
                        m.insert(at, b);
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let mut load = |k: &str, n: usize| match storages.get(k) {
                Some(v) if v.len() == n => Ok(Rc::new(v.clone())),
                _ => Err(format!("no storage `{k}` of {n} bytes")),
            };
            if let Ok(v) = Machine::new(&m, false, 1 << 26, &mut load).run() {
                if to_state_dict(v).is_err() {
                    errors += 1;
                }
            } else {
                errors += 1;
            }
        }
        assert!(errors > 1000, "{errors}");
    }
}
