//! The evaluation matrix over the store: which cells each version needs,
//! filling the missing ones (a cell that fails is reported, not fatal), and
//! the probe set.

use std::collections::BTreeMap;

use super::{PipelineError, load_base, split_of, switch_to};
use crate::config::Config;
use crate::eval::{self, Matrix};
use crate::lineage;
use crate::ml::Message;
use crate::ml::data::Labels;
use crate::store::{
    AdapterRow, AdapterState, EvalRow, ItemKind, Split, Store, StoreError, StreamState,
};
use crate::streams;

/// The versions that are rows of the matrix: the base (0), then every adapter
/// that finished training, with the stream it was trained on.
fn matrix_rows(adapters: &[AdapterRow]) -> Vec<(eval::RowKey, Option<&AdapterRow>)> {
    let mut rows = vec![((0, None), None)];
    rows.extend(
        adapters
            .iter()
            .filter(|a| !matches!(a.state, AdapterState::Training | AdapterState::Failed))
            .map(|a| ((a.id, lineage::trained_on(a)), Some(a))),
    );
    rows
}

/// The matrix as stored, without evaluating anything (the web page, metrics,
/// `adapters list`), forgetting measured along the served lineage.
pub fn stored_matrix(store: &Store) -> Result<Matrix, StoreError> {
    let adapters = store.adapters()?;
    let rows: Vec<eval::RowKey> = matrix_rows(&adapters).iter().map(|r| r.0).collect();
    let served = store.served_adapter()?;
    let chain = match &served {
        Some(s) => lineage::row_keys(&lineage::chain(&adapters, s)),
        None => vec![(0, None)],
    };
    Ok(eval::matrix(&store.evals()?, &rows, &chain))
}

/// A cell of the matrix that could not be measured, and what is to blame:
/// the version (its weights would not load) or the stream (its eval split
/// would not read). The daemon counts these per item and sets a poison item
/// aside (see [`crate::store::ItemKind`]); the other cells are still filled.
#[derive(Debug)]
pub struct CellFailure {
    pub version: i64,
    pub stream: i64,
    pub blame: ItemKind,
    pub error: PipelineError,
}

impl CellFailure {
    /// The key of the item blamed, as `item_failures` stores it.
    pub fn key(&self) -> String {
        match self.blame {
            ItemKind::Stream => self.stream.to_string(),
            _ => self.version.to_string(),
        }
    }
}

impl From<CellFailure> for PipelineError {
    fn from(f: CellFailure) -> Self {
        PipelineError::Cell {
            version: f.version,
            stream: f.stream,
            source: Box::new(f.error),
        }
    }
}

/// [`fill_matrix`], failing on the first cell that could not be measured.
pub fn evaluate(config: &Config, store: &Store) -> Result<Matrix, PipelineError> {
    let (matrix, failed) = fill_matrix(config, store)?;
    match failed.into_iter().next() {
        Some(f) => Err(f.into()),
        None => Ok(matrix),
    }
}

/// Fills every missing cell R[version][stream] — streams up to the version's
/// own, every stream for the base model and the served version, the streams
/// up to a candidate's for its parent (the policy compares the two), the probe
/// set for every row — and returns the matrix with the cells that failed.
/// Each base is loaded once; versions set aside and failed streams are skipped.
pub fn fill_matrix(
    config: &Config,
    store: &Store,
) -> Result<(Matrix, Vec<CellFailure>), PipelineError> {
    // Versions set aside (their weights would not load); failed streams are
    // left out by their state below.
    let aside: Vec<String> = store
        .item_failures()?
        .into_iter()
        .filter(|f| f.set_aside && f.kind == ItemKind::Version)
        .map(|f| f.key)
        .collect();
    let streams = store.streams()?;
    let all_adapters = store.adapters()?;
    let versions = matrix_rows(&all_adapters);
    let have = store.evals()?;
    let probe = probe_set(config)?;
    let limit = |mut v: Vec<Vec<Message>>| {
        if config.eval.max_examples_per_stream > 0 {
            v.truncate(config.eval.max_examples_per_stream);
        }
        v
    };
    let served = store.served_adapter()?.map(|a| a.id);
    // Up to which stream each version is measured.
    let mut upto: BTreeMap<i64, i64> = BTreeMap::new();
    for ((v, _), row) in &versions {
        let v = *v;
        let own = match row {
            Some(a) if Some(v) != served => a.stream_id,
            _ => i64::MAX,
        };
        let e = upto.entry(v).or_insert(own);
        *e = (*e).max(own);
        if let Some(a) = row.filter(|a| a.state == AdapterState::Candidate) {
            let p = upto.entry(a.parent_id.unwrap_or(0)).or_insert(a.stream_id);
            *p = (*p).max(a.stream_id);
        }
    }
    let mut todo: Vec<(i64, Option<&AdapterRow>, i64)> = Vec::new();
    for ((v, _), row) in &versions {
        if aside.contains(&v.to_string()) {
            continue;
        }
        let mut cols: Vec<i64> = streams
            .iter()
            .filter(|s| s.id <= upto[v] && s.n_eval > 0 && s.state != StreamState::Failed)
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
    let mut failed = Vec::new();
    if !todo.is_empty() {
        let (mut model, tok) = load_base(config)?;
        let mut base = crate::model_source::model_dir(config)?;
        let mut loaded: Option<i64> = None;
        for (v, row, s) in todo {
            let fail = |blame, error| CellFailure {
                version: v,
                stream: s,
                blame,
                error,
            };
            if failed
                .iter()
                .any(|f: &CellFailure| f.blame == ItemKind::Version && f.version == v)
            {
                continue;
            }
            if loaded != Some(v) {
                loaded = None;
                let switched = lineage::base_dir(config, &all_adapters, row)
                    .map_err(PipelineError::from)
                    .and_then(|want| switch_to(config, &mut model, &mut base, &want, row));
                if let Err(e) = switched {
                    failed.push(fail(ItemKind::Version, e));
                    continue;
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
                match split_of(row, Split::Eval) {
                    Ok(ex) => limit(ex),
                    Err(e) => {
                        failed.push(fail(ItemKind::Stream, e));
                        continue;
                    }
                }
            };
            let p = match eval::perplexity(
                &model,
                &tok,
                &examples,
                config.eval.batch_size,
                config.train.seq_len,
                Labels::Assistant,
            ) {
                Ok(p) => p,
                Err(e) => {
                    failed.push(fail(ItemKind::Version, e.into()));
                    continue;
                }
            };
            tracing::info!(
                adapter = v,
                stream = s,
                ppl = p.perplexity,
                tokens = p.tokens,
                "evaluated"
            );
            store.stage_progress("evaluator")?;
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
    Ok((stored_matrix(store)?, failed))
}

/// The probe set's examples: `[eval] probe_set`, else the built-in one;
/// `None` with `[eval] probe = false`.
pub fn probe_set(config: &Config) -> Result<Option<Vec<Vec<Message>>>, PipelineError> {
    if !config.eval.probe {
        return Ok(None);
    }
    Ok(Some(match &config.eval.probe_set {
        Some(p) => streams::read_jsonl(p, config.eval.max_examples_per_stream)?,
        None => crate::eval::builtin_probe(),
    }))
}
