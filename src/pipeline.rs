//! The learning stages over the store: train the next stream into a candidate
//! adapter, and fill the evaluation matrix. The CLI calls these directly; the
//! daemon's actors call them from their threads.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use crate::config::{Config, TrainStrategy};
use crate::eval::{self, Matrix};
use crate::ml::data::Labels;
use crate::ml::{CausalLm, ChatTokenizer, Message, MlError};
use crate::store::{
    AdapterRow, AdapterState, EvalRow, NewAdapter, Split, Store, StoreError, StreamRow, StreamState,
};
use crate::streams::{self, StreamError};
use crate::train::{self, Progress, TrainError, TrainJob, TrainSpec};

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
    #[error("no stream waits for training")]
    NothingToTrain,
    #[error("stream {0} does not exist")]
    NoSuchStream(i64),
    #[error("base model {} not found: set [model] source (hub:ORG/NAME, path:DIR or gguf:FILE)", .0.display())]
    NoModel(PathBuf),
    #[error("base model: {0}")]
    Source(#[from] crate::model_source::ModelSourceError),
}

/// The base model and tokenizer `[model]` names, on its device and dtype.
pub fn load_base(config: &Config) -> Result<(CausalLm, ChatTokenizer), PipelineError> {
    let dir = crate::model_source::model_dir(config)?;
    if !dir.join("config.json").exists() {
        return Err(PipelineError::NoModel(dir));
    }
    let (device, kind) = crate::ml::device::select(&config.model.device, config.model.dtype)
        .map_err(MlError::from)?;
    crate::ml::device::set_threads(config.model.threads);
    let model = CausalLm::load(&dir, device, kind)?;
    let tok = ChatTokenizer::load(&dir, config.model.chat_template.as_deref())?;
    Ok((model, tok))
}

/// Whether `a` was trained on a base with its ancestors merged in (`merge_each`).
fn merges_ancestors(a: &AdapterRow) -> bool {
    a.hyperparams["strategy"] == "merge_each"
}

/// The ancestors of `a` (root first), following `parent_id`.
fn ancestors(all: &[AdapterRow], a: &AdapterRow) -> Vec<AdapterRow> {
    let mut chain = Vec::new();
    let mut next = a.parent_id;
    while let Some(id) = next {
        match all.iter().find(|x| x.id == id) {
            Some(p) if !chain.iter().any(|c: &AdapterRow| c.id == p.id) => {
                next = p.parent_id;
                chain.push(p.clone());
            }
            _ => break,
        }
    }
    chain.reverse();
    chain
}

/// The ancestors to merge into a fresh base before loading `a` (root first):
/// all of them under `merge_each`, none otherwise.
pub fn baked_ancestors(all: &[AdapterRow], a: &AdapterRow) -> Vec<AdapterRow> {
    if merges_ancestors(a) {
        ancestors(all, a)
    } else {
        Vec::new()
    }
}

/// Puts `model` (a freshly loaded base) in the state adapter `a` was trained
/// on: under `merge_each`, every ancestor merged into the weights.
fn bake_ancestors(
    model: &mut CausalLm,
    all: &[AdapterRow],
    a: &AdapterRow,
) -> Result<(), PipelineError> {
    for p in baked_ancestors(all, a) {
        model.load_adapter(&p.path)?;
        model.bake_lora();
    }
    Ok(())
}

fn split_of(stream: &StreamRow, split: Split) -> Result<Vec<Vec<Message>>, PipelineError> {
    Ok(streams::load_split(&stream.path, split)?)
}

/// What a finished training run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trained {
    pub adapter_id: i64,
    pub stream_id: i64,
    pub outcome: train::TrainOutcome,
}

impl std::fmt::Display for Trained {
    /// `stream 1 -> adapter v2 (candidate): 60 steps, loss 6.1 -> 5.2, 900 tokens/s`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.outcome;
        write!(
            f,
            "stream {} -> adapter v{} (candidate): {} steps",
            self.stream_id, self.adapter_id, o.steps
        )?;
        if o.resumed_from > 0 {
            write!(f, " (resumed at {})", o.resumed_from)?;
        }
        write!(
            f,
            ", loss {:.4} -> {:.4}, {:.0} tokens/s",
            o.losses.first().copied().unwrap_or(f32::NAN),
            o.losses.last().copied().unwrap_or(f32::NAN),
            o.tokens_per_s
        )
    }
}

/// Trains `stream_id` (default: the oldest stream not trained yet) into a
/// candidate adapter, continuing from the served adapter. An unfinished run of
/// the same stream resumes from its checkpoint.
pub fn train_stream(
    config: &Config,
    store: &Store,
    stream_id: Option<i64>,
    stop: &AtomicBool,
    progress: impl FnMut(&Progress),
) -> Result<Trained, PipelineError> {
    let all = store.streams()?;
    let stream = match stream_id {
        Some(id) => all
            .iter()
            .find(|s| s.id == id)
            .ok_or(PipelineError::NoSuchStream(id))?,
        None => all
            .iter()
            .find(|s| matches!(s.state, StreamState::Sealed | StreamState::Training))
            .ok_or(PipelineError::NothingToTrain)?,
    };
    let (mut model, tok) = load_base(config)?;
    let adapters = store.adapters()?;
    let unfinished = adapters
        .iter()
        .find(|a| a.stream_id == stream.id && a.state == AdapterState::Training);
    let spec = TrainSpec::from_config(config);
    let merge_each = config.train.strategy == TrainStrategy::MergeEach;
    let mut hyperparams = serde_json::to_value(&spec).map_err(StoreError::Json)?;
    hyperparams["strategy"] = json!(if merge_each { "merge_each" } else { "continue" });
    let adapter_id = match unfinished {
        Some(a) => a.id,
        None => {
            let parent = store.served_adapter()?;
            let attempt = adapters.iter().filter(|a| a.stream_id == stream.id).count() as i64 + 1;
            store.insert_adapter(&NewAdapter {
                parent_id: parent.as_ref().map(|p| p.id),
                stream_id: stream.id,
                attempt,
                path: std::path::Path::new(""),
                hyperparams,
            })?
        }
    };
    let dir = config
        .state_dir()
        .join("adapters")
        .join(adapter_id.to_string());
    store.set_adapter_path(adapter_id, &dir)?;
    let all_adapters = store.adapters()?;
    let this = all_adapters
        .iter()
        .find(|a| a.id == adapter_id)
        .ok_or(StoreError::NotFound {
            what: "adapter",
            id: adapter_id.to_string(),
        })?;
    let parent = this
        .parent_id
        .and_then(|p| all_adapters.iter().find(|a| a.id == p));
    // continue: train the parent's LoRA further; merge_each: merge the lineage
    // into the base and train a fresh LoRA on top.
    bake_ancestors(&mut model, &all_adapters, this)?;
    let init_adapter = if merges_ancestors(this) {
        None
    } else {
        parent.map(|p| p.path.clone())
    };
    if stream.state != StreamState::Training {
        store.set_stream_state(stream.id, StreamState::Training)?;
    }
    let train_set = split_of(stream, Split::Train)?;
    // Replay pool: a bounded reservoir over earlier streams' train splits.
    let mut earlier = Vec::new();
    for s in all.iter().filter(|s| s.id < stream.id) {
        earlier.extend(split_of(s, Split::Train)?);
    }
    let replay = crate::ml::rng::reservoir(
        earlier,
        config.train.replay_buffer,
        spec.seed ^ stream.id as u64,
    );
    tracing::info!(
        stream = stream.id,
        adapter = adapter_id,
        parent = parent.map(|p| p.id),
        examples = train_set.len(),
        replay = replay.len(),
        "training stream"
    );
    let result = train::train(
        TrainJob {
            model: &mut model,
            tok: &tok,
            train: &train_set,
            replay: if spec.replay_fraction > 0.0 {
                &replay
            } else {
                &[]
            },
            init_adapter: init_adapter.as_deref(),
            out_dir: &dir,
            spec: &spec,
        },
        stop,
        progress,
    );
    match result {
        Ok(outcome) => {
            store.set_adapter_train_log(
                adapter_id,
                &json!({"loss": outcome.losses, "steps": outcome.steps, "tokens": outcome.tokens,
                        "seconds": outcome.seconds, "tokens_per_s": outcome.tokens_per_s,
                        "resumed_from": outcome.resumed_from}),
            )?;
            store.set_adapter_state(adapter_id, AdapterState::Candidate, None)?;
            store.set_stream_state(stream.id, StreamState::Trained)?;
            Ok(Trained {
                adapter_id,
                stream_id: stream.id,
                outcome,
            })
        }
        Err(TrainError::Stopped(step)) => Err(TrainError::Stopped(step).into()),
        Err(e) => {
            store.set_adapter_state(
                adapter_id,
                AdapterState::Failed,
                Some(&json!({"error": e.to_string()})),
            )?;
            store.set_stream_state(stream.id, StreamState::Failed)?;
            Err(e.into())
        }
    }
}

/// The versions that are rows of the matrix: the base (0), then every adapter
/// that finished training, with the stream it was trained on.
fn matrix_rows(adapters: &[AdapterRow]) -> Vec<(i64, Option<i64>, Option<&AdapterRow>)> {
    let mut rows: Vec<(i64, Option<i64>, Option<&AdapterRow>)> = vec![(0, None, None)];
    rows.extend(
        adapters
            .iter()
            .filter(|a| !matches!(a.state, AdapterState::Training | AdapterState::Failed))
            .map(|a| (a.id, Some(a.stream_id), Some(a))),
    );
    rows
}

/// The matrix as stored, without evaluating anything (the web page, metrics).
pub fn stored_matrix(store: &Store) -> Result<Matrix, StoreError> {
    let adapters = store.adapters()?;
    let rows: Vec<(i64, Option<i64>)> = matrix_rows(&adapters)
        .iter()
        .map(|(v, t, _)| (*v, *t))
        .collect();
    Ok(eval::matrix(&store.evals()?, &rows))
}

/// Fills every missing cell R[version][stream] (streams up to the version's
/// own, all streams for the base model, the probe set for every row) and
/// returns the matrix. The base model is loaded once.
pub fn evaluate(config: &Config, store: &Store) -> Result<Matrix, PipelineError> {
    let streams = store.streams()?;
    let all_adapters = store.adapters()?;
    let versions = matrix_rows(&all_adapters);
    let have = store.evals()?;
    let probe = match &config.eval.probe_set {
        Some(p) => Some(streams::read_jsonl(p, config.eval.max_examples_per_stream)?),
        None => None,
    };
    let limit = |mut v: Vec<Vec<Message>>| {
        if config.eval.max_examples_per_stream > 0 {
            v.truncate(config.eval.max_examples_per_stream);
        }
        v
    };
    // The served version is also measured on later streams: the feedback
    // compares each new candidate with it there.
    let served = store.served_adapter()?.map(|a| a.id);
    let mut todo: Vec<(i64, Option<&AdapterRow>, i64)> = Vec::new();
    for (v, trained, row) in &versions {
        let mut cols: Vec<i64> = streams
            .iter()
            .filter(|s| (trained.is_none_or(|t| s.id <= t) || Some(*v) == served) && s.n_eval > 0)
            .map(|s| s.id)
            .collect();
        if probe.is_some() {
            cols.push(0);
        }
        for s in cols {
            if !have.iter().any(|c| c.adapter_id == *v && c.stream_id == s) {
                todo.push((*v, *row, s));
            }
        }
    }
    if !todo.is_empty() {
        let (mut model, tok) = load_base(config)?;
        let mut baked = false;
        let mut loaded: Option<i64> = None;
        for (v, row, s) in todo {
            if loaded != Some(v) {
                // The base is loaded once; only merge_each versions change its weights.
                if baked {
                    model = load_base(config)?.0;
                    baked = false;
                }
                match row {
                    Some(a) => {
                        if merges_ancestors(a) && a.parent_id.is_some() {
                            bake_ancestors(&mut model, &all_adapters, a)?;
                            baked = true;
                        }
                        model.load_adapter(&a.path)?;
                    }
                    None => model.clear_lora(),
                }
                loaded = Some(v);
            }
            let examples = if s == 0 {
                probe.clone().unwrap_or_default()
            } else {
                let row = streams
                    .iter()
                    .find(|r| r.id == s)
                    .ok_or(PipelineError::NoSuchStream(s))?;
                limit(split_of(row, Split::Eval)?)
            };
            let p = eval::perplexity(
                &model,
                &tok,
                &examples,
                config.eval.batch_size,
                config.train.seq_len,
                Labels::Assistant,
            )?;
            tracing::info!(
                adapter = v,
                stream = s,
                ppl = p.perplexity,
                tokens = p.tokens,
                "evaluated"
            );
            store.upsert_eval(&EvalRow {
                adapter_id: v,
                stream_id: s,
                perplexity: p.perplexity,
                nll_sum: p.nll_sum,
                tokens: p.tokens,
                evaluated_at: 0,
            })?;
        }
    }
    let rows: Vec<(i64, Option<i64>)> = versions.iter().map(|(v, t, _)| (*v, *t)).collect();
    Ok(eval::matrix(&store.evals()?, &rows))
}
