//! The `.qmodel` artifact (docs/design-later-stages.md §5, docs/runtime-program.md): a compiled
//! [`Program`] with its constants and metadata in one checksummed file.
//!
//! ```text
//! bytes 0..8     magic "QCMODEL\0"
//! bytes 8..12    format version, u32 LE (this qc reads and writes 1)
//! bytes 12..20   header length H, u64 LE
//! 20..20+H       header: JSON (`Header`): metadata, the program without constant data, and
//!                each constant's dtype, shape, offset and length
//! ..data_start   zero padding; data_start = 20 + H rounded up to a multiple of 64
//! data           constants in header order, each at data_start + offset, offset a multiple of 64
//!                (so each is 64-byte aligned in the file), zero padding between them
//! last 8 bytes   xxh3-64 (LE) of every byte before it
//! ```
//!
//! The file ends right after the last constant's checksum: its length is
//! `data_start + (offset + length of the last constant, or 0) + 8`. [`Artifact::from_bytes`]
//! checks, in order: length, magic, version, checksum, header, every constant's length, alignment,
//! order and bounds, the file length, then validates the program; each failure is its own
//! [`LoadError`]. A byte flipped after the version field is always a checksum error.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::program::{Program, ProgramError, Step, ValueId, ValueInfo};
use crate::tensor::{DType, Tensor};

/// The first 8 bytes of every `.qmodel` file.
pub const MAGIC: [u8; 8] = *b"QCMODEL\0";
/// The format version this qc reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of the data section and of every constant, in bytes.
pub const ALIGN: usize = 64;
/// Bytes before the header: magic, version, header length.
const PREFIX: usize = 20;
/// Bytes of the trailing checksum.
const CHECKSUM: usize = 8;
/// Largest header accepted (the program without its constants is small).
pub const MAX_HEADER: u64 = 1 << 30;

/// What the artifact says about the model besides the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The qc that wrote it (`0.1.0`).
    pub qc_version: String,
    /// The model's name (the recipe's `model` block).
    pub model: String,
    /// The compiler stage the program was lowered from (`float`, `lowered`, ...).
    pub stage: String,
    /// False when calibration ran on `random(...)` data: the scales fix latency and size, not
    /// accuracy. `qc run` prints that.
    pub calibrated_for_accuracy: bool,
    /// A hash of the recipe (and its includes) the model was compiled from.
    pub recipe_hash: String,
    /// The input normalization the model was trained and calibrated with (the recipe's
    /// `normalize`): [`crate::model::Model::run`] applies `(x - mean) / std` to every `f32`
    /// input, so callers pass raw samples (images in `[0, 1]`). Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_normalize: Option<Normalize>,
}

/// `(x - mean) / std`, elementwise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: f32,
    pub std: f32,
}

impl Eq for Normalize {}

impl Meta {
    /// Metadata with this qc's version.
    pub fn new(
        model: impl Into<String>,
        stage: impl Into<String>,
        calibrated_for_accuracy: bool,
        recipe_hash: impl Into<String>,
    ) -> Meta {
        Meta {
            qc_version: env!("CARGO_PKG_VERSION").to_string(),
            model: model.into(),
            stage: stage.into(),
            calibrated_for_accuracy,
            recipe_hash: recipe_hash.into(),
            input_normalize: None,
        }
    }

    /// The same metadata with an input normalization.
    pub fn with_input_normalize(mut self, n: Option<Normalize>) -> Meta {
        self.input_normalize = n;
        self
    }
}

/// Where one constant lies in the data section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstantEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Bytes from the start of the data section; a multiple of [`ALIGN`].
    pub offset: u64,
    /// Bytes: `elements · dtype size`, little-endian elements.
    pub length: u64,
}

/// The program without constant data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramHeader {
    pub values: Vec<ValueInfo>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub steps: Vec<Step>,
}

/// The JSON header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub qc_version: String,
    pub model: String,
    pub stage: String,
    pub calibrated_for_accuracy: bool,
    pub recipe_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_normalize: Option<Normalize>,
    pub program: ProgramHeader,
    pub constants: Vec<ConstantEntry>,
}

/// A program with its metadata: what a `.qmodel` file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub meta: Meta,
    pub program: Program,
}

/// Why a `.qmodel` could not be read. Each check has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{len} bytes are too few for a .qmodel file (at least {min})")]
    TooShort { len: usize, min: usize },
    #[error("not a .qmodel file: it starts with \"{}\", not \"QCMODEL\\0\"", .found.escape_ascii())]
    Magic { found: [u8; 8] },
    #[error("format version {found}, this qc reads {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("the file is truncated: its header describes {expected} bytes, the file has {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("checksum mismatch: stored {stored:#018x}, computed {computed:#018x}; the file is corrupted")]
    Checksum { stored: u64, computed: u64 },
    #[error("header length {declared} does not fit the file ({available} bytes available)")]
    HeaderLength { declared: u64, available: u64 },
    #[error("the header is not valid: {0}")]
    Header(String),
    #[error("constant {index} declares {declared} bytes, but a {dtype} tensor of shape {shape:?} has {expected}")]
    ConstantLength {
        index: usize,
        dtype: DType,
        shape: Vec<usize>,
        declared: u64,
        expected: u64,
    },
    #[error("constant {index} lies at offset {offset}, which is not a multiple of {ALIGN}")]
    ConstantAlignment { index: usize, offset: u64 },
    #[error("constant {index} at offset {offset} overlaps or precedes the previous constant (which ends at {previous_end}); constants are stored in header order")]
    ConstantOrder {
        index: usize,
        offset: u64,
        previous_end: u64,
    },
    #[error("constant {index} (offset {offset}, {length} bytes) extends past the data section ({data_len} bytes)")]
    ConstantBounds {
        index: usize,
        offset: u64,
        length: u64,
        data_len: u64,
    },
    #[error("the file has {found} bytes, its header describes {expected}")]
    FileLength { expected: u64, found: u64 },
    #[error("the program is malformed: {0}")]
    Program(#[from] ProgramError),
}

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the program is malformed: {0}")]
    Program(#[from] ProgramError),
    #[error("the header cannot be stored as JSON: {0}")]
    Header(String),
}

fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN as u64 - 1).map(|v| v / ALIGN as u64 * ALIGN as u64)
}

fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl Artifact {
    pub fn new(meta: Meta, program: Program) -> Artifact {
        Artifact { meta, program }
    }

    /// The header this artifact writes (constants laid out back to back, each aligned).
    pub fn header(&self) -> Header {
        let mut offset = 0u64;
        let constants = self
            .program
            .constants
            .iter()
            .map(|c| {
                let length = (c.data_len() * c.dtype().size()) as u64;
                let e = ConstantEntry {
                    dtype: c.dtype(),
                    shape: c.shape.clone(),
                    offset,
                    length,
                };
                offset = align_up(offset + length).unwrap_or(u64::MAX);
                e
            })
            .collect();
        let p = &self.program;
        Header {
            qc_version: self.meta.qc_version.clone(),
            model: self.meta.model.clone(),
            stage: self.meta.stage.clone(),
            calibrated_for_accuracy: self.meta.calibrated_for_accuracy,
            recipe_hash: self.meta.recipe_hash.clone(),
            input_normalize: self.meta.input_normalize,
            program: ProgramHeader {
                values: p.values.clone(),
                inputs: p.inputs.clone(),
                outputs: p.outputs.clone(),
                steps: p.steps.clone(),
            },
            constants,
        }
    }

    /// The file's bytes. Validates the program first, and refuses a header that JSON cannot carry
    /// exactly (a non-finite float, which JSON writes as `null`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        crate::validate::validate(&self.program)?;
        let header = self.header();
        let json = serde_json::to_vec(&header).map_err(|e| WriteError::Header(e.to_string()))?;
        let lossy = || WriteError::Header("it does not read back as written (JSON has no NaN or infinity)".into());
        let back: Header = serde_json::from_slice(&json).map_err(|_| lossy())?;
        if back != header {
            return Err(lossy());
        }
        let data_start = align_up((PREFIX + json.len()) as u64).unwrap_or(u64::MAX) as usize;
        let data_len = header.constants.last().map_or(0, |c| (c.offset + c.length) as usize);
        let mut out = Vec::with_capacity(data_start + data_len + CHECKSUM);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.resize(data_start, 0);
        for (c, e) in self.program.constants.iter().zip(&header.constants) {
            out.resize(data_start + e.offset as usize, 0);
            out.extend_from_slice(&c.to_le_bytes());
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Writes the file atomically ([`crate::fsutil::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let bytes = self.to_bytes()?;
        crate::fsutil::write_atomic(path, &bytes).map_err(|source| WriteError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and checks a file ([`Artifact::from_bytes`]).
    pub fn load(path: &Path) -> Result<Artifact, LoadError> {
        let bytes = crate::fsutil::read_capped(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Artifact::from_bytes(&bytes)
    }

    /// Parses and checks the bytes of a `.qmodel` (see the module doc for the order of checks).
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, LoadError> {
        let len = bytes.len();
        if len < PREFIX + CHECKSUM {
            return Err(LoadError::TooShort {
                len,
                min: PREFIX + CHECKSUM,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(LoadError::Magic { found: magic });
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(LoadError::Version { found: version });
        }
        let (body, tail) = bytes.split_at(len - CHECKSUM);
        let mut stored = [0u8; 8];
        stored.copy_from_slice(tail);
        let stored = u64::from_le_bytes(stored);
        let computed = checksum(body);
        if stored != computed {
            // A header that still parses and describes a longer file: the file was cut short.
            if let Ok((header, data_start)) = parse_header(bytes) {
                let expected = expected_len(&header, data_start);
                if expected.is_some_and(|e| e > len as u64) {
                    return Err(LoadError::Truncated {
                        expected: expected.unwrap_or(0),
                        found: len as u64,
                    });
                }
            }
            return Err(LoadError::Checksum { stored, computed });
        }
        let (header, data_start) = parse_header(bytes)?;
        let data_len = (len - CHECKSUM) as u64 - data_start.min((len - CHECKSUM) as u64);
        let mut previous_end = 0u64;
        let mut constants = Vec::with_capacity(header.constants.len());
        for (index, e) in header.constants.iter().enumerate() {
            let expected = e
                .shape
                .iter()
                .try_fold(e.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
            if expected != Some(e.length) {
                return Err(LoadError::ConstantLength {
                    index,
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    declared: e.length,
                    expected: expected.unwrap_or(u64::MAX),
                });
            }
            if e.offset % ALIGN as u64 != 0 {
                return Err(LoadError::ConstantAlignment {
                    index,
                    offset: e.offset,
                });
            }
            if e.offset < previous_end {
                return Err(LoadError::ConstantOrder {
                    index,
                    offset: e.offset,
                    previous_end,
                });
            }
            let end = e.offset.checked_add(e.length).filter(|&end| end <= data_len);
            let Some(end) = end else {
                return Err(LoadError::ConstantBounds {
                    index,
                    offset: e.offset,
                    length: e.length,
                    data_len,
                });
            };
            let start = (data_start + e.offset) as usize;
            let t = Tensor::from_le_bytes(e.dtype, e.shape.clone(), &bytes[start..(data_start + end) as usize])
                .ok_or_else(|| LoadError::ConstantLength {
                    index,
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    declared: e.length,
                    expected: expected.unwrap_or(u64::MAX),
                })?;
            constants.push(t);
            previous_end = end;
        }
        let expected = expected_len(&header, data_start).unwrap_or(u64::MAX);
        if expected != len as u64 {
            return Err(LoadError::FileLength {
                expected,
                found: len as u64,
            });
        }
        let Header {
            qc_version,
            model,
            stage,
            calibrated_for_accuracy,
            recipe_hash,
            input_normalize,
            program: ph,
            ..
        } = header;
        let program = Program {
            values: ph.values,
            inputs: ph.inputs,
            outputs: ph.outputs,
            steps: ph.steps,
            constants,
        };
        if let Some(n) = input_normalize {
            if !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0) {
                return Err(LoadError::Header(format!(
                    "the input normalization (x - {}) / {} needs a finite mean and a finite, positive std",
                    n.mean, n.std
                )));
            }
        }
        crate::validate::validate(&program)?;
        Ok(Artifact {
            meta: Meta {
                qc_version,
                model,
                stage,
                calibrated_for_accuracy,
                recipe_hash,
                input_normalize,
            },
            program,
        })
    }
}

/// The header and the data section's start (magic and version already checked, `len >= 28`).
fn parse_header(bytes: &[u8]) -> Result<(Header, u64), LoadError> {
    let mut h = [0u8; 8];
    h.copy_from_slice(&bytes[12..20]);
    let declared = u64::from_le_bytes(h);
    let available = (bytes.len() - PREFIX - CHECKSUM) as u64;
    if declared > available || declared > MAX_HEADER {
        return Err(LoadError::HeaderLength { declared, available });
    }
    let json = &bytes[PREFIX..PREFIX + declared as usize];
    let header: Header = serde_json::from_slice(json).map_err(|e| LoadError::Header(e.to_string()))?;
    let data_start = align_up(PREFIX as u64 + declared).unwrap_or(u64::MAX);
    Ok((header, data_start))
}

/// The file length the header describes, `None` on overflow.
fn expected_len(header: &Header, data_start: u64) -> Option<u64> {
    let data = header
        .constants
        .last()
        .map_or(Some(0), |c| c.offset.checked_add(c.length))?;
    data_start.checked_add(data)?.checked_add(CHECKSUM as u64)
}
