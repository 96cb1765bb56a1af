//! Memory recall: Okapi BM25 over one owner's messages, every statistic of
//! it (how many messages hold a term, how long messages are) counted over
//! that owner's messages only, so nothing another identity or end user said
//! changes which memories come back or how many. FTS5 only finds the
//! owner's messages holding a query term; the ranking is computed here.
//! The work is bounded whatever the message: at most `max_terms` distinct
//! terms (stop words out, longest first), at most [`MAX_CANDIDATES`] messages
//! scored, and a time budget after which SQLite stops the query.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::{FromRow, MessageRow, Owner, Result, Store, StoreError};

/// Distinct words of a message looked at (the rest are not read).
const MAX_WORDS: usize = 1024;
/// Messages scored at most per recall (the owner's oldest matches beyond it
/// are not read).
pub const MAX_CANDIDATES: usize = 20_000;
/// BM25's term-frequency saturation and length normalisation (Robertson's
/// textbook values).
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// A recall of `owner`'s messages relevant to `text`.
#[derive(Debug, Clone)]
pub struct RecallQuery<'a> {
    pub owner: &'a Owner,
    /// Only this conversation's messages (a request that continues a
    /// conversation without naming its end user recalls from it alone).
    pub conversation: Option<&'a str>,
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
        let terms = query_terms(q.text, q.max_terms);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let expr = terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let owner = (&q.owner.identity, &q.owner.user, q.conversation);
        let candidates = self.query_all(
            "SELECT m.id, m.conversation_id, m.role, m.content, m.created_at
             FROM messages_fts f JOIN messages m ON m.id = f.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND c.identity = ?2 AND c.user IS ?3
               AND (?4 IS NULL OR m.conversation_id = ?4)
             ORDER BY m.id DESC LIMIT ?5",
            params![expr, owner.0, owner.1, owner.2, MAX_CANDIDATES as i64],
            MessageRow::from_row,
        )?;
        let (n, avg_chars): (i64, f64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(AVG(LENGTH(m.content)), 0)
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE c.identity = ?1 AND c.user IS ?2 AND (?3 IS NULL OR m.conversation_id = ?3)",
            params![owner.0, owner.1, owner.2],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut ranked = rank(&terms, candidates, n as f64, avg_chars);
        ranked.truncate(q.limit);
        Ok(ranked)
    }
}

/// `candidates` (newest first) ranked by BM25 over `terms`, with `n`
/// messages of `avg_chars` characters on average in the owner's collection;
/// ties keep the newer first.
fn rank(terms: &[String], candidates: Vec<MessageRow>, n: f64, avg_chars: f64) -> Vec<MessageRow> {
    let counts: Vec<HashMap<&str, f64>> = candidates
        .iter()
        .map(|m| {
            let mut tf: HashMap<&str, f64> = HashMap::new();
            for w in words(&m.content) {
                if let Some(t) = terms.iter().find(|t| **t == w) {
                    *tf.entry(t.as_str()).or_default() += 1.0;
                }
            }
            tf
        })
        .collect();
    let n = n.max(candidates.len() as f64);
    let idf: HashMap<&str, f64> = terms
        .iter()
        .map(|t| {
            let df = counts.iter().filter(|c| c.contains_key(t.as_str())).count() as f64;
            (t.as_str(), ((n - df + 0.5) / (df + 0.5) + 1.0).ln())
        })
        .collect();
    let avg = avg_chars.max(1.0);
    let mut scored: Vec<(f64, MessageRow)> = candidates
        .into_iter()
        .zip(&counts)
        .map(|(m, tf)| {
            let norm = K1 * (1.0 - B + B * m.content.chars().count() as f64 / avg);
            let score: f64 = tf
                .iter()
                .map(|(t, f)| idf[t] * f * (K1 + 1.0) / (f + norm))
                .sum();
            (if score.is_finite() { score } else { 0.0 }, m)
        })
        .collect();
    // A stable sort: equal scores keep the newest-first order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// The words of `text` as the index folds them: runs of letters and digits,
/// lower-cased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The distinct words of `text` worth searching for: stop words out, the
/// longest first (ties in order of appearance), at most `max`. Chosen from
/// the text alone, so no one's messages steer which terms are asked for;
/// quoting them in the query keeps FTS5 syntax inert.
pub fn query_terms(text: &str, max: usize) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for w in words(text).take(MAX_WORDS * 4) {
        if terms.len() >= MAX_WORDS {
            break;
        }
        if !super::stopwords::is_stop_word(&w) && !terms.contains(&w) {
            terms.push(w);
        }
    }
    terms.sort_by_key(|t| std::cmp::Reverse(t.chars().count()));
    terms.truncate(max);
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_come_from_the_text_alone() {
        let t = query_terms("When is Melanie planning on going camping?", 32);
        assert_eq!(t, ["planning", "melanie", "camping", "going"]);
        assert_eq!(query_terms("What is it?", 32), Vec::<String>::new());
        assert_eq!(query_terms("alpha beta gamma delta", 2), ["alpha", "gamma"]);
    }
}
