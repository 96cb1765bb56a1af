//! The overfitting guard of a run: a validation slice (held out of the
//! stream's train split, never its eval split) measured at step 0 and every
//! `eval_every` steps; the best weights are kept and the run stops after
//! `patience` validations without a new best.

use crate::CausalLm;
use crate::train::data::Encoded;

use super::TrainSpec;
use super::checkpoint::TrainerState;

pub(super) struct Validation {
    pub examples: Vec<Encoded>,
    pub pad_id: i64,
    /// Optimizer steps between validations.
    pub every: usize,
    pub patience: usize,
}

/// What one validation did to the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// A new best: save the weights.
    Best,
    Worse,
    /// `patience` validations without a new best.
    Stop,
}

impl Validation {
    /// `eval_every` 0 = four times per epoch.
    pub fn new(
        spec: &TrainSpec,
        examples: Vec<Encoded>,
        pad_id: i64,
        steps_per_epoch: usize,
    ) -> Validation {
        let every = if spec.eval_every > 0 {
            spec.eval_every
        } else {
            steps_per_epoch.div_ceil(4).max(1)
        };
        Validation {
            examples,
            pad_id,
            every,
            patience: spec.patience,
        }
    }

    pub fn due(&self, step: usize, total: usize) -> bool {
        !self.examples.is_empty() && (step.is_multiple_of(self.every) || step == total)
    }

    /// Measures the model now and records it in `state`.
    pub fn run(&self, model: &CausalLm, batch_size: usize, state: &mut TrainerState) -> Verdict {
        let ppl = crate::train::perplexity::perplexity_encoded(
            model,
            &self.examples,
            self.pad_id,
            batch_size,
        )
        .perplexity;
        state.validations.push((state.step, ppl));
        let better = ppl.is_finite() && state.best.is_none_or(|(_, b)| ppl < b);
        tracing::info!(
            step = state.step,
            validation_ppl = ppl,
            best_step = state.best.map(|b| b.0),
            best_ppl = state.best.map(|b| b.1),
            "validation"
        );
        if better {
            state.best = Some((state.step, ppl));
            state.since_best = 0;
            Verdict::Best
        } else {
            state.since_best += 1;
            if self.patience > 0 && state.since_best >= self.patience {
                Verdict::Stop
            } else {
                Verdict::Worse
            }
        }
    }
}
