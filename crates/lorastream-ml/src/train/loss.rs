//! The language-model loss from final hidden states: the LM head and the
//! cross-entropy run only at labelled positions (never at padding or at
//! prompt tokens when only answers are learned), a chunk of rows at a time,
//! so the `[tokens, vocab]` logits never exist whole. Training computes the
//! gradient of the head by hand (softmax − one-hot, times the head weight)
//! and hands it to autograd at the hidden states.

use tch::{Kind, Tensor};

use crate::CausalLm;
use crate::train::data::IGNORE;

/// Logit elements per chunk (32 MiB of f32): rows = this / vocab (170 for a
/// 49k vocabulary, where a CPU's GEMM is already at its speed).
const CHUNK_ELEMENTS: i64 = 1 << 23;

/// The labelled rows of `hidden` `[b, t, d]` as `[n, d]` and their next-token
/// targets `[n]` (labels shifted left by one, [`IGNORE`] dropped).
fn labelled(hidden: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let (b, t) = labels.size2().expect("labels are [b, t]");
    let d = hidden.size()[2];
    let ignore = Tensor::full([b, 1], IGNORE, (Kind::Int64, labels.device()));
    let next = Tensor::cat(&[&labels.narrow(1, 1, t - 1), &ignore], 1).view([-1]);
    let rows = next.ne(IGNORE).nonzero().squeeze_dim(1);
    (
        hidden.view([-1, d]).index_select(0, &rows),
        next.index_select(0, &rows),
    )
}

fn chunk_rows(model: &CausalLm) -> i64 {
    (CHUNK_ELEMENTS / model.head_weight().size()[0]).clamp(16, 4096)
}

/// Log-probabilities of one chunk's `logits` in f32 (`log_softmax`: one
/// vectorised pass, where `logsumexp` on the CPU costs more than the head's
/// matmul) and the summed NLL of `targets`.
fn chunk_nll(logits: &Tensor, targets: &Tensor) -> (Tensor, f64) {
    let logp = logits.log_softmax(-1, Kind::Float);
    let picked = logp.gather(1, &targets.unsqueeze(1), false);
    let nll = -picked.sum(Kind::Double).double_value(&[]);
    (logp, nll)
}

/// Summed next-token NLL over the labelled positions of a batch (no gradient).
pub fn nll_sum(model: &CausalLm, hidden: &Tensor, labels: &Tensor) -> f64 {
    nll_sum_in(model, hidden, labels, chunk_rows(model))
}

fn nll_sum_in(model: &CausalLm, hidden: &Tensor, labels: &Tensor, rows: i64) -> f64 {
    tch::no_grad(|| {
        let (h, targets) = labelled(hidden, labels);
        h.split(rows, 0)
            .iter()
            .zip(targets.split(rows, 0).iter())
            .map(|(h, t)| chunk_nll(&model.logits(h), t).1)
            .sum()
    })
}

/// Next-token NLL summed per row of a batch, with the labelled tokens of
/// each row (no gradient): the per-example figures of an evaluation.
pub fn nll_per_row(model: &CausalLm, hidden: &Tensor, labels: &Tensor) -> Vec<(f64, i64)> {
    let (b, t) = labels.size2().expect("labels are [b, t]");
    let mut out = vec![(0.0, 0i64); b as usize];
    tch::no_grad(|| {
        let (h, targets) = labelled(hidden, labels);
        let ignore = Tensor::full([b, 1], IGNORE, (Kind::Int64, labels.device()));
        let next = Tensor::cat(&[&labels.narrow(1, 1, t - 1), &ignore], 1).view([-1]);
        let rows: Vec<i64> =
            Vec::try_from(next.ne(IGNORE).nonzero().squeeze_dim(1) / t).unwrap_or_default();
        let chunk = chunk_rows(model);
        let mut at = 0;
        for (hc, tc) in h.split(chunk, 0).iter().zip(targets.split(chunk, 0).iter()) {
            let logp = model.logits(hc).log_softmax(-1, Kind::Float);
            let picked = logp.gather(1, &tc.unsqueeze(1), false).squeeze_dim(1);
            let nll: Vec<f64> = Vec::try_from(picked.to_kind(Kind::Double)).unwrap_or_default();
            for x in nll {
                let row = &mut out[rows[at] as usize];
                row.0 -= x;
                row.1 += 1;
                at += 1;
            }
        }
    });
    out
}

/// Summed next-token NLL over the labelled positions of a batch, and the
/// backward pass of `scale` × that sum through `hidden`'s graph (the LoRA
/// weights get their gradients). Returns the sum (unscaled).
pub fn backward_nll(model: &CausalLm, hidden: &Tensor, labels: &Tensor, scale: f64) -> f64 {
    backward_nll_in(model, hidden, labels, scale, chunk_rows(model))
}

fn backward_nll_in(
    model: &CausalLm,
    hidden: &Tensor,
    labels: &Tensor,
    scale: f64,
    rows: i64,
) -> f64 {
    let (h, targets) = labelled(hidden, labels);
    if targets.numel() == 0 {
        return 0.0;
    }
    let w = model.head_weight();
    let mut total = 0.0;
    let grads: Vec<Tensor> = tch::no_grad(|| {
        let hd = h.detach();
        hd.split(rows, 0)
            .iter()
            .zip(targets.split(rows, 0).iter())
            .map(|(hc, tc)| {
                let z = model.logits(hc);
                let (mut g, nll) = chunk_nll(&z, tc);
                total += nll;
                // d(nll)/d(logits) = softmax − one-hot.
                let _ = g.exp_();
                let _ = g.scatter_add_(
                    1,
                    &tc.unsqueeze(1),
                    &Tensor::full([tc.size()[0], 1], -1.0, (Kind::Float, g.device())),
                );
                let _ = g.g_mul_scalar_(scale);
                // Soft-capped logits c·tanh(z/c): times their slope 1 − tanh²(z/c).
                if let Some(cap) = model.config.extras.final_softcap {
                    let capped = z.to_kind(Kind::Float) / cap;
                    let _ = g.g_mul_(&(capped.square().neg() + 1.0));
                }
                g.to_kind(w.kind()).mm(w)
            })
            .collect()
    });
    let dh = Tensor::cat(&grads, 0).to_kind(h.kind());
    (h * dh).sum(Kind::Float).backward();
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::init::{InitOptions, Preset, init_model};
    use crate::train::data;
    use crate::{Arch, LoraSpec};
    use tch::Device;

    /// The chunked loss and its gradient equal autograd's over full logits.
    #[test]
    fn chunked_loss_and_gradient_equal_full_logits() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            arch: Arch::Llama,
            preset: Preset::Tiny,
            corpus: None,
            seed: 3,
            vocab_size: 300,
        };
        let cfg = init_model(dir.path(), &opts).unwrap();
        let mut model = CausalLm::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        model
            .attach_lora(LoraSpec {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: vec![],
                rslora: false,
            })
            .unwrap();
        for l in model.linears() {
            if let Some(w) = &l.lora {
                tch::no_grad(|| {
                    let _ = w.b.shallow_clone().normal_(0.0, 0.02);
                });
            }
        }
        let ids = Tensor::randint(cfg.vocab_size as i64, [2, 9], (Kind::Int64, Device::Cpu));
        let labels = ids.copy();
        let _ = labels.narrow(1, 0, 3).fill_(IGNORE);
        let positions = Tensor::arange(9, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .expand([2, 9], true);
        let grads = |m: &CausalLm| -> Vec<Tensor> {
            m.lora_params()
                .iter()
                .map(|(_, t)| t.grad().copy())
                .collect()
        };
        let zero = |m: &CausalLm| {
            for (_, t) in m.lora_params() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        };
        let logits = model.forward_raw(&ids, &positions, None, None, true);
        let full = data::nll_sum(&logits, &labels);
        (&full * 0.5).backward();
        let want = grads(&model);
        zero(&model);
        let h = model.hidden(&ids, &positions, None, None, true);
        // 12 labelled rows in chunks of 5: three chunks, the last one short.
        let got_sum = backward_nll_in(&model, &h, &labels, 0.5, 5);
        let got = grads(&model);
        let full = full.double_value(&[]);
        assert!(
            (got_sum - full).abs() < 1e-4 * full.abs(),
            "{got_sum} vs {full}"
        );
        let h = tch::no_grad(|| model.hidden(&ids, &positions, None, None, false));
        assert!((nll_sum_in(&model, &h, &labels, 5) - full).abs() < 1e-4 * full.abs());
        assert!((nll_sum(&model, &h, &labels) - full).abs() < 1e-4 * full.abs());
        for (g, w) in got.iter().zip(&want) {
            let err = (g - w).abs().max().double_value(&[]);
            let scale = w.abs().max().double_value(&[]);
            assert!(
                err <= 1e-4 * scale + 1e-7,
                "gradient differs by {err} (max {scale})"
            );
        }
    }
}
