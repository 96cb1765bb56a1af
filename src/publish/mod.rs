//! Publishing promoted versions to the `[[publish]]` targets, so that the
//! engines people serve with see what the daemon learned. Publishing
//! reconciles: every target is brought in line with the store (each
//! promoted LoRA version published once, the newest `keep` kept, the served
//! one marked as such), so a run that failed, a server that restarted or a
//! target changed by hand converges on the next run.
//!
//! - [`plan`]: what the store wants published ([`Plan`]);
//! - [`files`]: a version's files in PEFT layout (config naming the fleet's
//!   base, weights, model card from [`card`]);
//! - local kinds, written in place: [`dir`] (`DIR/lorastream-vN/`, `current`)
//!   and [`gguf`] (llama.cpp LoRA files);
//! - [`remote`]: the remote kinds, over HTTP: `vllm` (load/unload on every
//!   server) and `hub` (a commit per version on the Hugging Face Hub,
//!   tagged), and the HTTP both use;
//! - [`run`]: one target's run, recorded for `status`; [`publish`] runs
//!   them all from the CLI (the daemon's `Publisher` actor runs them in the
//!   background, with retries).

pub mod card;
pub mod dir;
pub mod files;
pub mod gguf;
pub mod plan;
pub mod remote;
pub mod run;

use std::path::PathBuf;

pub use plan::Plan;
pub use run::{publish, record, run_local, run_remote};

use lorastream_store::StoreError;

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
        "v{0} is a merge snapshot (a whole model), or an adapter on one: no adapter of the fleet's base to publish"
    )]
    NotLora(i64),
    #[error("no publish target is named {0:?}")]
    NoTarget(String),
    #[error(transparent)]
    Gguf(#[from] lorastream_ml::MlError),
    #[error(transparent)]
    Secret(#[from] crate::util::http::SecretError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{failed} of {total} servers failed: {errors}")]
    Servers {
        failed: usize,
        total: usize,
        errors: String,
    },
    #[error("publishing stopped: {0}")]
    Aborted(String),
}

/// A request to a remote target that failed (the URL without credentials).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{what} {url}: {reason}")]
    Unreachable {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{what} {url}: HTTP {status}: {body}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{what} {url}: unexpected answer: {problem}")]
    Answer {
        what: &'static str,
        url: String,
        problem: String,
    },
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
    /// Versions written or loaded by this run.
    pub written: Vec<i64>,
    /// Versions removed or unloaded by this run.
    pub removed: Vec<i64>,
    /// Every version the target holds now.
    pub held: Vec<i64>,
    /// The served version it marks as current (None: the base, nothing served).
    pub current: Option<i64>,
}

/// The name a version is published under (vLLM's `lora_name`, the directory).
pub fn published_name(id: i64) -> String {
    format!("{PREFIX}{id}")
}

/// The version a published name stands for (`lorastream-v7` → 7).
pub fn version_of(name: &str) -> Option<i64> {
    name.strip_prefix(PREFIX)?.parse().ok().filter(|v| *v > 0)
}

const PREFIX: &str = "lorastream-v";

/// [`publish`] to every target after the served version changed (a
/// promotion, a rollback, a merge made by the CLI), logging what it did; a
/// failure is logged and left for the next run (or the daemon's Publisher)
/// to converge, never an error of the change itself.
pub fn after_change(config: &crate::config::Config, store: &lorastream_store::Store) {
    if config.publish.is_empty() {
        return;
    }
    match publish(config, store, None, None) {
        Ok(results) => {
            for (name, r) in results {
                match r {
                    Ok(t) => {
                        tracing::info!(target = %name, written = ?t.written, removed = ?t.removed, current = ?t.current, "publish target updated")
                    }
                    Err(e) => {
                        tracing::warn!(target = %name, error = %e, "publishing failed; the daemon or `lorastream adapters publish` retries")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "publishing failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert_eq!(published_name(7), "lorastream-v7");
        assert_eq!(version_of("lorastream-v7"), Some(7));
        assert_eq!(version_of("lorastream-v0"), None);
        assert_eq!(version_of("lorastream-vx"), None);
        assert_eq!(version_of("smol"), None);
    }
}
