//! The chain of versions: each adapter's lineage (parent links back to the
//! base model), the base snapshot it runs on (the nearest merge), and merges
//! (`[feedback] merge`, `lorastream adapters merge`): the served lineage
//! folded into a new base snapshot, recorded and served like any version so a
//! rollback can cross it.

use std::path::{Path, PathBuf};

use crate::config::FeedbackConfig;
use crate::config::MergePolicy;
use crate::learn::records::Hyperparams;
use crate::learn::spec::LearnSpec;
use lorastream_ml::MlError;
use lorastream_ml::load::source::BaseModel;
use lorastream_store::{Actor, AdapterKind, AdapterRow, NewAdapter, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: {0}")]
    Nothing(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("merge: {0}")]
    Ml(#[from] MlError),
    #[error("base model: {0}")]
    Source(#[from] lorastream_ml::load::source::ModelSourceError),
}

/// The lineage of `v`, root first, `v` last (a cycle or a missing parent ends it).
pub fn chain<'a>(all: &'a [AdapterRow], v: &'a AdapterRow) -> Vec<&'a AdapterRow> {
    let mut out = vec![v];
    let mut next = v.parent_id;
    while let Some(id) = next {
        match all.iter().find(|x| x.id == id) {
            Some(p) if !out.iter().any(|c| c.id == p.id) => {
                next = p.parent_id;
                out.push(p);
            }
            _ => break,
        }
    }
    out.reverse();
    out
}

/// A version as a row of the matrix: (adapter id, the stream it was trained
/// on); the base model is `(0, None)`, a merge snapshot has `None` too.
pub type RowKey = (i64, Option<i64>);

/// A lineage as matrix rows, with the base model at its head.
pub fn row_keys(chain: &[&AdapterRow]) -> Vec<RowKey> {
    std::iter::once((0, None))
        .chain(chain.iter().map(|a| (a.id, trained_on(a))))
        .collect()
}

/// The stream a version learned (none for a merge snapshot).
pub fn trained_on(a: &AdapterRow) -> Option<i64> {
    (a.kind == AdapterKind::Lora).then_some(a.stream_id)
}

/// The merge snapshot `v` runs on (itself when it is one), if any.
pub fn snapshot<'a>(all: &'a [AdapterRow], v: &'a AdapterRow) -> Option<&'a AdapterRow> {
    chain(all, v)
        .into_iter()
        .rev()
        .find(|a| a.kind == AdapterKind::Merge)
}

/// The LoRA `v` attaches to its base (none for a merge snapshot).
pub fn adapter_path(v: &AdapterRow) -> Option<&Path> {
    (v.kind == AdapterKind::Lora).then_some(v.path.as_path())
}

/// The model directory `v` runs on: its snapshot's, else `[model]`'s.
pub fn base_dir(
    base: &BaseModel,
    all: &[AdapterRow],
    v: Option<&AdapterRow>,
) -> Result<PathBuf, MergeError> {
    match v.and_then(|v| snapshot(all, v)) {
        Some(m) => Ok(m.path.clone()),
        None => Ok(lorastream_ml::load::source::model_dir(base)?),
    }
}

/// Whether `[feedback] merge = "every_n_streams"` wants the served lineage merged now.
pub fn merge_due(f: &FeedbackConfig, all: &[AdapterRow], served: Option<&AdapterRow>) -> bool {
    if f.merge != MergePolicy::EveryNStreams {
        return false;
    }
    let Some(served) = served else { return false };
    let since_merge = chain(all, served)
        .iter()
        .rev()
        .take_while(|a| a.kind == AdapterKind::Lora)
        .count();
    since_merge >= f.merge_every.max(1)
}

/// Merges the served adapter into the base it runs on and serves the
/// snapshot. Returns the new version's id.
pub fn merge(spec: &LearnSpec, store: &Store, by: Actor, reason: &str) -> Result<i64, MergeError> {
    let all = store.adapters()?;
    let served = store
        .served_adapter()?
        .ok_or(MergeError::Nothing("the base model is served"))?;
    if served.kind == AdapterKind::Merge {
        return Err(MergeError::Nothing(
            "the served version is a merge snapshot already",
        ));
    }
    let base = base_dir(&spec.model.base, &all, Some(&served))?;
    let dir = spec
        .state_dir
        .join("merges")
        .join(format!("after-v{}", served.id));
    let t0 = std::time::Instant::now();
    write_snapshot(&base, &served.path, &dir)?;
    let id = store.insert_merge(
        &NewAdapter {
            parent_id: Some(served.id),
            stream_id: served.stream_id,
            attempt: 1,
            kind: AdapterKind::Merge,
            path: &dir,
            hyperparams: serde_json::to_value(Hyperparams::Merge {
                merged: served.id,
                base: base.clone(),
            })
            .map_err(StoreError::Json)?,
        },
        by,
        reason,
    )?;
    tracing::info!(version = id, merged = served.id, dir = %dir.display(), seconds = t0.elapsed().as_secs_f64(), "merged the served adapter into a new base snapshot");
    Ok(id)
}

/// Writes `base` + `adapter` merged to `dir` (through a temp sibling, renamed).
fn write_snapshot(base: &Path, adapter: &Path, dir: &Path) -> Result<(), MlError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    lorastream_ml::model::export_merged_model(base, adapter, &tmp)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| MlError::io(dir, e))
}
