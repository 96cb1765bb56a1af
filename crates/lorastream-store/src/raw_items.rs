//! `raw_items`: crawled records, deduplicated by content hash, `new` until the
//! preprocessor turns them into examples (`processed`) or drops them with a reason.

use rusqlite::params;

use super::{Inserted, NewRawItem, RawItem, RawState, Result, Store, content_hash, now_ms};

impl Store {
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
        self.row("WHERE id = ?1", [id])
    }

    /// Up to `limit` items in `state`, oldest first.
    pub fn raw_items_in_state(&self, state: RawState, limit: usize) -> Result<Vec<RawItem>> {
        self.rows(
            "WHERE state = ?1 ORDER BY id LIMIT ?2",
            params![state.as_str(), limit as i64],
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
    pub fn raw_item_counts(&self) -> Result<Vec<(RawState, Option<String>, i64)>> {
        self.query_all(
            "SELECT state, drop_reason, COUNT(*) FROM raw_items GROUP BY state, drop_reason ORDER BY 1, 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }
}
