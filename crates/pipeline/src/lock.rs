//! Advisory locks on folders: one pipeline per output folder, one live run per trial folder.
//!
//! The lock is the operating system's (`flock` on Unix, `LockFileEx` on Windows, through the
//! standard library's `File::try_lock`): it is released when its holder exits, however it
//! exits, so a killed pipeline never leaves a stale lock behind. The lock file holds the
//! holder's pid and host name, for the message that refuses a second one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::PipelineError;

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a folder, released when dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

/// Why a lock was not taken: another process (or this one) holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The lock file.
    pub path: PathBuf,
    /// What the holder wrote there: `pid N on HOST`, or empty if it had not yet.
    pub holder: String,
}

impl FolderLock {
    /// Takes the lock of `dir` (created if missing), or says who holds it.
    pub fn take(dir: &Path, holder: &str) -> Result<Result<Self, Held>, PipelineError> {
        std::fs::create_dir_all(dir).map_err(PipelineError::io(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(PipelineError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Ok(Err(Held {
                    path,
                    holder: text.trim().to_string(),
                }));
            }
            Err(TryLockError::Error(e)) => return Err(PipelineError::io(&path)(e)),
        }
        file.set_len(0).map_err(PipelineError::io(&path))?;
        file.rewind().map_err(PipelineError::io(&path))?;
        file.write_all(holder.as_bytes())
            .map_err(PipelineError::io(&path))?;
        Ok(Ok(Self { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_told_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::take(dir.path(), "pid 1 on here")
            .unwrap()
            .unwrap();
        // A second open file description conflicts even within one process.
        let held = FolderLock::take(dir.path(), "pid 2 on there")
            .unwrap()
            .unwrap_err();
        assert_eq!(held.holder, "pid 1 on here");
        drop(first);
        let again = FolderLock::take(dir.path(), "pid 2 on there").unwrap();
        assert!(again.is_ok());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            "pid 2 on there"
        );
    }
}
