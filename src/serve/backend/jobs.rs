//! The messages between requests and the generation worker: a [`Job`] in,
//! [`Event`]s out, and what the worker says of its model ([`Readiness`]).

use std::sync::Arc;

use tokio::sync::mpsc::Sender;

use lorastream_ml::generation::generate::{FinishReason, Logprob, SamplingParams};
use lorastream_ml::{ChatTokenizer, HfConfig};
use lorastream_store::AdapterRow;

/// Which weights answer: the base model, or a version (an adapter on the base
/// or merge snapshot its lineage names, or a snapshot itself).
#[derive(Debug, Clone)]
pub struct VersionRef {
    /// What responses name: `lorastream@v3`, or `base`.
    pub label: String,
    pub adapter: Option<AdapterRow>,
    /// The merge snapshot it runs on (None: `[model]`'s base).
    pub base: Option<std::path::PathBuf>,
}

pub struct Job {
    pub version: VersionRef,
    /// The prompt's token ids (see [`crate::serve::backend::prompt::fit`]).
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub events: Sender<Event>,
}

#[derive(Debug)]
pub enum Event {
    /// The job joined the batch.
    Started,
    /// New text, and the tokens behind it when log-probabilities were asked for.
    Delta {
        text: String,
        logprobs: Vec<Logprob>,
    },
    Done {
        finish: FinishReason,
        completion_tokens: usize,
        /// The prompt's tokens as a remote backend counted them (the
        /// built-in engine's count is known before it starts).
        prompt_tokens: Option<usize>,
    },
    Failed(EngineError),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no model to serve: {0}")]
    NoModel(String),
    #[error(transparent)]
    Prompt(#[from] crate::serve::backend::prompt::PromptError),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Why a fleet request failed, as the client will hear it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet's address is logged (without credentials), never told to clients.
    #[error("the vLLM fleet cannot be reached: {reason}")]
    Unreachable { reason: String },
    #[error("the vLLM fleet does not have {model} loaded yet (HTTP 404); retry shortly")]
    NotLoaded { model: String },
    #[error("the vLLM fleet refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the vLLM fleet failed (HTTP {status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the vLLM fleet's stream broke off: {0}")]
    Broken(String),
    #[error(
        "{0} runs on a merge snapshot, which the fleet does not serve; serve it with the built-in backend"
    )]
    OnSnapshot(String),
}

/// What requests need of the loaded model before they queue.
pub struct ModelInfo {
    pub tok: Arc<ChatTokenizer>,
    pub config: HfConfig,
}

/// The worker's state as `/ready` and requests see it.
#[derive(Clone)]
pub enum Readiness {
    Loading,
    Ready(Arc<ModelInfo>),
    /// Loading failed; the worker tries again on its own.
    Failed(String),
}
