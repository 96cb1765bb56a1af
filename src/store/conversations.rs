//! `conversations` and `messages`: chat history, with the FTS5 index
//! (`messages_fts`, kept by triggers) that memory retrieval searches.

use rusqlite::params;

use super::{FromRow, MessageRow, Result, Role, Store, StoreError, now_ms};

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

    /// Deletes `user`'s conversations and their messages (the FTS rows go with
    /// them, by trigger). Returns how many messages were deleted.
    pub fn forget_user(&self, user: &str) -> Result<usize> {
        self.atomically(|tx| {
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
