//! A `dir` target: `DIR/lorastream-vN/` for each published version, in
//! PEFT's layout ([`super::files`]), each written into a temporary directory
//! and renamed into place; `DIR/current`, a symbolic link to the served
//! version's directory, replaced atomically. This is the layout vLLM's
//! filesystem resolver, LoRAX and PEFT read.

use std::collections::HashSet;
use std::path::Path;

use super::{Plan, PublishError, TargetState, files, io_err, published_name, version_of};
use crate::config::PublishConfig;
use lorastream_base::fsutil;
use lorastream_store::{AdapterRow, Store};

/// Writes the versions `t` keeps that it lacks, drops the others (never the
/// served one) and points `current` at the served one.
pub fn reconcile(
    t: &PublishConfig,
    store: &Store,
    plan: &Plan,
    base_model: &str,
) -> Result<TargetState, PublishError> {
    let dir = target_dir(t)?;
    let keep = plan.kept(t.keep());
    let mut written = Vec::new();
    for v in &keep {
        if write_version(dir, v, store, plan, base_model)? {
            tracing::info!(target = %t.name, version = v.id, dir = %dir.display(), "version published");
            written.push(v.id);
        }
    }
    let local = Local {
        dir,
        name: published_name,
        current: "current",
        is_version: |e| e.is_dir(),
    };
    local.settle(t, plan, &keep, written)
}

/// The step every local kind ends with: versions out of `keep` removed,
/// the served one linked as `current`, and what the target holds.
pub(super) struct Local<'a> {
    pub dir: &'a Path,
    /// The entry's name of a version.
    pub name: fn(i64) -> String,
    /// The link to the served version's entry.
    pub current: &'a str,
    /// Which kind of entry a version is (a directory, a file).
    pub is_version: fn(&std::fs::FileType) -> bool,
}

impl Local<'_> {
    pub fn settle(
        &self,
        t: &PublishConfig,
        plan: &Plan,
        keep: &[&AdapterRow],
        written: Vec<i64>,
    ) -> Result<TargetState, PublishError> {
        let names: HashSet<String> = keep.iter().map(|a| (self.name)(a.id)).collect();
        let removed = prune(self.dir, &names, self.is_version)?;
        let current = plan.served_id();
        set_current(self.dir, self.current, current.map(self.name).as_deref())?;
        Ok(TargetState {
            target: t.name.clone(),
            written,
            removed,
            held: keep.iter().map(|a| a.id).collect(),
            current,
        })
    }
}

/// The directory a local target writes (`dir`, which the config check
/// requires), created if missing.
pub(super) fn target_dir(t: &PublishConfig) -> Result<&Path, PublishError> {
    let dir = t
        .dir
        .as_deref()
        .expect("config check: dir and gguf targets have dir");
    fsutil::create_dir_all_durable(dir).map_err(io_err(dir))?;
    Ok(dir)
}

/// `DIR/lorastream-vN/`, unless it is there already; true when written.
fn write_version(
    dir: &Path,
    v: &AdapterRow,
    store: &Store,
    plan: &Plan,
    base_model: &str,
) -> Result<bool, PublishError> {
    let name = published_name(v.id);
    let target = dir.join(&name);
    if target.join(files::NAMES[1]).is_file() {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    fsutil::create_dir_all_durable(&tmp).map_err(io_err(&tmp))?;
    for (file, bytes) in files::peft_files(store, &plan.all, v, base_model)? {
        fsutil::write_atomic(&tmp.join(file), &bytes).map_err(io_err(&tmp))?;
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    fsutil::sync_dir(dir).map_err(io_err(dir))?;
    Ok(true)
}

/// Removes published entries (`lorastream-vN` with any extension, of the
/// type `is_ours` accepts) whose name is not in `keep`, and leftovers of a
/// crash; the versions removed.
fn prune(
    dir: &Path,
    keep: &HashSet<String>,
    is_ours: impl Fn(&std::fs::FileType) -> bool,
) -> Result<Vec<i64>, PublishError> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        let leftover = name.starts_with(".lorastream-v") && name.contains(".tmp");
        let stem = name.split('.').next().unwrap_or("");
        let version = version_of(stem);
        if !(leftover || version.is_some() && is_ours(&kind)) || keep.contains(&name) {
            continue;
        }
        let path = e.path();
        let r = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(io_err(&path))?;
        if !leftover {
            removed.extend(version);
        }
    }
    fsutil::sync_dir(dir).map_err(io_err(dir))?;
    removed.sort_unstable();
    Ok(removed)
}

/// Points `DIR/<link>` at `name` (removes it for none), atomically.
fn set_current(dir: &Path, link: &str, name: Option<&str>) -> Result<(), PublishError> {
    let path = dir.join(link);
    let Some(name) = name else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        };
    };
    if std::fs::read_link(&path).is_ok_and(|t| t == Path::new(name)) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{link}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsutil::sync_dir(dir).map_err(io_err(dir))
}
