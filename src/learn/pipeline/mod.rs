//! The learning stages over the store: train the next stream into a candidate
//! adapter, fill the evaluation matrix, and `learn` (train → evaluate →
//! decide, again while the policy asks for another attempt). The CLI calls
//! these directly; the daemon's actors call them from their threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::json;

use crate::data::streams::{self, StreamError};
use crate::learn::lineage::{self, MergeError};
use crate::learn::policy::{Action, Attempt, Decision, PolicyError};
use crate::learn::records::{self, Hyperparams, Outcome};
use crate::learn::replay;
use crate::learn::spec::LearnSpec;
use lorastream_ml::load::{LoadError, load_tokenizer, load_weights};
use lorastream_ml::train::{self as train, Progress, TrainError, TrainJob, TrainSpec};
use lorastream_ml::{Message, MlError};
use lorastream_store::{
    Actor, AdapterKind, AdapterRow, AdapterState, NewAdapter, Split, Store, StoreError, StreamRow,
    StreamState,
};

use crate::learn::matrix::fill::{MatrixError, evaluate};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Ml(#[from] MlError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("no stream waits for training")]
    NothingToTrain,
    #[error("stream {0} does not exist")]
    NoSuchStream(i64),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("base model: {0}")]
    Source(#[from] lorastream_ml::load::source::ModelSourceError),
    #[error(transparent)]
    Matrix(#[from] MatrixError),
}

fn split_of(stream: &StreamRow, split: Split) -> Result<Vec<Vec<Message>>, PipelineError> {
    Ok(streams::load_split(&stream.path, split)?)
}

/// What a finished training run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trained {
    pub adapter_id: i64,
    pub stream_id: i64,
    pub attempt: Attempt,
    pub outcome: train::TrainOutcome,
}

impl std::fmt::Display for Trained {
    /// `stream 1 -> adapter v2 (candidate, attempt 1): 60 steps, loss 6.1 -> 5.2, 900 tokens/s`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.outcome;
        write!(
            f,
            "stream {} -> adapter v{} (candidate, attempt {}): {} steps",
            self.stream_id, self.adapter_id, self.attempt.number, o.steps
        )?;
        if o.resumed_from > 0 {
            write!(f, " (resumed at {})", o.resumed_from)?;
        }
        if o.stopped_early {
            write!(f, " (stopped early of {})", o.total_steps)?;
        }
        write!(
            f,
            ", loss {:.4} -> {:.4}, {:.0} tokens/s",
            o.losses.first().copied().unwrap_or(f32::NAN),
            o.losses.last().copied().unwrap_or(f32::NAN),
            o.tokens_per_s
        )?;
        if let Some(b) = o.best_step {
            write!(f, ", kept step {b}")?;
        }
        Ok(())
    }
}

/// The validation slice of a train split: the last `validation_fraction` of
/// it (the split is in hash order already), at least 2 examples, and only when
/// at least 4 remain to train on.
fn validation_slice(
    train: Vec<Vec<Message>>,
    fraction: f64,
) -> (Vec<Vec<Message>>, Vec<Vec<Message>>) {
    let n = ((train.len() as f64 * fraction).round() as usize).max(2);
    if fraction <= 0.0 || train.len() < n + 4 {
        return (train, Vec::new());
    }
    let mut train = train;
    let val = train.split_off(train.len() - n);
    (train, val)
}

/// The forgetting the latest decision measured per stream (replay weights).
fn recent_forgetting(adapters: &[AdapterRow]) -> BTreeMap<i64, f64> {
    adapters
        .iter()
        .rev()
        .find_map(|a| Some(records::outcome(a)?.decision()?.forgetting.clone()))
        .unwrap_or_default()
}

/// Trains `stream_id` (default: the oldest stream not trained yet) into a
/// candidate adapter, continuing from the served adapter. An unfinished run of
/// the same stream resumes from its checkpoint.
pub fn train_stream(
    spec: &LearnSpec,
    store: &Store,
    stream_id: Option<i64>,
    by: Actor,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Trained, PipelineError> {
    let all = store.streams()?;
    let stream = pick_stream(&all, stream_id)?;
    let run = open_attempt(spec, store, stream, by)?;
    let adapters = store.adapters()?;
    let this = adapters
        .iter()
        .find(|a| a.id == run.adapter_id)
        .ok_or(StoreError::NotFound {
            what: "adapter",
            id: run.adapter_id.to_string(),
        })?;
    let parent = this
        .parent_id
        .and_then(|p| adapters.iter().find(|a| a.id == p));
    // The parent's base (the model or its merge snapshot); training continues
    // the parent's LoRA, or starts a fresh one on a snapshot.
    let base = lineage::base_dir(&spec.model.base, &adapters, parent)?;
    let mut model = load_weights(&spec.model, &base)?;
    let tok = load_tokenizer(&spec.model)?;
    let init_adapter = parent
        .filter(|p| p.kind == AdapterKind::Lora)
        .map(|p| p.path.clone());
    if stream.state != StreamState::Training {
        store.set_stream_state(stream.id, StreamState::Training)?;
    }
    let (train_set, validation) =
        validation_slice(split_of(stream, Split::Train)?, spec.validation_fraction);
    let earlier: Vec<StreamRow> = all.iter().filter(|s| s.id < stream.id).cloned().collect();
    let replay = if run.spec.replay_fraction > 0.0 {
        let seed = run.spec.seed ^ stream.id as u64;
        replay::pool(&spec.replay, &earlier, &recent_forgetting(&adapters), seed)
    } else {
        replay::Pool::default()
    };
    tracing::info!(
        stream = stream.id,
        adapter = run.adapter_id,
        attempt = run.attempt.number,
        parent = parent.map(|p| p.id),
        examples = train_set.len(),
        validation = validation.len(),
        replay = replay.examples.len(),
        replay_by_stream = ?replay.drawn,
        replay_fraction = run.spec.replay_fraction,
        lr = run.spec.lr,
        "training stream"
    );
    let job = TrainJob {
        model: &mut model,
        tok: &tok,
        train: &train_set,
        validation: &validation,
        replay: &replay.examples,
        init_adapter: init_adapter.as_deref(),
        out_dir: &run.dir,
        spec: &run.spec,
    };
    let result = train::train(job, stop, |p: &Progress| {
        record_progress(p);
        progress(p)
    });
    settle(store, stream, &run, &replay.drawn, by, result)
}

/// The stream to train: `id`, else the oldest sealed one (or one whose
/// training was interrupted).
fn pick_stream(all: &[StreamRow], id: Option<i64>) -> Result<&StreamRow, PipelineError> {
    match id {
        Some(id) => all
            .iter()
            .find(|s| s.id == id)
            .ok_or(PipelineError::NoSuchStream(id)),
        None => all
            .iter()
            .find(|s| matches!(s.state, StreamState::Sealed | StreamState::Training))
            .ok_or(PipelineError::NothingToTrain),
    }
}

/// A training attempt with its version row and directory.
struct Run {
    adapter_id: i64,
    attempt: Attempt,
    spec: TrainSpec,
    dir: PathBuf,
}

/// The attempt at `stream` to run now: an unfinished one (resumed from its
/// checkpoint) or the next, recorded as a `training` version of the served
/// parent. Merges the served lineage first when `[feedback] merge` says so.
fn open_attempt(
    spec: &LearnSpec,
    store: &Store,
    stream: &StreamRow,
    by: Actor,
) -> Result<Run, PipelineError> {
    let mut adapters = store.adapters()?;
    if lineage::merge_due(
        &spec.policy.feedback,
        &adapters,
        store.served_adapter()?.as_ref(),
    ) {
        lineage::merge(spec, store, by, "merge = every_n_streams")?;
        adapters = store.adapters()?;
    }
    let unfinished = adapters
        .iter()
        .find(|a| a.stream_id == stream.id && a.state == AdapterState::Training);
    let number = match unfinished {
        Some(a) => a.attempt,
        None => {
            adapters
                .iter()
                .filter(|a| a.stream_id == stream.id && a.kind == AdapterKind::Lora)
                .count() as i64
                + 1
        }
    };
    // The repair the last decision on this stream chose (its cause's), or
    // the attempt's defaults.
    let decided = adapters
        .iter()
        .filter(|a| a.stream_id == stream.id && a.attempt == number - 1)
        .filter_map(|a| crate::learn::records::outcome(a)?.decision()?.next)
        .next_back();
    let attempt = decided
        .filter(|n| n.number == number)
        .unwrap_or_else(|| Attempt::nth(&spec.policy, number));
    let train = attempt.apply(spec.train.clone());
    let adapter_id = match unfinished {
        Some(a) => a.id,
        None => {
            let parent = store.served_adapter()?;
            store.insert_adapter(&NewAdapter {
                parent_id: parent.as_ref().map(|p| p.id),
                stream_id: stream.id,
                attempt: number,
                kind: AdapterKind::Lora,
                path: Path::new(""),
                hyperparams: serde_json::to_value(Hyperparams::Lora(train.clone()))
                    .map_err(StoreError::Json)?,
            })?
        }
    };
    let dir = spec.state_dir.join("adapters").join(adapter_id.to_string());
    store.set_adapter_path(adapter_id, &dir)?;
    Ok(Run {
        adapter_id,
        attempt,
        spec: train,
        dir,
    })
}

/// Records how the run ended: a candidate, or a failed version and stream
/// (a stopped run stays `training`, to resume).
fn settle(
    store: &Store,
    stream: &StreamRow,
    run: &Run,
    replay: &BTreeMap<i64, usize>,
    by: Actor,
    result: Result<train::TrainOutcome, TrainError>,
) -> Result<Trained, PipelineError> {
    let adapter_id = run.adapter_id;
    match result {
        Ok(outcome) => {
            store.set_adapter_train_log(
                adapter_id,
                &json!({"loss": outcome.losses, "steps": outcome.steps, "total_steps": outcome.total_steps,
                        "tokens": outcome.tokens, "seconds": outcome.seconds, "tokens_per_s": outcome.tokens_per_s,
                        "resumed_from": outcome.resumed_from, "validation": outcome.validations,
                        "best_step": outcome.best_step, "stopped_early": outcome.stopped_early,
                        "skipped_steps": outcome.skipped_steps, "replay": replay}),
            )?;
            store.set_adapter_state(adapter_id, AdapterState::Candidate, None, by, "trained")?;
            store.set_stream_state(stream.id, StreamState::Trained)?;
            Ok(Trained {
                adapter_id,
                stream_id: stream.id,
                attempt: run.attempt,
                outcome,
            })
        }
        Err(TrainError::Stopped(step)) => Err(TrainError::Stopped(step).into()),
        Err(e) => {
            store.set_adapter_state(
                adapter_id,
                AdapterState::Failed,
                Some(&json!(Outcome::Failed {
                    error: e.to_string()
                })),
                by,
                &e.to_string(),
            )?;
            store.set_stream_state(stream.id, StreamState::Failed)?;
            Err(e.into())
        }
    }
}

/// A candidate an earlier run trained but did not decide (`train`, or a
/// `learn` stopped between training and its decision): evaluated and
/// decided now, before anything else is trained. Its (version, stream,
/// decision), if there was one.
pub fn decide_pending(
    spec: &LearnSpec,
    store: &Store,
    by: Actor,
) -> Result<Option<(i64, i64, Decision)>, PipelineError> {
    let adapters = store.adapters()?;
    let Some(c) = adapters.iter().find(|a| a.state == AdapterState::Candidate) else {
        return Ok(None);
    };
    evaluate(spec, store)?;
    let d = crate::learn::policy::decide_stored(&spec.policy, store, c.id, by)?;
    Ok(d.map(|d| (c.id, c.stream_id, d)))
}

/// One stream learned as the policy wants it: train, evaluate, decide, and
/// again while the decision is `retrain`. Returns every attempt with its decision.
pub fn learn(
    spec: &LearnSpec,
    store: &Store,
    stream_id: Option<i64>,
    by: Actor,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Vec<(Trained, Decision)>, PipelineError> {
    let mut out = Vec::new();
    let mut stream = stream_id;
    loop {
        let t = train_stream(spec, store, stream, by, stop, &mut progress)?;
        evaluate(spec, store)?;
        let Some(d) = crate::learn::policy::decide_stored(&spec.policy, store, t.adapter_id, by)?
        else {
            break;
        };
        stream = Some(t.stream_id);
        let again = d.action == Action::Retrain;
        out.push((t, d));
        if !again {
            break;
        }
    }
    Ok(out)
}

/// A training step in `/metrics`: steps taken, the last loss and throughput.
fn record_progress(p: &Progress) {
    let m = &crate::util::metrics::METRICS;
    m.train_steps.inc();
    crate::util::metrics::set_finite(&m.train_loss, f64::from(p.loss));
    crate::util::metrics::set_finite(&m.train_tokens_per_s, p.tokens_per_s);
}
