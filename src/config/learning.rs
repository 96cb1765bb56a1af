//! The learning sections: `[model]`, `[lora]`, `[train]`, `[eval]`, `[feedback]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ml::{DType, LoraSpec};
use crate::model_source::ModelSource;
use crate::text_enum::text_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `hub:ORG/NAME[@revision]`, `path:DIR` or `gguf:FILE` (see [`crate::model_source`]).
    pub source: ModelSource,
    /// The GGUF file used when the hub cannot be reached and nothing is cached.
    /// Unset: [`crate::model_source::default_fallback`].
    pub gguf_fallback: Option<PathBuf>,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub dtype: DType,
    /// Intra-op threads for CPU tensor work; 0 = number of cores.
    pub threads: usize,
    /// A Jinja chat template file that overrides the model's own.
    pub chat_template: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            source: ModelSource::default(),
            gguf_fallback: None,
            device: "auto".into(),
            dtype: DType::Auto,
            threads: 0,
            chat_template: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT module names; empty = the architecture's default
    /// (`c_attn` for GPT-2, `q_proj`,`v_proj` for Llama).
    pub target_modules: Vec<String>,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: Vec::new(),
            rslora: false,
        }
    }
}

text_enum! {
    pub enum TrainStrategy {
        /// One adapter carried across streams.
        Continue = "continue",
        /// Merge each promoted adapter into the base and start a fresh one.
        MergeEach = "merge_each",
    }
}

text_enum! {
    pub enum LossOn {
        /// Assistant tokens only.
        Assistant = "assistant",
        /// Every non-pad token.
        All = "all",
    }
}

impl From<&LoraConfig> for LoraSpec {
    fn from(c: &LoraConfig) -> LoraSpec {
        LoraSpec {
            r: c.r,
            alpha: c.alpha,
            dropout: c.dropout,
            target_modules: c.target_modules.clone(),
            rslora: c.rslora,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub strategy: TrainStrategy,
    pub epochs_per_stream: usize,
    pub batch_size: usize,
    pub grad_accum_steps: usize,
    /// Examples are truncated to this many tokens.
    pub seq_len: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub loss_on: LossOn,
    /// Pack several examples into one sequence instead of padding.
    pub packing: bool,
    /// Share of each batch drawn from earlier streams.
    pub replay_fraction: f64,
    /// Examples kept (reservoir-sampled) from earlier streams for replay.
    pub replay_buffer: usize,
    pub checkpoint_every: usize,
    /// Log a progress line every this many optimizer steps.
    pub log_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            strategy: TrainStrategy::Continue,
            epochs_per_stream: 3,
            batch_size: 4,
            grad_accum_steps: 1,
            seq_len: 256,
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            loss_on: LossOn::Assistant,
            packing: false,
            replay_fraction: 0.0,
            replay_buffer: 2000,
            checkpoint_every: 50,
            log_every: 10,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub batch_size: usize,
    /// Evaluate at most this many examples of each stream's eval split; 0 = all.
    pub max_examples_per_stream: usize,
    /// JSONL of chat examples measuring what the base model knew.
    pub probe_set: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 8,
            max_examples_per_stream: 200,
            probe_set: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Largest allowed relative perplexity increase on any earlier stream.
    pub max_forgetting: f64,
    /// Also require the new stream's perplexity to improve on the served adapter's.
    pub require_improvement: bool,
    /// Training attempts per stream before the candidate is rejected.
    pub max_attempts: usize,
    /// Added to `train.replay_fraction` on each retry.
    pub replay_step: f64,
    pub replay_max: f64,
    /// The learning rate is multiplied by this on each retry.
    pub lr_decay: f64,
    /// Merge a promoted adapter into the base model.
    pub merge_on_promote: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            max_forgetting: 0.10,
            require_improvement: true,
            max_attempts: 3,
            replay_step: 0.1,
            replay_max: 0.5,
            lr_decay: 0.5,
            merge_on_promote: false,
        }
    }
}
