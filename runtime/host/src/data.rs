//! Data sets as calibration and training read them: IDX files (Fashion-MNIST, gzip-compressed or
//! plain), NumPy `.npy` arrays and `.npz` archives. Strict readers: every malformed header, an
//! unsupported dtype or a size that does not add up is a [`DataError`] naming the file, never a
//! panic or a silent truncation.
//!
//! An [`Array`] keeps the stored element type; [`Array::batch_f32`] gives `count` samples from
//! `start` as an `f32` tensor. `u8` data (images) is scaled to `[0, 1]` (divided by 255, as
//! torchvision's `ToTensor`); `f32`/`f64` data is taken as is.

use std::io::Read;
use std::path::{Path, PathBuf};

use qc_runtime::tensor::Tensor;

/// The most elements one array may hold (2^34, the compiler's tensor limit).
pub const MAX_ELEMENTS: usize = 1 << 34;

/// The most bytes a compressed file (a gzip IDX file) or a compressed `.npz` member may expand
/// to: checked while decompressing, so a small file that claims or expands to more is refused
/// before the memory is taken.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Where the setup script puts Fashion-MNIST (Debian's `dataset-fashion-mnist`).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not a valid {format} file: {message}")]
    Format {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("`{path}` holds {dtype} data; qc reads float32, float64 and uint8 arrays")]
    DType { path: PathBuf, dtype: String },
}

/// The elements of an array, in the type they were stored in.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    U8(Vec<u8>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A row-major array read from a data file: dim 0 indexes samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl Array {
    /// Number of samples (dim 0); 0 for a scalar.
    pub fn samples(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// The shape of one sample (every dim but the first).
    pub fn sample_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Samples `start..start + count` (clipped to the array) as f32, `u8` scaled to `[0, 1]`.
    pub fn batch_f32(&self, start: usize, count: usize) -> Tensor {
        let per: usize = self.sample_shape().iter().product();
        let end = (start + count).min(self.samples());
        let start = start.min(end);
        let range = start * per..end * per;
        let data: Vec<f32> = match &self.data {
            ArrayData::U8(v) => v[range].iter().map(|&b| b as f32 / 255.0).collect(),
            ArrayData::F32(v) => v[range].to_vec(),
            ArrayData::F64(v) => v[range].iter().map(|&x| x as f32).collect(),
        };
        let mut shape = vec![end - start];
        shape.extend_from_slice(self.sample_shape());
        Tensor::f32(shape, data)
    }

    /// Whether the elements are raw `u8` (images), which callers normalise after scaling.
    pub fn is_u8(&self) -> bool {
        matches!(self.data, ArrayData::U8(_))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_error(path: &Path, format: &'static str, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        format,
        message: message.into(),
    }
}

/// Reads all of `reader`, refusing more than `cap` bytes; `Ok(None)` when it gives more.
fn read_bounded(reader: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(cap + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= cap).then_some(out))
}

fn too_large_decompressed(path: &Path, format: &'static str) -> DataError {
    format_error(
        path,
        format,
        format!(
            "it decompresses to more than {} GiB, the most qc reads from one compressed file",
            MAX_DECOMPRESSED_BYTES >> 30
        ),
    )
}

/// The bytes of a file as read, decompressed when they start with the gzip magic bytes.
fn maybe_gunzip<'a>(path: &Path, raw: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        read_bounded(flate2::read::MultiGzDecoder::new(raw), MAX_DECOMPRESSED_BYTES)
            .map_err(|e| format_error(path, "gzip", e.to_string()))?
            .map(std::borrow::Cow::Owned)
            .ok_or_else(|| too_large_decompressed(path, "gzip"))
    } else {
        Ok(std::borrow::Cow::Borrowed(raw))
    }
}

/// The number of elements of `shape`, or `None` past [`MAX_ELEMENTS`]. A zero dim does not hide
/// the others: `[0, 2^32, 2^32]` is refused too, as a sample of it could not be taken.
fn checked_elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d.max(1)).filter(|n| *n <= MAX_ELEMENTS)
    })?;
    Some(shape.iter().product())
}

fn too_large(shape: &[usize]) -> String {
    format!("shape {shape:?} is too large: its dims (zeros aside) multiply past {MAX_ELEMENTS} elements, the most qc reads in one array")
}

// ------------------------------------------------------------------------------------- IDX

/// Reads an IDX file of unsigned bytes (type code `0x08`), gzip-compressed or not: images
/// (`idx3`, shape `[N, rows, cols]`) or labels (`idx1`, shape `[N]`).
pub fn read_idx(path: &Path) -> Result<Array, DataError> {
    let raw = qc_runtime::fsutil::read_capped(path).map_err(io(path))?;
    idx_from_bytes(path, &raw)
}

/// [`read_idx`] on the bytes of a file already read (`path` names it in errors).
pub fn idx_from_bytes(path: &Path, raw: &[u8]) -> Result<Array, DataError> {
    let bytes = maybe_gunzip(path, raw)?;
    parse_idx(&bytes).map_err(|m| format_error(path, "IDX", m))
}

fn parse_idx(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("it does not start with the IDX magic number (0x00 0x00 type rank)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "element type 0x{:02x} is not unsigned bytes (0x08), the only type qc reads",
            bytes[2]
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 || bytes.len() < 4 + 4 * rank {
        return Err(format!("the header of a rank-{rank} array is cut short"));
    }
    let shape: Vec<usize> = (0..rank)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n = checked_elements(&shape).ok_or_else(|| too_large(&shape))?;
    let data = &bytes[4 + 4 * rank..];
    if data.len() != n {
        return Err(format!(
            "shape {shape:?} needs {n} bytes of data, the file has {}",
            data.len()
        ));
    }
    Ok(Array {
        shape,
        data: ArrayData::U8(data.to_vec()),
    })
}

/// The image and label files of an IDX split in `dir`: `train-*` or `t10k-*`, `.gz` or plain.
pub fn idx_files(dir: &Path, train: bool) -> (PathBuf, PathBuf) {
    let prefix = if train { "train" } else { "t10k" };
    let pick = |stem: String| {
        let gz = dir.join(format!("{stem}.gz"));
        let plain = dir.join(&stem);
        if !gz.exists() && plain.exists() {
            plain
        } else {
            gz
        }
    };
    (
        pick(format!("{prefix}-images-idx3-ubyte")),
        pick(format!("{prefix}-labels-idx1-ubyte")),
    )
}

/// The images of an IDX split as `[N, 1, rows, cols]` bytes (one channel added, as
/// torchvision's `FashionMNIST` gives them).
pub fn read_idx_images(dir: &Path, train: bool) -> Result<Array, DataError> {
    let (images, _) = idx_files(dir, train);
    let mut a = read_idx(&images)?;
    if a.shape.len() != 3 {
        return Err(format_error(
            &images,
            "IDX",
            format!("images have shape {:?}, expected [N, rows, cols]", a.shape),
        ));
    }
    a.shape.insert(1, 1);
    Ok(a)
}

// ------------------------------------------------------------------------------------- NPY

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file (format versions 1 to 3; little-endian `float32`, `float64` or `uint8`;
/// C order). Integer arrays (`int8` to `int64`, `uint16`, `uint32`: class labels, indices) are
/// read as `float64`, exactly: a value beyond ±2^53 is refused.
pub fn read_npy(path: &Path) -> Result<Array, DataError> {
    let bytes = qc_runtime::fsutil::read_capped(path).map_err(io(path))?;
    parse_npy(path, &bytes)
}

/// [`read_npy`] on the bytes of a file already read (`path` names it in errors).
pub fn npy_from_bytes(path: &Path, bytes: &[u8]) -> Result<Array, DataError> {
    parse_npy(path, bytes)
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<Array, DataError> {
    let bad = |m: String| format_error(path, "NumPy .npy", m);
    if !bytes.starts_with(NPY_MAGIC) || bytes.len() < 10 {
        return Err(bad("it does not start with the `\\x93NUMPY` magic string".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!("format version {major} is not one qc reads (1 to 3)"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| bad("the header is cut short".into()))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("the header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("the header has no 'descr'".into()))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| bad("the header has no 'fortran_order'".into()))?;
    match fortran.trim() {
        "False" => {}
        "True" => {
            return Err(bad(
                "the array is in Fortran order; save it in C order (np.ascontiguousarray)".into(),
            ))
        }
        other => return Err(bad(format!("'fortran_order' is `{other}`"))),
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| bad("the header has no 'shape'".into()))?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("'shape' is `{shape_text}`, not a tuple")))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| bad(format!("dim `{d}` of 'shape'"))))
        .collect::<Result<_, _>>()?;
    let n = checked_elements(&shape).ok_or_else(|| bad(too_large(&shape)))?;
    let body = &bytes[end..];
    let (size, data) = match descr {
        "<f4" => (4, None),
        "<f8" => (8, None),
        "|u1" | "<u1" | "u1" => (1, Some(ArrayData::U8(body.get(..n).unwrap_or_default().to_vec()))),
        "|i1" | "<i1" | "i1" | "<i2" | "<u2" | "<i4" | "<u4" | "<i8" => {
            let size = descr[descr.len() - 1..].parse::<usize>().unwrap_or(8);
            if body.len() != n * size {
                return Err(bad(format!(
                    "shape {shape:?} of {descr} needs {} bytes of data, the file has {}",
                    n * size,
                    body.len()
                )));
            }
            return Ok(Array {
                shape,
                data: ArrayData::F64(integers_as_f64(path, descr, body, size)?),
            });
        }
        other => {
            return Err(DataError::DType {
                path: path.to_path_buf(),
                dtype: format!("`{other}`"),
            })
        }
    };
    if body.len() != n * size {
        return Err(bad(format!(
            "shape {shape:?} of {descr} needs {} bytes of data, the file has {}",
            n * size,
            body.len()
        )));
    }
    let data = match data {
        Some(d) => d,
        None if size == 4 => ArrayData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        None => ArrayData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok(Array { shape, data })
}

/// Little-endian integers of `size` bytes (signed unless `descr` says `u`) as exact `f64`s.
fn integers_as_f64(path: &Path, descr: &str, body: &[u8], size: usize) -> Result<Vec<f64>, DataError> {
    let signed = !descr.contains('u');
    body.chunks_exact(size)
        .enumerate()
        .map(|(i, c)| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            let negative = signed && c[size - 1] & 0x80 != 0;
            if negative {
                b[size..].fill(0xff);
            }
            let v = i64::from_le_bytes(b);
            if v.unsigned_abs() > 1u64 << 53 {
                return Err(format_error(
                    path,
                    "NumPy .npy",
                    format!("element {i} ({v}) of the {descr} array is too large to read exactly"),
                ));
            }
            Ok(v as f64)
        })
        .collect()
}

/// The text of `'key': VALUE` in a NumPy header dict, up to the next top-level comma or brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// The bytes of a version-1 `.npy` file holding `data` as little-endian float32 of `shape`
/// (C order). For tests and exports.
pub fn npy_f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a multiple of 64 bytes, ending the header with '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = NPY_MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

// ------------------------------------------------------------------------------------- NPZ

/// Reads every array of a `.npz` archive (`np.savez` or `np.savez_compressed`), in archive
/// order, named without the `.npy` extension.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>, DataError> {
    let bytes = qc_runtime::fsutil::read_capped(path).map_err(io(path))?;
    npz_from_bytes(path, &bytes)
}

/// [`read_npz`] on the bytes of a file already read (`path` names it in errors).
pub fn npz_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Array)>, DataError> {
    const ZIP: &str = "NumPy .npz (zip)";
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format_error(path, ZIP, e.to_string()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| format_error(path, ZIP, e.to_string()))?;
        let name = entry.name().to_string();
        let bytes = read_bounded(entry, MAX_DECOMPRESSED_BYTES)
            .map_err(|e| format_error(path, ZIP, format!("member `{name}`: {e}")))?
            .ok_or_else(|| too_large_decompressed(&path.join(&name), ZIP))?;
        let member = path.join(&name);
        let array = parse_npy(&member, &bytes)?;
        out.push((name.strip_suffix(".npy").unwrap_or(&name).to_string(), array));
    }
    Ok(out)
}

/// A NumPy `.npz` (an uncompressed zip of `.npy` members, `np.savez`) of float32 arrays, each
/// `(name, shape, values)`.
pub fn npz_f32_bytes(arrays: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, shape, values) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .expect("writing to memory");
        zip.write_all(&npy_f32_bytes(shape, values)).expect("writing to memory");
    }
    zip.finish().expect("writing to memory").into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_refuses_bad_headers() {
        let bytes = npy_f32_bytes(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let a = parse_npy(Path::new("a.npy"), &bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.batch_f32(1, 5).as_f32().unwrap(), &[4.0, 5.0, -6.5]);
        let one = npy_f32_bytes(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!(parse_npy(Path::new("b.npy"), &one).unwrap().shape, vec![3]);
        // Cut data, wrong magic, Fortran order, an unsupported dtype.
        assert!(parse_npy(Path::new("c.npy"), &bytes[..bytes.len() - 1]).is_err());
        assert!(parse_npy(Path::new("d.npy"), b"PK\x03\x04 not numpy").is_err());
        let fortran = String::from_utf8_lossy(&bytes).replace("False", "True ");
        let e = parse_npy(Path::new("e.npy"), fortran.as_bytes());
        assert!(e.is_err());
        let mut c8 = bytes.clone();
        let at = c8.windows(3).position(|w| w == b"<f4").unwrap();
        c8[at..at + 3].copy_from_slice(b"<c8");
        assert!(matches!(
            parse_npy(Path::new("f.npy"), &c8),
            Err(DataError::DType { .. })
        ));
    }

    /// `np.save("labels.npy", np.array([...], dtype=np.int64))`: the `.npy` a user saves class
    /// labels in, read exactly (as `f64`).
    #[test]
    fn integer_npy_reads_exactly() {
        let with = |descr: &str, body: &[u8]| {
            let f = npy_f32_bytes(&[3], &[0.0; 3]);
            let at = f.windows(3).position(|w| w == b"<f4").unwrap();
            let mut out = f[..f.len() - 12].to_vec();
            out[at..at + 3].copy_from_slice(descr.as_bytes());
            out.extend_from_slice(body);
            out
        };
        let i64s: Vec<u8> = [3i64, 0, -7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(Path::new("l.npy"), &with("<i8", &i64s)).unwrap();
        assert_eq!(a.data, ArrayData::F64(vec![3.0, 0.0, -7.0]));
        let i32s: Vec<u8> = [9i32, -1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(Path::new("l.npy"), &with("<i4", &i32s)).unwrap();
        assert_eq!(a.data, ArrayData::F64(vec![9.0, -1.0, 2.0]));
        let u32s: Vec<u8> = [u32::MAX, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(Path::new("l.npy"), &with("<u4", &u32s)).unwrap();
        assert_eq!(a.data, ArrayData::F64(vec![u32::MAX as f64, 1.0, 2.0]));
        let huge: Vec<u8> = [i64::MAX, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = parse_npy(Path::new("l.npy"), &with("<i8", &huge)).unwrap_err();
        assert!(e.to_string().contains("too large to read exactly"), "{e}");
        assert!(
            parse_npy(Path::new("l.npy"), &with("<i8", &i64s[..16])).is_err(),
            "cut data"
        );
    }

    #[test]
    fn decompression_stops_at_the_cap() {
        let zeros = vec![0u8; 1000];
        assert_eq!(read_bounded(&zeros[..], 1000).unwrap().map(|v| v.len()), Some(1000));
        assert_eq!(read_bounded(&zeros[..], 999).unwrap(), None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            read_bounded(flate2::read::MultiGzDecoder::new(&gz[..]), 10).unwrap(),
            None
        );
        let e = too_large_decompressed(Path::new("t.gz"), "gzip").to_string();
        assert!(e.contains("decompresses to more than 4 GiB"), "{e}");
    }

    #[test]
    fn idx_headers_are_checked() {
        let mut ok = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        ok.extend_from_slice(&[0, 255, 3, 4]);
        let a = parse_idx(&ok).unwrap();
        assert_eq!(a.shape, vec![2, 1, 2]);
        assert_eq!(a.batch_f32(0, 1).as_f32().unwrap(), &[0.0, 1.0]);
        assert!(parse_idx(&ok[..ok.len() - 1]).unwrap_err().contains("needs 4 bytes"));
        let mut float = ok.clone();
        float[2] = 0x0d;
        assert!(parse_idx(&float).unwrap_err().contains("unsigned bytes"));
        assert!(parse_idx(&[0, 0, 8]).is_err());
        // No samples, but samples of 2^64 elements each: refused, not an overflow later.
        let empty_huge = [0, 0, 8, 3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_idx(&empty_huge).unwrap_err().contains("too large"));
        assert_eq!(checked_elements(&[0, 3]), Some(0));
        assert_eq!(checked_elements(&[2, 3]), Some(6));
        assert_eq!(checked_elements(&[0, 1 << 20, 1 << 20]), None);
    }
}
