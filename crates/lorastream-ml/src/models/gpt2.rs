//! GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, Conv1D
//! weights (`[in, out]`), GELU (tanh approximation), tied LM head.

use tch::Tensor;

use super::{Arch, Backbone, Family, Fill, Init, TensorSpec};
use crate::MlError;
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, uint};
use crate::load::weights::Weights;
use crate::nn::lora::{Linear, LoraTargets};
use crate::nn::pass::Pass;

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
}

impl Backbone for Gpt2 {
    fn linears(&self) -> Vec<&Linear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj])
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
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
    fn named_tensors(&self) -> Vec<(String, &Tensor)> {
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

    /// `ids`, `positions`: `[b, t]`; `pass`: attention and LoRA of the rows.
    // `x = x + f(x)`, not `x += f(x)`: an in-place add on `x` would clobber
    // what autograd saved for the backward pass.
    #[allow(clippy::assign_op_pattern)]
    fn forward_hidden(&self, ids: &Tensor, positions: &Tensor, pass: &mut Pass) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [batch, time]");
        let nh = self.cfg.num_heads as i64;
        let hd = self.cfg.head_dim as i64;
        let d = self.cfg.hidden_size as i64;
        let mut x = Tensor::embedding(&self.wte, ids, -1, false, false)
            + Tensor::embedding(&self.wpe, positions, -1, false, false);
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.ln_1.forward(&x);
            let qkv = pass.linear(&blk.c_attn, &h);
            let parts = qkv.split(d, -1);
            let heads = |t_: &Tensor| t_.view([b, t, nh, hd]).transpose(1, 2);
            let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
            let a = pass.attention(i, &q, k, v, &Default::default(), false);
            let a = a.transpose(1, 2).contiguous().view([b, t, d]);
            x = x + pass.linear(&blk.attn_proj, &a);
            let h = blk.ln_2.forward(&x);
            let m = pass.linear(&blk.c_fc, &h).gelu("tanh");
            x = x + pass.linear(&blk.mlp_proj, &m);
        }
        self.ln_f.forward(&x)
    }

    /// The `[vocab, hidden]` output projection (the embedding when tied).
    fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
}

/// `config.json` read as this family's names say.
pub(crate) fn read_config(
    v: &serde_json::Value,
    ids: SpecialIds,
) -> Result<HfConfig, ConfigProblem> {
    let need = |k: &'static str| uint(v, k).ok_or(ConfigProblem::Missing(k));
    let d = need("n_embd")?;
    let h = need("n_head")?;
    if h == 0 || d % h != 0 {
        return Err(ConfigProblem::Invalid(format!(
            "{h} heads do not divide hidden size {d}"
        )));
    }
    Ok(HfConfig {
        arch: Arch::Gpt2,
        vocab_size: need("vocab_size")?,
        hidden_size: d,
        num_layers: need("n_layer")?,
        num_heads: h,
        num_kv_heads: h,
        head_dim: d / h.max(1),
        intermediate_size: uint(v, "n_inner").unwrap_or(4 * d),
        max_position_embeddings: need("n_positions")?,
        norm_eps: v
            .get("layer_norm_epsilon")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5),
        rope_theta: 0.0,
        rope_scaling: None,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(true),
        attention_bias: true,
        mlp_bias: true,
        bos_token_id: ids.bos,
        eos_token_ids: ids.eos,
        pad_token_id: ids.pad,
        extras: Default::default(),
    })
}

/// `config.json` in transformers' names for this family.
pub(crate) fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size,
        "n_layer": c.num_layers,
        "n_head": c.num_heads,
        "n_inner": c.intermediate_size,
        "n_positions": c.max_position_embeddings,
        "n_ctx": c.max_position_embeddings,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

/// GPT-2 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = Family {
    lora: LoraTargets {
        all: &["c_attn", "c_proj", "c_fc"],
        default: &["c_attn"],
        fan_in_fan_out: true,
    },
    read_config,
    write_config,
    load: |cfg, ws| Ok(Box::new(Gpt2::load(cfg, ws)?)),
    init: Init {
        special_tokens: &["<|endoftext|>"],
        config: tiny_config,
        tokenizer_config,
        tensors,
    },
};

fn tiny_config(
    vocab: usize,
    width: usize,
    layers: usize,
    id: &dyn Fn(&str) -> Option<i64>,
) -> HfConfig {
    HfConfig {
        arch: Arch::Gpt2,
        vocab_size: vocab,
        hidden_size: width,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: width / 4,
        intermediate_size: 4 * width,
        max_position_embeddings: 1024,
        norm_eps: 1e-5,
        rope_theta: 0.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        attention_bias: true,
        mlp_bias: true,
        bos_token_id: id("<|endoftext|>"),
        eos_token_ids: id("<|endoftext|>").into_iter().collect(),
        pad_token_id: None,
        extras: Default::default(),
    }
}

fn tokenizer_config(cfg: &HfConfig) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "model_max_length": cfg.max_position_embeddings,
        "add_prefix_space": false,
    })
}

/// Every tensor of the checkpoint: Conv1D weights are `[in, out]`.
fn tensors(cfg: &HfConfig) -> Vec<TensorSpec> {
    let d = cfg.hidden_size as i64;
    let inner = cfg.intermediate_size as i64;
    let positions = cfg.max_position_embeddings as i64;
    let mut t = vec![
        (
            "transformer.wte.weight".into(),
            vec![cfg.vocab_size as i64, d],
            Fill::Normal,
        ),
        (
            "transformer.wpe.weight".into(),
            vec![positions, d],
            Fill::Normal,
        ),
    ];
    for i in 0..cfg.num_layers {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{ln}.weight"), vec![d], Fill::Ones));
            t.push((format!("{p}.{ln}.bias"), vec![d], Fill::Zeros));
        }
        for (name, i_, o_) in [
            ("attn.c_attn", d, 3 * d),
            ("attn.c_proj", d, d),
            ("mlp.c_fc", d, inner),
            ("mlp.c_proj", inner, d),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![i_, o_], Fill::Normal));
            t.push((format!("{p}.{name}.bias"), vec![o_], Fill::Zeros));
        }
    }
    t.push(("transformer.ln_f.weight".into(), vec![d], Fill::Ones));
    t.push(("transformer.ln_f.bias".into(), vec![d], Fill::Zeros));
    t
}
