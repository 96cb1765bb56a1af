//! What a version's row records, typed: the hyper-parameters it was made
//! with and the outcome of its evaluation. The store keeps both as JSON
//! (`adapters.hyperparams`, `adapters.decision`); they are written from these
//! types and read back into them here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::learn::policy::Decision;
use lorastream_ml::train::TrainSpec;
use lorastream_store::AdapterRow;

/// `adapters.hyperparams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hyperparams {
    /// A LoRA attempt: the training spec it ran with.
    Lora(TrainSpec),
    /// A merge snapshot: the version merged, and the base it was merged into.
    Merge { merged: i64, base: PathBuf },
}

/// `adapters.decision`: what became of a version after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The feedback policy decided on it.
    Decided(Decision),
    /// Training failed: why.
    Failed { error: String },
}

impl Outcome {
    /// The decision's reasons, or the failure.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Outcome::Decided(d) => d.reasons.clone(),
            Outcome::Failed { error } => vec![error.clone()],
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Decided(d) => Some(d),
            Outcome::Failed { .. } => None,
        }
    }
}

/// The version's outcome, if it has one this version of lorastream can read.
pub fn outcome(row: &AdapterRow) -> Option<Outcome> {
    serde_json::from_value(row.decision.clone()?).ok()
}

/// The version's hyper-parameters, if readable.
pub fn hyperparams(row: &AdapterRow) -> Option<Hyperparams> {
    serde_json::from_value(row.hyperparams.clone()).ok()
}
