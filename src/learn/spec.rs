//! The learning stage's settings, resolved from the config once at the top of
//! the stage ([`LearnSpec::from_config`]): below it, functions take these
//! specs (or the one config section they need), never the whole config.

use std::path::PathBuf;

use crate::config::{Config, EvalConfig, FeedbackConfig};
use lorastream_ml::load::ModelSpec;
use lorastream_ml::train::TrainSpec;

/// `[model]` resolved: where the base model comes from and where it runs.
pub fn model_spec(config: &Config) -> ModelSpec {
    ModelSpec {
        base: config.base_model(),
        threads: config.model.threads,
        chat_template: config.model.chat_template.clone(),
    }
}

/// The replay pool's size (`[train]`) and what counts as forgotten.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplaySpec {
    /// Examples drawn in all (`replay_buffer`).
    pub buffer: usize,
    /// Examples kept per earlier stream (`replay_per_stream`).
    pub per_stream: usize,
    /// `[feedback] max_forgetting`: streams forgotten more weigh more.
    pub max_forgetting: f64,
}

/// The feedback policy's settings: `[feedback]`, whether the probe set is
/// measured, and the first attempt's replay share and rate (`[train]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    pub feedback: FeedbackConfig,
    /// The probe set (column 0) is evaluated and limited (`[eval] probe`).
    pub probe: bool,
    pub replay_fraction: f64,
    pub lr: f64,
    /// `[train] epochs_per_stream`, which a retry for too little gain raises.
    pub epochs: usize,
}

impl PolicySpec {
    pub fn from_config(config: &Config) -> PolicySpec {
        PolicySpec {
            feedback: config.feedback.clone(),
            probe: config.eval.probe,
            replay_fraction: config.train.replay_fraction,
            lr: config.train.lr,
            epochs: config.train.epochs_per_stream,
        }
    }
}

/// Everything the learning stage needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnSpec {
    /// Where adapters (`adapters/<id>`) and snapshots (`merges/`) go.
    pub state_dir: PathBuf,
    pub model: ModelSpec,
    /// The first attempt's training run (the policy's
    /// [`crate::learn::policy::Attempt`] sets replay and rate of the others).
    pub train: TrainSpec,
    /// The share of a stream's train split held out to validate on.
    pub validation_fraction: f64,
    /// How the matrix is measured (examples cut to `train.seq_len` tokens).
    pub eval: EvalConfig,
    pub replay: ReplaySpec,
    /// Promotion, retries and merges (`[feedback]`).
    pub policy: PolicySpec,
}

impl LearnSpec {
    pub fn from_config(config: &Config) -> LearnSpec {
        let t = &config.train;
        LearnSpec {
            state_dir: config.state_dir(),
            model: model_spec(config),
            train: config.train_spec(),
            validation_fraction: t.validation_fraction,
            eval: config.eval.clone(),
            replay: ReplaySpec {
                buffer: t.replay_buffer,
                per_stream: t.replay_per_stream,
                max_forgetting: config.feedback.max_forgetting,
            },
            policy: PolicySpec::from_config(config),
        }
    }
}
