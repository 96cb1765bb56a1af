//! A `dir` target: `DIR/lorastream-vN/` for each published version, in
//! PEFT's layout (`adapter_config.json` naming the base as the fleet knows
//! it, `adapter_model.safetensors`, a `README.md` model card), each written
//! into a temporary directory and renamed into place; `DIR/current`, a
//! symbolic link to the served version's directory, replaced atomically.
//! This is the layout vLLM's filesystem resolver, LoRAX and PEFT read.

use std::collections::HashSet;
use std::path::Path;

use super::{PublishError, TargetState, card, io_err, published_name};
use crate::config::PublishConfig;
use crate::learn::lineage;
use lorastream_base::fsutil;
use lorastream_store::{AdapterRow, Store};

/// What writing a version needs besides the version.
pub struct Context<'a> {
    pub store: &'a Store,
    /// Every version (lineage for the model card).
    pub all: &'a [AdapterRow],
    /// `base_model_name_or_path` of the published adapters.
    pub base_model: String,
}

/// Writes the versions of `wanted` that `t` lacks, drops the oldest past
/// `keep` (never the served one) and points `current` at the served one.
pub fn reconcile(
    t: &PublishConfig,
    ctx: &Context,
    wanted: &[&AdapterRow],
    served: Option<&AdapterRow>,
) -> Result<TargetState, PublishError> {
    let dir = t
        .dir
        .as_deref()
        .expect("config check: a dir target has dir");
    fsutil::create_dir_all_durable(dir).map_err(io_err(dir))?;
    let mut keep: Vec<&AdapterRow> = wanted.to_vec();
    keep.sort_by_key(|a| std::cmp::Reverse(a.id));
    if t.keep > 0 {
        let served_id = served.map(|s| s.id);
        let mut n = 0;
        keep.retain(|a| {
            n += 1;
            n <= t.keep || Some(a.id) == served_id
        });
    }
    let mut written = Vec::new();
    for v in &keep {
        if write_version(dir, v, ctx)? {
            tracing::info!(target = %t.name, version = v.id, dir = %dir.display(), "version published");
            written.push(v.id);
        }
    }
    let names: HashSet<String> = keep.iter().map(|a| published_name(a.id)).collect();
    prune(dir, &names)?;
    let current = served.filter(|s| names.contains(&published_name(s.id)));
    set_current(dir, current.map(|s| published_name(s.id)).as_deref())?;
    Ok(TargetState {
        target: t.name.clone(),
        written,
        current: current.map(|s| s.id),
    })
}

/// `DIR/lorastream-vN/`, unless it is there already; true when written.
fn write_version(dir: &Path, v: &AdapterRow, ctx: &Context) -> Result<bool, PublishError> {
    let name = published_name(v.id);
    let target = dir.join(&name);
    if target.join("adapter_model.safetensors").is_file() {
        return Ok(false);
    }
    let src = lineage::adapter_path(v).ok_or(PublishError::NotLora(v.id))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    fsutil::create_dir_all_durable(&tmp).map_err(io_err(&tmp))?;
    let weights = src.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).map_err(io_err(&weights))?;
    fsutil::write_atomic(&tmp.join("adapter_model.safetensors"), &bytes).map_err(io_err(&tmp))?;
    let cfg_path = src.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| PublishError::Io {
        path: cfg_path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    cfg["base_model_name_or_path"] = serde_json::json!(ctx.base_model);
    fsutil::write_json_atomic(&tmp.join("adapter_config.json"), &cfg).map_err(io_err(&tmp))?;
    let readme = card::model_card(ctx.store, ctx.all, v, &ctx.base_model)?;
    fsutil::write_atomic(&tmp.join("README.md"), readme.as_bytes()).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    fsutil::sync_dir(dir).map_err(io_err(dir))?;
    Ok(true)
}

/// Removes published versions not in `keep` (and leftovers of a crash).
fn prune(dir: &Path, keep: &HashSet<String>) -> Result<(), PublishError> {
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("lorastream-v") || name.starts_with(".lorastream-v");
        if ours && !keep.contains(&name) && e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
        }
    }
    Ok(())
}

/// Points `DIR/current` at `name` (removes it for none), atomically.
fn set_current(dir: &Path, name: Option<&str>) -> Result<(), PublishError> {
    let link = dir.join("current");
    let Some(name) = name else {
        return match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&link)(e)),
            _ => Ok(()),
        };
    };
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(name)) {
        return Ok(());
    }
    let tmp = dir.join(format!(".current.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io_err(&link))?;
    fsutil::sync_dir(dir).map_err(io_err(dir))
}
