//! Retention (`[retention]`): what the daemon deletes so the state dir stays
//! bounded — the training checkpoints of decided versions, the files of all
//! but the newest rejected versions, old files in the spools' `done/` — and
//! the disk use `status` shows and the low-space warning watches.
//!
//! Conversations older than `[server] conversation_retention_days` (by
//! their last message) go too, with what was derived from them and not yet
//! learned.
//!
//! Kept on purpose: `raw_items` and `seen_urls` (deduplication needs them),
//! `streams/` (replay reads them), `failed/` (an operator reads the reasons),
//! merge snapshots and the files of promoted and rolled-back versions.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Config, SourceKind};
use lorastream_store::{AdapterKind, AdapterState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("removing {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sweep {
    pub checkpoints: usize,
    pub adapter_dirs: usize,
    pub done_files: usize,
    pub conversations: usize,
    pub bytes: u64,
}

/// Deletes what `[retention]` says may go.
pub fn sweep(config: &Config, store: &Store) -> Result<Sweep, RetentionError> {
    let r = &config.retention;
    let mut out = Sweep::default();
    // The decisions that make these files unneeded are on disk first.
    store.checkpoint()?;
    let adapters = store.adapters()?;
    let decided = |s: AdapterState| !matches!(s, AdapterState::Training | AdapterState::Candidate);
    if r.drop_checkpoints {
        for a in adapters
            .iter()
            .filter(|a| a.kind == AdapterKind::Lora && decided(a.state))
        {
            for f in files(&a.path) {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                if (name.starts_with("checkpoint-") || name == "best.safetensors")
                    && name.ends_with(".safetensors")
                {
                    out.bytes += remove(&f)?;
                    out.checkpoints += 1;
                }
            }
        }
    }
    let mut refused: Vec<_> = adapters
        .iter()
        .filter(|a| {
            a.kind == AdapterKind::Lora
                && matches!(
                    a.state,
                    AdapterState::Rejected | AdapterState::NotLearned | AdapterState::Failed
                )
        })
        .collect();
    refused.sort_by_key(|a| std::cmp::Reverse(a.id));
    for a in refused.iter().skip(r.keep_rejected) {
        if a.path.is_dir() {
            out.bytes += crate::util::disk::size_of(&a.path);
            std::fs::remove_dir_all(&a.path).map_err(|source| RetentionError::Remove {
                path: a.path.clone(),
                source,
            })?;
            out.adapter_dirs += 1;
        }
    }
    if r.done_days > 0 {
        let max_age = Duration::from_secs(r.done_days * 86_400);
        for src in config
            .sources
            .iter()
            .filter(|s| s.kind == SourceKind::Spool)
        {
            for f in files(&src.spool_dir(&config.state_dir()).join("done")) {
                let age = std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_some_and(|a| a > max_age) {
                    out.bytes += remove(&f)?;
                    out.done_files += 1;
                }
            }
        }
    }
    if let Some(days) = config.server.conversation_retention_days {
        let cutoff = lorastream_store::now_ms() - (days as i64).saturating_mul(86_400_000);
        out.conversations = store.forget_conversations_before(cutoff)?.conversations;
    }
    if out.checkpoints + out.adapter_dirs + out.done_files + out.conversations > 0 {
        tracing::info!(
            checkpoints = out.checkpoints,
            adapter_dirs = out.adapter_dirs,
            done_files = out.done_files,
            conversations = out.conversations,
            freed_bytes = out.bytes,
            "retention sweep"
        );
    }
    Ok(out)
}

/// The plain files directly in `dir` (none if it is missing).
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn remove(f: &Path) -> Result<u64, RetentionError> {
    let n = std::fs::metadata(f).map_or(0, |m| m.len());
    match std::fs::remove_file(f) {
        Ok(()) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(RetentionError::Remove {
            path: f.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorastream_store::{Actor, NewAdapter};

    /// Before: every version kept its checkpoints (about 3× the adapter) and
    /// every rejected version its directory, for ever.
    #[test]
    fn a_sweep_keeps_what_is_needed_and_frees_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[daemon]\nstate_dir = \"{}\"\n[retention]\nkeep_rejected = 1\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
        let config = Config::load(&dir.path().join("c.toml")).unwrap();
        let store = config.open_store().unwrap();
        let sid = store.seal_stream("s", &[], &[], dir.path()).unwrap();
        let mut ids = Vec::new();
        for to in [
            AdapterState::Promoted,
            AdapterState::Rejected,
            AdapterState::Rejected,
            AdapterState::Candidate,
        ] {
            let path = dir.path().join(format!("adapters/{}", ids.len() + 1));
            std::fs::create_dir_all(&path).unwrap();
            for f in [
                "adapter_model.safetensors",
                "checkpoint-8.safetensors",
                "best.safetensors",
            ] {
                std::fs::write(path.join(f), [0u8; 100]).unwrap();
            }
            let id = store
                .insert_adapter(&NewAdapter {
                    parent_id: None,
                    stream_id: sid,
                    attempt: 1,
                    kind: AdapterKind::Lora,
                    path: &path,
                    hyperparams: serde_json::json!({}),
                })
                .unwrap();
            store
                .set_adapter_state(id, AdapterState::Candidate, None, Actor::Daemon, "")
                .unwrap();
            if to != AdapterState::Candidate {
                store
                    .set_adapter_state(id, to, None, Actor::Daemon, "")
                    .unwrap();
            }
            ids.push(id);
        }
        let s = sweep(&config, &store).unwrap();
        let a = |i: usize, f: &str| dir.path().join(format!("adapters/{i}/{f}")).exists();
        // The promoted version keeps its adapter, loses its checkpoints.
        assert!(
            a(1, "adapter_model.safetensors")
                && !a(1, "checkpoint-8.safetensors")
                && !a(1, "best.safetensors")
        );
        // Of two rejected, the newer keeps its files (without checkpoints).
        assert!(!dir.path().join("adapters/2").exists());
        assert!(a(3, "adapter_model.safetensors") && !a(3, "checkpoint-8.safetensors"));
        // The candidate is untouched.
        assert!(a(4, "checkpoint-8.safetensors") && a(4, "best.safetensors"));
        assert_eq!((s.checkpoints, s.adapter_dirs), (6, 1), "{s:?}");
        assert_eq!(s.bytes, 6 * 100 + 100);
        let again = sweep(&config, &store).unwrap();
        assert_eq!(again.bytes, 0);
        let d = crate::util::disk::disk_use(&config);
        assert!(d.fs_bytes > 0 && d.parts.iter().any(|(p, n)| p == "adapters" && *n == 500));
    }
}
