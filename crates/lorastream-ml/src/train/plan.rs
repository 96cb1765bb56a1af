//! The batch plan of a run: how many fresh and replayed examples go into a
//! micro-batch, how many micro-batches make an optimizer step, and which
//! examples step `s` takes — from the seed alone, so a resumed run takes the
//! same ones.

use crate::runtime::rng::{mix, shuffled};
use crate::train::data::Encoded;

use super::TrainSpec;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct BatchPlan {
    /// Examples of earlier streams per micro-batch, on average: batch_size ×
    /// replay_fraction. The fractional part is spread over the batches, so a
    /// share of 0.1 in batches of 4 still replays (one example in 2 of 5 batches).
    pub replay_per_batch: f64,
    /// Examples of this stream in each micro-batch.
    pub fresh_per_batch: usize,
    pub batches_per_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl BatchPlan {
    pub fn new(spec: &TrainSpec, n_examples: usize, n_replay_pool: usize) -> BatchPlan {
        let replay_per_batch = if n_replay_pool == 0 {
            0.0
        } else {
            (spec.batch_size as f64 * spec.replay_fraction).min(spec.batch_size as f64 - 1.0)
        };
        let fresh_per_batch = spec.batch_size - replay_per_batch.floor() as usize;
        let batches_per_epoch = n_examples.div_ceil(fresh_per_batch);
        let steps_per_epoch = batches_per_epoch.div_ceil(spec.grad_accum_steps);
        BatchPlan {
            replay_per_batch,
            fresh_per_batch,
            batches_per_epoch,
            steps_per_epoch,
            total_steps: steps_per_epoch * spec.epochs,
        }
    }

    /// The micro-batches of optimizer step `step` (0-based).
    pub fn micro_batches<'a>(
        &self,
        spec: &TrainSpec,
        step: usize,
        examples: &'a [Encoded],
        replay: &'a [Encoded],
    ) -> Vec<Vec<&'a Encoded>> {
        let epoch = step / self.steps_per_epoch;
        let order = shuffled(
            examples.len(),
            mix(spec.seed ^ (epoch as u64).wrapping_mul(0x1000_0001)),
        );
        let first = (step % self.steps_per_epoch) * spec.grad_accum_steps;
        let last = (first + spec.grad_accum_steps).min(self.batches_per_epoch);
        (first..last)
            .map(|b| {
                let mut batch: Vec<&Encoded> = order
                    .iter()
                    .skip(b * self.fresh_per_batch)
                    .take(self.fresh_per_batch)
                    .map(|&i| &examples[i])
                    .collect();
                let g = (epoch * self.batches_per_epoch + b) as f64;
                let n_replay = ((g + 1.0) * self.replay_per_batch).floor() as usize
                    - (g * self.replay_per_batch).floor() as usize;
                for r in 0..n_replay {
                    let k =
                        mix(spec.seed ^ ((step * 131 + b * 17 + r) as u64)) as usize % replay.len();
                    batch.push(&replay[k]);
                }
                batch
            })
            .collect()
    }
}
