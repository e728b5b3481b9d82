//! The help line for a failed read or write, true to the error's kind (a full disk is not "check
//! the path").

use std::io::ErrorKind;
use std::path::Path;

/// The folder `path` is in, as a user would name it.
fn folder(path: &Path) -> String {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.display().to_string(),
        None => ".".to_string(),
    }
}

/// Help after writing `path` failed with `e`.
pub fn after_write(e: &std::io::Error, path: &Path) -> String {
    match e.kind() {
        ErrorKind::NotFound => format!(
            "the folder `{}` does not exist: create it, or write elsewhere",
            folder(path)
        ),
        ErrorKind::PermissionDenied => format!(
            "you may not write in `{}`: write elsewhere, or change the folder's permissions",
            folder(path)
        ),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "the disk (or your quota) is full: free some space, or write to another disk".to_string()
        }
        ErrorKind::ReadOnlyFilesystem => "that file system is read-only: write to another one".to_string(),
        ErrorKind::IsADirectory => "that path is a folder: name a file inside it".to_string(),
        ErrorKind::InvalidInput => "name a regular file, or a path where nothing is yet".to_string(),
        _ => "nothing was replaced; check the disk and the folder, then run the command again".to_string(),
    }
}

/// Help after reading `path` failed with `e`; `kind` says what the file should be ("recipes are
/// UTF-8 text files ending in .qrecipe").
pub fn after_read(e: &std::io::Error, path: &Path, kind: &str) -> String {
    match e.kind() {
        ErrorKind::NotFound => format!("check the path: nothing is at `{}`", path.display()),
        ErrorKind::PermissionDenied => format!("you may not read `{}`: check its permissions", path.display()),
        ErrorKind::IsADirectory => format!("that path is a folder; {kind}"),
        _ => format!("is this the right file? {kind}"),
    }
}
