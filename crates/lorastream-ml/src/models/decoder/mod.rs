//! The decoder the Llama-architecture families share (Llama, Qwen2, Qwen3,
//! Mistral, Phi-3, Gemma 1/2/3): RMSNorm, rotary position embeddings with
//! the config's theta and scaling, grouped-query attention, a gated MLP.
//! What differs between them is [`Layout`] (where the biases are, whether
//! queries and keys are normalised per head, whether the checkpoint fuses
//! q/k/v and gate/up, Gemma's norms and embedding scale, norms around each
//! block's output) and the config's [`crate::hf_config::Extras`] (attention scale,
//! soft-capping, sliding layers, their rotary theta, the activation). Each
//! family's file names its layout, reads its config and registers itself;
//! the tensors keep the checkpoint's names.

mod layer;

use tch::{Kind, Tensor};

use super::{Backbone, Fill, TensorSpec};
use crate::MlError;
use crate::hf_config::HfConfig;
use crate::load::weights::Weights;
use crate::nn::attention::Scores;
use crate::nn::fused::{decode_copy, tensor_bytes};
use crate::nn::lora::Linear;
use crate::nn::pass::Pass;
use crate::nn::rope::{apply_rotary, rope_attention_factor, rope_inv_freq};
pub use layer::Layout;
use layer::{Dims, Layer, RmsNorm, projections};

pub struct Decoder {
    cfg: HfConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    head_decode: Option<Tensor>,
    /// `[rotary_dim / 2]` inverse frequencies after rope scaling, f32 on the
    /// model's device; then the sliding layers' own, where they have one.
    inv_freq: Tensor,
    local_inv_freq: Option<Tensor>,
    /// cos and sin of the global rotary embedding are scaled by this (LongRoPE).
    rope_scale: f64,
    layout: Layout,
}

impl Decoder {
    pub fn load(cfg: &HfConfig, ws: &mut Weights, layout: Layout) -> Result<Decoder, MlError> {
        let d = cfg.hidden_size as i64;
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::load(ws, cfg, layout, i))
            .collect::<Result<Vec<_>, _>>()?;
        let v = cfg.vocab_size as i64;
        let embed = ws.take("model.embed_tokens.weight", &[v, d])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ws.take("lm_head.weight", &[v, d])?)
        };
        let freqs = |c: &HfConfig| {
            Tensor::from_slice(&rope_inv_freq(c))
                .to_kind(Kind::Float)
                .to_device(embed.device())
        };
        let local_inv_freq = cfg.extras.local_rope_theta.map(|theta| {
            freqs(&HfConfig {
                rope_theta: theta,
                rope_scaling: None,
                ..cfg.clone()
            })
        });
        Ok(Decoder {
            cfg: cfg.clone(),
            inv_freq: freqs(cfg),
            local_inv_freq,
            rope_scale: rope_attention_factor(cfg),
            embed,
            layers,
            norm: RmsNorm::load(ws, "model.norm", d, cfg.norm_eps, layout)?,
            lm_head,
            head_decode: None,
            layout,
        })
    }

    /// The token embeddings of `ids` (Gemma: × √hidden in their kind).
    fn embed(&self, ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.embed, ids, -1, false, false);
        match self.layout.gemma {
            true => {
                let scale = (self.cfg.hidden_size as f64).sqrt();
                let scale = Tensor::from(scale).to_kind(x.kind()).to_device(x.device());
                x * scale
            }
            false => x,
        }
    }

    /// Layer `i`'s attention scores: the config's scale and cap, and its
    /// window if it is a sliding layer.
    fn scores(&self, i: usize) -> Scores {
        let e = &self.cfg.extras;
        let sliding = e.sliding_layers.get(i).copied().unwrap_or(false);
        Scores {
            scale: e.attn_scale,
            softcap: e.attn_softcap,
            window: e.sliding_window.filter(|_| sliding).map(|w| w as i64),
        }
    }

    /// cos and sin `[b, 1, t, rotary_dim]` of `positions` `[b, t]` for `inv_freq`,
    /// times `scale`, computed in f32 as transformers does.
    fn rotary(positions: &Tensor, inv_freq: &Tensor, scale: f64, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = match scale {
            1.0 => (emb.cos(), emb.sin()),
            s => (emb.cos() * s, emb.sin() * s),
        };
        (
            cos.to_kind(kind).unsqueeze(1),
            sin.to_kind(kind).unsqueeze(1),
        )
    }
}

impl Backbone for Decoder {
    fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| &l.linears).collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| &mut l.linears)
            .collect()
    }

    fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![
            ("model.embed_tokens.weight".to_string(), &self.embed),
            ("model.norm.weight".to_string(), &self.norm.w),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.input_layernorm.weight"), &l.input_norm.w));
            v.push((
                format!("{p}.post_attention_layernorm.weight"),
                &l.post_norm.w,
            ));
            if let Some((pre, post)) = &l.ff_norms {
                v.push((format!("{p}.pre_feedforward_layernorm.weight"), &pre.w));
                v.push((format!("{p}.post_feedforward_layernorm.weight"), &post.w));
            }
            if let (Some(q), Some(k)) = (&l.q_norm, &l.k_norm) {
                v.push((format!("{p}.self_attn.q_norm.weight"), &q.w));
                v.push((format!("{p}.self_attn.k_norm.weight"), &k.w));
            }
            for lin in &l.linears {
                v.extend(lin.named_tensors());
            }
        }
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h));
        }
        v
    }

    // `x = x + f(x)`, not `x += f(x)`: an in-place add on `x` would clobber
    // what autograd saved for the backward pass.
    #[allow(clippy::assign_op_pattern)]
    fn forward_hidden(&self, ids: &Tensor, positions: &Tensor, pass: &mut Pass) -> Tensor {
        let train = pass.train;
        let (b, t) = ids.size2().expect("ids are [batch, time]");
        let dims = Dims::of(&self.cfg);
        let (nh, nkv, hd) = (dims.nh, dims.nkv, dims.hd);
        let mut x = self.embed(ids);
        let kind = x.kind();
        let global = Self::rotary(positions, &self.inv_freq, self.rope_scale, kind);
        let local = (self.local_inv_freq.as_ref()).map(|f| Self::rotary(positions, f, 1.0, kind));
        let head_norm = |n: &Option<RmsNorm>, x: Tensor| match n {
            Some(n) => n.forward(&x),
            None => x,
        };
        for (i, l) in self.layers.iter().enumerate() {
            let scores = self.scores(i);
            let (cos, sin) = match &local {
                Some(local) if scores.window.is_some() => local,
                _ => &global,
            };
            let rope = |x: &Tensor| apply_rotary(x, cos, sin);
            let h = l.input_norm.forward(&x);
            let [q, k, v] = l.qkv(&h, &dims, pass);
            let q = head_norm(&l.q_norm, q.view([b, t, nh, hd])).transpose(1, 2);
            let k = head_norm(&l.k_norm, k.view([b, t, nkv, hd])).transpose(1, 2);
            // A copy of v alone: attention keeps v for the backward pass, and a
            // view would keep the whole fused q/k/v output alive with it.
            let v = if train { v.contiguous() } else { v };
            let v = v.view([b, t, nkv, hd]).transpose(1, 2);
            let (q, k) = (rope(&q), rope(&k));
            let a = pass.attention(i, &q, k, v, &scores, nkv != nh);
            let a = a.transpose(1, 2).contiguous().view([b, t, nh * hd]);
            let [o] = l.fused[1].forward(&a, [l.o()], pass);
            let act = self.cfg.extras.activation;
            match &l.ff_norms {
                Some((pre, post)) => {
                    x = x + l.post_norm.forward(&o);
                    let m = post.forward(&l.mlp(&pre.forward(&x), act, pass));
                    x = x + m;
                }
                None => {
                    x = x + o;
                    let m = l.mlp(&l.post_norm.forward(&x), act, pass);
                    x = x + m;
                }
            }
        }
        self.norm.forward(&x)
    }

    /// The `[vocab, hidden]` output projection (the embedding when tied).
    fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of the matrices a single-token step reads (decode copies where
    /// kept): what bounds decoding speed.
    fn decode_bytes(&self) -> i64 {
        let layers: i64 = self
            .layers
            .iter()
            .flat_map(|l| &l.fused)
            .map(|f| tensor_bytes(f.decode.as_ref().unwrap_or(&f.weight)))
            .sum();
        layers + tensor_bytes(self.head_decode.as_ref().unwrap_or(self.head_weight()))
    }

    fn head_decode(&self) -> Option<&Tensor> {
        self.head_decode.as_ref()
    }

    /// Keeps (`Some(kind)`) or drops copies of every matrix in `kind` for
    /// single-token steps: decoding one token is bound by reading the weights,
    /// and bf16 halves the bytes even where bf16 matmuls over many rows are
    /// slow.
    fn set_decode_kind(&mut self, kind: Option<Kind>) {
        for l in &mut self.layers {
            l.fused.iter_mut().for_each(|f| f.set_decode_kind(kind));
        }
        self.head_decode = decode_copy(self.head_weight(), kind);
    }
}

/// Every tensor of a checkpoint with `layout` (for `model init`): linear
/// weights are `[out, in]`, biases zero, norms the identity (one; Gemma's
/// `1 + w`: zero).
pub fn tensors(cfg: &HfConfig, layout: Layout) -> Vec<TensorSpec> {
    let d = cfg.hidden_size as i64;
    let unit = if layout.gemma {
        Fill::Zeros
    } else {
        Fill::Ones
    };
    let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
    if layout.sandwich {
        norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
    }
    let mut t = vec![(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size as i64, d],
        Fill::Normal,
    )];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        for n in &norms {
            t.push((format!("{p}.{n}.weight"), vec![d], unit));
        }
        if layout.qk_norm {
            for n in ["q_norm", "k_norm"] {
                t.push((
                    format!("{p}.self_attn.{n}.weight"),
                    vec![cfg.head_dim as i64],
                    unit,
                ));
            }
        }
        for (m, fan_in, fan_out, bias) in projections(cfg, layout) {
            t.push((
                format!("{p}.{m}.weight"),
                vec![fan_out, fan_in],
                Fill::Normal,
            ));
            if bias {
                t.push((format!("{p}.{m}.bias"), vec![fan_out], Fill::Zeros));
            }
        }
    }
    t.push(("model.norm.weight".into(), vec![d], unit));
    if !cfg.tie_word_embeddings {
        t.push((
            "lm_head.weight".into(),
            vec![cfg.vocab_size as i64, d],
            Fill::Normal,
        ));
    }
    t
}
