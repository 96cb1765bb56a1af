//! `sources`: one row per configured source (cursor, last run, error streak),
//! and `seen_urls`, the pages a source has already crawled.

use rusqlite::{OptionalExtension, params};

use super::{Result, SourceRow, Store, StoreError, now_ms};
use crate::SourceKind;

impl Store {
    /// Registers a configured source; an existing row keeps its cursor.
    pub fn ensure_source(&self, name: &str, kind: SourceKind) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sources (name, kind, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind",
            params![name, kind.as_str(), now_ms()],
        )?;
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<Option<SourceRow>> {
        self.row("WHERE name = ?1", [name])
    }

    pub fn sources(&self) -> Result<Vec<SourceRow>> {
        self.rows("ORDER BY name", [])
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
}
