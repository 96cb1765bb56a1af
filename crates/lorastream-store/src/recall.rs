//! Memory recall: full-text search (FTS5, BM25) over one owner's messages,
//! with bounded work whatever the message: at most `max_terms` distinct terms
//! (the rarest in the index first: they tell the most), and a time budget
//! after which SQLite stops the query.

use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};

use super::{FromRow, MessageRow, Owner, Result, Store, StoreError};

/// Distinct words of a message looked up at most (the rest are not read).
const MAX_WORDS: usize = 1024;

/// A recall of `owner`'s messages relevant to `text`.
#[derive(Debug, Clone)]
pub struct RecallQuery<'a> {
    pub owner: &'a Owner,
    pub text: &'a str,
    pub max_terms: usize,
    pub limit: usize,
    pub budget: Duration,
}

impl Store {
    /// `owner`'s messages matching the query's terms, best first; stops with
    /// [`StoreError::OverBudget`] when the budget is spent.
    pub fn recall(&mut self, q: &RecallQuery<'_>) -> Result<Vec<MessageRow>> {
        let deadline = Instant::now() + q.budget;
        self.conn
            .progress_handler(1000, Some(move || Instant::now() > deadline))?;
        let found = self.recall_terms(q);
        self.conn.progress_handler(0, None::<fn() -> bool>)?;
        found.map_err(|e| match e {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                StoreError::OverBudget {
                    what: "memory recall",
                    budget_ms: q.budget.as_millis() as u64,
                }
            }
            other => other,
        })
    }

    fn recall_terms(&self, q: &RecallQuery<'_>) -> Result<Vec<MessageRow>> {
        let terms = self.rarest_terms(q.text, q.max_terms)?;
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let expr = terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        self.query_all(
            "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at
             FROM messages_fts f JOIN messages m ON m.id = f.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND c.identity = ?2 AND c.user IS ?3
             ORDER BY bm25(messages_fts) LIMIT ?4",
            params![expr, q.owner.identity, q.owner.user, q.limit as i64],
            MessageRow::from_row,
        )
    }

    /// The distinct words of `text` that occur in the index, rarest first, at
    /// most `max`. Words are letters and digits, lower-cased as FTS5's
    /// default tokenizer folds them; quoting them keeps FTS5 syntax inert.
    fn rarest_terms(&self, text: &str, max: usize) -> Result<Vec<String>> {
        let mut words: Vec<String> = Vec::new();
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            if words.len() >= MAX_WORDS {
                break;
            }
            let w = w.to_lowercase();
            if !w.is_empty() && !words.contains(&w) {
                words.push(w);
            }
        }
        let mut counted = Vec::with_capacity(words.len());
        let mut stmt = self
            .conn
            .prepare_cached("SELECT doc FROM messages_vocab WHERE term = ?1")?;
        for w in words {
            let doc: Option<i64> = stmt.query_row([&w], |r| r.get(0)).optional()?;
            if let Some(doc) = doc.filter(|&d| d > 0) {
                counted.push((doc, w));
            }
        }
        counted.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        Ok(counted.into_iter().take(max).map(|(_, w)| w).collect())
    }
}
