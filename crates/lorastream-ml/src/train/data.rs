//! Chat examples to model inputs: rendering with the chat template, labels on
//! assistant tokens (or every token), truncation, padding and packing.

use tch::{Device, Kind, Tensor};

use crate::MlError;
use crate::tokenizer::{ChatTokenizer, Message};

/// Label value the loss ignores.
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Loss on the tokens of assistant messages (and the template's end-of-turn marks).
    Assistant,
    /// Loss on every token.
    All,
}

/// One tokenized example: `labels[i]` is the target at position `i` (the id
/// itself, or [`IGNORE`]); the shift to next-token prediction happens in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Encoded {
    /// Tokens that contribute to the loss after the shift.
    pub fn targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// Byte spans of the assistant messages in the rendered text. Each span starts
/// where the template's generation prompt ends and runs as far as the rendering
/// of the conversation up to that message agrees with the full text, so
/// end-of-turn tokens are learned too (and a final end-of-text token that the
/// template writes only after the last message).
fn assistant_spans(
    tok: &ChatTokenizer,
    messages: &[Message],
    full: &str,
) -> Result<Option<Vec<(usize, usize)>>, MlError> {
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = tok.render(&messages[..i], true)?;
        let upto = tok.render(&messages[..=i], false)?;
        let end = full
            .char_indices()
            .zip(upto.chars())
            .find(|((_, a), b)| a != b)
            .map_or(upto.len().min(full.len()), |((at, _), _)| at);
        if !full.starts_with(&before) || end <= before.len() {
            // A template whose renderings are not prefixes of each other.
            return Ok(None);
        }
        spans.push((before.len(), end));
    }
    Ok(Some(spans))
}

/// Renders and tokenizes `messages`, truncated to `seq_len` tokens. Returns
/// `None` for examples with fewer than two tokens or nothing to learn.
pub fn encode(
    tok: &ChatTokenizer,
    messages: &[Message],
    seq_len: usize,
    mode: Labels,
) -> Result<Option<Encoded>, MlError> {
    let text = tok.render(messages, false)?;
    let enc = tok
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| MlError::Template(format!("tokenizing: {e}")))?;
    let n = enc.get_ids().len().min(seq_len);
    let ids: Vec<i64> = enc.get_ids()[..n].iter().map(|&i| i as i64).collect();
    let labels = match mode {
        Labels::All => ids.clone(),
        Labels::Assistant => match assistant_spans(tok, messages, &text)? {
            Some(spans) => ids
                .iter()
                .zip(enc.get_offsets())
                .map(|(&id, &(start, _))| {
                    let inside = spans.iter().any(|&(a, b)| start >= a && start < b);
                    if inside { id } else { IGNORE }
                })
                .collect(),
            None => {
                tracing::warn!(
                    "chat template renderings are not prefixes of each other; training on every token"
                );
                ids.clone()
            }
        },
    };
    let e = Encoded { ids, labels };
    if e.ids.len() < 2 || e.targets() == 0 {
        return Ok(None);
    }
    Ok(Some(e))
}

/// Model inputs for one batch.
pub struct Batch {
    /// `[b, t]`
    pub ids: Tensor,
    /// `[b, t]` positions (restart at 0 for each packed example).
    pub positions: Tensor,
    /// Boolean `[b, 1, t, t]` (true = may attend); `None` when every row is one
    /// unpadded example (plain causal attention).
    pub mask: Option<Tensor>,
    /// `[b, t]` targets before the shift, [`IGNORE`] where not learned.
    pub labels: Tensor,
    /// Non-pad tokens fed to the model.
    pub tokens: i64,
    /// Target tokens after the shift.
    pub targets: i64,
}

/// Right-pads each example to the longest in the batch.
pub fn pad(examples: &[&Encoded], pad_id: i64, device: Device) -> Batch {
    let b = examples.len() as i64;
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1) as i64;
    let mut ids = vec![pad_id; (b * t) as usize];
    let mut labels = vec![IGNORE; (b * t) as usize];
    for (r, e) in examples.iter().enumerate() {
        let off = r * t as usize;
        ids[off..off + e.ids.len()].copy_from_slice(&e.ids);
        labels[off..off + e.labels.len()].copy_from_slice(&e.labels);
    }
    let segments: Vec<Vec<usize>> = examples.iter().map(|e| vec![e.ids.len()]).collect();
    let mut batch = build(ids, labels, &segments, b, t, device, examples);
    if examples.iter().all(|e| e.ids.len() as i64 == t) {
        batch.mask = None;
    }
    batch
}

/// Packs examples into rows of at most `seq_len` tokens; attention stays inside
/// each example (block-diagonal causal mask) and positions restart per example.
pub fn pack(examples: &[&Encoded], seq_len: usize, pad_id: i64, device: Device) -> Batch {
    let mut rows: Vec<Vec<&Encoded>> = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    for e in examples {
        match used.iter().position(|&u| u + e.ids.len() <= seq_len) {
            Some(i) => {
                rows[i].push(e);
                used[i] += e.ids.len();
            }
            None => {
                rows.push(vec![e]);
                used.push(e.ids.len());
            }
        }
    }
    let b = rows.len() as i64;
    let t = used.iter().copied().max().unwrap_or(1) as i64;
    let mut ids = vec![pad_id; (b * t) as usize];
    let mut labels = vec![IGNORE; (b * t) as usize];
    let mut segments = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut off = r * t as usize;
        for e in row {
            ids[off..off + e.ids.len()].copy_from_slice(&e.ids);
            labels[off..off + e.labels.len()].copy_from_slice(&e.labels);
            // The first token of a packed example is never a target of the one before.
            labels[off] = IGNORE;
            off += e.ids.len();
        }
        segments.push(row.iter().map(|e| e.ids.len()).collect());
    }
    build(ids, labels, &segments, b, t, device, examples)
}

/// Tensors for rows of `segments` (example lengths, laid end to end): positions
/// restart per segment, and the boolean mask (true = may attend) is causal
/// within each segment, as transformers' SDPA masks are.
fn build(
    ids: Vec<i64>,
    labels: Vec<i64>,
    segments: &[Vec<usize>],
    b: i64,
    t: i64,
    device: Device,
    examples: &[&Encoded],
) -> Batch {
    let tu = t as usize;
    let mut positions = vec![0i64; (b * t) as usize];
    // allowed[r][i][j]: query i may see key j.
    let mut allowed = vec![false; (b * t * t) as usize];
    for (r, segs) in segments.iter().enumerate() {
        let mut start = 0;
        for &len in segs {
            for i in 0..len {
                positions[r * tu + start + i] = i as i64;
                for j in 0..=i {
                    allowed[r * tu * tu + (start + i) * tu + start + j] = true;
                }
            }
            start += len;
        }
        // Padding rows attend to themselves so no row is fully masked.
        for i in start..tu {
            allowed[r * tu * tu + i * tu + i] = true;
        }
    }
    let allowed = Tensor::from_slice(&allowed)
        .view([b, 1, t, t])
        .to_device(device);
    let mask = allowed;
    let tokens = examples.iter().map(|e| e.ids.len() as i64).sum();
    let targets = examples.iter().map(|e| e.targets() as i64).sum();
    Batch {
        ids: Tensor::from_slice(&ids).view([b, t]).to_device(device),
        positions: Tensor::from_slice(&positions)
            .view([b, t])
            .to_device(device),
        mask: Some(mask),
        labels: Tensor::from_slice(&labels).view([b, t]).to_device(device),
        tokens,
        targets,
    }
}

/// Summed next-token negative log-likelihood over the targets of a batch, in f32.
/// As transformers does: the labels are shifted left (with an ignored last
/// column) instead of slicing the logits, so the `[b, t, vocab]` logits are
/// never copied.
pub fn nll_sum(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (b, t, v) = logits.size3().expect("logits are [b, t, vocab]");
    let ignore = Tensor::full([b, 1], IGNORE, (Kind::Int64, labels.device()));
    let shifted = Tensor::cat(&[&labels.narrow(1, 1, t - 1), &ignore], 1);
    logits
        .to_kind(Kind::Float)
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(&shifted.view([-1]), None, tch::Reduction::Sum, IGNORE, 0.0)
}
