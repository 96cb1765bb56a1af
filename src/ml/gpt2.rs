//! GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, Conv1D
//! weights (`[in, out]`), GELU (tanh approximation), tied LM head.

use tch::Tensor;

use super::MlError;
use super::attention::{LayerCache, attention};
use super::hf_config::HfConfig;
use super::lora::Linear;
use super::weights::Weights;

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(ws: &mut Weights, prefix: &str, d: i64, eps: f64) -> Result<Self, MlError> {
        Ok(LayerNorm {
            w: ws.take_any(&names(prefix, "weight"), &[d])?,
            b: ws.take_any(&names(prefix, "bias"), &[d])?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.w.size()[0]],
            Some(&self.w),
            Some(&self.b),
            self.eps,
            true,
        )
    }
}

/// Checkpoints name GPT-2 tensors with or without the `transformer.` prefix.
fn names(prefix: &str, leaf: &str) -> Vec<String> {
    vec![
        format!("transformer.{prefix}.{leaf}"),
        format!("{prefix}.{leaf}"),
    ]
}

fn conv1d(ws: &mut Weights, prefix: &str, fan_in: i64, fan_out: i64) -> Result<Linear, MlError> {
    Ok(Linear {
        path: format!("transformer.{prefix}"),
        weight: ws.take_any(&names(prefix, "weight"), &[fan_in, fan_out])?,
        bias: Some(ws.take_any(&names(prefix, "bias"), &[fan_out])?),
        fan_in_fan_out: true,
        lora: None,
        merged: false,
    })
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

pub struct Gpt2 {
    cfg: HfConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<Tensor>,
}

impl Gpt2 {
    pub fn load(cfg: &HfConfig, ws: &mut Weights) -> Result<Gpt2, MlError> {
        let d = cfg.hidden_size as i64;
        let inner = cfg.intermediate_size as i64;
        let eps = cfg.norm_eps;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: LayerNorm::load(ws, &format!("{p}.ln_1"), d, eps)?,
                c_attn: conv1d(ws, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                attn_proj: conv1d(ws, &format!("{p}.attn.c_proj"), d, d)?,
                ln_2: LayerNorm::load(ws, &format!("{p}.ln_2"), d, eps)?,
                c_fc: conv1d(ws, &format!("{p}.mlp.c_fc"), d, inner)?,
                mlp_proj: conv1d(ws, &format!("{p}.mlp.c_proj"), inner, d)?,
            });
        }
        let v = cfg.vocab_size as i64;
        let wte = ws.take_any(&names("wte", "weight")[..], &[v, d])?;
        let lm_head = if cfg.tie_word_embeddings || !ws.contains("lm_head.weight") {
            None
        } else {
            Some(ws.take("lm_head.weight", &[v, d])?)
        };
        Ok(Gpt2 {
            cfg: cfg.clone(),
            wte,
            wpe: ws.take_any(
                &names("wpe", "weight"),
                &[cfg.max_position_embeddings as i64, d],
            )?,
            blocks,
            ln_f: LayerNorm::load(ws, "ln_f", d, eps)?,
            lm_head,
        })
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj])
            .collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.c_attn,
                    &mut b.attn_proj,
                    &mut b.c_fc,
                    &mut b.mlp_proj,
                ]
            })
            .collect()
    }

    /// Named base tensors in checkpoint layout (for merged exports).
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![
            ("transformer.wte.weight".to_string(), &self.wte),
            ("transformer.wpe.weight".to_string(), &self.wpe),
            ("transformer.ln_f.weight".to_string(), &self.ln_f.w),
            ("transformer.ln_f.bias".to_string(), &self.ln_f.b),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, ln) in [("ln_1", &b.ln_1), ("ln_2", &b.ln_2)] {
                v.push((format!("transformer.h.{i}.{n}.weight"), &ln.w));
                v.push((format!("transformer.h.{i}.{n}.bias"), &ln.b));
            }
            for l in [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj] {
                v.extend(l.named_tensors());
            }
        }
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h));
        }
        v
    }

    /// `ids`, `positions`: `[b, t]`; `mask`: additive `[b, 1, t, past + t]` or `None` (causal).
    // `x = x + f(x)`, not `x += f(x)`: an in-place add on `x` would clobber
    // what autograd saved for the backward pass.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut Vec<LayerCache>>,
        train: bool,
    ) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [batch, time]");
        let nh = self.cfg.num_heads as i64;
        let hd = self.cfg.head_dim as i64;
        let d = self.cfg.hidden_size as i64;
        let mut x = Tensor::embedding(&self.wte, ids, -1, false, false)
            + Tensor::embedding(&self.wpe, positions, -1, false, false);
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.ln_1.forward(&x);
            let qkv = blk.c_attn.forward(&h, train);
            let parts = qkv.split(d, -1);
            let heads = |t_: &Tensor| t_.view([b, t, nh, hd]).transpose(1, 2);
            let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[i]);
            let a = attention(&q, k, v, mask, layer_cache, false);
            let a = a.transpose(1, 2).contiguous().view([b, t, d]);
            x = x + blk.attn_proj.forward(&a, train);
            let h = blk.ln_2.forward(&x);
            let m = blk.c_fc.forward(&h, train).gelu("tanh");
            x = x + blk.mlp_proj.forward(&m, train);
        }
        self.ln_f.forward(&x)
    }

    /// The `[vocab, hidden]` output projection (the embedding when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}
