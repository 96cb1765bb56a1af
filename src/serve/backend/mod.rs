//! The generation engine's handle: requests submit [`Job`]s (a prompt already
//! fitted, its sampling, the version that answers; see [`crate::serve::backend::jobs`])
//! through a bounded queue and read [`Event`]s back over their own channel. The worker thread
//! ([`crate::serve::backend::worker`]) loads the model at start-up and runs every admitted
//! job in one continuous batch ([`crate::serve::backend::batch`]).

mod batch;
pub mod gateway;
pub mod jobs;
pub mod prompt;
mod served;
mod worker;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::serve::backend::jobs::{EngineError, Job, ModelInfo, Readiness};

/// The handle requests submit jobs through.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    capacity: usize,
    ready: watch::Receiver<Readiness>,
}

impl Engine {
    /// Starts the worker thread, which loads the model at once; at most
    /// `queue` jobs wait for a place in the batch (beside the `max_batch`
    /// on their way into it).
    pub fn start(config: Arc<Config>, queue: usize) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue + config.server.max_batch.max(1));
        let (ready_tx, ready) = watch::channel(Readiness::Loading);
        std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || crate::serve::backend::worker::run(config, rx, ready_tx))?;
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
