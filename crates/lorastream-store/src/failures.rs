//! `item_failures`: poison items, counted per item so that one page, stream
//! or version that always fails is retried a bounded number of times
//! and then set aside with its reason, while the rest goes on; and
//! `spool_files`: how far each spool file was ingested.

use rusqlite::params;

use super::{ItemFailure, ItemKind, Result, SpoolFileRow, Store, now_ms};

impl Store {
    /// Counts a failure of one item. Once it has failed `max` times it is set
    /// aside: [`Store::is_set_aside`] says so and its stage skips it.
    pub fn item_failed(
        &self,
        kind: ItemKind,
        key: &str,
        error: &str,
        max: u32,
    ) -> Result<ItemFailure> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO item_failures (kind, key, failures, last_error, set_aside, first_at, updated_at)
             VALUES (?1, ?2, 1, ?3, ?4 <= 1, ?5, ?5)
             ON CONFLICT(kind, key) DO UPDATE SET failures = failures + 1,
                 last_error = excluded.last_error, set_aside = failures + 1 >= ?4,
                 updated_at = excluded.updated_at",
            params![kind, key, error, max.max(1), now],
        )?;
        self.row("WHERE kind = ?1 AND key = ?2", params![kind, key])?
            .ok_or_else(|| super::StoreError::NotFound {
                what: "item failure",
                id: format!("{kind} {key}"),
            })
    }

    /// Counts a failure of one item and, when that sets it aside, fails the
    /// stream whose work it blocks (with its undecided adapter, see
    /// [`Store::fail_stream`]) in the same transaction, so the stages go on
    /// with the next stream.
    pub fn count_failure(
        &self,
        kind: ItemKind,
        key: &str,
        error: &str,
        max: u32,
        blocks_stream: Option<i64>,
    ) -> Result<ItemFailure> {
        self.in_transaction(|s| {
            let f = s.item_failed(kind, key, error, max)?;
            if f.set_aside
                && let Some(stream) = blocks_stream
            {
                let reason = format!("set aside after {} failures: {error}", f.failures);
                s.fail_stream(stream, &reason)?;
            }
            Ok(f)
        })
    }

    /// The item worked: its failures are forgotten.
    pub fn item_succeeded(&self, kind: ItemKind, key: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM item_failures WHERE kind = ?1 AND key = ?2",
            params![kind, key],
        )?;
        Ok(())
    }

    pub fn is_set_aside(&self, kind: ItemKind, key: &str) -> Result<bool> {
        Ok(self
            .row::<ItemFailure, _>("WHERE kind = ?1 AND key = ?2", params![kind, key])?
            .is_some_and(|f| f.set_aside))
    }

    /// Every item with failures, set-aside ones first, newest first.
    pub fn item_failures(&self) -> Result<Vec<ItemFailure>> {
        self.rows("ORDER BY set_aside DESC, updated_at DESC", [])
    }

    /// The cursors of one spool source's files being ingested.
    pub fn spool_files(&self, source: &str) -> Result<Vec<SpoolFileRow>> {
        self.rows("WHERE source = ?1 ORDER BY name", [source])
    }

    pub fn spool_file(&self, source: &str, name: &str) -> Result<Option<SpoolFileRow>> {
        self.row("WHERE source = ?1 AND name = ?2", params![source, name])
    }

    /// Starts (or restarts, when the file changed) the cursor of a spool file.
    pub fn start_spool_file(&self, f: &SpoolFileRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO spool_files (source, name, size, mtime_ns, rows_total, rows_done, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(source, name) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                 rows_total = excluded.rows_total, rows_done = excluded.rows_done,
                 updated_at = excluded.updated_at",
            params![f.source, f.name, f.size, f.mtime_ns, f.rows_total, f.rows_done, now_ms()],
        )?;
        Ok(())
    }

    /// Moves a file's cursor (in the transaction that stored its rows).
    pub fn spool_file_progress(&self, source: &str, name: &str, rows_done: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE spool_files SET rows_done = ?3, updated_at = ?4 WHERE source = ?1 AND name = ?2",
            params![source, name, rows_done, now_ms()],
        )?;
        Ok(())
    }

    /// The file left the spool (to done/ or failed/): its cursor goes.
    pub fn finish_spool_file(&self, source: &str, name: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM spool_files WHERE source = ?1 AND name = ?2",
            params![source, name],
        )?;
        Ok(())
    }
}
