//! `publish_targets`: where each `[[publish]]` target stands (the versions it
//! holds, whether its last run failed and why), written by whoever publishes
//! (the daemon's Publisher, `lorastream adapters publish`) and read by
//! `status`, the web page and `/metrics`.

use rusqlite::{Row, params};

use super::rows::FromRow;
use super::{Result, Store, now_ms};

/// One target's last known state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PublishRow {
    pub name: String,
    pub kind: String,
    /// False after a failed run, until one succeeds.
    pub ok: bool,
    /// The served version the target holds (None: the base).
    pub version: Option<i64>,
    /// Every version the target holds.
    pub published: Vec<i64>,
    /// Failed runs in a row.
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_ok_at: Option<i64>,
    pub updated_at: i64,
}

impl FromRow for PublishRow {
    const SELECT: &'static str = "SELECT name, kind, state, version, published, failures, \
         last_error, last_ok_at, updated_at FROM publish_targets";
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let published: String = r.get(4)?;
        Ok(PublishRow {
            name: r.get(0)?,
            kind: r.get(1)?,
            ok: r.get::<_, String>(2)? == "ok",
            version: r.get(3)?,
            published: serde_json::from_str(&published).unwrap_or_default(),
            failures: r.get(5)?,
            last_error: r.get(6)?,
            last_ok_at: r.get(7)?,
            updated_at: r.get(8)?,
        })
    }
}

impl Store {
    /// A run of target `name` succeeded: it holds `published`, serving `version`.
    pub fn publish_ok(
        &self,
        name: &str,
        kind: &str,
        version: Option<i64>,
        published: &[i64],
    ) -> Result<()> {
        let now = now_ms();
        let list = serde_json::to_string(published).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "INSERT INTO publish_targets (name, kind, state, version, published, failures, last_error, last_ok_at, updated_at)
             VALUES (?1, ?2, 'ok', ?3, ?4, 0, NULL, ?5, ?5)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, state = 'ok', version = excluded.version,
                 published = excluded.published, failures = 0, last_error = NULL,
                 last_ok_at = excluded.last_ok_at, updated_at = excluded.updated_at",
            params![name, kind, version, list, now],
        )?;
        Ok(())
    }

    /// A run of target `name` failed with `error` (what it holds is unchanged).
    pub fn publish_failed(&self, name: &str, kind: &str, error: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO publish_targets (name, kind, state, failures, last_error, updated_at)
             VALUES (?1, ?2, 'degraded', 1, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, state = 'degraded',
                 failures = failures + 1, last_error = excluded.last_error, updated_at = excluded.updated_at",
            params![name, kind, error, now_ms()],
        )?;
        Ok(())
    }

    /// Every target's state, by name.
    pub fn publish_targets(&self) -> Result<Vec<PublishRow>> {
        self.rows("ORDER BY name", [])
    }
}
