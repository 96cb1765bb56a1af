//! The generation worker: one thread that loads the model at start-up (and
//! again after a failure), takes jobs from the bounded queue into the batch
//! as room allows, and steps the batch until it is empty. It never runs on
//! an async executor thread and never waits for training, which has its own
//! model copy; its CPU threads follow [`crate::util::threads`].

use crate::util::retry::Backoff;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::serve::backend::batch::{Admit, Batch, Limits};
use crate::serve::backend::jobs::{Event, Job, Readiness};
use crate::serve::backend::served::Served;
use crate::util::metrics::METRICS;
use lorastream_ml::runtime::threads::{self, Work};

/// How long an idle worker without a model first waits before loading
/// again; the wait doubles after each failure, up to a minute.
const RELOAD: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));

pub(super) fn run(config: Arc<Config>, rx: Receiver<Job>, ready: watch::Sender<Readiness>) {
    threads::apply(Work::Serve);
    let (mut served, mut batch) = load(&config, &ready);
    let mut waiting: VecDeque<Job> = VecDeque::new();
    // Held while sequences run: learning work shrinks to its share meanwhile.
    let mut busy: Option<threads::Busy> = None;
    let mut failures = 0;
    loop {
        if batch.is_empty() {
            busy = None;
        }
        if batch.is_empty() && waiting.is_empty() {
            match rx.recv_timeout(RELOAD.delay(failures + 1)) {
                Ok(job) => take(&mut waiting, job),
                Err(RecvTimeoutError::Timeout) => {
                    if served.is_none() {
                        (served, batch) = load(&config, &ready);
                        failures = if served.is_some() { 0 } else { failures + 1 };
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if served.is_none() {
            (served, batch) = load(&config, &ready);
        }
        let Some(s) = served.as_mut() else {
            // No model: every waiting job hears why at once.
            let why = match &*ready.borrow() {
                Readiness::Failed(e) => e.clone(),
                _ => "the model is not loaded".into(),
            };
            for job in waiting
                .drain(..)
                .chain(rx.try_iter().inspect(|_| METRICS.queue_depth.dec()))
            {
                let _ = job.events.try_send(Event::Failed(
                    crate::serve::backend::jobs::EngineError::NoModel(why.clone()),
                ));
            }
            continue;
        };
        admit(s, &mut batch, &mut waiting, &rx);
        if !batch.is_empty() && busy.is_none() {
            busy = Some(threads::busy(Work::Serve));
        }
        threads::apply(Work::Serve);
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch.step(s)));
        match stepped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "generation step failed");
                batch.fail_all(&format!("generation failed: {e}"));
            }
            Err(_) => {
                tracing::error!("the generation worker panicked; reloading the model");
                batch.fail_all("the generation worker panicked");
                served = None;
            }
        }
    }
}

fn take(waiting: &mut VecDeque<Job>, job: Job) {
    METRICS.queue_depth.dec();
    if !job.events.is_closed() {
        waiting.push_back(job);
    }
}

/// Moves jobs from the queue into the batch while there is room, in order:
/// a job that does not fit waits at the head (and the queue behind it
/// fills, then answers 429). A job on another base waits until the batch
/// is empty, then the base is swapped.
fn admit(s: &mut Served, batch: &mut Batch, waiting: &mut VecDeque<Job>, rx: &Receiver<Job>) {
    loop {
        if waiting.is_empty() {
            match rx.try_recv() {
                Ok(job) => take(waiting, job),
                Err(_) => return,
            }
            continue;
        }
        let Some(job) = waiting.pop_front() else {
            return;
        };
        if job.events.is_closed() {
            continue;
        }
        let base = s.base_of(&job.version);
        if base != s.base {
            if !batch.is_empty() {
                waiting.push_front(job);
                return;
            }
            batch.drop_pool();
            if let Err(e) = s.switch_base(base) {
                let _ = job.events.try_send(Event::Failed(e));
                continue;
            }
        }
        match batch.admit(s, job) {
            Ok(Admit::Joined) => {}
            Ok(Admit::Wait(job)) => {
                waiting.push_front(*job);
                return;
            }
            Err(rejected) => {
                let (job, e) = *rejected;
                tracing::warn!(error = %e, version = %job.version.label, "chat request failed");
                let _ = job.events.try_send(Event::Failed(e));
            }
        }
    }
}

/// Loads the base model, saying so on `ready`, and an empty batch bounded
/// for it.
fn load(config: &Config, ready: &watch::Sender<Readiness>) -> (Option<Served>, Batch) {
    let served = load_model(config, ready);
    let batch = Batch::new(limits(config, served.as_ref()));
    (served, batch)
}

fn load_model(config: &Config, ready: &watch::Sender<Readiness>) -> Option<Served> {
    ready.send_replace(Readiness::Loading);
    let t0 = std::time::Instant::now();
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Served::load(config)))
        .unwrap_or_else(|_| {
            Err(crate::serve::backend::jobs::EngineError::NoModel(
                "libtorch failed while loading the model (see the log); trying again".into(),
            ))
        });
    match loaded {
        Ok(s) => {
            tracing::info!(
                seconds = t0.elapsed().as_secs_f64(),
                device = ?s.model.device,
                kind = ?s.model.kind,
                "serving model loaded"
            );
            ready.send_replace(Readiness::Ready(Arc::new(s.info())));
            Some(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no model to serve yet; will try again");
            ready.send_replace(Readiness::Failed(e.to_string()));
            None
        }
    }
}

/// The batch's bounds from `[server]`, the KV budget sized from the model
/// when `kv_cache_mb` is 0.
fn limits(config: &Config, served: Option<&Served>) -> Limits {
    let s = &config.server;
    let kv_bytes = if s.kv_cache_mb > 0 {
        s.kv_cache_mb as i64 * (1 << 20)
    } else {
        served.map_or(1 << 30, |m| auto_kv_bytes(&m.model, s.max_batch))
    };
    Limits {
        max_batch: s.max_batch.max(1),
        kv_bytes,
        prefill_chunk: s.prefill_chunk.max(1),
        send_timeout: Duration::from_secs(s.send_timeout_secs),
    }
}

/// Room for `max_batch` sequences of up to 2048 positions (or the context).
fn auto_kv_bytes(m: &lorastream_ml::CausalLm, max_batch: usize) -> i64 {
    let positions = m.config.max_position_embeddings.min(2048) as i64;
    m.kv_bytes_per_token() * positions * max_batch.max(1) as i64
}
