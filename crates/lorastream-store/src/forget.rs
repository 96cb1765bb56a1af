//! Forgetting: an owner's (or a whole identity's) conversations, messages and
//! FTS rows go, with what was derived from them and not yet learned; what was
//! already learned is listed by the versions that learned it. Retention
//! deletes old conversations the same way.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{CONVERSATIONS_SOURCE, Result, Store};

/// What a forget deleted, and what it could not take back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Forgotten {
    pub conversations: usize,
    pub messages: usize,
    /// Raw items not yet processed, deleted.
    pub raw_items: usize,
    /// Examples not yet sealed into a stream, dropped.
    pub examples: usize,
    /// Examples already in a stream: the versions trained on it keep them.
    pub learned: Vec<LearnedExample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LearnedExample {
    pub example_id: i64,
    pub stream_id: i64,
    /// Promoted versions (adapter ids) trained on that stream.
    pub versions: Vec<i64>,
}

/// The conversations a forget covers, as SQL over `conversations` (params ?1, ?2).
const BY_OWNER: &str = "identity = ?1 AND (?3 = 0 OR user IS ?2)";

impl Store {
    /// Forgets `identity`'s memory: of end user `user` when `Some`, of every
    /// user of the identity when `None`.
    pub fn forget(&self, identity: &str, user: Option<Option<&str>>) -> Result<Forgotten> {
        let (one_user, who) = match user {
            Some(u) => (1, u),
            None => (0, None),
        };
        self.atomically(|tx| {
            forget_where(
                tx,
                &format!("SELECT id FROM conversations WHERE {BY_OWNER}"),
                params![identity, who, one_user],
            )
        })
    }

    /// Forgets conversation `id` of `identity`; [`crate::StoreError::NotFound`]
    /// when it is unknown or another identity's.
    pub fn forget_conversation(&self, id: &str, identity: &str) -> Result<Forgotten> {
        self.atomically(|tx| {
            self.owned_conversation(id, identity)?;
            forget_where(
                tx,
                "SELECT id FROM conversations WHERE id = ?1 AND identity = ?2",
                params![id, identity],
            )
        })
    }

    /// Deletes conversations not updated since `before_ms` (retention).
    pub fn forget_conversations_before(&self, before_ms: i64) -> Result<Forgotten> {
        self.atomically(|tx| {
            forget_where(
                tx,
                "SELECT id FROM conversations WHERE updated_at < ?1",
                params![before_ms],
            )
        })
    }
}

/// Forgets the conversations `select` (a query of conversation ids) names.
fn forget_where(tx: &Connection, select: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Forgotten> {
    tx.execute(
        "CREATE TEMP TABLE IF NOT EXISTS forget_ids (id TEXT PRIMARY KEY)",
        [],
    )?;
    tx.execute("DELETE FROM temp.forget_ids", [])?;
    let conversations = tx.execute(&format!("INSERT INTO temp.forget_ids {select}"), p)?;
    let derived = "SELECT id FROM raw_items WHERE source = ?1
                   AND json_extract(meta, '$.conversation') IN (SELECT id FROM temp.forget_ids)";
    let learned = learned_examples(tx, derived)?;
    let examples = tx.execute(
        &format!("UPDATE examples SET state = 'dropped' WHERE state IN ('new', 'ready') AND raw_item_id IN ({derived})"),
        [CONVERSATIONS_SOURCE],
    )?;
    let raw_items = tx.execute(
        &format!("DELETE FROM raw_items WHERE state = 'new' AND id IN ({derived})"),
        [CONVERSATIONS_SOURCE],
    )?;
    let messages = tx.execute(
        "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM temp.forget_ids)",
        [],
    )?;
    tx.execute(
        "DELETE FROM conversations WHERE id IN (SELECT id FROM temp.forget_ids)",
        [],
    )?;
    tx.execute("DELETE FROM temp.forget_ids", [])?;
    Ok(Forgotten {
        conversations,
        messages,
        raw_items,
        examples,
        learned,
    })
}

/// Examples derived from the raw items `derived` selects that are already in a stream.
fn learned_examples(tx: &Connection, derived: &str) -> Result<Vec<LearnedExample>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT e.id, e.stream_id,
                (SELECT json_group_array(a.id) FROM adapters a
                 WHERE a.stream_id = e.stream_id AND a.promoted_seq IS NOT NULL)
         FROM examples e WHERE e.stream_id IS NOT NULL AND e.raw_item_id IN ({derived})
         ORDER BY e.id"
    ))?;
    let rows = stmt.query_map([CONVERSATIONS_SOURCE], |r| {
        let versions: String = r.get(2)?;
        Ok(LearnedExample {
            example_id: r.get(0)?,
            stream_id: r.get(1)?,
            versions: serde_json::from_str(&versions).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
