//! The SQLite store (`<state_dir>/lorastream.db`, WAL): numbered migrations and a
//! small typed API per table. Every message between stages carries ids of rows
//! committed here, so the store is the single source of truth after a crash.

mod rows;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use rows::*;

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_data_plane.sql"),
    include_str!("migrations/0003_stages.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {} has schema version {found}, newer than this lorastream supports ({supported}); \
         refusing to touch it: run a newer lorastream, or point [store] path elsewhere",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("migration {version} failed on {}: {source}", path.display())]
    Migration {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("{what} {id} cannot go from {from} to {to}")]
    InvalidTransition {
        what: &'static str,
        id: String,
        from: String,
        to: String,
    },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("writing the files of {what}: {source}")]
    Files {
        what: String,
        source: std::io::Error,
    },
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The outcome of an insert that deduplicates by content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New(i64),
    Duplicate(i64),
}

impl Inserted {
    pub fn id(self) -> i64 {
        match self {
            Inserted::New(id) | Inserted::Duplicate(id) => id,
        }
    }
    pub fn is_new(self) -> bool {
        matches!(self, Inserted::New(_))
    }
}

/// SHA-256 (hex) of the parts with whitespace runs collapsed and ends trimmed,
/// so the same text crawled with different spacing hashes the same.
pub fn content_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        for (j, word) in part.split_whitespace().enumerate() {
            if j > 0 {
                h.update(b" ");
            }
            h.update(word.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and
    /// applies pending migrations. A database written by a newer version is
    /// refused before anything is changed.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with_timeout(path, Duration::from_secs(5))
    }

    /// The store a config names (`[store] path`, `busy_timeout_ms`).
    pub fn open_for(config: &crate::config::Config) -> Result<Store> {
        Self::open_with_timeout(
            &config.store_path(),
            Duration::from_millis(config.store.busy_timeout_ms),
        )
    }

    pub fn open_with_timeout(path: &Path, busy_timeout: Duration) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot create {}: {e}", dir.display())),
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        // Read the version before changing anything, journal mode included.
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
        };
        store.migrate(found)?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = i as i64 + 1;
            let err = |source| StoreError::Migration {
                path: self.path.clone(),
                version,
                source,
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!(version, db = %self.path.display(), "applied store migration");
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub fn journal_mode(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
    }

    /// Flushes the WAL into the main file (used on shutdown).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    // ---- sources -------------------------------------------------------

    /// Registers a configured source; an existing row keeps its cursor.
    pub fn ensure_source(&self, name: &str, kind: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sources (name, kind, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind",
            params![name, kind, now_ms()],
        )?;
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<Option<SourceRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE name = ?1", SourceRow::SELECT),
                [name],
                SourceRow::from_row,
            )
            .optional()?)
    }

    pub fn sources(&self) -> Result<Vec<SourceRow>> {
        self.query_all(
            &format!("{} ORDER BY name", SourceRow::SELECT),
            [],
            SourceRow::from_row,
        )
    }

    pub fn set_source_cursor(&self, name: &str, cursor: &str) -> Result<()> {
        self.update_one(
            "source",
            name,
            "UPDATE sources SET cursor = ?2 WHERE name = ?1",
            params![name, cursor],
        )
    }

    /// A run that finished: clears the error streak and the degraded flag.
    pub fn record_source_success(&self, name: &str, new_items: u64) -> Result<()> {
        let now = now_ms();
        self.update_one(
            "source",
            name,
            "UPDATE sources SET last_run_at = ?2, last_ok_at = ?2, error_count = 0, degraded = 0,
                    last_error = NULL, items_total = items_total + ?3 WHERE name = ?1",
            params![name, now, new_items as i64],
        )
    }

    /// A run that failed (after storing `new_items`, which still count); after
    /// `degraded_after` failures in a row the source is marked degraded.
    /// Returns the updated row.
    pub fn record_source_failure(
        &self,
        name: &str,
        error: &str,
        degraded_after: u32,
        new_items: u64,
    ) -> Result<SourceRow> {
        self.update_one(
            "source",
            name,
            "UPDATE sources SET last_run_at = ?2, last_error = ?3, error_count = error_count + 1,
                    degraded = (error_count + 1 >= ?4), items_total = items_total + ?5 WHERE name = ?1",
            params![name, now_ms(), error, degraded_after, new_items as i64],
        )?;
        self.source(name)?.ok_or_else(|| StoreError::NotFound {
            what: "source",
            id: name.into(),
        })
    }

    // ---- raw items -----------------------------------------------------

    /// Stores a crawled record unless the same question and answer are stored already.
    pub fn insert_raw_item(&self, item: &NewRawItem<'_>) -> Result<Inserted> {
        let hash = content_hash(&[item.question, item.answer.unwrap_or("")]);
        self.dedup_insert(
            "INSERT INTO raw_items (source, content_hash, external_id, url, question, answer, meta, fetched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(content_hash) DO NOTHING RETURNING id",
            params![
                item.source,
                hash,
                item.external_id,
                item.url,
                item.question,
                item.answer,
                item.meta.to_string(),
                now_ms()
            ],
            "SELECT id FROM raw_items WHERE content_hash = ?1",
            &hash,
        )
    }

    pub fn raw_item(&self, id: i64) -> Result<Option<RawItem>> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE id = ?1", RawItem::SELECT),
                [id],
                RawItem::from_row,
            )
            .optional()?)
    }

    /// Up to `limit` items in `state`, oldest first.
    pub fn raw_items_in_state(&self, state: RawState, limit: usize) -> Result<Vec<RawItem>> {
        self.query_all(
            &format!("{} WHERE state = ?1 ORDER BY id LIMIT ?2", RawItem::SELECT),
            params![state.as_str(), limit as i64],
            RawItem::from_row,
        )
    }

    pub fn set_raw_item_state(
        &self,
        id: i64,
        to: RawState,
        drop_reason: Option<&str>,
    ) -> Result<()> {
        self.transition(id, to, |tx| {
            tx.execute(
                "UPDATE raw_items SET drop_reason = ?2 WHERE id = ?1",
                params![id, drop_reason],
            )
        })
    }

    /// Item counts by state and drop reason.
    pub fn raw_item_counts(&self) -> Result<Vec<(String, Option<String>, i64)>> {
        self.query_all(
            "SELECT state, drop_reason, COUNT(*) FROM raw_items GROUP BY state, drop_reason ORDER BY 1, 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    // ---- examples ------------------------------------------------------

    /// Stores a chat example unless an identical one (same messages) exists.
    pub fn insert_example(&self, ex: &NewExample) -> Result<Inserted> {
        let text: Vec<&str> = ex
            .messages
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["content"].as_str()).collect())
            .unwrap_or_default();
        let hash = content_hash(&text);
        self.dedup_insert(
            "INSERT INTO examples (raw_item_id, content_hash, messages, origin, quality, created_at, norm_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(content_hash) DO NOTHING RETURNING id",
            params![
                ex.raw_item_id,
                hash,
                ex.messages.to_string(),
                ex.origin.as_str(),
                ex.quality.to_string(),
                now_ms(),
                ex.norm_hash
            ],
            "SELECT id FROM examples WHERE content_hash = ?1",
            &hash,
        )
    }

    pub fn example(&self, id: i64) -> Result<Option<ExampleRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE id = ?1", ExampleRow::SELECT),
                [id],
                ExampleRow::from_row,
            )
            .optional()?)
    }

    pub fn examples_in_state(&self, state: ExampleState, limit: usize) -> Result<Vec<ExampleRow>> {
        self.query_all(
            &format!(
                "{} WHERE state = ?1 ORDER BY id LIMIT ?2",
                ExampleRow::SELECT
            ),
            params![state.as_str(), limit as i64],
            ExampleRow::from_row,
        )
    }

    pub fn count_examples(&self, state: ExampleState) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM examples WHERE state = ?1",
            [state.as_str()],
            |r| r.get(0),
        )?)
    }

    /// new → ready, recording the condensed answer and the backend that made it, if any.
    pub fn mark_example_ready(&self, id: i64, summary: Option<(&str, &str)>) -> Result<()> {
        self.transition(id, ExampleState::Ready, |tx| {
            tx.execute(
                "UPDATE examples SET summary_backend = ?2, summary = ?3 WHERE id = ?1",
                params![id, summary.map(|s| s.0), summary.map(|s| s.1)],
            )
        })
    }

    pub fn drop_example(&self, id: i64) -> Result<()> {
        self.transition(id, ExampleState::Dropped, |_| Ok(0))
    }

    /// The stored example whose folded text hashes to `norm_hash`, if any.
    pub fn example_by_norm_hash(&self, norm_hash: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM examples WHERE norm_hash = ?1 LIMIT 1",
                [norm_hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// For each example id, where it came from: the raw item's `meta.label`
    /// (spool file, dataset, topic), else its source, else its origin.
    pub fn example_labels(&self, ids: &[i64]) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COALESCE(json_extract(r.meta, '$.label'), r.source, e.origin)
             FROM examples e LEFT JOIN raw_items r ON r.id = e.raw_item_id WHERE e.id = ?1",
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(l) = stmt.query_row([id], |r| r.get(0)).optional()? {
                out.push(l);
            }
        }
        Ok(out)
    }

    // ---- daemon stages -------------------------------------------------

    /// Records what a stage is doing now (`running` also counts a run).
    pub fn set_stage(&self, name: &str, state: &str, detail: Option<&str>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO stages (name, state, detail, runs, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET state = excluded.state, detail = excluded.detail,
                 runs = runs + excluded.runs, updated_at = excluded.updated_at",
            params![name, state, detail, (state == "running") as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Counts a failure of a stage; it waits (`backoff`) before its next try.
    pub fn stage_failed(&self, name: &str, error: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO stages (name, state, failures, last_error, updated_at) VALUES (?1, 'backoff', 1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET state = 'backoff', failures = failures + 1,
                 last_error = excluded.last_error, updated_at = excluded.updated_at",
            params![name, error, now_ms()],
        )?;
        Ok(())
    }

    pub fn stages(&self) -> Result<Vec<StageRow>> {
        self.query_all(
            "SELECT name, state, detail, runs, failures, last_error, updated_at FROM stages ORDER BY name",
            [],
            |r| {
                Ok(StageRow {
                    name: r.get(0)?,
                    state: r.get(1)?,
                    detail: r.get(2)?,
                    runs: r.get(3)?,
                    failures: r.get(4)?,
                    last_error: r.get(5)?,
                    updated_at: r.get(6)?,
                })
            },
        )
    }

    // ---- crawl bookkeeping --------------------------------------------

    pub fn url_seen(&self, source: &str, url: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM seen_urls WHERE source = ?1 AND url = ?2",
                [source, url],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn mark_url_seen(&self, source: &str, url: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO seen_urls (source, url, seen_at) VALUES (?1, ?2, ?3)",
            params![source, url, now_ms()],
        )?;
        Ok(())
    }

    /// Runs `f` in one immediate transaction (or the caller's, when one is
    /// open): committed when it returns `Ok`, rolled back when it fails. Store
    /// methods called inside join it.
    pub fn in_transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Store) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.atomically(|_| f(self))
    }

    // ---- streams -------------------------------------------------------

    /// Seals ready examples into a new stream in one transaction: the stream row
    /// is created and every example moves to `sealed` with its split, or nothing
    /// changes. `path` is where the stream's files are (written by the caller first).
    pub fn seal_stream(&self, name: &str, train: &[i64], eval: &[i64], path: &Path) -> Result<i64> {
        self.seal_stream_with(name, train, eval, |_| Ok(path.to_owned()))
    }

    /// Like [`seal_stream`](Self::seal_stream), with the files written by `write`
    /// once the stream id is known, inside the transaction: if `write` fails,
    /// nothing is sealed. `write` returns the stream's directory.
    pub fn seal_stream_with(
        &self,
        name: &str,
        train: &[i64],
        eval: &[i64],
        write: impl FnOnce(i64) -> std::io::Result<PathBuf>,
    ) -> Result<i64> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO streams (name, created_at, n_train, n_eval, path) VALUES (?1, ?2, ?3, ?4, '')",
            params![name, now_ms(), train.len() as i64, eval.len() as i64],
        )?;
        let stream_id = tx.last_insert_rowid();
        {
            let mut upd = tx.prepare(
                "UPDATE examples SET state = 'sealed', stream_id = ?2, split = ?3
                 WHERE id = ?1 AND state = 'ready'",
            )?;
            for (ids, split) in [(train, "train"), (eval, "eval")] {
                for &id in ids {
                    if upd.execute(params![id, stream_id, split])? != 1 {
                        let from: Option<ExampleState> = tx
                            .query_row("SELECT state FROM examples WHERE id = ?1", [id], |r| {
                                r.get(0)
                            })
                            .optional()?;
                        return Err(match from {
                            None => StoreError::NotFound {
                                what: "example",
                                id: id.to_string(),
                            },
                            Some(from) => invalid(id, from, ExampleState::Sealed),
                        });
                    }
                }
            }
        }
        let path = write(stream_id).map_err(|e| StoreError::Files {
            what: format!("stream {stream_id}"),
            source: e,
        })?;
        tx.execute(
            "UPDATE streams SET path = ?2 WHERE id = ?1",
            params![stream_id, path.to_string_lossy()],
        )?;
        tx.commit()?;
        Ok(stream_id)
    }

    pub fn stream(&self, id: i64) -> Result<Option<StreamRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE id = ?1", StreamRow::SELECT),
                [id],
                StreamRow::from_row,
            )
            .optional()?)
    }

    pub fn streams(&self) -> Result<Vec<StreamRow>> {
        self.query_all(
            &format!("{} ORDER BY id", StreamRow::SELECT),
            [],
            StreamRow::from_row,
        )
    }

    pub fn set_stream_state(&self, id: i64, to: StreamState) -> Result<()> {
        self.transition(id, to, |_| Ok(0))
    }

    /// Ids of a stream's examples in one split, in id order.
    pub fn stream_example_ids(&self, stream_id: i64, split: Split) -> Result<Vec<i64>> {
        self.query_all(
            "SELECT id FROM examples WHERE stream_id = ?1 AND split = ?2 ORDER BY id",
            params![stream_id, split.as_str()],
            |r| r.get(0),
        )
    }

    // ---- adapters ------------------------------------------------------

    pub fn insert_adapter(&self, a: &NewAdapter<'_>) -> Result<i64> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO adapters (parent_id, stream_id, attempt, path, hyperparams, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![a.parent_id, a.stream_id, a.attempt, a.path.to_string_lossy(), a.hyperparams.to_string(), now],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn adapter(&self, id: i64) -> Result<Option<AdapterRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{} WHERE id = ?1", AdapterRow::SELECT),
                [id],
                AdapterRow::from_row,
            )
            .optional()?)
    }

    pub fn adapters(&self) -> Result<Vec<AdapterRow>> {
        self.query_all(
            &format!("{} ORDER BY id", AdapterRow::SELECT),
            [],
            AdapterRow::from_row,
        )
    }

    /// The adapter being served: the newest promoted version not rolled back.
    pub fn served_adapter(&self) -> Result<Option<AdapterRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "{} WHERE state = 'promoted' ORDER BY updated_at DESC, id DESC LIMIT 1",
                    AdapterRow::SELECT
                ),
                [],
                AdapterRow::from_row,
            )
            .optional()?)
    }

    /// Moves an adapter to `to`, optionally recording the decision that did it.
    pub fn set_adapter_state(
        &self,
        id: i64,
        to: AdapterState,
        decision: Option<&Value>,
    ) -> Result<()> {
        self.transition(id, to, |tx| {
            tx.execute(
                "UPDATE adapters SET decision = COALESCE(?2, decision), updated_at = ?3 WHERE id = ?1",
                params![id, decision.map(Value::to_string), now_ms()],
            )
        })
    }

    pub fn set_adapter_path(&self, id: i64, path: &Path) -> Result<()> {
        self.update_one(
            "adapter",
            &id.to_string(),
            "UPDATE adapters SET path = ?2 WHERE id = ?1",
            params![id, path.to_string_lossy()],
        )
    }

    pub fn set_adapter_train_log(&self, id: i64, log: &Value) -> Result<()> {
        self.update_one(
            "adapter",
            &id.to_string(),
            "UPDATE adapters SET train_log = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, log.to_string(), now_ms()],
        )
    }

    // ---- evals ---------------------------------------------------------

    /// Records R[adapter][stream]; `adapter_id` 0 is the base model, `stream_id` 0 the probe set.
    pub fn upsert_eval(&self, e: &EvalRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO evals (adapter_id, stream_id, perplexity, nll_sum, tokens, evaluated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(adapter_id, stream_id) DO UPDATE SET perplexity = excluded.perplexity,
               nll_sum = excluded.nll_sum, tokens = excluded.tokens, evaluated_at = excluded.evaluated_at",
            params![e.adapter_id, e.stream_id, e.perplexity, e.nll_sum, e.tokens, now_ms()],
        )?;
        Ok(())
    }

    pub fn evals(&self) -> Result<Vec<EvalRow>> {
        self.query_all(
            "SELECT adapter_id, stream_id, perplexity, nll_sum, tokens, evaluated_at FROM evals ORDER BY 1, 2",
            [],
            EvalRow::from_row,
        )
    }

    // ---- conversations -------------------------------------------------

    pub fn create_conversation(&self, id: &str, title: Option<&str>, learn: bool) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO conversations (id, title, learn, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, title, learn, now],
        )?;
        Ok(())
    }

    pub fn add_message(&self, conversation_id: &str, role: Role, content: &str) -> Result<i64> {
        let now = now_ms();
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
            params![conversation_id, now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: conversation_id.into(),
            });
        }
        tx.execute(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![conversation_id, role.as_str(), content, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    pub fn messages(&self, conversation_id: &str) -> Result<Vec<MessageRow>> {
        self.query_all(
            &format!(
                "{} WHERE conversation_id = ?1 ORDER BY id",
                MessageRow::SELECT
            ),
            [conversation_id],
            MessageRow::from_row,
        )
    }

    /// Full-text search over past messages, best match first. `query` is plain
    /// text: each word is quoted, so FTS5 operators in user input are inert.
    pub fn search_messages(&self, query: &str, limit: usize) -> Result<Vec<MessageRow>> {
        let terms: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| format!("\"{w}\""))
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        self.query_all(
            "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at
             FROM messages_fts f JOIN messages m ON m.id = f.rowid
             WHERE messages_fts MATCH ?1 ORDER BY bm25(messages_fts) LIMIT ?2",
            params![terms.join(" OR "), limit as i64],
            MessageRow::from_row,
        )
    }

    // ---- helpers -------------------------------------------------------

    fn query_all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
    }

    fn update_one<P: rusqlite::Params>(
        &self,
        what: &'static str,
        id: &str,
        sql: &str,
        params: P,
    ) -> Result<()> {
        match self.conn.execute(sql, params)? {
            0 => Err(StoreError::NotFound {
                what,
                id: id.into(),
            }),
            _ => Ok(()),
        }
    }

    fn dedup_insert<P: rusqlite::Params>(
        &self,
        insert: &str,
        params: P,
        select: &str,
        hash: &str,
    ) -> Result<Inserted> {
        let new: Option<i64> = self
            .conn
            .query_row(insert, params, |r| r.get(0))
            .optional()?;
        match new {
            Some(id) => Ok(Inserted::New(id)),
            None => Ok(Inserted::Duplicate(self.conn.query_row(
                select,
                [hash],
                |r| r.get(0),
            )?)),
        }
    }

    /// Moves row `id` of `S`'s table to state `to` if its state machine allows it,
    /// running `also` (further column updates) in the same immediate transaction.
    fn transition<S: StateMachine>(
        &self,
        id: i64,
        to: S,
        also: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
    ) -> Result<()> {
        self.atomically(|tx| {
            let from: S = tx
                .query_row(
                    &format!("SELECT state FROM {} WHERE id = ?1", S::TABLE),
                    [id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    what: S::WHAT,
                    id: id.to_string(),
                })?;
            if !from.can_become(to) {
                return Err(invalid(id, from, to));
            }
            tx.execute(
                &format!("UPDATE {} SET state = ?2 WHERE id = ?1", S::TABLE),
                params![id, to.as_str()],
            )?;
            also(tx)?;
            Ok(())
        })
    }

    /// Runs `f` in an immediate transaction, or inside the caller's when one is open.
    fn atomically<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Connection) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if !self.conn.is_autocommit() {
            return f(&self.conn);
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(StoreError::from)?;
        let v = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(v)
    }
}

fn invalid<S: StateMachine>(id: i64, from: S, to: S) -> StoreError {
    StoreError::InvalidTransition {
        what: S::WHAT,
        id: id.to_string(),
        from: from.to_string(),
        to: to.to_string(),
    }
}

#[cfg(test)]
mod tests;
