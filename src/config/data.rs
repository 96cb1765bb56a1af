//! The data sections: `[preprocess]`, `[streams]`, `[summarizer]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    pub min_question_chars: usize,
    pub min_answer_chars: usize,
    pub max_answer_chars: usize,
    /// Drop answers with fewer upvotes (unset: keep all).
    pub min_upvotes: Option<i64>,
    /// Remove Quora boilerplate ("Continue Reading", "Related", "Sponsored").
    pub strip_boilerplate: bool,
    /// Replace e-mail addresses and phone numbers with placeholders.
    pub scrub_pii: bool,
    /// Also drop pairs equal after case, punctuation and whitespace folding.
    pub dedup_normalized: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            min_question_chars: 10,
            min_answer_chars: 20,
            max_answer_chars: 20_000,
            min_upvotes: None,
            strip_boilerplate: true,
            scrub_pii: true,
            dedup_normalized: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seal a stream once this many examples are ready.
    pub min_examples: usize,
    /// At most this many examples go into one stream; the rest wait for the next.
    pub max_examples: usize,
    /// Share of each stream held out for evaluation: exactly
    /// round(eval_fraction × n) examples, the first in hash order.
    pub eval_fraction: f64,
    /// The eval split decides promotions: at least this many examples. A
    /// stream too small for that waits for more data.
    pub min_eval_examples: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            min_examples: 50,
            max_examples: 2000,
            eval_fraction: 0.2,
            min_eval_examples: 8,
        }
    }
}

text_enum! {
    pub enum SummarizerBackend {
        /// Sentence ranking by centrality, no model.
        Extractive = "extractive",
        /// An OpenAI-compatible `/v1/chat/completions` endpoint, extractive on error.
        Openai = "openai",
        /// Answers over the budget are kept as they are.
        None = "none",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    pub backend: SummarizerBackend,
    /// Answers longer than this many tokens are condensed.
    pub max_answer_tokens: usize,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub timeout_secs: u64,
    /// After this many examples in a row whose endpoint call failed, the rest
    /// of the pass is condensed extractively (a circuit breaker).
    pub breaker_failures: u32,
    pub temperature: f64,
    /// minijinja template; sees `answer`, `question` and `max_tokens`.
    pub prompt: String,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        SummarizerConfig {
            backend: SummarizerBackend::Extractive,
            max_answer_tokens: 256,
            base_url: None,
            model: None,
            api_key_file: None,
            api_key_env: None,
            timeout_secs: 60,
            breaker_failures: 3,
            temperature: 0.2,
            prompt:
                "Condense this answer to the question below into at most {{ max_tokens }} tokens. \
                     Keep the facts and the author's advice; do not add anything.\n\n\
                     Question: {{ question }}\n\nAnswer: {{ answer }}"
                    .into(),
        }
    }
}
