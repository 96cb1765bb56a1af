//! The generation engine's handle: requests submit [`Job`]s (a prompt already
//! fitted, its sampling, the version that answers) through a bounded queue
//! and read [`Event`]s back over their own channel. The worker thread
//! ([`super::worker`]) loads the model at start-up and runs every admitted
//! job in one continuous batch ([`super::batch`]).

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::{mpsc::Sender, watch};

use crate::config::Config;
use lorastream_ml::generate::{FinishReason, Logprob, SamplingParams};
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
    /// The prompt's token ids (see [`super::prompt::fit`]).
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
    },
    Failed(EngineError),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no model to serve: {0}")]
    NoModel(String),
    #[error(transparent)]
    Prompt(#[from] super::prompt::PromptError),
    #[error("generation failed: {0}")]
    Generation(String),
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

/// The handle requests submit jobs through.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    capacity: usize,
    ready: watch::Receiver<Readiness>,
}

impl Engine {
    /// Starts the worker thread, which loads the model at once; at most
    /// `queue` jobs wait for a place in the batch.
    pub fn start(config: Arc<Config>, queue: usize) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        let (ready_tx, ready) = watch::channel(Readiness::Loading);
        std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || super::worker::run(config, rx, ready_tx))?;
        Ok(Engine {
            tx,
            capacity: queue,
            ready,
        })
    }

    /// Queues `job`; `Err` gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => Box::new(job),
        })?;
        crate::util::metrics::METRICS.queue_depth.inc();
        Ok(())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The worker's state now.
    pub fn readiness(&self) -> Readiness {
        self.ready.borrow().clone()
    }

    /// The loaded model, waiting while it loads (at most `wait`).
    pub async fn model(&self, wait: Duration) -> Result<Arc<ModelInfo>, EngineError> {
        let mut rx = self.ready.clone();
        let settled =
            tokio::time::timeout(wait, rx.wait_for(|r| !matches!(r, Readiness::Loading))).await;
        match settled {
            Ok(Ok(r)) => match &*r {
                Readiness::Ready(info) => Ok(Arc::clone(info)),
                Readiness::Failed(e) => Err(EngineError::NoModel(e.clone())),
                Readiness::Loading => unreachable!("waited for a settled state"),
            },
            Ok(Err(_)) => Err(EngineError::Generation(
                "the generation worker is gone".into(),
            )),
            Err(_) => Err(EngineError::NoModel("the model is still loading".into())),
        }
    }
}
