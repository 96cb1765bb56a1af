//! The state directory's writer lock: one process at a time runs the daemon,
//! trains, crawls, evaluates or imports on a state dir, so two writers never
//! delete each other's checkpoints. An advisory `flock` on
//! `<state_dir>/lock`, released by the kernel when the holder exits (also on
//! SIGKILL); the file names the holder's pid for the error. Readers
//! (`status`, the web page) and the version commands (`adapters promote`,
//! `rollback`), which a running daemon picks up, do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "state dir {} is in use by another lorastream process ({holder}); \
         stop it first (systemctl stop lorastream) or wait for it to finish",
        dir.display()
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the process writes to the state dir.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the writer lock of `state_dir` (created if missing), or says who holds it.
pub fn acquire(state_dir: &Path, what: &str) -> Result<StateLock, LockError> {
    let path = state_dir.join("lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "pid {} ({what})", std::process::id()).map_err(io)?;
            Ok(StateLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Err(LockError::Held {
                dir: state_dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "pid unknown".into()
                } else {
                    holder.to_string()
                },
            })
        }
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_at_a_time_and_the_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path(), "run").unwrap();
        let e = acquire(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {} (run)", std::process::id())),
            "{e}"
        );
        drop(held);
        acquire(dir.path(), "train").unwrap();
    }
}
