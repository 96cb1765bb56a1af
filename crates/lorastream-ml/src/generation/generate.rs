//! Decoding an answer: [`Decoder`] turns each step's logits into tokens and
//! text (sampling as [`crate::generation::sampling`] says, stop tokens, stop strings
//! held back until they cannot match, the token budget); [`generate`] runs
//! it on one sequence with a KV cache, handing tokens to a callback as they
//! come, for streaming.

use std::ops::ControlFlow;

use tch::{Kind, Tensor};

use crate::MlError;
pub use crate::generation::sampling::{Logprob, SamplingParams};
use crate::generation::sampling::{Seen, logprob, pick};
use crate::model::CausalLm;
use crate::runtime::rng::Rng;
use crate::tokenizer::ChatTokenizer;
use lorastream_base::text_enum;

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

/// One answer being decoded: the penalties' memory, the sampler's
/// generator, the text so far and when it ends. The caller runs the model
/// (one sequence, or many in one batch) and hands each step's logits here.
pub struct Decoder {
    params: SamplingParams,
    rng: Rng,
    seen: Seen,
    eos: Vec<u32>,
    text: Text,
    budget: usize,
    prompt_tokens: usize,
}

/// What one accepted token did.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// New text to send (may be empty: a partial character, a held-back
    /// possible stop string).
    pub delta: String,
    /// Set when the answer ends with this token.
    pub done: Option<FinishReason>,
}

impl Decoder {
    /// An answer to `prompt` (token ids) on a model of `config`; `eos` adds
    /// the tokenizer's end-of-sequence token to the model's.
    pub fn new(
        config: &crate::HfConfig,
        eos: Option<u32>,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Decoder, MlError> {
        let max_pos = config.max_position_embeddings;
        if prompt.is_empty() {
            return Err(MlError::Template("empty prompt".into()));
        }
        if prompt.len() >= max_pos {
            return Err(MlError::Template(format!(
                "prompt of {} tokens does not fit the model's {max_pos} positions",
                prompt.len()
            )));
        }
        Ok(Decoder {
            params: params.clone(),
            rng: Rng::new(params.seed),
            seen: Seen::with_prompt(prompt),
            eos: config
                .eos_token_ids
                .iter()
                .map(|&i| i as u32)
                .chain(eos)
                .collect(),
            text: Text::default(),
            budget: params.budget(prompt.len(), max_pos),
            prompt_tokens: prompt.len(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Tokens the answer may still take (its KV-cache reservation).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The next token from this step's logits (`row`, penalties applied in place).
    pub fn choose(&mut self, row: &mut [f32]) -> (u32, Option<Logprob>) {
        let lp = self.params.logprobs.map(|top| (row.to_vec(), top));
        let id = pick(row, &self.seen, &self.params, &mut self.rng);
        (id, lp.map(|(raw, top)| logprob(&raw, id, top)))
    }

    /// Takes the chosen token: the text it adds, and whether the answer ends.
    pub fn accept(&mut self, tok: &ChatTokenizer, id: u32) -> Step {
        if !self.params.ignore_eos && self.eos.contains(&id) {
            return self.end(FinishReason::Stop);
        }
        self.seen.push(id);
        let delta = match self.text.push(tok, id, &self.params.stop) {
            Some(Emit::Stop) => return self.end(FinishReason::Stop),
            Some(Emit::Delta(d)) => d,
            None => String::new(),
        };
        let done = (self.text.ids.len() >= self.budget).then_some(FinishReason::Length);
        Step { delta, done }
    }

    fn end(&self, why: FinishReason) -> Step {
        Step {
            delta: String::new(),
            done: Some(why),
        }
    }

    /// Text not sent yet when the answer ends (held back as a possible stop
    /// string, or a last partial character), which is then sent.
    pub fn rest(&mut self, tok: &ChatTokenizer) -> String {
        if self.text.text.is_empty() && !self.text.ids.is_empty() {
            self.text.text = tok.decode(&self.text.ids);
        }
        let rest = self
            .text
            .text
            .get(self.text.emitted..)
            .unwrap_or("")
            .to_string();
        self.text.emitted = self.text.text.len();
        rest
    }

    /// Tokens of the answer so far.
    pub fn tokens(&self) -> usize {
        self.text.ids.len()
    }

    pub fn into_generation(mut self, tok: &ChatTokenizer, finish: FinishReason) -> Generation {
        self.rest(tok);
        Generation {
            ids: self.text.ids,
            text: self.text.text,
            finish,
            prompt_tokens: self.prompt_tokens,
        }
    }
}

/// Generates after `prompt` (token ids), one sequence alone. `on_token(id,
/// text_delta)` is called for each new token; returning `Break` cancels.
/// Runs without gradients.
pub fn generate(
    model: &CausalLm,
    tok: &ChatTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<Generation, MlError> {
    let mut d = Decoder::new(&model.config, tok.eos_id(), prompt, params)?;
    let mut cache = model.new_cache();
    let _guard = tch::no_grad_guard();
    let mut input: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    let mut finish = FinishReason::Length;
    for _ in 0..d.budget() {
        let ids = Tensor::from_slice(&input)
            .unsqueeze(0)
            .to_device(model.device);
        let last = model.forward_last(&ids, Some(&mut cache)).squeeze_dim(0);
        let next = if d.params().plain_greedy() {
            last.argmax(-1, false).int64_value(&[]) as u32
        } else {
            let mut row: Vec<f32> =
                Vec::try_from(last.to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
            d.choose(&mut row).0
        };
        let step = d.accept(tok, next);
        if step.done == Some(FinishReason::Stop) {
            finish = FinishReason::Stop;
            break;
        }
        if on_token(next, &step.delta).is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
        if step.done.is_some() {
            break;
        }
        input = vec![next as i64];
    }
    Ok(d.into_generation(tok, finish))
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
}
