//! One optimizer step over the LoRA weights: global gradient-norm clipping,
//! AdamW (no weight decay on LoRA B), gradients zeroed. Shared by training and
//! `bench train`, so the benchmark measures the step the daemon takes.

use tch::{Kind, Tensor};

use crate::CausalLm;

/// AdamW over the LoRA tensors of a model, with state that checkpoints save.
pub struct LoraOptimizer {
    /// (PEFT name, tensor sharing storage with the model's weight).
    pub(super) params: Vec<(String, Tensor)>,
    pub(super) m: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    /// Weight decay per parameter (0 for LoRA B).
    decay: Vec<f64>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl LoraOptimizer {
    /// Over the LoRA weights attached to `model`.
    pub fn new(model: &CausalLm, weight_decay: f64) -> LoraOptimizer {
        let params: Vec<(String, Tensor)> = model
            .lora_params()
            .into_iter()
            .map(|(k, p)| (k, p.shallow_clone()))
            .collect();
        LoraOptimizer {
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
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Number of trainable values.
    pub fn trainable(&self) -> i64 {
        self.params.iter().map(|(_, p)| p.numel() as i64).sum()
    }

    /// One optimizer step after the micro-batches' `backward()`: clips the
    /// global gradient norm to `max_grad_norm`, applies AdamW at 1-based step
    /// `t` with learning rate `lr`, zeroes the gradients. Returns the norm
    /// before clipping; when it is NaN or infinite nothing is applied.
    pub fn step(&mut self, lr: f64, t: usize, max_grad_norm: f64) -> f64 {
        let norm = self.clip_grad_norm(max_grad_norm);
        if norm.is_finite() {
            self.adamw(lr, t);
        }
        self.zero_grad();
        norm
    }

    /// Drops the gradients of the micro-batches seen since the last step.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn adamw(&mut self, lr: f64, t: usize) {
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
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

    fn clip_grad_norm(&self, max: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
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
}
