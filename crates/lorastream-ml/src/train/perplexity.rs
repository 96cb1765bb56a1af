//! Perplexity of a model on chat examples: exp(mean NLL) over the target
//! tokens, batched by length, without gradients.

use serde::Serialize;

use crate::train::data::{self, Encoded, Labels};
use crate::{CausalLm, ChatTokenizer, Message, MlError};

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    pub nll_sum: f64,
    /// Tokens the mean NLL was taken over.
    pub tokens: i64,
    /// (NLL sum, tokens) of each example, in the order given.
    pub per_example: Vec<(f64, i64)>,
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
    perplexity_within(model, tok, examples, (batch_size, seq_len), mode, 0)
}

/// As [`perplexity`], on the first of `examples` whose target tokens reach
/// `max_tokens` (at least one example; 0 = all): a sample, when `examples`
/// are in a random order, and a prefix of any larger sample of them.
pub fn perplexity_within(
    model: &CausalLm,
    tok: &ChatTokenizer,
    examples: &[Vec<Message>],
    (batch_size, seq_len): (usize, usize),
    mode: Labels,
    max_tokens: usize,
) -> Result<Perplexity, MlError> {
    let mut enc: Vec<Encoded> = Vec::new();
    let mut tokens = 0;
    for m in examples {
        if max_tokens > 0 && tokens >= max_tokens {
            break;
        }
        if let Some(e) = data::encode(tok, m, seq_len, mode)? {
            tokens += e.labels.iter().filter(|&&l| l != data::IGNORE).count();
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
    // Batches of similar lengths: a sum over every token does not depend on
    // the order, and short examples no longer pay for a long one's padding.
    let mut by_length: Vec<(usize, &Encoded)> = enc.iter().enumerate().collect();
    by_length.sort_by_key(|(_, e)| e.ids.len());
    let mut per_example = vec![(0.0, 0i64); enc.len()];
    let _busy = crate::runtime::threads::busy(crate::runtime::threads::Work::Learn);
    for refs in by_length.chunks(batch_size.max(1)) {
        crate::runtime::threads::apply(crate::runtime::threads::Work::Learn);
        let batch: Vec<&Encoded> = refs.iter().map(|(_, e)| *e).collect();
        let b = data::pad(&batch, pad_id, model.device);
        let hidden = model.hidden(&b.ids, &b.positions, b.mask.as_ref(), None, false);
        let rows = crate::train::loss::nll_per_row(model, &hidden, &b.labels);
        for ((i, _), row) in refs.iter().zip(rows) {
            per_example[*i] = row;
        }
    }
    let nll: f64 = per_example.iter().map(|r| r.0).sum();
    let count: i64 = per_example.iter().map(|r| r.1).sum();
    Perplexity {
        perplexity: if count > 0 {
            (nll / count as f64).exp()
        } else {
            f64::NAN
        },
        nll_sum: nll,
        tokens: count,
        per_example,
    }
}
