//! Condenses answers longer than `[summarizer] max_answer_tokens` before
//! training (DESIGN.md §1, Summarizer). Backends: `extractive` (no model:
//! sentences ranked by centrality, the best kept in their original order
//! within the budget), `openai` (any OpenAI-compatible `/v1/chat/completions`
//! endpoint, extractive on any error), and `none`. The text used and the
//! backend that made it are stored on the example, which becomes `ready`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use crate::config::{SummarizerBackend, SummarizerConfig};
use crate::util::http::{Http, HttpError, NotJson, Policy, parse_json, read_secret};
use lorastream_store::{ExampleRow, ExampleState, Store, StoreError};

/// Counts tokens as the model will: with its tokenizer when the model is
/// configured, else approximately (about four characters a token).
pub enum TokenCounter {
    Tokenizer(Box<tokenizers::Tokenizer>),
    Approx,
}

impl TokenCounter {
    /// The tokenizer of the model directory, if it has one.
    pub fn for_model(dir: Option<&Path>) -> TokenCounter {
        let Some(path) = dir.map(|d| d.join("tokenizer.json")).filter(|p| p.exists()) else {
            return TokenCounter::Approx;
        };
        match tokenizers::Tokenizer::from_file(&path) {
            Ok(t) => TokenCounter::Tokenizer(Box::new(t)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot load the tokenizer; counting tokens approximately");
                TokenCounter::Approx
            }
        }
    }

    pub fn count(&self, text: &str) -> usize {
        match self {
            TokenCounter::Tokenizer(t) => match t.encode_fast(text, false) {
                Ok(enc) => enc.len(),
                Err(_) => approx_tokens(text),
            },
            TokenCounter::Approx => approx_tokens(text),
        }
    }
}

fn approx_tokens(text: &str) -> usize {
    text.chars()
        .count()
        .div_ceil(4)
        .max(text.split_whitespace().count())
}

#[derive(Debug, Default, Serialize)]
pub struct SummarizeReport {
    /// Examples made ready.
    pub ready: u64,
    /// Condensed answers by the backend that made them.
    pub condensed: BTreeMap<String, u64>,
    /// OpenAI-backend failures that fell back to extractive.
    pub fallbacks: u64,
    /// The endpoint failed `breaker_failures` examples in a row: the rest of
    /// the pass was condensed extractively without calling it.
    pub breaker_open: bool,
    /// Examples in a row whose endpoint call failed.
    #[serde(skip)]
    consecutive_failures: u32,
}

/// The backend settings resolved once per pass (API key read, URL parsed).
pub struct Summarizer {
    cfg: SummarizerConfig,
    counter: TokenCounter,
    http: Http,
    api_key: Option<String>,
}

impl Summarizer {
    pub fn new(cfg: &SummarizerConfig, counter: TokenCounter, http: Http) -> Summarizer {
        let api_key = if cfg.backend == SummarizerBackend::Openai {
            read_secret(
                "summarizer API key",
                cfg.api_key_file.as_deref(),
                cfg.api_key_env.as_deref(),
            )
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "summarizer API key unavailable; calling without one");
                None
            })
        } else {
            None
        };
        Summarizer {
            cfg: cfg.clone(),
            counter,
            http,
            api_key,
        }
    }

    /// `[summarizer]`, counting tokens with the tokenizer of `base` (the
    /// model the examples train).
    pub fn for_model(
        cfg: &SummarizerConfig,
        base: &lorastream_ml::load::source::BaseModel,
        http: Http,
    ) -> Summarizer {
        let model = lorastream_ml::load::source::resolved(base);
        Self::new(cfg, TokenCounter::for_model(model.as_deref()), http)
    }

    /// Makes every `new` example ready, condensing long answers.
    pub async fn run(&self, store: &Store) -> Result<SummarizeReport, StoreError> {
        let mut report = SummarizeReport::default();
        loop {
            let batch = store.examples_in_state(ExampleState::New, 64)?;
            if batch.is_empty() {
                break;
            }
            for ex in &batch {
                self.one(store, ex, &mut report).await?;
                store.stage_progress(lorastream_store::Stage::Summarizer)?;
            }
        }
        if report.ready > 0 {
            tracing::info!(ready = report.ready, condensed = ?report.condensed, fallbacks = report.fallbacks, breaker_open = report.breaker_open, "examples summarized");
        }
        Ok(report)
    }

    /// One example: condensed if over budget, then `ready`.
    pub async fn one(
        &self,
        store: &Store,
        ex: &ExampleRow,
        report: &mut SummarizeReport,
    ) -> Result<(), StoreError> {
        let turns = ex
            .messages
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let text_of = |role: &str| {
            turns
                .iter()
                .rev()
                .find(|m| m["role"] == role)
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_string()
        };
        let (question, answer) = (text_of("user"), text_of("assistant"));
        let budget = self.cfg.max_answer_tokens;
        let summary = if self.cfg.backend == SummarizerBackend::None
            || self.counter.count(&answer) <= budget
        {
            None
        } else if self.cfg.backend == SummarizerBackend::Openai && !report.breaker_open {
            match self.openai(&question, &answer).await {
                Ok(s) => {
                    report.consecutive_failures = 0;
                    Some(("openai", s))
                }
                Err(e) => {
                    report.fallbacks += 1;
                    report.consecutive_failures += 1;
                    tracing::warn!(example = ex.id, error = %e, "summarizer endpoint failed; using extractive");
                    if report.consecutive_failures >= self.cfg.breaker_failures {
                        report.breaker_open = true;
                        tracing::error!(failures = report.consecutive_failures, error = %e, "summarizer endpoint failed for every one of the last examples; extractive for the rest of this pass");
                    }
                    Some(("extractive", extractive(&answer, budget, &self.counter)))
                }
            }
        } else {
            Some(("extractive", extractive(&answer, budget, &self.counter)))
        };
        if let Some((backend, _)) = &summary {
            *report.condensed.entry(backend.to_string()).or_default() += 1;
        }
        store.mark_example_ready(ex.id, summary.as_ref().map(|(b, s)| (*b, s.as_str())))?;
        report.ready += 1;
        Ok(())
    }

    async fn openai(&self, question: &str, answer: &str) -> Result<String, SummarizeError> {
        let base = self
            .cfg
            .base_url
            .as_deref()
            .ok_or(SummarizeError::NoBaseUrl)?;
        let url = chat_url(base)?;
        let env = minijinja::Environment::new();
        let prompt = env
            .render_str(
                &self.cfg.prompt,
                minijinja::context! { question, answer, max_tokens => self.cfg.max_answer_tokens },
            )
            .map_err(SummarizeError::Prompt)?;
        let body = json!({
            "model": self.cfg.model.as_deref().unwrap_or("default"),
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_answer_tokens * 2,
            "stream": false,
        });
        let policy = Policy {
            timeout: Duration::from_secs(self.cfg.timeout_secs.max(1)),
            max_retries: 2,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            rate_per_sec: 0.0,
            max_bytes: 4 << 20,
        };
        let resp = self
            .http
            .post_json(&url, &policy, &body, self.api_key.as_deref())
            .await?;
        let v = parse_json(&resp, "summarizer")?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("");
        if text.is_empty() {
            return Err(SummarizeError::NoContent);
        }
        Ok(text.to_string())
    }
}

/// Why the OpenAI-compatible endpoint gave no summary (the example then
/// falls back to the extractive one).
#[derive(Debug, thiserror::Error)]
pub enum SummarizeError {
    #[error("[summarizer] base_url is not set")]
    NoBaseUrl,
    #[error("[summarizer] base_url {base:?}: {source}")]
    BaseUrl {
        base: String,
        source: url::ParseError,
    },
    #[error("[summarizer] prompt: {0}")]
    Prompt(minijinja::Error),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    NotJson(#[from] NotJson),
    #[error("summarizer: response has no choices[0].message.content")]
    NoContent,
}

/// `http://host:8080` or `http://host:8080/v1` → `…/v1/chat/completions`.
fn chat_url(base: &str) -> Result<Url, SummarizeError> {
    let base = base.trim_end_matches('/');
    let full = if base.ends_with("/chat/completions") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    Url::parse(&full).map_err(|source| SummarizeError::BaseUrl {
        base: base.to_string(),
        source,
    })
}

/// Sentences of a text: split after `.`, `!`, `?` (or `…`) followed by
/// whitespace, and at line breaks; each trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            let ends = matches!(c, '.' | '!' | '?' | '…')
                && chars.get(k + 1).is_some_and(|&(_, n)| n.is_whitespace());
            if ends {
                let end = i + c.len_utf8();
                out.push(line[start..end].trim());
                start = end;
            }
        }
        out.push(line[start..].trim());
    }
    out.retain(|s| !s.is_empty());
    out
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 2)
        .map(str::to_lowercase)
        .collect()
}

/// Extractive summary within `budget` tokens: each sentence scored by its
/// summed TF-IDF cosine similarity to the others (degree centrality, as in
/// LexRank without the power iteration), a small bonus for the opening
/// sentence, then the best sentences that fit kept in their original order
/// (sentences scoring under a tenth of the best are left out).
pub fn extractive(text: &str, budget: usize, counter: &TokenCounter) -> String {
    let sents = sentences(text);
    if sents.is_empty() {
        return String::new();
    }
    let bags: Vec<HashMap<String, f64>> = sents
        .iter()
        .map(|s| {
            let mut m = HashMap::new();
            for w in words(s) {
                *m.entry(w).or_insert(0.0) += 1.0;
            }
            m
        })
        .collect();
    let n = sents.len() as f64;
    let mut df: HashMap<&str, f64> = HashMap::new();
    for bag in &bags {
        for w in bag.keys() {
            *df.entry(w.as_str()).or_insert(0.0) += 1.0;
        }
    }
    let vecs: Vec<HashMap<&str, f64>> = bags
        .iter()
        .map(|bag| {
            bag.iter()
                .map(|(w, tf)| (w.as_str(), tf * (1.0 + (n / df[w.as_str()]).ln())))
                .collect()
        })
        .collect();
    let norms: Vec<f64> = vecs
        .iter()
        .map(|v| v.values().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut scores = vec![0.0f64; sents.len()];
    for i in 0..sents.len() {
        for j in (i + 1)..sents.len() {
            if norms[i] == 0.0 || norms[j] == 0.0 {
                continue;
            }
            let dot: f64 = vecs[i]
                .iter()
                .filter_map(|(w, x)| vecs[j].get(w).map(|y| x * y))
                .sum();
            let sim = dot / (norms[i] * norms[j]);
            scores[i] += sim;
            scores[j] += sim;
        }
    }
    let max = scores.iter().cloned().fold(0.0, f64::max);
    scores[0] += 0.1 * max.max(1.0);
    let mut order: Vec<usize> = (0..sents.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let costs: Vec<usize> = sents.iter().map(|s| counter.count(s) + 1).collect();
    let mut chosen = vec![false; sents.len()];
    let mut used = 0;
    // Sentences sharing (almost) nothing with the rest are off-topic: they do
    // not fill left-over budget.
    let floor = 0.1 * max;
    for &i in &order {
        if scores[i] >= floor && used + costs[i] <= budget {
            chosen[i] = true;
            used += costs[i];
        }
    }
    if !chosen.iter().any(|&c| c) {
        // Even the best sentence is over budget: its first words that fit.
        return truncate_words(sents[order[0]], budget, counter);
    }
    sents
        .iter()
        .zip(&chosen)
        .filter(|(_, c)| **c)
        .map(|(s, _)| *s)
        .collect::<Vec<_>>()
        .join(" ")
}

fn truncate_words(s: &str, budget: usize, counter: &TokenCounter) -> String {
    let mut out = String::new();
    for w in s.split_whitespace() {
        let next = if out.is_empty() {
            w.to_string()
        } else {
            format!("{out} {w}")
        };
        if counter.count(&format!("{next} …")) + 1 > budget {
            break;
        }
        out = next;
    }
    if out.is_empty() {
        s.chars().take(budget.max(1) * 4).collect()
    } else {
        out + " …"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences() {
        let s = sentences("First one. Second? Third!\nFourth line 3.5 stays\n\nv1.2 is out. End");
        assert_eq!(
            s,
            vec![
                "First one.",
                "Second?",
                "Third!",
                "Fourth line 3.5 stays",
                "v1.2 is out.",
                "End"
            ]
        );
    }

    #[test]
    fn extractive_keeps_central_sentences_in_order_within_budget() {
        let text = "Rust is a systems programming language. \
                    My cat likes boxes. \
                    Rust programs are memory safe without a garbage collector. \
                    The weather was nice yesterday. \
                    Memory safety in Rust comes from ownership and borrowing rules in the language.";
        let c = TokenCounter::Approx;
        let budget = 40;
        let s = extractive(text, budget, &c);
        assert!(c.count(&s) <= budget, "{s}");
        assert!(
            s.starts_with("Rust is a systems programming language."),
            "{s}"
        );
        assert!(s.contains("ownership"), "{s}");
        assert!(!s.contains("cat") && !s.contains("weather"), "{s}");
        // Original order kept.
        assert!(s.find("systems").unwrap() < s.find("ownership").unwrap());
        // Everything fits: unchanged content.
        assert_eq!(extractive("One. Two.", 100, &c), "One. Two.");
        // One huge sentence: truncated to the budget.
        let long = "word ".repeat(500);
        let t = extractive(&long, 20, &c);
        assert!(c.count(&t) <= 20 && t.ends_with('…'), "{t}");
    }

    #[test]
    fn chat_urls() {
        assert_eq!(
            chat_url("http://h:8080").unwrap().as_str(),
            "http://h:8080/v1/chat/completions"
        );
        assert_eq!(
            chat_url("http://h:8080/v1/").unwrap().as_str(),
            "http://h:8080/v1/chat/completions"
        );
    }
}
