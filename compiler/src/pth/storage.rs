//! Element types of torch storages and raw storage bytes as tensors (byte order, widening).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SType {
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
    pub(super) fn size(self) -> usize {
        match self {
            SType::F64 | SType::I64 => 8,
            SType::F32 | SType::I32 | SType::QInt32 => 4,
            SType::F16 | SType::BF16 | SType::I16 => 2,
            SType::I8 | SType::U8 | SType::Bool | SType::QInt8 | SType::QUInt8 => 1,
        }
    }
    pub(super) fn is_quantized(self) -> bool {
        matches!(self, SType::QInt8 | SType::QUInt8 | SType::QInt32)
    }
    /// From a storage class (`torch.FloatStorage`); `None` inside for `UntypedStorage` (bytes).
    pub(super) fn from_storage(name: &str) -> Option<Option<SType>> {
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
    pub(super) fn from_dtype(name: &str) -> Option<SType> {
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
pub(super) fn is_dtype_name(name: &str) -> bool {
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
pub(super) struct Raw {
    pub(super) stype: SType,
    pub(super) shape: Vec<usize>,
    pub(super) bytes: Vec<u8>,
}

impl Raw {
    /// The elements as f64 (floats and integers), for quantization parameters.
    pub(super) fn to_f64(&self) -> Vec<f64> {
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
    pub(super) fn to_i64(&self) -> Option<Vec<i64>> {
        match self.to_tensor().data {
            TensorData::I64(v) => Some(v),
            TensorData::I32(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::I8(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::U8(v) => Some(v.into_iter().map(i64::from).collect()),
            TensorData::F32(_) => None,
        }
    }
    /// qc's tensor: the conversions of the module docs.
    pub(super) fn to_tensor(&self) -> Tensor {
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

pub(super) fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

/// IEEE half to single precision (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
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
pub(super) struct RawQ {
    pub(super) int_repr: Raw,
    pub(super) scheme: QScheme,
}

/// A storage loaded from the archive.
#[derive(Debug)]
pub(super) struct Storage {
    /// `None` for an untyped (byte) storage.
    pub(super) stype: Option<SType>,
    pub(super) data: Rc<Vec<u8>>,
}
