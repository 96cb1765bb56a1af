//! `adapters`: one row per trained version (parent, stream, attempt,
//! hyperparameters), moving through training → candidate → promoted/rejected.

use std::path::Path;

use rusqlite::params;
use serde_json::Value;

use super::{AdapterRow, AdapterState, NewAdapter, Result, Store, now_ms};

impl Store {
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
        self.row("WHERE id = ?1", [id])
    }

    pub fn adapters(&self) -> Result<Vec<AdapterRow>> {
        self.rows("ORDER BY id", [])
    }

    /// The adapter being served: the newest promoted version not rolled back.
    pub fn served_adapter(&self) -> Result<Option<AdapterRow>> {
        self.row(
            "WHERE state = 'promoted' ORDER BY updated_at DESC, id DESC LIMIT 1",
            [],
        )
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
}
