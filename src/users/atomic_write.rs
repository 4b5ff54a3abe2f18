//! Replacing a file whole, safely against crashes and concurrent writers: an advisory lock
//! beside the file, a temporary file written, synced and renamed over it, the folder synced.
//! A symlinked path is followed to the file it finally names, so the symlink stays. Nothing
//! here knows what the file holds. Every function blocks on file I/O; a failure is told as
//! `cannot WHAT: WHY`, for a person.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Takes the advisory lock that serialises writers of `path`: an exclusive `flock` on the
/// sidecar `NAME.lock` in the same folder (created mode 0600 and never removed, so every
/// writer locks the same file). Released when the returned file is dropped.
pub fn lock(path: &Path) -> Result<File, String> {
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = folder_of(path).join(lock_name);
    let failed = |what: &str, error: std::io::Error| {
        format!("cannot {what} {}: {error}", lock_path.display())
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|error| failed("open the lock file", error))?;
    fs4::FileExt::lock(&file).map_err(|error| failed("lock", error))?;
    Ok(file)
}

/// Replaces the file at `path` with `text`: a temporary file in the same folder is written,
/// synced and renamed over it, then the folder is synced. The new file gets the mode (and,
/// where the process may set it, the owner) of `existing`, or mode 0600.
pub fn write_atomically(
    path: &Path,
    text: &[u8],
    existing: Option<&Metadata>,
) -> Result<(), String> {
    let folder = folder_of(path);
    let failed = |what: &str, error: std::io::Error| format!("cannot {what}: {error}");
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    // Created mode 0600; removed again if anything below fails.
    let mut temporary = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(|error| failed("create a temporary file beside it", error))?;
    if let Some(existing) = existing {
        let file = temporary.as_file();
        file.set_permissions(existing.permissions())
            .map_err(|error| failed("give the new version the file's permissions", error))?;
        let created = file
            .metadata()
            .map_err(|error| failed("read the temporary file's owner", error))?;
        if (created.uid(), created.gid()) != (existing.uid(), existing.gid()) {
            // Only root (or the owner, for the group) may do this; anyone else leaves the
            // new version owned by themselves, as any editor would.
            let _ = std::os::unix::fs::fchown(file, Some(existing.uid()), Some(existing.gid()));
        }
    }
    temporary
        .write_all(text)
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(|error| failed("write the temporary file", error))?;
    temporary
        .persist(path)
        .map_err(|error| failed("rename the temporary file over it", error.error))?;
    File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| failed("sync its folder", error))
}

/// Symlinks followed, at most, from the users file's path to the file itself.
const MAX_SYMLINK_HOPS: usize = 40;

/// The path that `path` finally names once every symlink in its last component is
/// followed (a missing or dangling target included); `path` itself when it is no symlink.
/// Folders on the way need no resolving: the kernel follows them when the file beside the
/// target is created and renamed.
pub fn symlink_target(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match std::fs::read_link(&current) {
            // An absolute target replaces the folder in `join`; a relative one is beside.
            Ok(target) => current = folder_of(&current).join(target),
            Err(_) => break,
        }
    }
    current
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}
