//! Checkpoints of a training run: `trainer_state.json` (step, losses, spec)
//! beside `checkpoint-<step>.safetensors` (LoRA weights and AdamW moments),
//! each written atomically; the previous checkpoint is removed once the new
//! one is recorded.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::optim::LoraOptimizer;
use super::{TrainError, TrainSpec};

/// What a checkpoint's `trainer_state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub total_steps: usize,
    /// A NaN or infinite loss (a skipped step) is written as JSON `null` and
    /// read back as NaN.
    #[serde(deserialize_with = "nan_for_null")]
    pub losses: Vec<f32>,
    pub tokens: i64,
    pub seed: u64,
    pub spec: TrainSpec,
    /// The checkpoint tensors (adapter + optimizer) file, beside this one.
    pub checkpoint: Option<String>,
    pub done: bool,
    /// Validation perplexity by step (step 0 = the starting adapter).
    #[serde(default, deserialize_with = "nan_for_null_at")]
    pub validations: Vec<(usize, f64)>,
    /// The best validation so far, whose weights are in `best.safetensors`.
    #[serde(default)]
    pub best: Option<(usize, f64)>,
    /// Validations since the best one.
    #[serde(default)]
    pub since_best: usize,
    #[serde(default)]
    pub stopped_early: bool,
    /// Steps skipped for a NaN/infinite loss or gradient, in all and in a row.
    #[serde(default)]
    pub skipped_steps: usize,
    #[serde(default)]
    pub nonfinite_run: usize,
}

/// JSON has no NaN: serde_json writes non-finite floats as `null`.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    let v: Vec<Option<f32>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect())
}

fn nan_for_null_at<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64)>, D::Error> {
    let v: Vec<(usize, Option<f64>)> = Deserialize::deserialize(d)?;
    Ok(v.into_iter()
        .map(|(s, x)| (s, x.unwrap_or(f64::NAN)))
        .collect())
}

impl TrainerState {
    pub(super) fn fresh(spec: &TrainSpec, total_steps: usize) -> TrainerState {
        TrainerState {
            step: 0,
            total_steps,
            losses: Vec::new(),
            tokens: 0,
            seed: spec.seed,
            spec: spec.clone(),
            checkpoint: None,
            done: false,
            validations: Vec::new(),
            best: None,
            since_best: 0,
            stopped_early: false,
            skipped_steps: 0,
            nonfinite_run: 0,
        }
    }

    /// Writes `trainer_state.json` into `dir`.
    pub(super) fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(STATE_FILE);
        lorastream_base::fsutil::write_json_atomic(&path, self)
            .map_err(|source| TrainError::Io { path, source })
    }
}

const STATE_FILE: &str = "trainer_state.json";

/// Reads a run's `trainer_state.json`, if there is one; one that cannot be
/// read is logged (the run then starts over) rather than passed over quietly.
pub fn read_state(dir: &Path) -> Option<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = ?path, error = %e, "cannot read the training state; starting the run over");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(file = ?path, error = %e, "training state unreadable; starting the run over");
            None
        }
    }
}

/// Saves the LoRA weights and optimizer state of `state.step`, then the state
/// that names them.
pub(super) fn save(
    dir: &Path,
    state: &mut TrainerState,
    opt: &LoraOptimizer,
) -> Result<(), TrainError> {
    let name = format!("checkpoint-{}.safetensors", state.step);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, (k, p)) in opt.params.iter().enumerate() {
        tensors.push((k.clone(), p.detach().copy()));
        tensors.push((format!("opt.m.{k}"), opt.m[i].copy()));
        tensors.push((format!("opt.v.{k}"), opt.v[i].copy()));
    }
    crate::load::weights::write_safetensors_atomic(&dir.join(&name), &tensors)?;
    let previous = state.checkpoint.replace(name);
    state.write(dir)?;
    if let Some(prev) = previous.filter(|p| Some(p) != state.checkpoint.as_ref()) {
        let _ = std::fs::remove_file(dir.join(prev));
    }
    Ok(())
}

/// Loads the weights and optimizer state `state` names into `opt`.
pub(super) fn load(
    dir: &Path,
    state: &TrainerState,
    opt: &mut LoraOptimizer,
) -> Result<(), TrainError> {
    let Some(name) = &state.checkpoint else {
        return Ok(());
    };
    let file = dir.join(name);
    let map = read_tensors(&file)?;
    let get = |k: &str| {
        map.get(k).ok_or_else(|| TrainError::Checkpoint {
            path: file.clone(),
            msg: format!("tensor {k} missing"),
        })
    };
    tch::no_grad(|| -> Result<(), TrainError> {
        for (i, (k, p)) in opt.params.iter().enumerate() {
            let mut p = p.shallow_clone();
            p.copy_(get(k)?);
            opt.m[i].copy_(get(&format!("opt.m.{k}"))?);
            opt.v[i].copy_(get(&format!("opt.v.{k}"))?);
        }
        Ok(())
    })
}

const BEST_FILE: &str = "best.safetensors";

/// Saves the LoRA weights as the best so far (early stopping keeps them).
pub(super) fn save_best(dir: &Path, opt: &LoraOptimizer) -> Result<(), TrainError> {
    let tensors: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .map(|(k, p)| (k.clone(), p.detach().copy()))
        .collect();
    crate::load::weights::write_safetensors_atomic(&dir.join(BEST_FILE), &tensors)?;
    Ok(())
}

/// Puts the best weights [`save_best`] wrote back into the LoRA.
pub(super) fn load_best(dir: &Path, opt: &LoraOptimizer) -> Result<(), TrainError> {
    let file = dir.join(BEST_FILE);
    let map = read_tensors(&file)?;
    tch::no_grad(|| -> Result<(), TrainError> {
        for (k, p) in &opt.params {
            let t = map.get(k).ok_or_else(|| TrainError::Checkpoint {
                path: file.clone(),
                msg: format!("tensor {k} missing"),
            })?;
            p.shallow_clone().copy_(t);
        }
        Ok(())
    })?;
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// The tensors of a checkpoint file by name.
fn read_tensors(file: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(file)
        .map_err(|e| TrainError::Checkpoint {
            path: file.to_owned(),
            msg: e.to_string(),
        })?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: a NaN loss was written as `null`, the state could not be read
    /// back, and resume silently started over at step 0.
    #[test]
    fn a_state_with_non_finite_figures_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec: TrainSpec = serde_json::from_value(serde_json::json!({
            "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": [], "rslora": false},
            "epochs": 1, "batch_size": 2, "grad_accum_steps": 1, "seq_len": 64, "lr": 1e-3,
            "weight_decay": 0.0, "warmup_steps": 0, "max_grad_norm": 1.0, "assistant_only": true,
            "packing": false, "replay_fraction": 0.0, "checkpoint_every": 1, "log_every": 1, "seed": 1,
            "eval_every": 0, "patience": 0, "max_nonfinite_steps": 5
        }))
        .unwrap();
        let mut s = TrainerState::fresh(&spec, 10);
        s.step = 3;
        s.losses = vec![2.5, f32::NAN, f32::INFINITY];
        s.validations = vec![(0, 9.0), (2, f64::NAN)];
        s.write(dir.path()).unwrap();
        let back = read_state(dir.path()).expect("state unreadable");
        assert_eq!(back.step, 3);
        assert_eq!(back.losses[0], 2.5);
        assert!(back.losses[1].is_nan() && back.losses[2].is_nan());
        assert!(back.validations[1].1.is_nan());
    }
}
