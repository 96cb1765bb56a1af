//! The learning stage's settings, resolved from the config once at the top of
//! the stage ([`LearnSpec::from_config`]): below it, functions take these
//! specs, never the whole config.

use std::path::PathBuf;

use crate::config::{Config, MergePolicy};
use lorastream_ml::DType;
use lorastream_ml::source::BaseModel;
use lorastream_ml::train::TrainSpec;

/// How the base model is found and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub base: BaseModel,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub dtype: DType,
    /// Intra-op threads for CPU tensor work; 0 = number of cores.
    pub threads: usize,
    /// A Jinja chat template file that overrides the model's own.
    pub chat_template: Option<PathBuf>,
}

impl ModelSpec {
    pub fn from_config(config: &Config) -> ModelSpec {
        ModelSpec {
            base: config.base_model(),
            device: config.model.device.clone(),
            dtype: config.model.dtype,
            threads: config.model.threads,
            chat_template: config.model.chat_template.clone(),
        }
    }
}

/// How the matrix is measured (`[eval]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSpec {
    pub batch_size: usize,
    /// Tokens an example is cut to (`[train] seq_len`).
    pub seq_len: usize,
    /// At most this many examples of each stream's eval split; 0 = all.
    pub max_examples_per_stream: usize,
    /// Whether the probe set (column 0) is measured.
    pub probe: bool,
    /// A JSONL probe set instead of the built-in one.
    pub probe_set: Option<PathBuf>,
}

/// The replay pool's size (`[train]`) and what counts as forgotten.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplaySpec {
    /// Examples drawn in all.
    pub buffer: usize,
    /// Examples kept per earlier stream.
    pub per_stream: usize,
    /// `[feedback] max_forgetting`: streams forgotten more weigh more.
    pub max_forgetting: f64,
}

/// When the served lineage is merged into a base snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeSpec {
    pub policy: MergePolicy,
    /// `every_n_streams`: after this many promoted streams.
    pub every: usize,
}

/// The policy's settings: `[feedback]`, with `[train]`'s replay and rate for
/// the first attempt and `[eval] probe`, resolved once from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Off: every candidate is promoted unchecked.
    pub enabled: bool,
    pub min_gain: f64,
    pub max_forgetting: f64,
    pub max_probe_increase: f64,
    pub max_attempts: usize,
    pub replay_step: f64,
    pub replay_max: f64,
    pub lr_decay: f64,
    /// The probe set (column 0) is evaluated and limited.
    pub probe: bool,
    /// Attempt 1's replay share and learning rate (`[train]`).
    pub replay_fraction: f64,
    pub lr: f64,
}

impl PolicySpec {
    pub fn from_config(config: &Config) -> PolicySpec {
        let (t, f) = (&config.train, &config.feedback);
        PolicySpec {
            enabled: f.enabled,
            min_gain: f.min_gain,
            max_forgetting: f.max_forgetting,
            max_probe_increase: f.max_probe_increase,
            max_attempts: f.max_attempts,
            replay_step: f.replay_step,
            replay_max: f.replay_max,
            lr_decay: f.lr_decay,
            probe: config.eval.probe,
            replay_fraction: t.replay_fraction,
            lr: t.lr,
        }
    }
}

/// Everything the learning stage needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnSpec {
    /// Where adapters (`adapters/<id>`) and snapshots (`merges/`) go.
    pub state_dir: PathBuf,
    pub model: ModelSpec,
    /// The first attempt's training run (the policy's [`crate::learn::policy::Attempt`]
    /// sets replay and rate of the others).
    pub train: TrainSpec,
    /// The share of a stream's train split held out to validate on.
    pub validation_fraction: f64,
    pub eval: EvalSpec,
    pub replay: ReplaySpec,
    pub policy: PolicySpec,
    pub merge: MergeSpec,
}

impl LearnSpec {
    pub fn from_config(config: &Config) -> LearnSpec {
        let (t, e) = (&config.train, &config.eval);
        LearnSpec {
            state_dir: config.state_dir(),
            model: ModelSpec::from_config(config),
            train: config.train_spec(),
            validation_fraction: t.validation_fraction,
            eval: EvalSpec {
                batch_size: e.batch_size,
                seq_len: t.seq_len,
                max_examples_per_stream: e.max_examples_per_stream,
                probe: e.probe,
                probe_set: e.probe_set.clone(),
            },
            replay: ReplaySpec {
                buffer: t.replay_buffer,
                per_stream: t.replay_per_stream,
                max_forgetting: config.feedback.max_forgetting,
            },
            policy: PolicySpec::from_config(config),
            merge: MergeSpec {
                policy: config.feedback.merge,
                every: config.feedback.merge_every,
            },
        }
    }
}
