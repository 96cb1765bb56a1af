//! The SQLite store (`<state_dir>/lorastream.db`, WAL): numbered migrations and a
//! small typed API per table. Every message between stages carries ids of rows
//! committed here, so the store is the single source of truth after a crash.
//!
//! # Layout
//!
//! - this file: opening, migrations, transactions and the shared query helpers;
//! - `rows`: the row types of the tables; `states`: their states and
//!   transition tables;
//! - one file per table's API: `sources` (with the crawl bookkeeping of
//!   `seen_urls`), `raw_items`, `examples`, `streams`, `adapters`, `evals`,
//!   `stages`, `failures` (poison items and spool file cursors),
//!   `conversations` (with `messages`; their owners), `recall` (bounded
//!   BM25 search of one owner's messages, its statistics the owner's own;
//!   `stopwords` what queries leave out), `forget` (deleting an owner's
//!   memory and what was derived from it; retention), `publish` (publish
//!   targets' state).

mod adapters;
mod conversations;
mod evals;
mod examples;
mod failures;
mod forget;
mod publish;
mod raw_items;
mod recall;
mod rows;
mod sources;
mod stages;
mod states;
mod stopwords;
mod streams;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub use conversations::{CONVERSATIONS_SOURCE, Owner, RatedExchange};
pub use forget::{Forgotten, LearnedExample};
pub use publish::PublishRow;
pub use recall::RecallQuery;
pub use rows::*;
pub use states::*;

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_data_plane.sql"),
    include_str!("migrations/0003_stages.sql"),
    include_str!("migrations/0004_chat.sql"),
    include_str!("migrations/0005_versions.sql"),
    include_str!("migrations/0006_unattended.sql"),
    include_str!("migrations/0007_identities.sql"),
    include_str!("migrations/0008_publish.sql"),
    include_str!("migrations/0009_per_example.sql"),
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
    #[error(
        "database {} has schema version {found}, older than this lorastream's ({supported}); \
         it is migrated when the daemon or a writer command (crawl, train) next opens it",
        path.display()
    )]
    OlderSchema {
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
    #[error("{what} was stopped after its {budget_ms} ms budget")]
    OverBudget { what: &'static str, budget_ms: u64 },
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

    /// As [`Store::open`], with a busy timeout and the WAL truncated to
    /// `wal_max_bytes` after checkpoints.
    pub fn open_tuned(path: &Path, busy_timeout: Duration, wal_max_bytes: u64) -> Result<Store> {
        let store = Self::open_with_timeout(path, busy_timeout)?;
        let limit = i64::try_from(wal_max_bytes).unwrap_or(i64::MAX);
        store
            .conn
            .pragma_update(None, "journal_size_limit", limit)?;
        Ok(store)
    }

    /// Opens an existing database for reading only (`status`, while a daemon
    /// may be writing): nothing is created, no pragma is changed, nothing is
    /// migrated. A database of another schema version is refused.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let (path, supported) = (path.to_owned(), SCHEMA_VERSION);
        match found.cmp(&supported) {
            std::cmp::Ordering::Greater => Err(StoreError::NewerSchema {
                path,
                found,
                supported,
            }),
            std::cmp::Ordering::Less => Err(StoreError::OlderSchema {
                path,
                found,
                supported,
            }),
            std::cmp::Ordering::Equal => Ok(Store { conn, path }),
        }
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

    /// Applies migrations after `from`, each in a transaction. Foreign keys are
    /// off while one runs (a migration may rebuild a table, SQLite's way of
    /// changing its constraints) and checked before it commits.
    fn migrate(&mut self, from: i64) -> Result<()> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = i as i64 + 1;
            let err = |source| StoreError::Migration {
                path: self.path.clone(),
                version,
                source,
            };
            self.conn
                .pragma_update(None, "foreign_keys", "OFF")
                .map_err(err)?;
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            let broken: Option<String> = tx
                .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                .optional()
                .map_err(err)?;
            if let Some(table) = broken {
                return Err(err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("foreign key check failed on table {table}")),
                )));
            }
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            self.conn
                .pragma_update(None, "foreign_keys", "ON")
                .map_err(err)?;
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

    /// Flushes the WAL into the main file, syncing it first: every committed
    /// transaction is durable after it (on shutdown; before retention deletes
    /// files that committed decisions made unneeded).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Runs `f` with `synchronous = FULL`: a transaction it commits is on disk
    /// when it returns (WAL synced), not only after the next checkpoint. For
    /// commits that something outside the database depends on (a file moved,
    /// a file deleted), so a power loss cannot keep the effect and lose the rows.
    pub fn durably<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(StoreError::from)?;
        let r = f();
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::from)?;
        r
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

    // ---- helpers shared by the tables' files ---------------------------

    /// The row of `R`'s table matching `filter` (`WHERE …`, `ORDER BY …`), if any.
    fn row<R: FromRow, P: rusqlite::Params>(&self, filter: &str, params: P) -> Result<Option<R>> {
        Ok(self
            .conn
            .query_row(&format!("{} {filter}", R::SELECT), params, R::from_row)
            .optional()?)
    }

    /// Every row of `R`'s table matching `filter` (`WHERE …`, `ORDER BY …`).
    fn rows<R: FromRow, P: rusqlite::Params>(&self, filter: &str, params: P) -> Result<Vec<R>> {
        self.query_all(&format!("{} {filter}", R::SELECT), params, R::from_row)
    }

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

    /// Runs an UPDATE that must touch a row; none is [`StoreError::NotFound`].
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

    /// Runs an `INSERT … ON CONFLICT DO NOTHING RETURNING id`; on a conflict,
    /// the id of the row already there (found by `select` with `hash`).
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
