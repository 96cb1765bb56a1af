//! Token generation with a KV cache: greedy, temperature, top-k, top-p,
//! repetition penalty, stop tokens and stop strings, seedable. Tokens are
//! handed to a callback as they come, for streaming.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::MlError;
use super::model::{CausalLm, KvCache};
use super::rng::Rng;
use super::tokenizer::ChatTokenizer;
use lorastream_base::text_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f64,
    /// 1.0 = off; > 1 discourages tokens already in the sequence (as transformers).
    pub repetition_penalty: f64,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

text_enum! {
    /// Why generation ended (OpenAI's `finish_reason` spelling).
    pub enum FinishReason {
        /// `max_new_tokens` reached.
        Length = "length",
        /// An end-of-sequence token or a stop string.
        Stop = "stop",
        /// The callback asked to stop (client went away).
        Cancelled = "cancelled",
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
}

/// Picks the next token from `logits` (one row, f32) given the sequence so far.
fn pick(logits: &mut [f32], seen: &[u32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.repetition_penalty != 1.0 {
        let pen = p.repetition_penalty as f32;
        let mut done = std::collections::HashSet::new();
        for &t in seen {
            if let Some(l) = logits.get_mut(t as usize)
                && done.insert(t)
            {
                *l = if *l < 0.0 { *l * pen } else { *l / pen };
            }
        }
    }
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as u32
    };
    if p.temperature <= 0.0 {
        return argmax();
    }
    let t = p.temperature as f32;
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / t))
        .collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, &x) in probs.iter().enumerate() {
            acc += x;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        cand.truncate(keep);
        let s: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= s);
    }
    let mut u = rng.next_f64();
    for (c, x) in cand.iter().zip(&probs) {
        if u < *x {
            return c.0;
        }
        u -= x;
    }
    cand.last().map_or_else(argmax, |c| c.0)
}

/// Generates after `prompt` (token ids). `on_token(id, text_delta)` is called
/// for each new token; returning `Break` cancels. Runs without gradients.
pub fn generate(
    model: &CausalLm,
    tok: &ChatTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<Generation, MlError> {
    let max_pos = model.config.max_position_embeddings;
    if prompt.is_empty() {
        return Err(MlError::Template("empty prompt".into()));
    }
    if prompt.len() >= max_pos {
        return Err(MlError::Template(format!(
            "prompt of {} tokens does not fit the model's {max_pos} positions",
            prompt.len()
        )));
    }
    let eos = stop_ids(model, tok);
    let mut rng = Rng::new(params.seed);
    let mut cache = model.new_cache();
    let mut seen: Vec<u32> = prompt.to_vec();
    let mut text = Text::default();
    let mut finish = FinishReason::Length;
    let budget = params.max_new_tokens.min(max_pos - prompt.len());
    let _guard = tch::no_grad_guard();
    let mut input: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    for _ in 0..budget {
        let next = next_token(model, &mut cache, &input, &seen, params, &mut rng)?;
        if !params.ignore_eos && eos.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        seen.push(next);
        input = vec![next as i64];
        let delta = match text.push(tok, next, &params.stop) {
            Some(Emit::Stop) => {
                finish = FinishReason::Stop;
                break;
            }
            Some(Emit::Delta(d)) => d,
            None => String::new(),
        };
        if on_token(next, &delta).is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
    }
    if finish == FinishReason::Length && text.text.is_empty() {
        text.text = tok.decode(&text.ids);
    }
    Ok(Generation {
        ids: text.ids,
        text: text.text,
        finish,
        prompt_tokens: prompt.len(),
    })
}

/// The tokens that end an answer: the model's and the tokenizer's EOS.
fn stop_ids(model: &CausalLm, tok: &ChatTokenizer) -> Vec<u32> {
    model
        .config
        .eos_token_ids
        .iter()
        .map(|&i| i as u32)
        .chain(tok.eos_id())
        .collect()
}

/// One decoding step: feeds `input` and picks the next token.
fn next_token(
    model: &CausalLm,
    cache: &mut KvCache,
    input: &[i64],
    seen: &[u32],
    params: &SamplingParams,
    rng: &mut Rng,
) -> Result<u32, MlError> {
    let ids = Tensor::from_slice(input)
        .unsqueeze(0)
        .to_device(model.device);
    let last = model.forward_last(&ids, Some(cache)).squeeze_dim(0);
    if params.temperature <= 0.0 && params.repetition_penalty == 1.0 {
        return Ok(last.argmax(-1, false).int64_value(&[]) as u32);
    }
    let mut row: Vec<f32> = Vec::try_from(last.to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
    Ok(pick(&mut row, seen, params, rng))
}

/// The answer's tokens, its text, and how much of the text was emitted.
#[derive(Default)]
struct Text {
    ids: Vec<u32>,
    text: String,
    emitted: usize,
}

enum Emit {
    /// New whole characters, none of which may begin a stop string.
    Delta(String),
    /// A stop string appeared: the text is cut before it.
    Stop,
}

impl Text {
    /// Adds a token; text only once it decodes to whole characters (`None`
    /// while a character is incomplete). Text that could be the start of a
    /// stop string is held back until the next tokens show it is not (the
    /// caller emits what is left of `text` when generation ends).
    fn push(&mut self, tok: &ChatTokenizer, id: u32, stop: &[String]) -> Option<Emit> {
        self.ids.push(id);
        let full = tok.decode(&self.ids);
        if full.ends_with('\u{FFFD}')
            || full.len() < self.text.len()
            || !full.starts_with(&self.text)
        {
            return None;
        }
        self.text = full;
        if let Some(cut) = stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            return Some(Emit::Stop);
        }
        let safe = self.text.len() - held_back(&self.text, stop);
        if safe <= self.emitted {
            return None;
        }
        let delta = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        Some(Emit::Delta(delta))
    }
}

/// Bytes at the end of `text` that begin some stop string (on a char boundary).
fn held_back(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .filter_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k))
                .find(|&k| text.ends_with(&s[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_possible_stop_string_start_is_held_back() {
        let stop = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello EN", &stop), 2);
        assert_eq!(held_back("hello E", &stop), 1);
        assert_eq!(held_back("hello\n", &stop), 1);
        assert_eq!(held_back("hello", &stop), 0);
        assert_eq!(held_back("hello END", &[]), 0);
    }

    #[test]
    fn greedy_picks_the_max_and_penalty_applies() {
        let p = SamplingParams::default();
        let mut rng = Rng::new(1);
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &[], &p, &mut rng), 1);
        let p = SamplingParams {
            repetition_penalty: 4.0,
            ..SamplingParams::default()
        };
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &[1], &p, &mut rng), 2);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..SamplingParams::default()
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| pick(&mut [1.0, 4.0, 0.9, 5.0, -1.0], &[], &p, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(
            a.iter().all(|&t| t == 3 || t == 1),
            "top-k 2 keeps tokens 3 and 1"
        );
        assert!(a.contains(&1), "token 1 has 27% of the mass: {a:?}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            assert_eq!(pick(&mut [0.0, 3.0, 0.0, 0.0], &[], &p, &mut rng), 1);
        }
    }
}
