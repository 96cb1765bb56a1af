//! Perplexity of a model on chat examples, and the matrix R[version][stream]
//! with forgetting and backward transfer (DESIGN.md §4).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::ml::data::{self, Encoded, Labels};
use crate::ml::{CausalLm, ChatTokenizer, Message, MlError};
use crate::store::EvalRow;

/// The result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    pub nll_sum: f64,
    /// Tokens the mean NLL was taken over.
    pub tokens: i64,
}

/// exp(mean NLL) over the target tokens of `examples`, batched, without gradients.
pub fn perplexity(
    model: &CausalLm,
    tok: &ChatTokenizer,
    examples: &[Vec<Message>],
    batch_size: usize,
    seq_len: usize,
    mode: Labels,
) -> Result<Perplexity, MlError> {
    let mut enc: Vec<Encoded> = Vec::new();
    for m in examples {
        if let Some(e) = data::encode(tok, m, seq_len, mode)? {
            enc.push(e);
        }
    }
    Ok(perplexity_encoded(
        model,
        &enc,
        tok.pad_id() as i64,
        batch_size,
    ))
}

/// As [`perplexity`], on examples already tokenized.
pub fn perplexity_encoded(
    model: &CausalLm,
    enc: &[Encoded],
    pad_id: i64,
    batch_size: usize,
) -> Perplexity {
    let _guard = tch::no_grad_guard();
    let mut nll = 0.0;
    let mut count = 0i64;
    for chunk in enc.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let b = data::pad(&refs, pad_id, model.device);
        let logits = model.forward_raw(&b.ids, &b.positions, b.mask.as_ref(), None, false);
        nll += data::nll_sum(&logits, &b.labels).double_value(&[]);
        count += b.targets;
    }
    Perplexity {
        perplexity: if count > 0 {
            (nll / count as f64).exp()
        } else {
            f64::NAN
        },
        nll_sum: nll,
        tokens: count,
    }
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
    /// Per stream: forgetting after the last row, R[last][i] / min(R[j][i], j ≥ row(i)) − 1.
    pub forgetting: BTreeMap<i64, f64>,
    /// Mean perplexity over the last row's cells.
    pub average_ppl: Option<f64>,
    /// Backward transfer: mean over i of R[last][i] − R[row(i)][i] (negative is better).
    pub backward_transfer: Option<f64>,
}

/// Builds the matrix from stored cells; `versions` are (adapter id, trained stream).
pub fn matrix(cells: &[EvalRow], versions: &[(i64, Option<i64>)]) -> Matrix {
    let mut streams: Vec<i64> = cells.iter().map(|c| c.stream_id).collect();
    streams.sort_unstable();
    streams.dedup();
    let get = |v: i64, s: i64| {
        cells
            .iter()
            .find(|c| c.adapter_id == v && c.stream_id == s)
            .map(|c| c.perplexity)
    };
    let grid: Vec<Vec<Option<f64>>> = versions
        .iter()
        .map(|(v, _)| streams.iter().map(|&s| get(*v, s)).collect())
        .collect();
    let last = grid.len().checked_sub(1);
    let mut forgetting = BTreeMap::new();
    let mut bwt = Vec::new();
    for (col, &s) in streams.iter().enumerate() {
        // The row where stream s was learned; the probe set (0) counts from the base row.
        let learned = versions
            .iter()
            .position(|(_, t)| *t == Some(s))
            .unwrap_or(0);
        let Some(last) = last else { continue };
        if last <= learned {
            continue;
        }
        let Some(now) = grid[last][col] else { continue };
        let best = (learned..last)
            .filter_map(|r| grid[r][col])
            .fold(f64::INFINITY, f64::min);
        if best.is_finite() {
            forgetting.insert(s, now / best - 1.0);
        }
        if let Some(then) = grid[learned][col] {
            bwt.push(now - then);
        }
    }
    let last_row: Vec<f64> = last
        .map(|l| grid[l].iter().flatten().copied().collect())
        .unwrap_or_default();
    Matrix {
        versions: versions.iter().map(|v| v.0).collect(),
        trained_on: versions.iter().map(|v| v.1).collect(),
        streams,
        cells: grid,
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
            let label = match self.trained_on[r] {
                None => "base model".to_string(),
                Some(s) => format!("v{v} (after stream {s})"),
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
        write!(o, "{:<26}", "forgetting")?;
        for s in &self.streams {
            match self.forgetting.get(s) {
                Some(f) => write!(o, "{:>11.1}%", f * 100.0),
                None => write!(o, "{:>12}", "-"),
            }?;
        }
        writeln!(o)?;
        if let Some(a) = self.average_ppl {
            writeln!(o, "average perplexity (last row): {a:.3}")?;
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
        }
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
        let m = matrix(&cells, &[(0, None), (1, Some(1)), (2, Some(2))]);
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
            t.contains("v2 (after stream 2)") && t.contains("20.0%"),
            "{t}"
        );
    }
}
