//! `examples`: chat examples made from raw items (or imported), `new` until the
//! summarizer condenses them (`ready`), then `sealed` into a stream.

use rusqlite::{OptionalExtension, params};

use super::{ExampleRow, ExampleState, Inserted, NewExample, Result, Store, content_hash, now_ms};

impl Store {
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
        self.row("WHERE id = ?1", [id])
    }

    pub fn examples_in_state(&self, state: ExampleState, limit: usize) -> Result<Vec<ExampleRow>> {
        self.rows(
            "WHERE state = ?1 ORDER BY id LIMIT ?2",
            params![state.as_str(), limit as i64],
        )
    }

    /// The newest `limit` examples, newest first (the web page shows them).
    pub fn recent_examples(&self, limit: usize) -> Result<Vec<ExampleRow>> {
        self.rows("ORDER BY id DESC LIMIT ?1", [limit as i64])
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
}
