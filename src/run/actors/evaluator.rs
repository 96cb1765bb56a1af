//! Evaluator: fills the perplexity matrix (see [`crate::learn::matrix::fill::evaluate`])
//! on its own thread when a candidate arrives or the eval schedule fires, then
//! hands every undecided candidate to Feedback.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;

use super::feedback::Feedback;
use super::messages::{Candidate, EvalReport, StageDone};
use super::schedule::Scheduled;
use super::{Busy, Kick, Pending, Ping, Stage, StageError, UseConfig, block_on, catch, mark};
use crate::config::Config;
use crate::learn::matrix::fill::CellFailure;
use crate::learn::spec::LearnSpec;
use lorastream_store::{AdapterState, ItemKind, StageState, Store, StoreError};

pub struct Evaluator {
    pub config: Arc<Config>,
    pub store: Option<Store>,
    /// Its own notifications' flag (see [`super::Bell`]).
    pub pending: Pending,
    pub next: Addr<Feedback>,
    pub supervisor: Recipient<StageDone>,
    pub busy: Busy,
}

impl Actor for Evaluator {
    type Context = SyncContext<Self>;
}

impl Evaluator {
    fn pass(&mut self, why: &str) {
        let Some(_guard) = self.busy.begin(Scheduled::Eval) else {
            return;
        };
        let result = self.try_pass(why);
        if let Some(store) = &self.store {
            mark(store, Stage::Evaluator, StageState::Idle, None);
        }
        self.supervisor.do_send(StageDone {
            stage: Stage::Evaluator,
            result,
        });
    }

    fn try_pass(&mut self, why: &str) -> Result<(), StageError> {
        let config = Arc::clone(&self.config);
        let store = super::lazy_store(&mut self.store, &config)?;
        mark(store, Stage::Evaluator, StageState::Running, Some(why));
        let started = std::time::Instant::now();
        let (matrix, failed) = catch("evaluation", || {
            crate::learn::matrix::fill::fill_matrix(&LearnSpec::from_config(&config), store)
        })??;
        count_failures(store, &config, &failed)?;
        tracing::info!(
            failed_cells = failed.len(),
            versions = matrix.versions.len(),
            streams = matrix.streams.len(),
            average_ppl = matrix.average_ppl,
            backward_transfer = matrix.backward_transfer,
            duration_ms = started.elapsed().as_millis() as u64,
            "evaluation matrix filled"
        );
        if let Some(f) = failed.into_iter().next() {
            // Retried after a backoff; the cells that were measured stay. A
            // candidate is not decided on a half-filled matrix.
            return Err(crate::learn::matrix::fill::MatrixError::from(f).into());
        }
        let waiting: Vec<i64> = store
            .adapters()?
            .iter()
            .filter(|a| a.state == AdapterState::Candidate)
            .map(|a| a.id)
            .collect();
        for adapter_id in waiting {
            if block_on(self.next.send(EvalReport { adapter_id })).is_err() {
                tracing::warn!("feedback is gone; the candidate waits in the store");
            }
        }
        Ok(())
    }
}

/// Counts each failed cell against the item to blame (once per item and
/// pass). An item that failed `max_item_failures` times is set aside: its
/// cells are skipped from then on, and the stream whose candidate it makes
/// undecidable (or whose eval split does not read) fails, so the trainer
/// goes on.
fn count_failures(
    store: &Store,
    config: &Config,
    failed: &[CellFailure],
) -> Result<(), StoreError> {
    let max = config.daemon.max_item_failures;
    let candidates: Vec<(i64, i64)> = store
        .adapters()?
        .iter()
        .filter(|a| a.state == AdapterState::Candidate)
        .map(|a| (a.id, a.stream_id))
        .collect();
    let mut seen = HashSet::new();
    for f in failed {
        let key = f.key();
        if !seen.insert((f.blame, key.clone())) {
            continue;
        }
        let blocks = match f.blame {
            ItemKind::Stream => Some(f.stream),
            _ => candidates.iter().find(|c| c.0 == f.version).map(|c| c.1),
        };
        let row = store.count_failure(f.blame, &key, &f.error.to_string(), max, blocks)?;
        if !row.set_aside {
            tracing::warn!(version = f.version, stream = f.stream, blame = %f.blame, failures = row.failures, max, error = %f.error, "a cell of the matrix could not be measured");
            continue;
        }
        tracing::error!(blame = %f.blame, key = %key, failures = row.failures, error = %f.error, "set aside after repeated failures; its cells are skipped");
        for &(adapter, stream) in &candidates {
            if blocks == Some(stream) {
                tracing::error!(
                    adapter,
                    stream,
                    "candidate cannot be evaluated; it and its stream failed, training goes on"
                );
            }
        }
    }
    Ok(())
}

impl Handler<Candidate> for Evaluator {
    type Result = ();
    fn handle(&mut self, msg: Candidate, _: &mut SyncContext<Self>) {
        self.pending.answer();
        self.pass(&format!(
            "evaluating adapter v{} (stream {})",
            msg.adapter_id, msg.stream_id
        ));
    }
}

impl Handler<Kick> for Evaluator {
    type Result = ();
    fn handle(&mut self, _: Kick, _: &mut SyncContext<Self>) {
        self.pending.answer();
        self.pass("filling missing cells");
    }
}

impl Handler<Ping> for Evaluator {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) {}
}

impl Handler<UseConfig> for Evaluator {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut SyncContext<Self>) {
        self.config = msg.0;
    }
}
