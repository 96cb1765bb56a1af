//! A `gguf` target: `DIR/lorastream-vN.gguf` for each published version, the
//! llama.cpp LoRA file its server (`--lora`) and Ollama (`ADAPTER`) load,
//! written atomically, and `DIR/current.gguf`, a link to the served one.

use std::path::Path;

use super::{Plan, PublishError, TargetState, dir, published_name};
use crate::config::PublishConfig;
use crate::learn::lineage;
use lorastream_ml::HfConfig;
use lorastream_ml::load::source::BaseModel;
use lorastream_store::AdapterRow;

/// The file name of a version's GGUF LoRA.
pub fn file_name(id: i64) -> String {
    format!("{}.gguf", published_name(id))
}

/// Writes the versions `t` keeps that it lacks, removes the others, points
/// `current.gguf` at the served one.
pub fn reconcile(
    model: &BaseModel,
    t: &PublishConfig,
    plan: &Plan,
) -> Result<TargetState, PublishError> {
    let out = dir::target_dir(t)?;
    let keep = plan.kept(t.keep());
    let mut base: Option<HfConfig> = None;
    let mut written = Vec::new();
    for v in &keep {
        let path = out.join(file_name(v.id));
        if path.is_file() {
            continue;
        }
        let base = match &base {
            Some(b) => b,
            None => base.insert(base_config(model)?),
        };
        export(v, base, &path)?;
        tracing::info!(target = %t.name, version = v.id, file = %path.display(), "version published as GGUF");
        written.push(v.id);
    }
    let local = dir::Local {
        dir: out,
        name: file_name,
        current: "current.gguf",
        is_version: |k| k.is_file(),
    };
    local.settle(t, plan, &keep, written)
}

/// The base model's `config.json` (its family, heads), which the file's
/// tensor names and layout depend on.
pub fn base_config(model: &BaseModel) -> Result<HfConfig, PublishError> {
    let dir = lorastream_ml::load::source::model_dir(model)
        .map_err(|e| PublishError::Aborted(format!("the base model: {e}")))?;
    Ok(HfConfig::load(&dir)?)
}

/// Writes version `v` as a GGUF LoRA file at `path`.
pub fn export(v: &AdapterRow, base: &HfConfig, path: &Path) -> Result<usize, PublishError> {
    let src = lineage::adapter_path(v).ok_or(PublishError::NotLora(v.id))?;
    Ok(lorastream_ml::gguf::lora::export_lora(
        src,
        base,
        path,
        &published_name(v.id),
    )?)
}
