//! Choosing the next token from one row of logits: penalties (repetition as
//! Hugging Face means it, frequency and presence as OpenAI does), then greedy
//! or temperature / top-k / top-p sampling from a seeded generator; and the
//! log-probabilities OpenAI's `logprobs` / `top_logprobs` report.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::runtime::rng::Rng;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f64,
    /// 1.0 = off; > 1 discourages every token already in the prompt or the
    /// answer (transformers' `repetition_penalty`).
    pub repetition_penalty: f64,
    /// Subtracted from a token's logit once per time it is in the answer (OpenAI).
    pub frequency_penalty: f64,
    /// Subtracted from a token's logit if it is in the answer at all (OpenAI).
    pub presence_penalty: f64,
    /// Report the chosen token's log-probability and this many alternatives
    /// (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
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
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logprobs: None,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Whether the argmax of the model's logits is the answer (no penalty,
    /// no sampling, no log-probabilities): the row need not leave the device.
    pub fn plain_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.repetition_penalty == 1.0
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
            && self.logprobs.is_none()
    }

    /// New tokens an answer to a prompt of `prompt` tokens may take on a
    /// model of `max_positions` positions.
    pub fn budget(&self, prompt: usize, max_positions: usize) -> usize {
        self.max_new_tokens
            .min(max_positions.saturating_sub(prompt))
    }
}

/// What the tokens so far are, for the penalties.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Distinct tokens of the prompt and the answer (repetition penalty).
    all: std::collections::HashSet<u32>,
    /// How often each token is in the answer (frequency and presence).
    answer: HashMap<u32, u32>,
}

impl Seen {
    pub fn with_prompt(prompt: &[u32]) -> Seen {
        Seen {
            all: prompt.iter().copied().collect(),
            answer: HashMap::new(),
        }
    }

    pub fn push(&mut self, id: u32) {
        self.all.insert(id);
        *self.answer.entry(id).or_default() += 1;
    }
}

/// A token's log-probability and the most likely alternatives at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    pub id: u32,
    pub logprob: f32,
    /// `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Applies the penalties to `logits` in place.
fn penalise(logits: &mut [f32], seen: &Seen, p: &SamplingParams) {
    if p.repetition_penalty != 1.0 {
        let pen = p.repetition_penalty as f32;
        for &t in &seen.all {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l < 0.0 { *l * pen } else { *l / pen };
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        for (&t, &n) in &seen.answer {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= (p.frequency_penalty * n as f64 + p.presence_penalty) as f32;
            }
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 { (i, l) } else { best }
        })
        .0 as u32
}

/// Picks the next token from `logits` (one row) given what was seen.
pub fn pick(logits: &mut [f32], seen: &Seen, p: &SamplingParams, rng: &mut Rng) -> u32 {
    penalise(logits, seen, p);
    if p.temperature <= 0.0 {
        return argmax(logits);
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
    cand.last().map_or_else(|| argmax(logits), |c| c.0)
}

/// The log-probability of `id` and the `top` most likely tokens under the
/// model's own distribution (`logits` before penalties and temperature, as
/// vLLM reports them).
pub fn logprob(logits: &[f32], id: u32, top: usize) -> Logprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
    let lp = |l: f32| (l as f64 - lse) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(idx.len());
        idx.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
            logits[*b as usize].total_cmp(&logits[*a as usize])
        });
        idx.truncate(k);
        idx.sort_unstable_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        best = idx
            .into_iter()
            .map(|i| (i, lp(logits[i as usize])))
            .collect();
    }
    Logprob {
        id,
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_max_and_penalties_apply() {
        let p = SamplingParams::default();
        let mut rng = Rng::new(1);
        let none = Seen::default();
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &none, &p, &mut rng), 1);
        let p = SamplingParams {
            repetition_penalty: 4.0,
            ..SamplingParams::default()
        };
        let prompt = Seen::with_prompt(&[1]);
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &prompt, &p, &mut rng), 2);
        // Frequency and presence count the answer only, not the prompt.
        let p = SamplingParams {
            frequency_penalty: 0.6,
            ..SamplingParams::default()
        };
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &prompt, &p, &mut rng), 1);
        let mut answer = Seen::default();
        answer.push(1);
        assert_eq!(
            pick(&mut [0.1, 2.0, 1.0], &answer, &p, &mut rng),
            1,
            "2.0 - 0.6 > 1.0"
        );
        answer.push(1);
        assert_eq!(
            pick(&mut [0.1, 2.0, 1.0], &answer, &p, &mut rng),
            2,
            "2.0 - 1.2 < 1.0"
        );
        let p = SamplingParams {
            presence_penalty: 1.5,
            ..SamplingParams::default()
        };
        let mut once = Seen::default();
        once.push(1);
        assert_eq!(pick(&mut [0.1, 2.0, 1.0], &once, &p, &mut rng), 2);
    }

    #[test]
    fn logprobs_are_the_models_distribution() {
        let l = logprob(&[0.0, 1.0, 2.0, 3.0], 2, 2);
        let z: f64 = [0.0f64, 1.0, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((l.logprob as f64 - (2.0 - z.ln())).abs() < 1e-5);
        assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), [3, 2]);
        let total: f64 = (0..4)
            .map(|i| logprob(&[0.0, 1.0, 2.0, 3.0], i, 0).logprob.exp() as f64)
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
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
                .map(|_| {
                    pick(
                        &mut [1.0, 4.0, 0.9, 5.0, -1.0],
                        &Seen::default(),
                        &p,
                        &mut rng,
                    )
                })
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
            assert_eq!(
                pick(&mut [0.0, 3.0, 0.0, 0.0], &Seen::default(), &p, &mut rng),
                1
            );
        }
    }
}
