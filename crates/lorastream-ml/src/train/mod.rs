//! Continual LoRA training of one stream: AdamW (no decay on LoRA B), warmup +
//! cosine schedule, gradient clipping and accumulation, replay of earlier
//! streams, and checkpoints that a killed run resumes from.
//!
//! Determinism: the order of examples in epoch `e` and the replay draws of step
//! `s` come from the seed alone, and dropout is seeded per step, so a run resumed
//! from the checkpoint of step `s` continues exactly where it left off.

//!
//! # Layout
//!
//! - this file: [`TrainSpec`], [`TrainJob`] and [`train`], a run as named
//!   steps: encode, start or resume, then per optimizer step the
//!   micro-batches' forward/backward and one [`LoraOptimizer::step`], finish;
//! - `plan`: which examples each step takes;
//! - `guard`: validation during training, best weights, early stopping;
//! - [`optim`]: the optimizer step (shared with `bench train`);
//! - [`checkpoint`]: `trainer_state.json` and the checkpoint tensors;
//! - [`data`]: chat examples encoded into token rows with labels, batched;
//! - [`loss`]: the LM head and the loss at labelled rows only, in chunks;
//! - [`perplexity`]: a stream's perplexity, per example, batched.

pub mod checkpoint;
pub mod data;
mod guard;
pub mod loss;
pub mod optim;
pub mod perplexity;
mod plan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{CausalLm, ChatTokenizer, LoraSpec, Message, MlError};
pub use checkpoint::{TrainerState, read_state};
use data::{Encoded, Labels};
pub use optim::LoraOptimizer;
use plan::BatchPlan;

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
    #[error("{count} steps in a row had a NaN or infinite loss or gradient (last: step {step})")]
    NonFinite { step: usize, count: usize },
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
    /// Validate every this many steps (0 = four times per epoch).
    pub eval_every: usize,
    /// Stop after this many validations without a new best (0 = never).
    pub patience: usize,
    pub max_nonfinite_steps: usize,
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

/// Progress reported after every optimizer step (the caller logs every
/// `log_every`).
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
    /// Steps planned (more than `steps` when the run stopped early).
    pub total_steps: usize,
    pub losses: Vec<f32>,
    pub tokens: i64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub resumed_from: usize,
    /// Validation perplexity by step (empty without a validation slice).
    pub validations: Vec<(usize, f64)>,
    /// The step whose weights were kept (the best validation).
    pub best_step: Option<usize>,
    pub stopped_early: bool,
    /// Steps skipped for a NaN/infinite loss or gradient.
    pub skipped_steps: usize,
}

/// One training run: data, starting adapter, and where the result goes.
pub struct TrainJob<'a> {
    pub model: &'a mut CausalLm,
    pub tok: &'a ChatTokenizer,
    pub train: &'a [Vec<Message>],
    /// Held out of the stream's train split to validate on (may be empty).
    pub validation: &'a [Vec<Message>],
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

/// Trains, checkpointing every `checkpoint_every` steps; resumes from the
/// checkpoint in `out_dir` when one from the same spec exists. `stop` asks for
/// a checkpoint and an early return.
pub fn train(
    mut job: TrainJob<'_>,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    let spec = job.spec;
    lorastream_base::fsutil::create_dir_all_durable(job.out_dir).map_err(io_err(job.out_dir))?;
    let examples = encode_all(job.tok, job.train, spec)?;
    let replay = encode_all(job.tok, job.replay, spec)?;
    if examples.is_empty() {
        return Err(TrainError::NoData);
    }
    let plan = BatchPlan::new(spec, examples.len(), replay.len());
    let guard = guard::Validation::new(
        spec,
        encode_all(job.tok, job.validation, spec)?,
        job.tok.pad_id() as i64,
        plan.steps_per_epoch,
    );
    let (mut opt, mut state) = start_or_resume(&mut job, plan.total_steps)?;
    let resumed_from = state.step;
    let t0 = Instant::now();
    if state.done {
        return Ok(outcome(state, plan.total_steps, t0, 0, resumed_from));
    }
    if state.step == 0 && guard.due(0, plan.total_steps) {
        guard.run(job.model, spec.batch_size, &mut state);
        checkpoint::save_best(job.out_dir, &opt)?;
    }
    let mut run_tokens = 0i64;
    let _busy = crate::runtime::threads::busy(crate::runtime::threads::Work::Learn);
    while state.step < plan.total_steps && !state.stopped_early {
        crate::runtime::threads::apply(crate::runtime::threads::Work::Learn);
        let step = state.step;
        let batches = plan.micro_batches(spec, step, &examples, &replay);
        let (loss, tokens) = forward_backward(job.model, job.tok, spec, step, &batches);
        let lr = lr_at(spec, step, plan.total_steps);
        let norm = apply_step(&mut opt, spec, step, loss, lr);
        run_tokens += tokens;
        state.tokens += tokens;
        record_step(&mut state, spec, loss, norm)?;
        if guard.due(state.step, plan.total_steps) {
            validate(&guard, &mut job, &opt, &mut state)?;
        }

        let elapsed = t0.elapsed().as_secs_f64();
        progress(&Progress {
            step: state.step,
            total_steps: plan.total_steps,
            loss: loss as f32,
            lr,
            tokens_per_s: run_tokens as f64 / elapsed.max(1e-9),
            eta_s: elapsed / (state.step - resumed_from) as f64
                * (plan.total_steps - state.step) as f64,
        });
        let stopping = stop.load(Ordering::Relaxed);
        if state.step % spec.checkpoint_every == 0 || stopping {
            checkpoint::save(job.out_dir, &mut state, &opt)?;
        }
        if stopping && state.step < plan.total_steps && !state.stopped_early {
            return Err(TrainError::Stopped(state.step));
        }
    }
    finish(&job, &mut state, &opt)?;
    Ok(outcome(
        state,
        plan.total_steps,
        t0,
        run_tokens,
        resumed_from,
    ))
}

/// The optimizer step at `lr`, or none when the loss is not finite; the
/// gradient norm (NaN when skipped).
fn apply_step(opt: &mut LoraOptimizer, spec: &TrainSpec, step: usize, loss: f64, lr: f64) -> f64 {
    if loss.is_finite() {
        opt.step(lr, step + 1, spec.max_grad_norm)
    } else {
        opt.zero_grad();
        f64::NAN
    }
}

/// Counts a finished step; a run of `max_nonfinite_steps` non-finite ones
/// in a row ends the run.
fn record_step(
    state: &mut TrainerState,
    spec: &TrainSpec,
    loss: f64,
    norm: f64,
) -> Result<(), TrainError> {
    state.step += 1;
    state.losses.push(loss as f32);
    if norm.is_finite() {
        state.nonfinite_run = 0;
        return Ok(());
    }
    state.skipped_steps += 1;
    state.nonfinite_run += 1;
    tracing::warn!(
        step = state.step,
        loss,
        grad_norm = norm,
        in_a_row = state.nonfinite_run,
        "non-finite step skipped"
    );
    if state.nonfinite_run >= spec.max_nonfinite_steps.max(1) {
        return Err(TrainError::NonFinite {
            step: state.step,
            count: state.nonfinite_run,
        });
    }
    Ok(())
}

/// Validates now: keeps the weights when they are the best so far, or
/// marks the run stopped early after `patience` validations without gain.
fn validate(
    guard: &guard::Validation,
    job: &mut TrainJob<'_>,
    opt: &LoraOptimizer,
    state: &mut TrainerState,
) -> Result<(), TrainError> {
    match guard.run(job.model, job.spec.batch_size, state) {
        guard::Verdict::Best => checkpoint::save_best(job.out_dir, opt)?,
        guard::Verdict::Worse => {}
        guard::Verdict::Stop => {
            state.stopped_early = true;
            tracing::info!(step = state.step, best = ?state.best, patience = job.spec.patience, "stopping early: no better validation");
        }
    }
    Ok(())
}

fn outcome(
    state: TrainerState,
    total_steps: usize,
    t0: Instant,
    run_tokens: i64,
    resumed_from: usize,
) -> TrainOutcome {
    let seconds = t0.elapsed().as_secs_f64();
    TrainOutcome {
        steps: state.step,
        total_steps,
        losses: state.losses,
        tokens: state.tokens,
        seconds,
        tokens_per_s: run_tokens as f64 / seconds.max(1e-9),
        resumed_from,
        validations: state.validations,
        best_step: state.best.map(|b| b.0),
        stopped_early: state.stopped_early,
        skipped_steps: state.skipped_steps,
    }
}

/// Attaches the starting LoRA (the parent adapter, or a fresh one), then
/// resumes from `out_dir`'s checkpoint when it belongs to the same run.
fn start_or_resume(
    job: &mut TrainJob<'_>,
    total_steps: usize,
) -> Result<(LoraOptimizer, TrainerState), TrainError> {
    let spec = job.spec;
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
    let mut opt = LoraOptimizer::new(job.model, spec.weight_decay);
    let state = match read_state(job.out_dir) {
        Some(s) if s.spec == *spec && s.total_steps == total_steps => {
            checkpoint::load(job.out_dir, &s, &mut opt)?;
            if s.done {
                // Finished before a crash kept it from being recorded: the
                // final weights are the last checkpoint; nothing to train.
                tracing::info!(step = s.step, dir = %job.out_dir.display(), "training had finished; using its result");
            } else {
                tracing::info!(step = s.step, total_steps, dir = %job.out_dir.display(), "resuming training from checkpoint");
            }
            s
        }
        _ => TrainerState::fresh(spec, total_steps),
    };
    Ok((opt, state))
}

/// Forward and backward passes of one optimizer step's micro-batches, with
/// dropout seeded by the step. Returns the step's loss (mean over all its
/// target tokens) and the tokens it saw.
fn forward_backward(
    model: &CausalLm,
    tok: &ChatTokenizer,
    spec: &TrainSpec,
    step: usize,
    batches: &[Vec<&Encoded>],
) -> (f64, i64) {
    tch::manual_seed((spec.seed as i64).wrapping_add(step as i64));
    let pad_id = tok.pad_id() as i64;
    let targets: i64 = batches.iter().flatten().map(|e| e.targets() as i64).sum();
    let mut loss_sum = 0.0;
    let mut tokens = 0;
    for batch in batches {
        let b = if spec.packing {
            data::pack(batch, spec.seq_len, pad_id, model.device)
        } else {
            data::pad(batch, pad_id, model.device)
        };
        let hidden = model.hidden(&b.ids, &b.positions, b.mask.as_ref(), None, true);
        let scale = 1.0 / targets.max(1) as f64;
        loss_sum += crate::train::loss::backward_nll(model, &hidden, &b.labels, scale) * scale;
        tokens += b.tokens;
    }
    (loss_sum, tokens)
}

/// Keeps the best validated weights (when they are not the last), saves the
/// adapter and the last checkpoint, and marks the run done.
fn finish(
    job: &TrainJob<'_>,
    state: &mut TrainerState,
    opt: &LoraOptimizer,
) -> Result<(), TrainError> {
    if let Some((best, _)) = state.best.filter(|b| b.0 != state.step) {
        tracing::info!(
            best_step = best,
            last_step = state.step,
            "keeping the best validated weights"
        );
        checkpoint::load_best(job.out_dir, opt)?;
    }
    job.model.save_adapter(job.out_dir, None)?;
    checkpoint::save(job.out_dir, state, opt)?;
    state.done = true;
    state.write(job.out_dir)
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
            eval_every: 0,
            patience: 0,
            max_nonfinite_steps: 5,
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
}
