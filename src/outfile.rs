//! Output files written whole or not at all.
//!
//! A result goes to a fresh temporary file in the target's directory (unique per process and call, created
//! exclusively, so concurrent writers never share one), and is renamed over the target only when complete. An
//! uncommitted temporary file is removed when dropped, on every error path. Targets that are not regular files
//! (a directory, a device such as /dev/null, a FIFO) are refused: renaming over them would replace them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Checks that `target` can receive an output file: it is a regular file or does not exist yet, and its directory
/// exists. A symbolic link is followed (the file it points to is replaced, not the link).
pub fn check_target(target: &Path) -> Result<PathBuf> {
    let td = target.display();
    let target = match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            target.canonicalize().map_err(|e| Error::io(format!("output '{td}' is a broken symbolic link: {e}")))?
        }
        _ => target.to_path_buf(),
    };
    match std::fs::metadata(&target) {
        Ok(m) if !m.is_file() => {
            return Err(Error::io(format!(
                "output '{td}' exists and is not a regular file ({:?}); refusing to replace it",
                m.file_type()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("output '{td}': {e}"))),
    }
    let name = target.file_name().ok_or_else(|| Error::io(format!("output '{td}' has no file name")))?;
    if name.is_empty() {
        return Err(Error::io(format!("output '{td}' has no file name")));
    }
    let dir = dir_of(&target);
    if !dir.is_dir() {
        return Err(Error::io(format!("output '{td}': directory '{}' does not exist", dir.display())));
    }
    Ok(target)
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An output file being written: write to [`PendingFile::path`], then [`PendingFile::commit`].
#[derive(Debug)]
pub struct PendingFile {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Creates a unique, empty temporary file next to `target` (checked with [`check_target`]).
    pub fn new(target: &Path) -> Result<PendingFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let real = check_target(target)?;
        let dir = dir_of(&real);
        let name = real.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for _ in 0..1000 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{name}.{}.{n}.partial", std::process::id()));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(_) => return Ok(PendingFile { tmp, target: real, committed: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(format!(
                        "cannot create a temporary file in '{}' for '{}': {e}",
                        dir.display(),
                        target.display()
                    )))
                }
            }
        }
        Err(Error::io(format!("cannot find a free temporary name in '{}'", dir.display())))
    }

    /// Where to write the content.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The file the content goes to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the complete temporary file over the target.
    pub fn commit(mut self) -> Result<()> {
        check_target(&self.target)?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            Error::io(format!("cannot move '{}' to '{}': {e}", self.tmp.display(), self.target.display()))
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `target` whole or not at all, synced to disk before the rename (a crash leaves the old file or
/// the new one, never an empty one).
pub fn write_whole(target: &Path, bytes: &[u8]) -> Result<()> {
    write_all_whole(&[(target, bytes)])
}

/// Writes several files that belong together: every content to its temporary file and synced first, then the
/// renames. A failure before the renames changes none of the targets (a state and its side file never part over a
/// full disk or a missing folder).
pub fn write_all_whole(files: &[(&Path, &[u8])]) -> Result<()> {
    use std::io::Write;
    let mut pending = Vec::with_capacity(files.len());
    for (target, bytes) in files {
        let p = PendingFile::new(target)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(p.path())
            .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
            .map_err(|e| Error::io(format!("cannot write '{}': {e}", target.display())))?;
        pending.push(p);
    }
    pending.into_iter().try_for_each(PendingFile::commit)
}
