//! The generation worker: one thread that owns a model copy (the base weights
//! and the LoRA of the version a job asks for), takes jobs from a bounded
//! queue and streams tokens back over a channel. It never runs on an async
//! executor thread and never waits for training, which has its own copy.
//!
//! Jobs run one at a time, so a request in flight finishes on the version it
//! started with; the next job loads the adapter it names (a hot swap costs
//! one adapter load, milliseconds for a LoRA).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tokio::sync::mpsc::Sender;

use crate::config::{Config, OverflowPolicy};
use crate::learn::lineage;
use crate::learn::spec::model_spec;
use lorastream_ml::generate::{FinishReason, SamplingParams, generate};
use lorastream_ml::load::{LoadError, load_base, switch_to};
use lorastream_ml::{CausalLm, ChatTokenizer, Message};
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
    pub messages: Vec<Message>,
    pub params: SamplingParams,
    pub overflow: OverflowPolicy,
    pub events: Sender<Event>,
}

#[derive(Debug)]
pub enum Event {
    /// The prompt fits and generation starts.
    Started {
        prompt_tokens: usize,
        dropped_turns: usize,
    },
    Delta(String),
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

/// The handle requests submit jobs through.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    capacity: usize,
}

impl Engine {
    /// Starts the worker thread; at most `queue` jobs wait behind the running one.
    pub fn start(config: Arc<Config>, queue: usize) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || worker(config, rx))?;
        Ok(Engine {
            tx,
            capacity: queue,
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
}

struct Loaded {
    model: CausalLm,
    tok: ChatTokenizer,
    /// The version whose weights are in place (None: the base model).
    version: Option<i64>,
    /// The model directory the weights came from (base or snapshot).
    base: std::path::PathBuf,
}

fn worker(config: Arc<Config>, rx: Receiver<Job>) {
    let mut loaded: Option<Loaded> = None;
    for job in rx {
        crate::util::metrics::METRICS.queue_depth.dec();
        if !job.events.is_closed() {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&config, &mut loaded, &job)
            }));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => {
                    // The model may be half-modified: load it again next time.
                    loaded = None;
                    Some(EngineError::Generation(
                        "the generation worker panicked".into(),
                    ))
                }
            };
            if let Some(e) = failure {
                tracing::warn!(error = %e, version = %job.version.label, "chat request failed");
                let _ = job.events.try_send(Event::Failed(e));
            }
        }
    }
}

/// Puts the weights of `v` in place, loading the base when needed.
fn prepare<'a>(
    config: &Config,
    slot: &'a mut Option<Loaded>,
    v: &VersionRef,
) -> Result<&'a mut Loaded, EngineError> {
    let no_model = |e: LoadError| EngineError::NoModel(e.to_string());
    let spec = model_spec(config);
    let model_dir =
        lorastream_ml::source::model_dir(&spec.base).map_err(|e| no_model(LoadError::Source(e)))?;
    let l = match slot.take() {
        Some(l) => l,
        None => {
            let (mut model, tok) = load_base(&spec).map_err(no_model)?;
            set_decode_kind(config, &mut model);
            Loaded {
                model,
                tok,
                version: None,
                base: model_dir.clone(),
            }
        }
    };
    let l = slot.insert(l);
    let want = v.adapter.as_ref().map(|a| a.id);
    let want_base = v.base.clone().unwrap_or(model_dir);
    if l.version != want || l.base != want_base {
        l.version = None;
        l.model.set_decode_kind(None);
        switch_to(
            &spec,
            &mut l.model,
            &mut l.base,
            &want_base,
            v.adapter.as_ref().and_then(lineage::adapter_path),
        )
        .map_err(|e| EngineError::NoModel(format!("{}: {e}", v.label)))?;
        // Serving never pays for LoRA at run time: the adapter is folded into
        // this copy's weights (loading the next version unmerges it first).
        l.model.merge_lora();
        set_decode_kind(config, &mut l.model);
        tracing::info!(version = %v.label, "serving version loaded");
        l.version = want;
    }
    Ok(l)
}

/// bf16 copies for decoding steps where `[server] decode_bf16` asks and they help.
fn set_decode_kind(config: &Config, m: &mut CausalLm) {
    m.set_decode_kind(lorastream_ml::device::decode_kind(
        m.device,
        m.kind,
        config.server.decode_bf16,
    ));
}

fn run(config: &Config, slot: &mut Option<Loaded>, job: &Job) -> Result<(), EngineError> {
    let l = prepare(config, slot, &job.version)?;
    let context = l.model.config.max_position_embeddings;
    let reserve = job.params.max_new_tokens.clamp(1, (context / 2).max(1));
    let (prompt, dropped_turns) =
        super::prompt::fit(&l.tok, &job.messages, context - reserve, job.overflow)
            .map_err(EngineError::Prompt)?;
    let out = Outbox {
        events: &job.events,
        timeout: std::time::Duration::from_secs(config.server.send_timeout_secs),
    };
    if out
        .send(Event::Started {
            prompt_tokens: prompt.len(),
            dropped_turns,
        })
        .is_err()
    {
        return Ok(()); // the client left
    }
    let mut streamed = String::new();
    let g = generate(&l.model, &l.tok, &prompt, &job.params, |_, delta| {
        crate::util::metrics::METRICS.chat_tokens.inc();
        // A client that hung up (or stopped reading) ends its generation here,
        // within one decoding step.
        if job.events.is_closed() {
            return std::ops::ControlFlow::Break(());
        }
        if delta.is_empty() {
            return std::ops::ControlFlow::Continue(());
        }
        streamed.push_str(delta);
        match out.send(Event::Delta(delta.to_string())) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(()) => std::ops::ControlFlow::Break(()),
        }
    })
    .map_err(|e| EngineError::Generation(e.to_string()))?;
    // Text held back at the end (a possible stop string, a partial character).
    if let Some(rest) = g.text.strip_prefix(streamed.as_str())
        && !rest.is_empty()
    {
        let _ = out.send(Event::Delta(rest.to_string()));
    }
    if g.finish == FinishReason::Cancelled {
        tracing::info!(version = %job.version.label, tokens = g.ids.len(), "client went away; generation stopped");
    }
    let _ = out.send(Event::Done {
        finish: g.finish,
        completion_tokens: g.ids.len(),
    });
    Ok(())
}

/// A job's events, sent without ever blocking the worker for long: a client
/// that has not taken an event for `timeout` is dropped (its generation ends).
struct Outbox<'a> {
    events: &'a Sender<Event>,
    timeout: std::time::Duration,
}

impl Outbox<'_> {
    fn send(&self, mut event: Event) -> Result<(), ()> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.events.try_send(event) {
                Ok(()) => return Ok(()),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(()),
                Err(tokio::sync::mpsc::error::TrySendError::Full(e)) => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!(
                            timeout_secs = self.timeout.as_secs(),
                            "a client stopped reading its stream; dropped"
                        );
                        return Err(());
                    }
                    event = e;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let out = Outbox {
            events: &tx,
            timeout: std::time::Duration::from_millis(200),
        };
        assert!(out.send(Event::Delta("a".into())).is_ok());
        let started = std::time::Instant::now();
        assert!(out.send(Event::Delta("b".into())).is_err(), "nobody reads");
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(200),
            "{waited:?}"
        );
        assert!(matches!(rx.try_recv(), Ok(Event::Delta(d)) if d == "a"));
        drop(rx);
        assert!(out.send(Event::Delta("c".into())).is_err(), "gone");
    }
}
