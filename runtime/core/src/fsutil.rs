//! File-system helpers shared by every writer in qc: atomic writes (the compiler's checkpoints and
//! IR dumps, the runtime's `.qmodel` artifacts).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique between threads of one process (the pid separates processes).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file so that readers see the old content or the new, never a part: a temporary file
/// in the same folder, written and fsynced, then renamed over the target; the folder is then
/// fsynced too (Unix), so the rename survives a crash. On any error the temporary file is removed
/// and the target is left as it was.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
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
}
