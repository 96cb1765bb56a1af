//! Where the questions and answers come from (DESIGN.md §5): the Hugging Face
//! datasets-server rows API, Quora through Crawlbase, and a spool directory of
//! dropped exports. Each source turns what it fetched into [`Record`]s and
//! commits them to `raw_items` page by page, together with its cursor, so a
//! failure never loses what was accepted and never skips what was not.

pub mod crawlbase;
pub mod hf;
pub mod spool;

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{FieldMap, SourceConfig, SourceKind};
use crate::util::http::{Http, HttpError, NotJson, Policy, SecretError};
use lorastream_store::{NewRawItem, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    NotJson(#[from] NotJson),
    /// A key the config check cannot require for every kind is not set.
    #[error("source {name}: {what}")]
    NotConfigured { name: String, what: &'static str },
    #[error("base_url {base:?}: {source}")]
    BaseUrl {
        base: String,
        source: url::ParseError,
    },
    #[error("source {name}: stored cursor {cursor:?} is not a row offset")]
    BadCursor { name: String, cursor: String },
    /// The API answered, but not with what it documents.
    #[error("{api}: {problem}")]
    Response {
        api: &'static str,
        problem: ResponseProblem,
    },
    #[error("Crawlbase could not fetch {target}: pc_status {pc}, original_status {original}")]
    NotFetched {
        target: String,
        pc: String,
        original: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// What is wrong with an API's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseProblem {
    /// The API's own error message.
    #[error("{0}")]
    Error(String),
    #[error("response has no {0}")]
    Missing(&'static str),
    #[error("row {0} has no `row` object")]
    RowWithoutObject(u64),
}

/// One question with (at most) one answer, as a source found it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub question: String,
    pub answer: Option<String>,
    pub url: Option<String>,
    pub external_id: Option<String>,
    /// upvotes, comment_count, shares, date, label …
    pub meta: Map<String, Value>,
}

impl Record {
    /// Maps a JSON object (a dataset row, a JSONL line, a CSV row) by `fields`.
    /// Missing or null fields stay empty; numbers like "1.2K" become 1200.
    pub fn from_object(obj: &Map<String, Value>, fields: &FieldMap) -> Record {
        let text = |key: &str| obj.get(key).and_then(value_text);
        let mut meta = Map::new();
        for (name, key) in [
            ("upvotes", &fields.upvotes),
            ("comment_count", &fields.comment_count),
            ("shares", &fields.shares),
        ] {
            if let Some(n) = key.as_deref().and_then(|k| obj.get(k)).and_then(count) {
                meta.insert(name.into(), json!(n));
            }
        }
        if let Some(d) = fields.date.as_deref().and_then(text) {
            meta.insert("date".into(), json!(d));
        }
        Record {
            question: text(&fields.question).unwrap_or_default(),
            answer: text(&fields.answer),
            url: fields.url.as_deref().and_then(text),
            external_id: None,
            meta,
        }
    }
}

/// A field's text: strings as they are, numbers and booleans printed.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A count as Quora and datasets write it: 12, "12", "1,204", "1.2K", "3M".
pub fn count(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim().replace(',', "");
            let (num, mult) = match s.chars().last()? {
                'k' | 'K' => (&s[..s.len() - 1], 1e3),
                'm' | 'M' => (&s[..s.len() - 1], 1e6),
                _ => (s.as_str(), 1.0),
            };
            let f: f64 = num.trim().parse().ok()?;
            f.is_finite().then(|| (f * mult).round() as i64)
        }
        _ => None,
    }
}

/// What one run of one source did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchReport {
    /// Records received.
    pub fetched: u64,
    /// Records stored for the first time.
    pub new: u64,
    /// Records already stored (from this or any other source).
    pub duplicate: u64,
    /// Spool: files ingested / moved to failed/.
    pub files_done: u64,
    pub files_failed: u64,
    /// Items (pages) that failed this run; the run went on without them.
    pub items_failed: u64,
    /// Set when the run stopped on an error (what was stored before it stays).
    pub error: Option<String>,
    /// Ids of the raw items this run stored.
    #[serde(skip)]
    pub new_ids: Vec<i64>,
}

impl FetchReport {
    /// Stores `records` of `source` in one transaction, running `also` (the
    /// cursor update) in the same transaction: all of it lands, or none.
    pub fn commit(
        &mut self,
        store: &Store,
        source: &str,
        records: &[Record],
        also: impl FnOnce(&Store) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        let (new, dup) = store.in_transaction(|s| {
            let (mut new, mut dup) = (0, 0);
            for r in records {
                let ins = s.insert_raw_item(&NewRawItem {
                    source,
                    external_id: r.external_id.as_deref(),
                    url: r.url.as_deref(),
                    question: &r.question,
                    answer: r.answer.as_deref(),
                    meta: Value::Object(r.meta.clone()),
                })?;
                if ins.is_new() {
                    new += 1;
                    ids.push(ins.id());
                } else {
                    dup += 1;
                }
            }
            also(s)?;
            Ok::<_, StoreError>((new, dup))
        })?;
        store.stage_progress(lorastream_store::Stage::Crawler)?;
        self.new_ids.extend(ids);
        self.fetched += records.len() as u64;
        self.new += new;
        self.duplicate += dup;
        Ok(())
    }
}

/// Runs one source once and records the outcome on its `sources` row
/// (success, or a failure that may mark it degraded). Errors do not escape:
/// they are in the report and the log. An item that fails (a page, a file)
/// is counted and, after `max_item_failures`, set aside; the rest goes on.
pub async fn run_source(
    http: &Http,
    store: &Store,
    state_dir: &Path,
    src: &SourceConfig,
    max_item_failures: u32,
) -> FetchReport {
    let mut report = FetchReport::default();
    let started = std::time::Instant::now();
    if let Err(e) = store.ensure_source(&src.name, src.kind) {
        report.error = Some(e.to_string());
        return report;
    }
    let result = match src.kind {
        SourceKind::HfDatasets => hf::run(http, store, src, &mut report).await,
        SourceKind::Crawlbase => {
            crawlbase::run(http, store, src, max_item_failures, &mut report).await
        }
        SourceKind::Spool => spool::run(store, state_dir, src, &mut report),
        // Filled by the chat server (POST /v1/feedback), nothing to fetch.
        SourceKind::Conversations => Ok(()),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let m = &crate::util::metrics::METRICS;
    for (outcome, n) in [
        ("fetched", report.fetched),
        ("new", report.new),
        ("duplicate", report.duplicate),
    ] {
        m.source_items
            .with_label_values(&[src.name.as_str(), outcome])
            .inc_by(n);
    }
    m.source_runs
        .with_label_values(&[
            src.name.as_str(),
            if result.is_ok() { "ok" } else { "error" },
        ])
        .inc();
    match result {
        Ok(()) => {
            if let Err(e) = store.record_source_success(&src.name, report.new) {
                report.error = Some(e.to_string());
            }
            if report.fetched > 0 || report.files_failed > 0 {
                tracing::info!(
                    source = %src.name, kind = %src.kind, fetched = report.fetched, new = report.new,
                    duplicate = report.duplicate, duration_ms, "source run finished"
                );
            } else {
                tracing::debug!(source = %src.name, kind = %src.kind, duration_ms, "source run found nothing new");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            // Items stored before the failure still count for the source.
            let degraded = store
                .record_source_failure(&src.name, &msg, src.degraded_after, report.new)
                .map(|row| row.degraded)
                .unwrap_or(false);
            if degraded {
                tracing::error!(source = %src.name, kind = %src.kind, error = %msg, new = report.new, duration_ms, "source failed again; marked degraded, retried on its next schedule");
            } else {
                tracing::warn!(source = %src.name, kind = %src.kind, error = %msg, new = report.new, duration_ms, "source run failed; retried on its next schedule");
            }
            report.error = Some(msg);
        }
    }
    report
}

impl SourceError {
    /// The error is about one item (this page could not be fetched or read),
    /// not about the source (network, token, store): the run goes on
    /// without the item, and the item is counted as a failure.
    pub fn is_item_specific(&self) -> bool {
        matches!(
            self,
            SourceError::NotFetched { .. } | SourceError::Response { .. } | SourceError::NotJson(_)
        )
    }
}

impl From<&SourceConfig> for Policy {
    fn from(s: &SourceConfig) -> Self {
        Policy {
            timeout: std::time::Duration::from_secs(s.timeout_secs.max(1)),
            max_retries: s.max_retries,
            backoff_initial: std::time::Duration::from_millis(s.backoff_initial_ms),
            backoff_max: std::time::Duration::from_millis(
                s.backoff_max_ms.max(s.backoff_initial_ms),
            ),
            rate_per_sec: s.rate_limit_per_sec,
            max_bytes: s.max_response_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_as_quora_writes_them() {
        assert_eq!(count(&json!(12)), Some(12));
        assert_eq!(count(&json!("1,204")), Some(1204));
        assert_eq!(count(&json!("1.2K")), Some(1200));
        assert_eq!(count(&json!(" 3M ")), Some(3_000_000));
        assert_eq!(count(&json!("many")), None);
        assert_eq!(count(&json!(null)), None);
    }

    #[test]
    fn maps_fields() {
        let fields = FieldMap {
            question: "title".into(),
            answer: "answer".into(),
            upvotes: Some("num upvote".into()),
            url: Some("title_url".into()),
            ..FieldMap::default()
        };
        let obj = json!({"title": "Q?", "answer": "A.", "num upvote": 7, "title_url": "https://q"});
        let r = Record::from_object(obj.as_object().unwrap(), &fields);
        assert_eq!(r.question, "Q?");
        assert_eq!(r.answer.as_deref(), Some("A."));
        assert_eq!(r.url.as_deref(), Some("https://q"));
        assert_eq!(r.meta["upvotes"], 7);
        let empty = Record::from_object(json!({"x": 1}).as_object().unwrap(), &fields);
        assert_eq!(empty.question, "");
        assert_eq!(empty.answer, None);
    }
}
