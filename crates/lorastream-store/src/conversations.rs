//! `conversations` and `messages`: chat history, with the FTS5 index
//! (`messages_fts`, kept by triggers) that memory retrieval searches.

use rusqlite::{OptionalExtension, params};

use crate::SourceKind;

use super::{FromRow, Inserted, MessageRow, NewRawItem, Result, Role, Store, StoreError, now_ms};

/// The `raw_items.source` of what users taught through the chat API.
pub const CONVERSATIONS_SOURCE: &str = "conversations";

/// A rated exchange: what `rate_message` found.
#[derive(Debug, Clone)]
pub struct RatedExchange {
    pub user: Option<String>,
    /// The user message the rated answer replied to, and the answer.
    pub question: Option<String>,
    pub answer: String,
    /// The conversation opted in to training.
    pub learn: bool,
}

impl Store {
    pub fn create_conversation(&self, id: &str, title: Option<&str>, learn: bool) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO conversations (id, title, learn, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, title, learn, now],
        )?;
        Ok(())
    }

    pub fn add_message(&self, conversation_id: &str, role: Role, content: &str) -> Result<i64> {
        self.atomically(|tx| {
            let now = now_ms();
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
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn messages(&self, conversation_id: &str) -> Result<Vec<MessageRow>> {
        self.rows("WHERE conversation_id = ?1 ORDER BY id", [conversation_id])
    }

    /// Full-text search over past messages, best match first. `query` is plain
    /// text: each word is quoted, so FTS5 operators in user input are inert.
    pub fn search_messages(&self, query: &str, limit: usize) -> Result<Vec<MessageRow>> {
        let Some(terms) = fts_terms(query) else {
            return Ok(Vec::new());
        };
        self.query_all(
            "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at
             FROM messages_fts f JOIN messages m ON m.id = f.rowid
             WHERE messages_fts MATCH ?1 ORDER BY bm25(messages_fts) LIMIT ?2",
            params![terms, limit as i64],
            MessageRow::from_row,
        )
    }

    /// Creates the conversation unless it exists (a conversation keeps its user).
    pub fn ensure_conversation(&self, id: &str, user: Option<&str>) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO conversations (id, user, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(id) DO NOTHING",
            params![id, user, now],
        )?;
        Ok(())
    }

    /// Like [`search_messages`](Self::search_messages), over `user`'s conversations only.
    pub fn search_user_messages(
        &self,
        user: &str,
        query: &str,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let Some(terms) = fts_terms(query) else {
            return Ok(Vec::new());
        };
        self.query_all(
            "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at
             FROM messages_fts f JOIN messages m ON m.id = f.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND c.user = ?2 ORDER BY bm25(messages_fts) LIMIT ?3",
            params![terms, user, limit as i64],
            MessageRow::from_row,
        )
    }

    /// Every message of `user`'s conversations, oldest first.
    pub fn user_messages(&self, user: &str) -> Result<Vec<MessageRow>> {
        self.rows(
            "WHERE conversation_id IN (SELECT id FROM conversations WHERE user = ?1) ORDER BY id",
            [user],
        )
    }

    /// Records a rating of assistant message `message_id` of `conversation`
    /// (and the conversation's opt-in to training, once given). Returns the
    /// exchange it rated.
    pub fn rate_message(
        &self,
        conversation: &str,
        message_id: Option<i64>,
        rating: i64,
        learn: bool,
    ) -> Result<RatedExchange> {
        self.atomically(|tx| {
            let not_found = || StoreError::NotFound {
                what: "assistant message",
                id: format!("{conversation}/{}", message_id.map_or("last".into(), |m| m.to_string())),
            };
            let (id, answer): (i64, String) = tx
                .query_row(
                    "SELECT id, content FROM messages WHERE conversation_id = ?1 AND role = 'assistant'
                     AND (?2 IS NULL OR id = ?2) ORDER BY id DESC LIMIT 1",
                    params![conversation, message_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(not_found)?;
            let question: Option<String> = tx
                .query_row(
                    "SELECT content FROM messages WHERE conversation_id = ?1 AND role = 'user' AND id < ?2
                     ORDER BY id DESC LIMIT 1",
                    params![conversation, id],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO message_feedback (message_id, rating, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(message_id) DO UPDATE SET rating = excluded.rating, created_at = excluded.created_at",
                params![id, rating, now_ms()],
            )?;
            if learn {
                tx.execute("UPDATE conversations SET learn = 1 WHERE id = ?1", [conversation])?;
            }
            let (user, learn): (Option<String>, bool) = tx.query_row(
                "SELECT user, learn FROM conversations WHERE id = ?1",
                [conversation],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(RatedExchange {
                user,
                question,
                answer,
                learn,
            })
        })
    }

    /// Stores a helpful exchange as a raw item of the `conversations` source,
    /// for the normal preprocessing path.
    pub fn learn_exchange(
        &self,
        conversation: &str,
        user: Option<&str>,
        question: &str,
        answer: &str,
    ) -> Result<Inserted> {
        self.ensure_source(CONVERSATIONS_SOURCE, SourceKind::Conversations)?;
        let external = format!(
            "{conversation}:{}",
            crate::content_hash(&[question, answer])
        );
        self.insert_raw_item(&NewRawItem {
            source: CONVERSATIONS_SOURCE,
            external_id: Some(&external),
            url: None,
            question,
            answer: Some(answer),
            meta: serde_json::json!({"label": CONVERSATIONS_SOURCE, "user": user, "conversation": conversation}),
        })
    }

    /// Deletes `user`'s conversations and their messages (the FTS rows go with
    /// them, by trigger), and keeps what they taught out of future training:
    /// their raw items not yet processed are deleted, their examples not yet
    /// sealed into a stream are dropped. Returns how many messages were deleted.
    pub fn forget_user(&self, user: &str) -> Result<usize> {
        self.atomically(|tx| {
            tx.execute(
                "UPDATE examples SET state = 'dropped' WHERE state IN ('new', 'ready') AND raw_item_id IN
                 (SELECT id FROM raw_items WHERE source = ?1 AND json_extract(meta, '$.user') = ?2)",
                params![CONVERSATIONS_SOURCE, user],
            )?;
            tx.execute(
                "DELETE FROM raw_items WHERE source = ?1 AND state = 'new' AND json_extract(meta, '$.user') = ?2",
                params![CONVERSATIONS_SOURCE, user],
            )?;
            let n = tx.execute(
                "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conversations WHERE user = ?1)",
                [user],
            )?;
            tx.execute("DELETE FROM conversations WHERE user = ?1", [user])?;
            Ok(n)
        })
    }
}

/// `query` as an FTS5 expression of quoted words joined by OR, so operators in
/// user input are inert; `None` when it has no words.
fn fts_terms(query: &str) -> Option<String> {
    let terms: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{w}\""))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" OR "))
}
