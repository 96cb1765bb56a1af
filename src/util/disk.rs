//! The state dir's disk use by part and the free space of its file system:
//! what `status` shows and the low-space warning watches.

use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// Bytes under `path` (files and directories, symlinks not followed).
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// The state dir's size by part, and the free space of its file system.
#[derive(Debug, Clone, Serialize)]
pub struct DiskUse {
    /// (part, bytes): database (with its WAL), streams, adapters, merges, spool.
    pub parts: Vec<(String, u64)>,
    pub free_bytes: u64,
    pub fs_bytes: u64,
    /// Free space is below `[retention] min_free_bytes`.
    pub low: bool,
}

pub fn disk_use(config: &Config) -> DiskUse {
    let dir = config.state_dir();
    let db = config.store_path();
    let db_bytes: u64 = ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut p = db.clone().into_os_string();
            p.push(s);
            size_of(Path::new(&p))
        })
        .sum();
    let mut parts = vec![("database".to_string(), db_bytes)];
    for part in ["streams", "adapters", "merges", "spool"] {
        parts.push((part.to_string(), size_of(&dir.join(part))));
    }
    let (free_bytes, fs_bytes) = free_space(&dir).unwrap_or((0, 0));
    DiskUse {
        parts,
        free_bytes,
        fs_bytes,
        low: fs_bytes > 0 && free_bytes < config.retention.min_free_bytes,
    }
}

/// (available to us, total) bytes of the file system holding `dir`.
pub fn free_space(dir: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}
