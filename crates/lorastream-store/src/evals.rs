//! `evals`: the perplexity matrix, one cell per (adapter version, stream).

use rusqlite::params;

use super::{EvalRow, Result, Store, now_ms};

impl Store {
    /// Records R\[adapter\]\[stream\]; `adapter_id` 0 is the base model, `stream_id` 0 the probe set.
    /// A NaN (no target tokens, diverged weights) is stored as +infinity:
    /// SQLite would store NaN as NULL, which the table refuses, and the cell
    /// would be retried forever; infinite is what the policy refuses with a
    /// "not finite" reason, so the candidate is decided.
    pub fn upsert_eval(&self, e: &EvalRow) -> Result<()> {
        let finite_or_inf = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
        self.conn.execute(
            "INSERT INTO evals (adapter_id, stream_id, perplexity, nll_sum, tokens, evaluated_at, per_example)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(adapter_id, stream_id) DO UPDATE SET perplexity = excluded.perplexity,
               nll_sum = excluded.nll_sum, tokens = excluded.tokens, evaluated_at = excluded.evaluated_at,
               per_example = excluded.per_example",
            params![
                e.adapter_id,
                e.stream_id,
                finite_or_inf(e.perplexity),
                finite_or_inf(e.nll_sum),
                e.tokens,
                now_ms(),
                per_example(&e.per_example)
            ],
        )?;
        Ok(())
    }

    /// Forgets every cell (`eval --full` measures them all again); how many.
    pub fn clear_evals(&self) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM evals", [])?)
    }

    pub fn evals(&self) -> Result<Vec<EvalRow>> {
        self.rows("ORDER BY 1, 2", [])
    }
}

/// The per-example figures as stored: JSON, NULL when there are none. A
/// non-finite NLL (JSON has no NaN) is stored as a very large one.
fn per_example(v: &[(f64, i64)]) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let finite: Vec<(f64, i64)> = v
        .iter()
        .map(|&(n, t)| (if n.is_finite() { n } else { f64::MAX }, t))
        .collect();
    serde_json::to_string(&finite).ok()
}
