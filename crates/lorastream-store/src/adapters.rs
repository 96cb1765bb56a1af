//! `adapters`: one row per version (parent, stream, attempt, hyperparameters),
//! moving through training → candidate → promoted / rejected / not_learned,
//! and `adapter_events`, the record of every state change (when, who, why).
//! The served version is the promoted one with the highest `promoted_seq`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::{
    Actor, AdapterEvent, AdapterRow, AdapterState, NewAdapter, Result, StateMachine, Store,
    StoreError, StreamState, now_ms,
};

impl Store {
    /// A new version in state `training`.
    pub fn insert_adapter(&self, a: &NewAdapter<'_>) -> Result<i64> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO adapters (parent_id, stream_id, attempt, kind, path, hyperparams, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![a.parent_id, a.stream_id, a.attempt, a.kind, a.path.to_string_lossy(), a.hyperparams.to_string(), now],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a merge snapshot (written to `a.path` already) as a version and
    /// serves it: one transaction.
    pub fn insert_merge(&self, a: &NewAdapter<'_>, by: Actor, reason: &str) -> Result<i64> {
        self.atomically(|tx| {
            let now = now_ms();
            tx.execute(
                "INSERT INTO adapters (parent_id, stream_id, attempt, kind, path, hyperparams, state, promoted_seq, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'merge', ?4, ?5, 'promoted', ?6, ?7, ?7)",
                params![a.parent_id, a.stream_id, a.attempt, a.path.to_string_lossy(), a.hyperparams.to_string(), next_seq(tx)?, now],
            )?;
            let id = tx.last_insert_rowid();
            record(tx, id, None, AdapterState::Promoted, by, reason)?;
            Ok(id)
        })
    }

    pub fn adapter(&self, id: i64) -> Result<Option<AdapterRow>> {
        self.row("WHERE id = ?1", [id])
    }

    pub fn adapters(&self) -> Result<Vec<AdapterRow>> {
        self.rows("ORDER BY id", [])
    }

    /// The version being served: the promoted one promoted last.
    pub fn served_adapter(&self) -> Result<Option<AdapterRow>> {
        self.row(
            "WHERE state = 'promoted' ORDER BY promoted_seq DESC, id DESC LIMIT 1",
            [],
        )
    }

    /// Moves a version to `to`, optionally recording the decision that did it,
    /// and logs the change in `adapter_events`. Promoting gives it the next
    /// place in the promotion order (so it is served); promoting a version that
    /// is promoted already but no longer served serves it again.
    pub fn set_adapter_state(
        &self,
        id: i64,
        to: AdapterState,
        decision: Option<&Value>,
        by: Actor,
        reason: &str,
    ) -> Result<()> {
        self.atomically(|tx| {
            let from: AdapterState = tx
                .query_row("SELECT state FROM adapters WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    what: "adapter",
                    id: id.to_string(),
                })?;
            let again = from == AdapterState::Promoted && to == AdapterState::Promoted;
            if !again && !from.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    what: AdapterState::WHAT,
                    id: id.to_string(),
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
            let seq = if to == AdapterState::Promoted {
                Some(next_seq(tx)?)
            } else {
                None
            };
            tx.execute(
                "UPDATE adapters SET state = ?2, decision = COALESCE(?3, decision),
                 promoted_seq = COALESCE(?4, promoted_seq), updated_at = ?5 WHERE id = ?1",
                params![id, to, decision.map(Value::to_string), seq, now_ms()],
            )?;
            record(tx, id, Some(from), to, by, reason)
        })
    }

    /// Records the policy's decision on a candidate: its new state and, when
    /// given, its stream's, in one transaction (a crash between the two would
    /// leave a stream neither retried nor given up).
    #[allow(clippy::too_many_arguments)]
    pub fn settle_candidate(
        &self,
        id: i64,
        to: AdapterState,
        stream: i64,
        stream_to: Option<StreamState>,
        decision: &Value,
        by: Actor,
        reason: &str,
    ) -> Result<()> {
        self.atomically(|_| {
            self.set_adapter_state(id, to, Some(decision), by, reason)?;
            if let Some(s) = stream_to {
                self.set_stream_state(stream, s)?;
            }
            Ok(())
        })
    }

    /// Rolls the served version back: it becomes `rolled_back` and the version
    /// promoted before it (or the base model) is served. Returns (rolled back,
    /// now served).
    pub fn rollback(&self, by: Actor, reason: &str) -> Result<(i64, Option<i64>)> {
        self.atomically(|_| {
            let served = self.served_adapter()?.ok_or(StoreError::NotFound {
                what: "served adapter",
                id: "(the base model serves)".into(),
            })?;
            self.set_adapter_state(served.id, AdapterState::RolledBack, None, by, reason)?;
            Ok((served.id, self.served_adapter()?.map(|a| a.id)))
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

    /// The recorded state changes, oldest first (of one version, or all).
    pub fn adapter_events(&self, id: Option<i64>) -> Result<Vec<AdapterEvent>> {
        match id {
            Some(id) => self.rows("WHERE adapter_id = ?1 ORDER BY id", [id]),
            None => self.rows("ORDER BY id", []),
        }
    }
}

fn next_seq(tx: &Connection) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT COALESCE(MAX(promoted_seq), 0) + 1 FROM adapters",
        [],
        |r| r.get(0),
    )
}

fn record(
    tx: &Connection,
    id: i64,
    from: Option<AdapterState>,
    to: AdapterState,
    by: Actor,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO adapter_events (adapter_id, at, from_state, to_state, actor, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, now_ms(), from, to, by, reason],
    )?;
    Ok(())
}
