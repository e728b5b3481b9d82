//! The zip archive `torch.save` writes: finding `<prefix>/data.pkl`, the byte order and the
//! storages, reading members with size limits, and running the pickle machine over them.

use super::*;

pub(super) fn read_named(bytes: &[u8], path: &str) -> Result<IndexMap<String, PthValue>, PthError> {
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
pub(super) fn read_member<R: Read + std::io::Seek>(
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
pub(super) fn clip(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}
