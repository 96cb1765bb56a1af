//! Publishing promoted versions to the `[[publish]]` targets, so that the
//! engines people serve with see what the daemon learned. Publishing
//! reconciles: every target is brought in line with the store (each
//! promoted LoRA version written once, the newest `keep` kept, `current`
//! naming the served one), so a run that failed or a target that was
//! wiped converges on the next run.
//!
//! - [`dir`]: `DIR/lorastream-vN/` in PEFT layout, written atomically, and
//!   the `current` link;
//! - [`card`]: the model card (`README.md`) of a published version.

pub mod card;
pub mod dir;

use std::path::PathBuf;

use crate::config::{Config, PublishConfig, PublishKind};
use lorastream_ml::source::ModelSource;
use lorastream_store::{AdapterKind, AdapterRow, AdapterState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("version {0} does not exist")]
    NoVersion(i64),
    #[error(
        "v{0} is a merge snapshot (a whole model), not a LoRA adapter: nothing to publish as an adapter"
    )]
    NotLora(i64),
    #[error("no publish target is named {0:?}")]
    NoTarget(String),
}

/// An I/O error at `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What one target holds after publishing.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetState {
    pub target: String,
    /// Versions written by this run.
    pub written: Vec<i64>,
    /// The served version `current` names (None: the base, nothing served).
    pub current: Option<i64>,
}

/// The name a version is published under (vLLM's `lora_name`, the directory).
pub fn published_name(id: i64) -> String {
    format!("lorastream-v{id}")
}

/// Brings `targets` (all when `to` is None) in line with the store; with
/// `version`, publishes that promoted or not version too.
pub fn publish(
    config: &Config,
    store: &Store,
    version: Option<i64>,
    to: Option<&str>,
) -> Result<Vec<TargetState>, PublishError> {
    let targets: Vec<&PublishConfig> = config
        .publish
        .iter()
        .filter(|t| to.is_none_or(|n| n == t.name))
        .collect();
    if let (Some(n), true) = (to, targets.is_empty()) {
        return Err(PublishError::NoTarget(n.to_string()));
    }
    let all = store.adapters()?;
    let served = store.served_adapter()?;
    let mut wanted: Vec<&AdapterRow> = all
        .iter()
        .filter(|a| a.state == AdapterState::Promoted && a.kind == AdapterKind::Lora)
        .collect();
    if let Some(id) = version {
        let v = all
            .iter()
            .find(|a| a.id == id)
            .ok_or(PublishError::NoVersion(id))?;
        if v.kind != AdapterKind::Lora {
            return Err(PublishError::NotLora(id));
        }
        if !wanted.iter().any(|a| a.id == id) {
            wanted.push(v);
        }
    }
    let base_model = |t: &PublishConfig| {
        t.base_model
            .clone()
            .unwrap_or_else(|| match &config.model.source {
                ModelSource::Hub { repo, .. } => repo.clone(),
                ModelSource::Path(p) | ModelSource::Gguf(p) => p.display().to_string(),
            })
    };
    let mut out = Vec::new();
    for t in targets {
        match t.kind {
            PublishKind::Dir => {
                let ctx = dir::Context {
                    store,
                    all: &all,
                    base_model: base_model(t),
                };
                out.push(dir::reconcile(t, &ctx, &wanted, served.as_ref())?);
            }
        }
    }
    Ok(out)
}

/// [`publish`] to every target after the served version changed (a
/// promotion, a rollback, a merge), logging what it did; a failure is
/// logged and left for the next run to converge, never an error of the
/// change itself.
pub fn after_change(config: &Config, store: &Store) {
    if config.publish.is_empty() {
        return;
    }
    match publish(config, store, None, None) {
        Ok(states) => {
            for t in states {
                tracing::info!(target = %t.target, written = ?t.written, current = ?t.current, "publish targets updated");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing failed; the next change or `lorastream adapters publish` retries")
        }
    }
}
