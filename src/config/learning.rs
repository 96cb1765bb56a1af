//! The learning sections: `[model]`, `[train]`, `[eval]`, `[feedback]`; `[lora]`
//! is `lorastream_ml::LoraSpec` itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;
use lorastream_ml::DType;
use lorastream_ml::load::source::ModelSource;
use lorastream_ml::train::TrainSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `hub:ORG/NAME[@revision]`, `path:DIR` or `gguf:FILE` (see [`lorastream_ml::load::source`]).
    pub source: ModelSource,
    /// The GGUF file used when the hub cannot be reached and nothing is cached.
    /// Unset: [`lorastream_ml::load::source::default_fallback`].
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

text_enum! {
    /// `[feedback] merge`: when the served lineage is merged into a new base snapshot.
    pub enum MergePolicy {
        /// One adapter carried across streams; never merged.
        Never = "never",
        /// Merged once, when the operator says the last stream is in
        /// (`lorastream adapters merge`): the original experiment's choice.
        AfterFinalStream = "after_final_stream",
        /// Merged after every `merge_every` promoted streams; the next stream
        /// trains a fresh adapter on the snapshot.
        EveryNStreams = "every_n_streams",
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

impl super::Config {
    /// `[train]` and `[lora]` resolved into the spec of a training run (the
    /// policy's attempt then sets its replay fraction and learning rate).
    pub fn train_spec(&self) -> TrainSpec {
        let t = &self.train;
        TrainSpec {
            lora: self.lora.clone(),
            epochs: t.epochs_per_stream,
            batch_size: t.batch_size,
            grad_accum_steps: t.grad_accum_steps,
            seq_len: t.seq_len,
            lr: t.lr,
            weight_decay: t.weight_decay,
            warmup_steps: t.warmup_steps,
            max_grad_norm: t.max_grad_norm,
            assistant_only: t.loss_on == LossOn::Assistant,
            packing: t.packing,
            replay_fraction: t.replay_fraction,
            checkpoint_every: t.checkpoint_every,
            log_every: t.log_every,
            seed: t.seed,
            eval_every: t.eval_every,
            patience: t.patience,
            max_nonfinite_steps: t.max_nonfinite_steps,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
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
    /// Share of each batch drawn from earlier streams on a stream's first
    /// attempt (retries add `[feedback] replay_step`).
    pub replay_fraction: f64,
    /// Examples kept (reservoir-sampled) of each earlier stream for replay.
    pub replay_per_stream: usize,
    /// Examples in the replay pool of one run, drawn from the streams'
    /// reservoirs with weights toward the ones forgotten most recently.
    pub replay_buffer: usize,
    /// Share of each stream's train split held out to validate on during
    /// training (early stopping); the eval split is never seen here.
    pub validation_fraction: f64,
    /// Validate every this many optimizer steps (0 = once per epoch).
    pub eval_every: usize,
    /// Stop after this many validations without a new best (0 = never stop
    /// early); the best checkpoint is kept either way.
    pub patience: usize,
    /// A step whose loss is NaN or infinite is skipped; this many in a row end
    /// the attempt.
    pub max_nonfinite_steps: usize,
    pub checkpoint_every: usize,
    /// Log a progress line every this many optimizer steps.
    pub log_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs_per_stream: 3,
            batch_size: 4,
            grad_accum_steps: 1,
            seq_len: 256,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            loss_on: LossOn::Assistant,
            packing: false,
            replay_fraction: 0.1,
            replay_per_stream: 200,
            replay_buffer: 1000,
            validation_fraction: 0.1,
            eval_every: 0,
            patience: 2,
            max_nonfinite_steps: 5,
            checkpoint_every: 50,
            log_every: 10,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub batch_size: usize,
    /// Evaluate at most this many examples of each stream's eval split; 0 = all.
    pub max_examples_per_stream: usize,
    /// Measure every version on the general-skill probe set (column 0 of the
    /// matrix): general knowledge and instruction following, not the crawled
    /// topics. The feedback loop refuses versions that get worse on it.
    pub probe: bool,
    /// A JSONL of chat examples to use as the probe set instead of the one
    /// built into lorastream.
    pub probe_set: Option<PathBuf>,
    /// Target tokens of an older stream's sample (its examples in a fixed
    /// random order, cut here; exact when smaller): the newest stream is
    /// always measured whole. 0 = every example.
    pub eval_tokens_per_stream: usize,
    /// Target tokens over all older streams together: with many streams each
    /// gets its share (`eval_tokens_old_streams / streams`, at least one
    /// example), so a decision costs about the same after 5 streams or 100:
    /// the default, 4 × `eval_tokens_per_stream`, is what the 4 older
    /// streams of a fifth stream's decision take at most. 0 = no total.
    pub eval_tokens_old_streams: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 8,
            max_examples_per_stream: 200,
            probe: true,
            probe_set: None,
            eval_tokens_per_stream: 4096,
            eval_tokens_old_streams: 16384,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Off: every candidate is promoted unchecked (naive sequential training).
    pub enabled: bool,
    /// The new stream's perplexity must be at least this much (relative) below
    /// the served version's.
    pub min_gain: f64,
    /// Largest allowed forgetting on any earlier stream (see docs/continual-learning.md).
    pub max_forgetting: f64,
    /// Largest allowed rise of the probe set's perplexity (relative).
    pub max_probe_increase: f64,
    /// Training attempts per stream; after the last the stream is `not_learned`.
    pub max_attempts: usize,
    /// Added to `train.replay_fraction` on each retry …
    pub replay_step: f64,
    /// … up to this.
    pub replay_max: f64,
    /// The learning rate is multiplied by this on each retry for forgetting.
    pub lr_decay: f64,
    /// A retry for learning too little: this many more epochs …
    pub more_epochs: usize,
    /// … and the learning rate multiplied by this.
    pub lr_raise: f64,
    /// A stream already this much (relative) below the base before training
    /// is known: a candidate for it needs only `known_min_gain`, and one that
    /// falls short is `already_known` (nothing to retrain for).
    pub known_gain: f64,
    /// The gain a candidate for a known stream needs to be promoted (with no
    /// forgetting or probe limit broken, judged with its interval as every
    /// figure is), on the stream itself or over every stream so far (their
    /// examples pooled; the new stream then within `max_forgetting`): a
    /// small improvement of what the served version already knows is still
    /// an improvement.
    pub known_min_gain: f64,
    /// Coverage of the intervals decisions carry (paired bootstrap over the
    /// evaluation examples).
    pub confidence: f64,
    /// Bootstrap resamples per figure (0: point estimates only).
    pub resamples: usize,
    /// What a figure whose interval straddles its limit counts as: `point`
    /// (its point estimate decides), `pass`, or `fail`.
    pub inconclusive: Inconclusive,
    pub merge: MergePolicy,
    /// `every_n_streams`: merge after this many promoted streams.
    pub merge_every: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: true,
            min_gain: 0.02,
            max_forgetting: 0.01,
            max_probe_increase: 0.01,
            max_attempts: 3,
            replay_step: 0.25,
            replay_max: 0.5,
            lr_decay: 0.5,
            more_epochs: 1,
            lr_raise: 1.5,
            known_gain: 0.10,
            known_min_gain: 0.005,
            confidence: 0.95,
            resamples: 1000,
            inconclusive: Inconclusive::Point,
            merge: MergePolicy::Never,
            merge_every: 1,
        }
    }
}

text_enum! {
    /// What a figure counts as when the evaluation set is too small to tell
    /// (its interval straddles the limit).
    #[derive(Default)]
    pub enum Inconclusive {
        /// The point estimate decides (and the decision says it was inconclusive).
        #[default]
        Point = "point",
        /// Within the limit (promote unless something is clearly wrong).
        Pass = "pass",
        /// Over the limit (retrain unless everything is clearly right).
        Fail = "fail",
    }
}
