//! File-system helpers shared by every writer in qc: atomic writes (the compiler's checkpoints and
//! IR dumps, the runtime's `.qmodel` artifacts) and the checks that keep a write from destroying
//! anything: an output is never one of the command's inputs, and only a regular file is replaced.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique between threads of one process (the pid separates processes).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file so that readers see the old content or the new, never a part: a temporary file
/// in the same folder, written and fsynced, then renamed over the target; the folder is then
/// fsynced too (Unix), so the rename survives a crash. On any error the temporary file is removed
/// and the target is left as it was.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(kind) = not_replaceable(path)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {kind}, and qc replaces only regular files"),
        ));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    remove_stale_temporaries(dir, &name);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{unique}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(dir) {
            // Best effort: some file systems refuse to sync a directory.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporary files `.NAME.tmp.PID.N` that a killed run of qc left beside `NAME`
/// (its process no longer exists); those of running processes are left alone. Best effort.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, unique)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), unique.parse::<u64>()) else {
            continue;
        };
        if !process_exists(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id runs (Linux: `/proc/PID`; elsewhere assumed, so nothing is removed).
fn process_exists(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The most qc reads of a regular file (a checkpoint, a model, a data set), checked from its size
/// before anything is allocated.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// The most qc reads from anything else (a pipe, or a device such as `/dev/zero`, which never ends).
pub const MAX_STREAM_BYTES: u64 = 256 << 20;

/// Reads a whole file, refusing a folder, a regular file over [`MAX_FILE_BYTES`] (before reading
/// it) and a stream that gives more than [`MAX_STREAM_BYTES`].
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let too_large = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a folder, not a file",
        ));
    }
    let cap = if meta.is_file() {
        if meta.len() > MAX_FILE_BYTES {
            return Err(too_large(format!(
                "it holds {} bytes, more than the {} GiB qc reads",
                meta.len(),
                MAX_FILE_BYTES >> 30
            )));
        }
        MAX_FILE_BYTES
    } else {
        MAX_STREAM_BYTES
    };
    let mut out = Vec::with_capacity(if meta.is_file() { meta.len() as usize } else { 0 });
    std::fs::File::open(path)?.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(too_large(format!(
            "it gives more than the {} MiB qc reads from a pipe or device (one that never ends?)",
            cap >> 20
        )));
    }
    Ok(out)
}

/// Why an output path cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRefusal {
    /// The output is this input of the command (the same file, by any path or link).
    IsInput(PathBuf),
    /// Something other than a regular file is there (`a symbolic link`, `a folder`, …).
    NotRegularFile(&'static str),
}

impl std::fmt::Display for OutputRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputRefusal::IsInput(input) => write!(f, "it is the same file as the input `{}`", input.display()),
            OutputRefusal::NotRegularFile(kind) => write!(f, "it is {kind}, and qc replaces only regular files"),
        }
    }
}

/// Checks an output path before a command does any work: it must not be one of `inputs` (the
/// same file through any path or link) and, if something is there, it must be a regular file.
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<(), OutputRefusal> {
    if let Some(input) = inputs.iter().find(|i| same_file(output, i)) {
        return Err(OutputRefusal::IsInput(input.to_path_buf()));
    }
    match not_replaceable(output) {
        Ok(Some(kind)) => Err(OutputRefusal::NotRegularFile(kind)),
        _ => Ok(()),
    }
}

/// True when both paths name one existing file (after following links).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y),
        _ => false,
    }
}

/// What is at `path` when it is not a regular file (nothing there is fine).
fn not_replaceable(path: &Path) -> std::io::Result<Option<&'static str>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            Ok(if t.is_file() {
                None
            } else if t.is_symlink() {
                Some("a symbolic link")
            } else if t.is_dir() {
                Some("a folder")
            } else {
                Some("a device, pipe or socket")
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("qc-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A target in a folder that does not exist: an error, nothing written.
        assert!(write_atomic(&dir.join("missing").join("b.bin"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_that_are_inputs_or_not_regular_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("qc-fsutil-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.bin");
        std::fs::write(&input, b"keep").unwrap();
        let other = dir.join(".").join("in.bin");
        assert_eq!(
            check_output(&other, &[&input]),
            Err(OutputRefusal::IsInput(input.clone()))
        );
        assert_eq!(check_output(&dir.join("new.bin"), &[&input]), Ok(()));
        assert_eq!(check_output(&dir, &[]), Err(OutputRefusal::NotRegularFile("a folder")));
        #[cfg(unix)]
        {
            let link = dir.join("link.bin");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            assert_eq!(
                check_output(&link, &[&input]),
                Err(OutputRefusal::IsInput(input.clone()))
            );
            assert_eq!(
                check_output(&link, &[]),
                Err(OutputRefusal::NotRegularFile("a symbolic link"))
            );
            assert!(write_atomic(&link, b"x").is_err());
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            assert!(write_atomic(Path::new("/dev/null"), b"x").is_err());
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_of_killed_runs_are_removed_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("qc-fsutil-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No process has this id (above Linux's pid_max).
        let stale = dir.join(".m.qmodel.tmp.4294967295.0");
        let live = dir.join(format!(".m.qmodel.tmp.{}.99", std::process::id()));
        let other = dir.join(".other.tmp.4294967295.0");
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_atomic(&dir.join("m.qmodel"), b"whole").unwrap();
        assert!(!stale.exists(), "a killed run's temporary file is removed");
        assert!(
            live.exists() && other.exists(),
            "a running process's and another file's are kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
