//! Crash-safe file writes: every artifact (stream files, adapters, checkpoints)
//! is written to a temporary name beside its target, fsynced, renamed over the
//! target, and the directory fsynced, so a reader sees the old file or the new
//! one, never a torn one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", target.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    Ok(target.with_file_name(tmp))
}

/// Whether this process may create and rename entries in `dir` (also false
/// on a read-only mount, as systemd's `ProtectSystem=strict` makes one).
pub fn check_writable(dir: &Path) -> io::Result<()> {
    use rustix::fs::{Access, access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(io::Error::from)
}

/// `create_dir_all` that fsyncs the parent of every directory it creates, so
/// a new directory (and what is then renamed into it) survives a power loss.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_dir_all_durable(p)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(parent.unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `target` atomically: `fill` writes the file at the temporary path it
/// is given (for writers that want a path, such as libtorch's safetensors
/// writer), which is then fsynced, renamed over `target`, and the directory
/// fsynced. If anything fails, the temporary file is removed and `target` is
/// left as it was. Temporary names are unique per process and call, so
/// concurrent writers of one target never share one.
pub fn write_atomic_via<F>(target: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&Path) -> io::Result<()>,
{
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dir_all_durable(&dir)?;
    let tmp = temp_path(target)?;
    let result = (|| {
        fill(&tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, target)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", target.display())))
}

/// Writes `target` atomically with whatever `fill` writes (see [`write_atomic_via`]).
pub fn write_atomic_with<F>(target: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    write_atomic_via(target, |tmp| {
        let mut w = BufWriter::new(File::create(tmp)?);
        fill(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(target, |w| w.write_all(bytes))
}

/// Writes `value` as pretty JSON to `target` atomically; a value that cannot
/// be serialized is an error (`InvalidData`), never an empty file.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(target: &Path, value: &T) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: cannot serialize: {e}", target.display()),
        )
    })?;
    write_atomic(target, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect()
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/a.json");
        write_atomic(&target, b"one").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"one");
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert!(leftovers(target.parent().unwrap()).is_empty());
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        write_atomic(&target, b"old").unwrap();
        let err = write_atomic_with(&target, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("a.json"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn json_that_cannot_be_serialized_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        // JSON has no NaN: serde_json refuses a map with non-string keys.
        let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let err = write_json_atomic(&target, &bad).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!target.exists());
        write_json_atomic(&target, &serde_json::json!({"a": 1})).unwrap();
        assert!(fs::read_to_string(&target).unwrap().contains("\"a\": 1"));
    }

    #[test]
    fn a_target_without_a_name_is_an_error() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
