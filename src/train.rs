//! Continual LoRA training of one stream: AdamW (no decay on LoRA B), warmup +
//! cosine schedule, gradient clipping and accumulation, replay of earlier
//! streams, and checkpoints that a killed run resumes from.
//!
//! Determinism: the order of examples in epoch `e` and the replay draws of step
//! `s` come from the seed alone, and dropout is seeded per step, so a run resumed
//! from the checkpoint of step `s` continues exactly where it left off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::ml::data::{self, Encoded, Labels};
use crate::ml::{CausalLm, ChatTokenizer, LoraSpec, Message, MlError};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Ml(#[from] MlError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error(
        "no trainable examples: every example is shorter than two tokens or has no assistant tokens"
    )]
    NoData,
    #[error("stopped at step {0} (checkpoint saved)")]
    Stopped(usize),
}

/// Hyperparameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub lora: LoraSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum_steps: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub assistant_only: bool,
    pub packing: bool,
    pub replay_fraction: f64,
    pub checkpoint_every: usize,
    pub log_every: usize,
    pub seed: u64,
}

impl TrainSpec {
    pub fn from_config(c: &crate::config::Config) -> TrainSpec {
        let t = &c.train;
        TrainSpec {
            lora: LoraSpec::from_config(&c.lora),
            epochs: t.epochs_per_stream,
            batch_size: t.batch_size,
            grad_accum_steps: t.grad_accum_steps,
            seq_len: t.seq_len,
            lr: t.lr,
            weight_decay: t.weight_decay,
            warmup_steps: t.warmup_steps,
            max_grad_norm: t.max_grad_norm,
            assistant_only: t.loss_on == crate::config::LossOn::Assistant,
            packing: t.packing,
            replay_fraction: t.replay_fraction,
            checkpoint_every: t.checkpoint_every,
            log_every: t.log_every,
            seed: t.seed,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup, then cosine to 0.
pub fn lr_at(spec: &TrainSpec, step: usize, total: usize) -> f64 {
    if step < spec.warmup_steps {
        return spec.lr * (step + 1) as f64 / spec.warmup_steps as f64;
    }
    let decay = total.saturating_sub(spec.warmup_steps).max(1);
    let progress = (step - spec.warmup_steps) as f64 / decay as f64;
    spec.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// splitmix64: deterministic draws from (seed, stream of use).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A permutation of `0..n` determined by `key`.
fn shuffled(n: usize, key: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut state = key;
    for i in (1..n).rev() {
        state = mix(state);
        v.swap(i, (state % (i as u64 + 1)) as usize);
    }
    v
}

/// Reservoir sample of at most `cap` items, determined by `seed`.
pub fn reservoir<T>(items: impl IntoIterator<Item = T>, cap: usize, seed: u64) -> Vec<T> {
    let mut out = Vec::with_capacity(cap);
    let mut state = seed;
    for (i, item) in items.into_iter().enumerate() {
        if out.len() < cap {
            out.push(item);
        } else {
            state = mix(state ^ i as u64);
            let j = (state % (i as u64 + 1)) as usize;
            if j < cap {
                out[j] = item;
            }
        }
    }
    out
}

/// AdamW over the LoRA tensors, with state that checkpoints can save.
pub(crate) struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Weight decay per parameter (0 for LoRA B).
    decay: Vec<f64>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl AdamW {
    pub(crate) fn new(params: &[(String, &Tensor)], weight_decay: f64) -> AdamW {
        AdamW {
            m: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            v: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            decay: params
                .iter()
                .map(|(n, _)| {
                    if n.contains(".lora_B.") {
                        0.0
                    } else {
                        weight_decay
                    }
                })
                .collect(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// One update at 1-based step `t` with learning rate `lr`.
    pub(crate) fn step(&mut self, params: &[(String, &Tensor)], lr: f64, t: usize) {
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        tch::no_grad(|| {
            for (i, (_, p)) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if self.decay[i] > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.decay[i]);
                }
                let _ = self.m[i]
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&g * (1.0 - self.beta1)));
                let _ = self.v[i]
                    .g_mul_scalar_(self.beta2)
                    .g_add_(&(&g * &g * (1.0 - self.beta2)));
                let denom = (&self.v[i] / bc2).sqrt() + self.eps;
                let _ = p.g_sub_(&((&self.m[i] / bc1) / denom * lr));
            }
        });
    }
}

/// Clips the global gradient norm to `max`; returns the norm before clipping.
pub(crate) fn clip_grad_norm(params: &[(String, &Tensor)], max: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect();
        let total: f64 = grads
            .iter()
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        if total > max {
            let scale = max / (total + 1e-6);
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(scale);
            }
        }
        total
    })
}

pub(crate) fn zero_grads(params: &[(String, &Tensor)]) {
    for (_, p) in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// What a checkpoint's `trainer_state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub total_steps: usize,
    pub losses: Vec<f32>,
    pub tokens: i64,
    pub seed: u64,
    pub spec: TrainSpec,
    /// The checkpoint tensors (adapter + optimizer) file, beside this one.
    pub checkpoint: Option<String>,
    pub done: bool,
}

/// Progress reported every `log_every` steps and at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
}

impl Progress {
    /// The structured log line of a training step.
    pub fn log(&self) {
        tracing::info!(
            step = self.step,
            total_steps = self.total_steps,
            loss = self.loss,
            lr = self.lr,
            tokens_per_s = self.tokens_per_s,
            eta_s = self.eta_s,
            "training"
        );
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub losses: Vec<f32>,
    pub tokens: i64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub resumed_from: usize,
}

/// One training run: data, starting adapter, and where the result goes.
pub struct TrainJob<'a> {
    pub model: &'a mut CausalLm,
    pub tok: &'a ChatTokenizer,
    pub train: &'a [Vec<Message>],
    /// Examples of earlier streams to mix in (already reservoir-sampled).
    pub replay: &'a [Vec<Message>],
    /// The adapter training continues from; `None` = a fresh LoRA.
    pub init_adapter: Option<&'a Path>,
    /// The adapter version's directory: checkpoints and the final adapter.
    pub out_dir: &'a Path,
    pub spec: &'a TrainSpec,
}

fn encode_all(
    tok: &ChatTokenizer,
    examples: &[Vec<Message>],
    spec: &TrainSpec,
) -> Result<Vec<Encoded>, MlError> {
    let mode = if spec.assistant_only {
        Labels::Assistant
    } else {
        Labels::All
    };
    let mut out = Vec::new();
    for m in examples {
        if let Some(e) = data::encode(tok, m, spec.seq_len, mode)? {
            out.push(e);
        }
    }
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

fn save_checkpoint(
    dir: &Path,
    state: &mut TrainerState,
    params: &[(String, &Tensor)],
    opt: &AdamW,
) -> Result<(), TrainError> {
    let name = format!("checkpoint-{}.safetensors", state.step);
    let file = dir.join(&name);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, (k, p)) in params.iter().enumerate() {
        tensors.push((k.clone(), p.detach().copy()));
        tensors.push((format!("opt.m.{k}"), opt.m[i].copy()));
        tensors.push((format!("opt.v.{k}"), opt.v[i].copy()));
    }
    crate::ml::weights::write_safetensors_atomic(&file, &tensors)?;
    let previous = state.checkpoint.replace(name);
    let state_path = dir.join("trainer_state.json");
    let json = serde_json::to_vec_pretty(state).unwrap_or_default();
    crate::fsutil::write_atomic(&state_path, &json).map_err(io_err(&state_path))?;
    if let Some(prev) = previous.filter(|p| Some(p) != state.checkpoint.as_ref()) {
        let _ = std::fs::remove_file(dir.join(prev));
    }
    Ok(())
}

/// Reads a run's `trainer_state.json`, if there is a readable one.
pub fn read_state(dir: &Path) -> Option<TrainerState> {
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn load_checkpoint(
    dir: &Path,
    state: &TrainerState,
    params: &[(String, &Tensor)],
    opt: &mut AdamW,
) -> Result<(), TrainError> {
    let Some(name) = &state.checkpoint else {
        return Ok(());
    };
    let file = dir.join(name);
    let map: HashMap<String, Tensor> = Tensor::read_safetensors(&file)
        .map_err(|e| TrainError::Checkpoint {
            path: file.clone(),
            msg: e.to_string(),
        })?
        .into_iter()
        .collect();
    let get = |k: &str| {
        map.get(k).ok_or_else(|| TrainError::Checkpoint {
            path: file.clone(),
            msg: format!("tensor {k} missing"),
        })
    };
    tch::no_grad(|| -> Result<(), TrainError> {
        for (i, (k, p)) in params.iter().enumerate() {
            let mut p = p.shallow_clone();
            p.copy_(get(k)?);
            opt.m[i].copy_(get(&format!("opt.m.{k}"))?);
            opt.v[i].copy_(get(&format!("opt.v.{k}"))?);
        }
        Ok(())
    })
}

/// Trains, checkpointing every `checkpoint_every` steps; resumes from the
/// checkpoint in `out_dir` when one from the same spec exists. `stop` asks for
/// a checkpoint and an early return.
pub fn train(
    job: TrainJob<'_>,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    let spec = job.spec;
    std::fs::create_dir_all(job.out_dir).map_err(io_err(job.out_dir))?;
    let examples = encode_all(job.tok, job.train, spec)?;
    let replay = encode_all(job.tok, job.replay, spec)?;
    if examples.is_empty() {
        return Err(TrainError::NoData);
    }
    match job.init_adapter {
        Some(a) => {
            job.model.load_adapter(a)?;
            // Continue training those weights: they must take gradients.
            for (_, p) in job.model.lora_params() {
                let _ = p.set_requires_grad(true);
            }
        }
        None => {
            // A fresh A is drawn from libtorch's generator: seed it.
            tch::manual_seed(spec.seed as i64);
            job.model.attach_lora(spec.lora.clone())?
        }
    }
    let n_replay = if replay.is_empty() {
        0
    } else {
        ((spec.batch_size as f64 * spec.replay_fraction).round() as usize).min(spec.batch_size - 1)
    };
    let fresh_per_batch = spec.batch_size - n_replay;
    let batches_per_epoch = examples.len().div_ceil(fresh_per_batch);
    let steps_per_epoch = batches_per_epoch.div_ceil(spec.grad_accum_steps);
    let total_steps = steps_per_epoch * spec.epochs;

    let pad_id = job.tok.pad_id() as i64;
    let device = job.model.device;
    let params: Vec<(String, Tensor)> = job
        .model
        .lora_params()
        .into_iter()
        .map(|(k, p)| (k, p.shallow_clone()))
        .collect();
    let param_refs: Vec<(String, &Tensor)> = params.iter().map(|(k, p)| (k.clone(), p)).collect();
    let mut opt = AdamW::new(&param_refs, spec.weight_decay);

    let mut state = match read_state(job.out_dir) {
        Some(s) if !s.done && s.spec == *spec && s.total_steps == total_steps => {
            load_checkpoint(job.out_dir, &s, &param_refs, &mut opt)?;
            tracing::info!(step = s.step, total_steps, dir = %job.out_dir.display(), "resuming training from checkpoint");
            s
        }
        _ => TrainerState {
            step: 0,
            total_steps,
            losses: Vec::new(),
            tokens: 0,
            seed: spec.seed,
            spec: spec.clone(),
            checkpoint: None,
            done: false,
        },
    };
    let resumed_from = state.step;
    let t0 = Instant::now();
    let mut run_tokens = 0i64;
    while state.step < total_steps {
        let step = state.step;
        let epoch = step / steps_per_epoch;
        let order = shuffled(
            examples.len(),
            mix(spec.seed ^ (epoch as u64).wrapping_mul(0x1000_0001)),
        );
        tch::manual_seed((spec.seed as i64).wrapping_add(step as i64));
        let first_batch = (step % steps_per_epoch) * spec.grad_accum_steps;
        let last_batch = (first_batch + spec.grad_accum_steps).min(batches_per_epoch);
        let micro: Vec<Vec<&Encoded>> = (first_batch..last_batch)
            .map(|b| {
                let mut batch: Vec<&Encoded> = order
                    .iter()
                    .skip(b * fresh_per_batch)
                    .take(fresh_per_batch)
                    .map(|&i| &examples[i])
                    .collect();
                for r in 0..n_replay {
                    let k =
                        mix(spec.seed ^ ((step * 131 + b * 17 + r) as u64)) as usize % replay.len();
                    batch.push(&replay[k]);
                }
                batch
            })
            .collect();
        let targets: i64 = micro.iter().flatten().map(|e| e.targets() as i64).sum();
        let mut loss_sum = 0.0;
        for batch in &micro {
            let b = if spec.packing {
                data::pack(batch, spec.seq_len, pad_id, device)
            } else {
                data::pad(batch, pad_id, device)
            };
            let logits = job
                .model
                .forward_raw(&b.ids, &b.positions, b.mask.as_ref(), None, true);
            // Mean over all target tokens of the optimizer step.
            let loss = data::nll_sum(&logits, &b.labels) / targets.max(1) as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
            run_tokens += b.tokens;
            state.tokens += b.tokens;
        }
        clip_grad_norm(&param_refs, spec.max_grad_norm);
        let lr = lr_at(spec, step, total_steps);
        opt.step(&param_refs, lr, step + 1);
        zero_grads(&param_refs);
        state.step += 1;
        state.losses.push(loss_sum as f32);

        let elapsed = t0.elapsed().as_secs_f64();
        let p = Progress {
            step: state.step,
            total_steps,
            loss: loss_sum as f32,
            lr,
            tokens_per_s: run_tokens as f64 / elapsed.max(1e-9),
            eta_s: elapsed / (state.step - resumed_from) as f64 * (total_steps - state.step) as f64,
        };
        progress(&p);
        let stopping = stop.load(Ordering::Relaxed);
        if state.step % spec.checkpoint_every == 0 || stopping {
            save_checkpoint(job.out_dir, &mut state, &param_refs, &opt)?;
        }
        if stopping && state.step < total_steps {
            return Err(TrainError::Stopped(state.step));
        }
    }
    job.model.save_adapter(job.out_dir, None)?;
    save_checkpoint(job.out_dir, &mut state, &param_refs, &opt)?;
    state.done = true;
    let state_path = job.out_dir.join("trainer_state.json");
    crate::fsutil::write_atomic(
        &state_path,
        &serde_json::to_vec_pretty(&state).unwrap_or_default(),
    )
    .map_err(io_err(&state_path))?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        steps: state.step,
        losses: state.losses,
        tokens: state.tokens,
        seconds,
        tokens_per_s: run_tokens as f64 / seconds.max(1e-9),
        resumed_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrainSpec {
        TrainSpec {
            lora: LoraSpec {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: vec![],
                rslora: false,
            },
            epochs: 1,
            batch_size: 2,
            grad_accum_steps: 1,
            seq_len: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 2,
            max_grad_norm: 1.0,
            assistant_only: true,
            packing: false,
            replay_fraction: 0.0,
            checkpoint_every: 10,
            log_every: 1,
            seed: 1,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = spec();
        assert!((lr_at(&s, 0, 10) - 5e-4).abs() < 1e-12);
        assert!((lr_at(&s, 1, 10) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 2, 10) - 1e-3).abs() < 1e-12);
        assert!(lr_at(&s, 6, 10) < lr_at(&s, 4, 10));
        assert!(lr_at(&s, 10, 10).abs() < 1e-12);
    }

    #[test]
    fn shuffles_and_reservoir_are_deterministic_permutations() {
        let a = shuffled(50, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(50, 7));
        assert_ne!(a, shuffled(50, 8));
        let r = reservoir(0..1000, 10, 3);
        assert_eq!(r.len(), 10);
        assert_eq!(r, reservoir(0..1000, 10, 3));
        assert!(r.iter().any(|&x| x >= 10), "later items must get in: {r:?}");
    }
}
