//! The matrix R\[version\]\[stream\], in one home: this file holds its
//! figures (forgetting, backward transfer; DESIGN.md §4) and the built-in
//! probe set (`probe.jsonl`: general knowledge and instruction following,
//! written for lorastream; column 0); [`fill`] measures the cells each
//! version needs (each a `lorastream_ml::train::perplexity`) and reads the
//! stored ones; [`stats`] gives each figure its paired bootstrap interval.

pub mod fill;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use lorastream_ml::Message;
use lorastream_store::EvalRow;

/// The probe set built into the binary.
pub fn builtin_probe() -> Vec<Vec<Message>> {
    #[derive(serde::Deserialize)]
    struct Ex {
        messages: Vec<Message>,
    }
    include_str!("../probe.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Ex>(l).ok())
        .map(|e| e.messages)
        .collect()
}

use crate::learn::lineage::RowKey;

/// Forgetting of stream `s` by the last version of `chain` (its lineage, root
/// first, the base model at the head):
///
/// R\[last\]\[s\] / min{ R\[j\]\[s\] : j in the chain from the version that learned s
/// up to the last one's parent } − 1
///
/// The reference is the best the served lineage ever reached on s, not just
/// the parent's figure, so small losses cannot add up unnoticed over many
/// updates. For a stream the chain never learned (the probe set, a stream
/// given up) the reference is the base model alone: what other streams taught
/// about it is incidental, what the base knew is what must not be lost.
/// `None` when the last version learned `s` itself, or a cell is missing.
pub fn forgetting(cells: &[EvalRow], chain: &[RowKey], s: i64) -> Option<f64> {
    let (&(last, _), _) = chain.split_last()?;
    let now = cell(cells, last, s)?;
    let was = best_before(cells, chain, s)?;
    let best = cell(cells, was, s)?;
    // On the examples both cells measured (samples are prefixes of one order).
    let point = crate::learn::matrix::stats::Bootstrap {
        resamples: 0,
        confidence: 0.95,
    };
    let (a, b) = (per_example(cells, was, s), per_example(cells, last, s));
    if let Some(r) = crate::learn::matrix::stats::ratio(a, b, point) {
        return r.value.is_finite().then_some(r.value - 1.0);
    }
    best.is_finite().then(|| now / best - 1.0)
}

/// The version [`forgetting`] of `s` compares the chain's last one with:
/// the best on `s` from the version that learned it (or the base alone).
pub fn best_before(cells: &[EvalRow], chain: &[RowKey], s: i64) -> Option<i64> {
    let (_, earlier) = chain.split_last()?;
    // The versions whose figures count: from the one that learned s on; for a
    // stream the lineage never learned, the base model alone.
    let reference = match earlier.iter().position(|(_, t)| *t == Some(s)) {
        Some(i) => &earlier[i..],
        None if chain.last().is_some_and(|(_, t)| *t == Some(s)) => return None,
        None => &earlier[..earlier.len().min(1)],
    };
    reference
        .iter()
        .filter_map(|(v, _)| cell(cells, *v, s).map(|p| (*v, p)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(v, _)| v)
}

/// The per-example figures of R\[v\]\[s\] (empty when not recorded).
pub fn per_example(cells: &[EvalRow], v: i64, s: i64) -> &[(f64, i64)] {
    cells
        .iter()
        .find(|c| c.adapter_id == v && c.stream_id == s)
        .map_or(&[], |c| &c.per_example)
}

/// R\[v\]\[s\], when evaluated.
pub fn cell(cells: &[EvalRow], v: i64, s: i64) -> Option<f64> {
    cells
        .iter()
        .find(|c| c.adapter_id == v && c.stream_id == s)
        .map(|c| c.perplexity)
}

/// The perplexity matrix with the figures derived from it.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Row labels: adapter versions in training order (0 = base model).
    pub versions: Vec<i64>,
    /// The stream each version was trained on (None for the base).
    pub trained_on: Vec<Option<i64>>,
    /// Column labels: stream ids (0 = probe set, when present).
    pub streams: Vec<i64>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Option<f64>>>,
    /// The lineage forgetting is measured along (its last = the served version).
    pub chain: Vec<i64>,
    /// Per stream: [`forgetting`] of the chain's last version.
    pub forgetting: BTreeMap<i64, f64>,
    /// Mean perplexity over the chain's last version's cells.
    pub average_ppl: Option<f64>,
    /// Backward transfer: mean over the streams the chain learned before its
    /// last version of R\[last\]\[i\] − R\[learned\]\[i\] (negative is better).
    pub backward_transfer: Option<f64>,
}

/// Builds the matrix from stored cells: `rows` are every version, `chain`
/// the served lineage (root first).
pub fn matrix(cells: &[EvalRow], rows: &[RowKey], chain: &[RowKey]) -> Matrix {
    let mut streams: Vec<i64> = cells.iter().map(|c| c.stream_id).collect();
    streams.sort_unstable();
    streams.dedup();
    let grid: Vec<Vec<Option<f64>>> = rows
        .iter()
        .map(|(v, _)| streams.iter().map(|&s| cell(cells, *v, s)).collect())
        .collect();
    let forgetting: BTreeMap<i64, f64> = streams
        .iter()
        .filter_map(|&s| forgetting(cells, chain, s).map(|f| (s, f)))
        .collect();
    let last = chain.last().map(|c| c.0);
    let mut bwt = Vec::new();
    if let Some((&(l, _), earlier)) = chain.split_last() {
        for (v, t) in earlier {
            if let Some(s) = t
                && let (Some(now), Some(then)) = (cell(cells, l, *s), cell(cells, *v, *s))
            {
                bwt.push(now - then);
            }
        }
    }
    let last_row: Vec<f64> = last
        .map(|l| streams.iter().filter_map(|&s| cell(cells, l, s)).collect())
        .unwrap_or_default();
    Matrix {
        versions: rows.iter().map(|v| v.0).collect(),
        trained_on: rows.iter().map(|v| v.1).collect(),
        streams,
        cells: grid,
        chain: chain.iter().map(|c| c.0).collect(),
        forgetting,
        average_ppl: (!last_row.is_empty())
            .then(|| last_row.iter().sum::<f64>() / last_row.len() as f64),
        backward_transfer: (!bwt.is_empty()).then(|| bwt.iter().sum::<f64>() / bwt.len() as f64),
    }
}

impl fmt::Display for Matrix {
    /// A table like the original experiment's: rows = after training stream k,
    /// columns = evaluated on stream i.
    fn fmt(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        let col = |s: i64| {
            if s == 0 {
                "probe".to_string()
            } else {
                format!("stream {s}")
            }
        };
        write!(o, "{:<26}", "")?;
        for &s in &self.streams {
            write!(o, "{:>12}", col(s))?;
        }
        writeln!(o)?;
        for (r, v) in self.versions.iter().enumerate() {
            let mark = if self.chain.last() == Some(v) {
                "*"
            } else {
                ""
            };
            let label = match self.trained_on[r] {
                None if *v == 0 => format!("base model{mark}"),
                None => format!("v{v} (merge){mark}"),
                Some(s) => format!("v{v} (after stream {s}){mark}"),
            };
            write!(o, "{label:<26}")?;
            for c in &self.cells[r] {
                match c {
                    Some(p) => write!(o, "{p:>12.3}"),
                    None => write!(o, "{:>12}", "-"),
                }?;
            }
            writeln!(o)?;
        }
        let served = self.chain.last().map_or("-".into(), |v| format!("v{v}"));
        write!(o, "{:<26}", format!("forgetting of {served}"))?;
        for s in &self.streams {
            match self.forgetting.get(s) {
                Some(f) => write!(o, "{:>11.1}%", f * 100.0),
                None => write!(o, "{:>12}", "-"),
            }?;
        }
        writeln!(o)?;
        if let Some(a) = self.average_ppl {
            writeln!(o, "average perplexity ({served}, marked *): {a:.3}")?;
        }
        if let Some(b) = self.backward_transfer {
            writeln!(
                o,
                "backward transfer: {b:+.3} (perplexity change on earlier streams; negative is better)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cell(a: i64, s: i64, p: f64) -> EvalRow {
        EvalRow {
            adapter_id: a,
            stream_id: s,
            perplexity: p,
            nll_sum: 0.0,
            tokens: 1,
            evaluated_at: 0,
            per_example: Vec::new(),
        }
    }

    #[test]
    fn the_builtin_probe_set_parses_whole() {
        let n = include_str!("../probe.jsonl").lines().count();
        assert!(n >= 36, "{n}");
        assert_eq!(builtin_probe().len(), n);
    }

    #[test]
    fn forgetting_and_backward_transfer() {
        // base, v1 after stream 1, v2 after stream 2.
        let cells = [
            cell(0, 1, 30.0),
            cell(0, 2, 40.0),
            cell(1, 1, 10.0),
            cell(1, 2, 35.0),
            cell(2, 1, 12.0),
            cell(2, 2, 11.0),
        ];
        let rows = [(0, None), (1, Some(1)), (2, Some(2))];
        let m = matrix(&cells, &rows, &rows);
        assert_eq!(m.streams, vec![1, 2]);
        assert!((m.forgetting[&1] - 0.2).abs() < 1e-12, "12/10 - 1");
        assert!(
            !m.forgetting.contains_key(&2),
            "stream 2 was learned in the last row"
        );
        assert!((m.average_ppl.unwrap() - 11.5).abs() < 1e-12);
        assert!((m.backward_transfer.unwrap() - 2.0).abs() < 1e-12);
        let t = m.to_string();
        assert!(
            t.contains("v2 (after stream 2)*") && t.contains("20.0%"),
            "{t}"
        );
        // Measured against the best the lineage reached, not only the parent:
        // v3 after stream 3 is 5% worse than v2 on stream 1 but 26% worse than v1.
        let mut more = cells.to_vec();
        more.extend([cell(3, 1, 12.6), cell(3, 2, 11.0), cell(3, 3, 9.0)]);
        let chain = [(0, None), (1, Some(1)), (2, Some(2)), (3, Some(3))];
        assert!((forgetting(&more, &chain, 1).unwrap() - 0.26).abs() < 1e-9);
        assert!(forgetting(&more, &chain, 2).unwrap().abs() < 1e-12);
        assert_eq!(
            forgetting(&more, &chain, 3),
            None,
            "learned by the last version"
        );
        // The probe set (never learned) is measured against the base model
        // alone: v1 improved it to 19.0, v3 lost some of that, still 3.1% better.
        more.extend([cell(0, 0, 20.0), cell(1, 0, 19.0), cell(3, 0, 19.38)]);
        assert!((forgetting(&more, &chain, 0).unwrap() + 0.031).abs() < 1e-9);
        // A NaN cell gives a NaN forgetting, which the policy refuses.
        more.push(cell(4, 1, f64::NAN));
        let nan = [(0, None), (1, Some(1)), (4, Some(4))];
        assert!(forgetting(&more, &nan, 1).unwrap().is_nan());
    }
}
