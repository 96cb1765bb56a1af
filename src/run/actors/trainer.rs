//! Trainer: trains the oldest sealed stream into a candidate adapter (see
//! [`crate::learn::pipeline::train_stream`]) on its own thread, resuming an
//! interrupted run from its checkpoint, then hands the candidate to the
//! Evaluator. It trains one stream at a time and waits while a candidate is
//! undecided, so each stream starts from the adapter the feedback promoted.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::prelude::*;

use super::evaluator::Evaluator;
use super::messages::{Candidate, StageDone, StreamSealed};
use super::schedule::Scheduled;
use super::{Bell, Busy, Kick, Pending, Ping, Stage, StageError, UseConfig, catch, mark};
use crate::config::{Config, ON_NEW_STREAM};
use crate::learn::pipeline::PipelineError;
use crate::learn::spec::LearnSpec;
use lorastream_ml::train::TrainError;
use lorastream_store::{AdapterState, ItemKind, StageState, Store, StoreError, StreamState};

pub struct Trainer {
    pub config: Arc<Config>,
    pub store: Option<Store>,
    /// Its own notifications' flag (see [`super::Bell`]).
    pub pending: Pending,
    pub next: Bell<Evaluator>,
    pub supervisor: Recipient<StageDone>,
    pub stop: Arc<AtomicBool>,
    pub busy: Busy,
}

impl Actor for Trainer {
    type Context = SyncContext<Self>;
}

impl Trainer {
    fn store(&mut self) -> Result<&Store, StoreError> {
        super::lazy_store(&mut self.store, &self.config)
    }

    /// Trains the next stream if nothing is waiting for a decision.
    fn train_next(&mut self) {
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(_guard) = self.busy.begin(Scheduled::Train) else {
            return;
        };
        let result = self.try_train();
        let stage_result = match result {
            Ok(Some(candidate)) => {
                if !self.next.ring(candidate) {
                    tracing::debug!(
                        "the evaluator has a notification pending; it finds the candidate in the store"
                    );
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Ok(store) = self.store() {
            mark(store, Stage::Trainer, StageState::Idle, None);
        }
        self.supervisor.do_send(StageDone {
            stage: Stage::Trainer,
            result: stage_result,
        });
    }

    fn try_train(&mut self) -> Result<Option<Candidate>, StageError> {
        let config = Arc::clone(&self.config);
        let stop = Arc::clone(&self.stop);
        let store = self.store()?;
        let adapters = store.adapters()?;
        if let Some(c) = adapters.iter().find(|a| a.state == AdapterState::Candidate) {
            tracing::debug!(
                adapter = c.id,
                "a candidate waits for its decision; training later"
            );
            return Ok(None);
        }
        let Some(stream) = store
            .streams()?
            .into_iter()
            .find(|s| matches!(s.state, StreamState::Sealed | StreamState::Training))
        else {
            return Ok(None);
        };
        let log_every = config.train.log_every.max(1);
        let mut last_sign = std::time::Instant::now();
        let outcome = catch("training", || {
            crate::learn::pipeline::train_stream(
                &LearnSpec::from_config(&config),
                store,
                Some(stream.id),
                lorastream_store::Actor::Daemon,
                &stop,
                |p| {
                    // The watchdog's sign of life, at most once a second.
                    if last_sign.elapsed() >= std::time::Duration::from_secs(1) {
                        last_sign = std::time::Instant::now();
                        let _ = store.stage_progress(Stage::Trainer);
                    }
                    if p.step % log_every == 0 || p.step == p.total_steps {
                        p.log();
                        mark(
                            store,
                            Stage::Trainer,
                            StageState::Running,
                            Some(&format!(
                                "training: step {}/{}, loss {:.4}",
                                p.step, p.total_steps, p.loss
                            )),
                        );
                    }
                },
            )
        })
        .and_then(|r| r.map_err(StageError::from));
        match outcome {
            Ok(t) => {
                store.item_succeeded(ItemKind::Stream, &t.stream_id.to_string())?;
                tracing::info!(
                    stream = t.stream_id,
                    adapter = t.adapter_id,
                    steps = t.outcome.steps,
                    loss = t.outcome.losses.last().copied().unwrap_or(f32::NAN),
                    tokens_per_s = t.outcome.tokens_per_s,
                    resumed_from = t.outcome.resumed_from,
                    duration_ms = (t.outcome.seconds * 1000.0) as u64,
                    "candidate trained"
                );
                Ok(Some(Candidate {
                    adapter_id: t.adapter_id,
                    stream_id: t.stream_id,
                }))
            }
            Err(StageError::Pipeline(PipelineError::NothingToTrain)) => Ok(None),
            Err(StageError::Pipeline(PipelineError::Train(TrainError::Stopped(step)))) => {
                tracing::info!(step, "training stopped for shutdown; checkpoint saved");
                Ok(None)
            }
            Err(e) => {
                set_aside_if_poison(store, &config, stream.id, &e)?;
                Err(e)
            }
        }
    }
}

/// Counts a failure of `stream`; at `max_item_failures` the stream (and its
/// unfinished adapter) becomes `failed` with the reason, so the next stream is
/// trained instead of this one failing forever (out of memory on the same
/// step, a corrupt file).
fn set_aside_if_poison(
    store: &Store,
    config: &Config,
    stream: i64,
    e: &StageError,
) -> Result<(), StoreError> {
    // Only what is about this stream counts against it: its files, its
    // training (a non-finite run, a panic on its step). A missing model or a
    // store error would fail every stream alike: those are retried, never
    // set aside.
    let about_the_stream = matches!(
        e,
        StageError::Panicked { .. }
            | StageError::Pipeline(PipelineError::Stream(_) | PipelineError::Train(_))
    );
    if !about_the_stream {
        return Ok(());
    }
    let max = config.daemon.max_item_failures;
    let key = stream.to_string();
    let f = store.count_failure(ItemKind::Stream, &key, &e.to_string(), max, Some(stream))?;
    if f.set_aside {
        tracing::error!(stream, failures = f.failures, error = %e, "stream set aside after repeated failures; training goes on with the next stream");
    } else {
        tracing::warn!(stream, failures = f.failures, max, error = %e, "training the stream failed");
    }
    Ok(())
}

impl Handler<StreamSealed> for Trainer {
    type Result = ();
    fn handle(&mut self, msg: StreamSealed, _: &mut SyncContext<Self>) {
        self.pending.answer();
        if self.config.schedule.train != ON_NEW_STREAM {
            tracing::info!(stream = msg.stream_id, schedule = %self.config.schedule.train, "stream sealed; training waits for its schedule");
            return;
        }
        self.train_next();
    }
}

impl Handler<Kick> for Trainer {
    type Result = ();
    fn handle(&mut self, _: Kick, _: &mut SyncContext<Self>) {
        self.pending.answer();
        self.train_next();
    }
}

impl Handler<Ping> for Trainer {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) {}
}

impl Handler<UseConfig> for Trainer {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut SyncContext<Self>) {
        self.config = msg.0;
    }
}
