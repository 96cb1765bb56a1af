//! The evaluation matrix over the store: which cells each version needs,
//! filling the missing ones (a cell that fails is reported, not fatal), and
//! the probe set.

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::data::streams;
use crate::data::streams::StreamError;
use crate::learn::lineage;
use crate::learn::lineage::MergeError;
use crate::learn::matrix::{self as eval, Matrix};
use crate::learn::spec::LearnSpec;
use lorastream_ml::load::{load_base, switch_to};
use lorastream_ml::train::data::Labels;
use lorastream_ml::{CausalLm, ChatTokenizer, Message};
use lorastream_store::{
    AdapterRow, AdapterState, EvalRow, ItemKind, Split, Store, StoreError, StreamRow, StreamState,
};

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
/// aside (see [`lorastream_store::ItemKind`]); the other cells are still filled.
#[derive(Debug)]
pub struct CellFailure {
    pub version: i64,
    pub stream: i64,
    pub blame: ItemKind,
    pub error: MatrixError,
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

/// Why the matrix could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Ml(#[from] lorastream_ml::MlError),
    #[error(transparent)]
    Load(#[from] lorastream_ml::load::LoadError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("base model: {0}")]
    Source(#[from] lorastream_ml::load::source::ModelSourceError),
    #[error("stream {0} does not exist")]
    NoSuchStream(i64),
    #[error("evaluating version {version} on stream {stream}: {source}")]
    Cell {
        version: i64,
        stream: i64,
        source: Box<MatrixError>,
    },
}

impl From<CellFailure> for MatrixError {
    fn from(f: CellFailure) -> Self {
        MatrixError::Cell {
            version: f.version,
            stream: f.stream,
            source: Box::new(f.error),
        }
    }
}

/// [`fill_matrix`], failing on the first cell that could not be measured.
pub fn evaluate(spec: &LearnSpec, store: &Store) -> Result<Matrix, MatrixError> {
    let (matrix, failed) = fill_matrix(spec, store)?;
    match failed.into_iter().next() {
        Some(f) => Err(f.into()),
        None => Ok(matrix),
    }
}

/// A cell to measure: (version, its row, stream; 0 = the probe set).
type Cell<'a> = (i64, Option<&'a AdapterRow>, i64);

/// Fills every missing cell R\[version\]\[stream\] — streams up to the version's
/// own, every stream for the base model and the served version, the streams
/// up to a candidate's for its parent (the policy compares the two), the probe
/// set for every row — and returns the matrix with the cells that failed.
/// Each base is loaded once; versions set aside and failed streams are skipped.
pub fn fill_matrix(
    spec: &LearnSpec,
    store: &Store,
) -> Result<(Matrix, Vec<CellFailure>), MatrixError> {
    let streams = store.streams()?;
    let all_adapters = store.adapters()?;
    let probe = probe_set(&spec.eval)?;
    let todo = missing_cells(store, &all_adapters, &streams, probe.is_some())?;
    let mut failed = Vec::new();
    if !todo.is_empty() {
        let mut m = Measurer::start(spec, &all_adapters, probe)?;
        m.budgets = budgets(&spec.eval, &streams);
        for cell in todo {
            if let Some(f) = m.measure(store, &streams, cell)? {
                failed.push(f);
            }
        }
    }
    Ok((stored_matrix(store)?, failed))
}

/// Target tokens each stream is measured on: the newest whole; each older
/// one `eval_tokens_per_stream`, or its share of `eval_tokens_old_streams`
/// when that is less (0: whole).
fn budgets(e: &EvalConfig, streams: &[StreamRow]) -> BTreeMap<i64, usize> {
    let live: Vec<i64> = streams
        .iter()
        .filter(|s| s.n_eval > 0 && s.state != StreamState::Failed)
        .map(|s| s.id)
        .collect();
    let newest = live.iter().max().copied();
    let old = live.len().saturating_sub(1).max(1);
    let share = match e.eval_tokens_old_streams {
        0 => usize::MAX,
        total => (total / old).max(1),
    };
    let per = match e.eval_tokens_per_stream {
        0 => usize::MAX,
        n => n,
    };
    live.into_iter()
        .map(|s| {
            let b = if Some(s) == newest { 0 } else { per.min(share) };
            (s, if b == usize::MAX { 0 } else { b })
        })
        .collect()
}

/// The cells the matrix lacks, versions set aside and failed streams left out.
fn missing_cells<'a>(
    store: &Store,
    adapters: &'a [AdapterRow],
    streams: &[StreamRow],
    probe: bool,
) -> Result<Vec<Cell<'a>>, MatrixError> {
    let aside: Vec<String> = store
        .item_failures()?
        .into_iter()
        .filter(|f| f.set_aside && f.kind == ItemKind::Version)
        .map(|f| f.key)
        .collect();
    let have = store.evals()?;
    let versions = matrix_rows(adapters);
    let upto = measured_upto(&versions, store.served_adapter()?.map(|a| a.id));
    let mut todo = Vec::new();
    for ((v, _), row) in &versions {
        if aside.contains(&v.to_string()) {
            continue;
        }
        let mut cols: Vec<i64> = streams
            .iter()
            .filter(|s| s.id <= upto[v] && s.n_eval > 0 && s.state != StreamState::Failed)
            .map(|s| s.id)
            .collect();
        if probe {
            cols.push(0);
        }
        for s in cols {
            if !have.iter().any(|c| c.adapter_id == *v && c.stream_id == s) {
                todo.push((*v, *row, s));
            }
        }
    }
    Ok(todo)
}

/// Up to which stream each version is measured: its own (every stream for
/// the base and the served version); a candidate's parent up to the
/// candidate's.
fn measured_upto(
    versions: &[(eval::RowKey, Option<&AdapterRow>)],
    served: Option<i64>,
) -> BTreeMap<i64, i64> {
    let mut upto: BTreeMap<i64, i64> = BTreeMap::new();
    for ((v, _), row) in versions {
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
    upto
}

/// One model, switched from version to version as the cells need.
struct Measurer<'a> {
    spec: &'a LearnSpec,
    adapters: &'a [AdapterRow],
    probe: Option<Vec<Vec<Message>>>,
    model: CausalLm,
    tok: ChatTokenizer,
    base: std::path::PathBuf,
    loaded: Option<i64>,
    /// Versions whose weights would not load: their other cells are skipped.
    broken: Vec<i64>,
    /// Target tokens per stream (see [`budgets`]; absent or 0: whole).
    budgets: BTreeMap<i64, usize>,
}

impl<'a> Measurer<'a> {
    fn start(
        spec: &'a LearnSpec,
        adapters: &'a [AdapterRow],
        probe: Option<Vec<Vec<Message>>>,
    ) -> Result<Measurer<'a>, MatrixError> {
        let (model, tok) = load_base(&spec.model)?;
        Ok(Measurer {
            spec,
            adapters,
            probe,
            model,
            tok,
            base: lorastream_ml::load::source::model_dir(&spec.model.base)?,
            loaded: None,
            broken: Vec::new(),
            budgets: BTreeMap::new(),
        })
    }

    /// Measures one cell and stores it; `Some` names a cell that could not
    /// be measured (a store error is no cell's fault: it ends the pass).
    fn measure(
        &mut self,
        store: &Store,
        streams: &[StreamRow],
        (v, row, s): Cell<'_>,
    ) -> Result<Option<CellFailure>, MatrixError> {
        let fail = |blame, error| {
            Some(CellFailure {
                version: v,
                stream: s,
                blame,
                error,
            })
        };
        if self.broken.contains(&v) {
            return Ok(None);
        }
        if self.loaded != Some(v) {
            self.loaded = None;
            if let Err(e) = self.switch(row) {
                self.broken.push(v);
                return Ok(fail(ItemKind::Version, e));
            }
            self.loaded = Some(v);
        }
        let examples = match self.examples(streams, s) {
            Ok(ex) => ex,
            Err(e) => return Ok(fail(ItemKind::Stream, e)),
        };
        let budget = self.budgets.get(&s).copied().unwrap_or(0);
        let p = match lorastream_ml::train::perplexity::perplexity_within(
            &self.model,
            &self.tok,
            &examples,
            (self.spec.eval.batch_size, self.spec.train.seq_len),
            Labels::Assistant,
            budget,
        ) {
            Ok(p) => p,
            Err(err) => {
                self.broken.push(v);
                return Ok(fail(ItemKind::Version, err.into()));
            }
        };
        tracing::info!(
            adapter = v,
            stream = s,
            ppl = p.perplexity,
            tokens = p.tokens,
            "evaluated"
        );
        store.stage_progress(lorastream_store::Stage::Evaluator)?;
        store.upsert_eval(&EvalRow {
            adapter_id: v,
            stream_id: s,
            perplexity: p.perplexity,
            nll_sum: p.nll_sum,
            tokens: p.tokens,
            evaluated_at: 0,
            per_example: p.per_example,
        })?;
        Ok(None)
    }

    /// Puts version `row` (None: the base) on the model.
    fn switch(&mut self, row: Option<&AdapterRow>) -> Result<(), MatrixError> {
        let want = lineage::base_dir(&self.spec.model.base, self.adapters, row)?;
        let adapter = row.and_then(lineage::adapter_path);
        Ok(switch_to(
            &self.spec.model,
            &mut self.model,
            &mut self.base,
            &want,
            adapter,
        )?)
    }

    /// Stream `s`'s eval split (at most `max_examples_per_stream`), or the probe set.
    fn examples(&self, streams: &[StreamRow], s: i64) -> Result<Vec<Vec<Message>>, MatrixError> {
        if s == 0 {
            return Ok(self.probe.clone().unwrap_or_default());
        }
        let row = streams
            .iter()
            .find(|r| r.id == s)
            .ok_or(MatrixError::NoSuchStream(s))?;
        let mut v = streams::load_split(&row.path, Split::Eval)?;
        if self.spec.eval.max_examples_per_stream > 0 {
            v.truncate(self.spec.eval.max_examples_per_stream);
        }
        // One fixed random order per stream: every sample of it is a prefix
        // of the same order, so two cells compare on the examples both have.
        fastrand::Rng::with_seed(s as u64).shuffle(&mut v);
        Ok(v)
    }
}

/// The probe set's examples: `[eval] probe_set`, else the built-in one;
/// `None` with `[eval] probe = false`.
pub fn probe_set(e: &EvalConfig) -> Result<Option<Vec<Vec<Message>>>, MatrixError> {
    if !e.probe {
        return Ok(None);
    }
    Ok(Some(match &e.probe_set {
        Some(p) => streams::read_jsonl(p, e.max_examples_per_stream)?,
        None => eval::builtin_probe(),
    }))
}
