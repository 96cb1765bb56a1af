//! Row types of the store's tables and how each is read (`FromRow`).

use std::path::{Path, PathBuf};

use rusqlite::Row;
use serde::Serialize;
use serde_json::Value;

use crate::SourceKind;

use super::states::*;

/// A row type: the SELECT that reads its columns, and how to build it from them.
pub trait FromRow: Sized {
    /// `SELECT <columns> FROM <table>`, to which a `WHERE`/`ORDER BY` is appended.
    const SELECT: &'static str;
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self>;
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceRow {
    pub name: String,
    pub kind: SourceKind,
    pub cursor: Option<String>,
    pub last_run_at: Option<i64>,
    pub last_ok_at: Option<i64>,
    pub last_error: Option<String>,
    pub error_count: i64,
    pub degraded: bool,
    pub items_total: i64,
}

impl FromRow for SourceRow {
    const SELECT: &'static str = "SELECT name, kind, cursor, last_run_at, last_ok_at, last_error, error_count, degraded, items_total FROM sources";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SourceRow {
            name: r.get(0)?,
            kind: r.get(1)?,
            cursor: r.get(2)?,
            last_run_at: r.get(3)?,
            last_ok_at: r.get(4)?,
            last_error: r.get(5)?,
            error_count: r.get(6)?,
            degraded: r.get(7)?,
            items_total: r.get(8)?,
        })
    }
}

/// A record to store in `raw_items`.
#[derive(Debug, Clone)]
pub struct NewRawItem<'a> {
    pub source: &'a str,
    pub external_id: Option<&'a str>,
    pub url: Option<&'a str>,
    pub question: &'a str,
    pub answer: Option<&'a str>,
    /// upvotes, comment_count, shares, date … as found.
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawItem {
    pub id: i64,
    pub source: String,
    pub content_hash: String,
    pub external_id: Option<String>,
    pub url: Option<String>,
    pub question: String,
    pub answer: Option<String>,
    pub meta: Value,
    pub fetched_at: i64,
    pub state: RawState,
    pub drop_reason: Option<String>,
}

impl FromRow for RawItem {
    const SELECT: &'static str = "SELECT id, source, content_hash, external_id, url, question, answer, meta, fetched_at, state, drop_reason FROM raw_items";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawItem {
            id: r.get(0)?,
            source: r.get(1)?,
            content_hash: r.get(2)?,
            external_id: r.get(3)?,
            url: r.get(4)?,
            question: r.get(5)?,
            answer: r.get(6)?,
            meta: r.get(7)?,
            fetched_at: r.get(8)?,
            state: r.get(9)?,
            drop_reason: r.get(10)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewExample {
    pub raw_item_id: Option<i64>,
    /// `[{"role": "user", "content": …}, {"role": "assistant", …}]`
    pub messages: Value,
    pub origin: Origin,
    pub quality: Value,
    /// Hash of the folded text (see `preprocess::norm_hash`), for near-duplicates.
    pub norm_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExampleRow {
    pub id: i64,
    pub raw_item_id: Option<i64>,
    pub messages: Value,
    pub origin: Origin,
    pub quality: Value,
    pub summary_backend: Option<String>,
    pub summary: Option<String>,
    pub state: ExampleState,
    pub stream_id: Option<i64>,
    pub split: Option<Split>,
    pub created_at: i64,
}

impl ExampleRow {
    /// The messages to train on: the stored ones, with the last assistant turn
    /// replaced by its condensed form when the summarizer made one.
    pub fn training_messages(&self) -> Value {
        let mut m = self.messages.clone();
        if let (Some(summary), Some(turns)) = (&self.summary, m.as_array_mut())
            && let Some(last) = turns.iter_mut().rev().find(|t| t["role"] == "assistant")
        {
            last["content"] = Value::String(summary.clone());
        }
        m
    }
}

impl FromRow for ExampleRow {
    const SELECT: &'static str = "SELECT id, raw_item_id, messages, origin, quality, summary_backend, summary, state, stream_id, split, created_at FROM examples";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(ExampleRow {
            id: r.get(0)?,
            raw_item_id: r.get(1)?,
            messages: r.get(2)?,
            origin: r.get(3)?,
            quality: r.get(4)?,
            summary_backend: r.get(5)?,
            summary: r.get(6)?,
            state: r.get(7)?,
            stream_id: r.get(8)?,
            split: r.get(9)?,
            created_at: r.get(10)?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub n_train: i64,
    pub n_eval: i64,
    pub path: PathBuf,
    pub state: StreamState,
}

impl FromRow for StreamRow {
    const SELECT: &'static str =
        "SELECT id, name, created_at, n_train, n_eval, path, state FROM streams";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(StreamRow {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
            n_train: r.get(3)?,
            n_eval: r.get(4)?,
            path: PathBuf::from(r.get::<_, String>(5)?),
            state: r.get(6)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewAdapter<'a> {
    pub parent_id: Option<i64>,
    pub stream_id: i64,
    pub attempt: i64,
    pub kind: AdapterKind,
    pub path: &'a Path,
    pub hyperparams: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterRow {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub stream_id: i64,
    pub attempt: i64,
    pub kind: AdapterKind,
    pub path: PathBuf,
    pub hyperparams: Value,
    pub train_log: Option<Value>,
    pub decision: Option<Value>,
    pub state: AdapterState,
    /// Position in the promotion order; the served version has the highest
    /// among promoted rows.
    pub promoted_seq: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl FromRow for AdapterRow {
    const SELECT: &'static str = "SELECT id, parent_id, stream_id, attempt, path, hyperparams, train_log, decision, state, created_at, updated_at, kind, promoted_seq FROM adapters";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(AdapterRow {
            id: r.get(0)?,
            parent_id: r.get(1)?,
            stream_id: r.get(2)?,
            attempt: r.get(3)?,
            path: PathBuf::from(r.get::<_, String>(4)?),
            hyperparams: r.get(5)?,
            train_log: r.get(6)?,
            decision: r.get(7)?,
            state: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            kind: r.get(11)?,
            promoted_seq: r.get(12)?,
        })
    }
}

/// A change of an adapter's state, as `adapter_events` records it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterEvent {
    pub adapter_id: i64,
    pub at: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    /// `daemon` or `cli`.
    pub actor: String,
    pub reason: String,
}

impl FromRow for AdapterEvent {
    const SELECT: &'static str =
        "SELECT adapter_id, at, from_state, to_state, actor, reason FROM adapter_events";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(AdapterEvent {
            adapter_id: r.get(0)?,
            at: r.get(1)?,
            from_state: r.get(2)?,
            to_state: r.get(3)?,
            actor: r.get(4)?,
            reason: r.get(5)?,
        })
    }
}

/// One cell of the perplexity matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// 0 = the base model.
    pub adapter_id: i64,
    /// 0 = the general probe set.
    pub stream_id: i64,
    pub perplexity: f64,
    pub nll_sum: f64,
    pub tokens: i64,
    pub evaluated_at: i64,
    /// (NLL sum, target tokens) of each example, in the stream's eval order
    /// (empty: not recorded, a cell from before schema 9).
    #[serde(skip)]
    pub per_example: Vec<(f64, i64)>,
}

impl FromRow for EvalRow {
    const SELECT: &'static str = "SELECT adapter_id, stream_id, perplexity, nll_sum, tokens, \
         evaluated_at, per_example FROM evals";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let per_example: Option<String> = r.get(6)?;
        Ok(EvalRow {
            adapter_id: r.get(0)?,
            stream_id: r.get(1)?,
            perplexity: r.get(2)?,
            nll_sum: r.get(3)?,
            tokens: r.get(4)?,
            evaluated_at: r.get(5)?,
            per_example: per_example
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub conversation_id: String,
    pub role: Role,
    pub content: String,
    pub created_at: i64,
}

impl FromRow for MessageRow {
    const SELECT: &'static str =
        "SELECT id, conversation_id, role, content, created_at FROM messages";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(MessageRow {
            id: r.get(0)?,
            conversation_id: r.get(1)?,
            role: r.get(2)?,
            content: r.get(3)?,
            created_at: r.get(4)?,
        })
    }
}

/// One daemon stage as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub name: String,
    pub state: StageState,
    pub detail: Option<String>,
    pub runs: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

impl FromRow for StageRow {
    const SELECT: &'static str =
        "SELECT name, state, detail, runs, failures, last_error, updated_at FROM stages";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(StageRow {
            name: r.get(0)?,
            state: r.get(1)?,
            detail: r.get(2)?,
            runs: r.get(3)?,
            failures: r.get(4)?,
            last_error: r.get(5)?,
            updated_at: r.get(6)?,
        })
    }
}

impl StageRow {
    /// "trainer (training: step 10/60 …), crawler (crawling x)": the stages
    /// running now, or `None` when all are idle.
    pub fn running(rows: &[StageRow]) -> Option<String> {
        let running: Vec<String> = rows
            .iter()
            .filter(|r| r.state == StageState::Running)
            .map(|r| format!("{} ({})", r.name, r.detail.as_deref().unwrap_or("")))
            .collect();
        (!running.is_empty()).then(|| running.join(", "))
    }
}

/// A poison item: how often it failed, why the last time, and whether it was
/// set aside (no more retries).
#[derive(Debug, Clone, Serialize)]
pub struct ItemFailure {
    pub kind: ItemKind,
    pub key: String,
    pub failures: i64,
    pub last_error: String,
    pub set_aside: bool,
    pub first_at: i64,
    pub updated_at: i64,
}

impl FromRow for ItemFailure {
    const SELECT: &'static str = "SELECT kind, key, failures, last_error, set_aside, first_at, updated_at FROM item_failures";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(ItemFailure {
            kind: r.get(0)?,
            key: r.get(1)?,
            failures: r.get(2)?,
            last_error: r.get(3)?,
            set_aside: r.get(4)?,
            first_at: r.get(5)?,
            updated_at: r.get(6)?,
        })
    }
}

/// How far a spool file was ingested (see `sources::spool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolFileRow {
    pub source: String,
    pub name: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub rows_total: i64,
    pub rows_done: i64,
}

impl FromRow for SpoolFileRow {
    const SELECT: &'static str =
        "SELECT source, name, size, mtime_ns, rows_total, rows_done FROM spool_files";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SpoolFileRow {
            source: r.get(0)?,
            name: r.get(1)?,
            size: r.get(2)?,
            mtime_ns: r.get(3)?,
            rows_total: r.get(4)?,
            rows_done: r.get(5)?,
        })
    }
}
