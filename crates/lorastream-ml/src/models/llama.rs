//! Llama (LlamaForCausalLM, also SmolLM2, TinyLlama): RMSNorm, rotary position
//! embeddings with the config's theta and scaling, grouped-query attention,
//! SiLU-gated MLP.

use tch::{Kind, Tensor};

use super::{Arch, Backbone, Family, Fill, Init, TensorSpec};
use crate::MlError;
use crate::fused::{Fused, decode_copy, tensor_bytes};
use crate::hf_config::{ConfigProblem, HfConfig, RopeScaling, SpecialIds, uint};
use crate::lora::{Linear, LoraTargets};
use crate::pass::Pass;
use crate::rope::{rope_inv_freq, rotate_half};
use crate::weights::Weights;

struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(ws: &mut Weights, name: &str, d: i64, eps: f64) -> Result<Self, MlError> {
        Ok(RmsNorm {
            w: ws.take(&format!("{name}.weight"), &[d])?,
            eps,
        })
    }
    /// As transformers: normalise in f32, cast back, then scale. Without a
    /// gradient to keep, libtorch's fused kernel does the same in one pass
    /// (its backward is slower than autograd's over the plain ops).
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if !x.requires_grad() && kind == Kind::Float {
            return x.rms_norm([self.w.size()[0]], Some(&self.w), self.eps);
        }
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.w * normed
    }
}

fn linear(
    ws: &mut Weights,
    path: &str,
    fan_in: i64,
    fan_out: i64,
    bias: bool,
) -> Result<Linear, MlError> {
    Ok(Linear {
        path: path.to_string(),
        weight: ws.take(&format!("{path}.weight"), &[fan_out, fan_in])?,
        bias: if bias {
            Some(ws.take(&format!("{path}.bias"), &[fan_out])?)
        } else {
            None
        },
        fan_in_fan_out: false,
        lora: None,
    })
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    qkv: Fused,
    o_only: Fused,
    gate_up: Fused,
    down_only: Fused,
}

impl Layer {
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
    fn fused_mut(&mut self) -> [&mut Fused; 4] {
        [
            &mut self.qkv,
            &mut self.o_only,
            &mut self.gate_up,
            &mut self.down_only,
        ]
    }
}

pub struct Llama {
    cfg: HfConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    head_decode: Option<Tensor>,
    /// `[head_dim / 2]` inverse frequencies after rope scaling, f32 on the model's device.
    inv_freq: Tensor,
}

impl Llama {
    pub fn load(cfg: &HfConfig, ws: &mut Weights) -> Result<Llama, MlError> {
        let d = cfg.hidden_size as i64;
        let hd = cfg.head_dim as i64;
        let nh = cfg.num_heads as i64;
        let nkv = cfg.num_kv_heads as i64;
        let inter = cfg.intermediate_size as i64;
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut q = linear(ws, &format!("{p}.self_attn.q_proj"), d, nh * hd, ab)?;
            let mut k = linear(ws, &format!("{p}.self_attn.k_proj"), d, nkv * hd, ab)?;
            let mut v = linear(ws, &format!("{p}.self_attn.v_proj"), d, nkv * hd, ab)?;
            let mut o = linear(ws, &format!("{p}.self_attn.o_proj"), nh * hd, d, ab)?;
            let mut gate = linear(ws, &format!("{p}.mlp.gate_proj"), d, inter, mb)?;
            let mut up = linear(ws, &format!("{p}.mlp.up_proj"), d, inter, mb)?;
            let mut down = linear(ws, &format!("{p}.mlp.down_proj"), inter, d, mb)?;
            layers.push(Layer {
                input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), d, cfg.norm_eps)?,
                post_norm: RmsNorm::load(
                    ws,
                    &format!("{p}.post_attention_layernorm"),
                    d,
                    cfg.norm_eps,
                )?,
                qkv: Fused::new(&mut [&mut q, &mut k, &mut v]),
                o_only: Fused::new(&mut [&mut o]),
                gate_up: Fused::new(&mut [&mut gate, &mut up]),
                down_only: Fused::new(&mut [&mut down]),
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let v = cfg.vocab_size as i64;
        let embed = ws.take("model.embed_tokens.weight", &[v, d])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ws.take("lm_head.weight", &[v, d])?)
        };
        let device = embed.device();
        let inv_freq = Tensor::from_slice(&rope_inv_freq(cfg))
            .to_kind(Kind::Float)
            .to_device(device);
        Ok(Llama {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: RmsNorm::load(ws, "model.norm", d, cfg.norm_eps)?,
            lm_head,
            head_decode: None,
            inv_freq,
        })
    }
}

impl Backbone for Llama {
    fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| l.linears()).collect()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![
            ("model.embed_tokens.weight".to_string(), &self.embed),
            ("model.norm.weight".to_string(), &self.norm.w),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            v.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                &l.input_norm.w,
            ));
            v.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                &l.post_norm.w,
            ));
            for lin in l.linears() {
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
        let nh = self.cfg.num_heads as i64;
        let nkv = self.cfg.num_kv_heads as i64;
        let hd = self.cfg.head_dim as i64;
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        let kind = x.kind();
        // cos/sin: [b, 1, t, hd] from positions [b, t], computed in f32 as transformers does.
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().to_kind(kind).unsqueeze(1);
        let sin = emb.sin().to_kind(kind).unsqueeze(1);
        let rope = |x: &Tensor| x * &cos + rotate_half(x) * &sin;
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.input_norm.forward(&x);
            let [q, k, v] = l.qkv.forward(&h, [&l.q, &l.k, &l.v], pass);
            let q = q.view([b, t, nh, hd]).transpose(1, 2);
            let k = k.view([b, t, nkv, hd]).transpose(1, 2);
            // A copy of v alone: attention keeps v for the backward pass, and a
            // view would keep the whole fused q/k/v output alive with it.
            let v = if train { v.contiguous() } else { v };
            let v = v.view([b, t, nkv, hd]).transpose(1, 2);
            let (q, k) = (rope(&q), rope(&k));
            let a = pass.attention(i, &q, k, v, nkv != nh);
            let a = a.transpose(1, 2).contiguous().view([b, t, nh * hd]);
            let [o] = l.o_only.forward(&a, [&l.o], pass);
            x = x + o;
            let h = l.post_norm.forward(&x);
            let [gate, up] = l.gate_up.forward(&h, [&l.gate, &l.up], pass);
            let [down] = l.down_only.forward(&(gate.silu() * up), [&l.down], pass);
            x = x + down;
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
        let bytes = tensor_bytes;
        let layers: i64 = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o_only, &l.gate_up, &l.down_only])
            .map(|f| bytes(f.decode.as_ref().unwrap_or(&f.weight)))
            .sum();
        layers + bytes(self.head_decode.as_ref().unwrap_or(self.head_weight()))
    }

    /// The head in the decode kind, if one is set (see [`Self::set_decode_kind`]).
    fn head_decode(&self) -> Option<&Tensor> {
        self.head_decode.as_ref()
    }

    /// Keeps (`Some(kind)`) or drops copies of every matrix in `kind` for
    /// single-token steps: decoding one token is bound by reading the weights,
    /// and bf16 halves the bytes even where bf16 matmuls over many rows are
    /// slow. Call again after the weights change (a LoRA merge).
    fn set_decode_kind(&mut self, kind: Option<Kind>) {
        for l in &mut self.layers {
            l.fused_mut()
                .into_iter()
                .for_each(|f| f.set_decode_kind(kind));
        }
        self.head_decode = decode_copy(self.head_weight(), kind);
    }
}

/// `config.json` read as this family's names say.
pub(crate) fn read_config(
    v: &serde_json::Value,
    ids: SpecialIds,
) -> Result<HfConfig, ConfigProblem> {
    let need = |k: &'static str| uint(v, k).ok_or(ConfigProblem::Missing(k));
    let d = need("hidden_size")?;
    let h = need("num_attention_heads")?;
    let rope_scaling = match v.get("rope_scaling") {
        None | Some(serde_json::Value::Null) => None,
        Some(s) => Some(
            serde_json::from_value::<RopeScaling>(s.clone())
                .map_err(|e| ConfigProblem::Invalid(format!("rope_scaling: {e}")))?,
        ),
    };
    if let Some(s) = &rope_scaling
        && !matches!(s.rope_type.as_str(), "default" | "linear" | "llama3")
    {
        return Err(ConfigProblem::Invalid(format!(
            "rope_scaling type {:?} is not supported (default, linear, llama3 are)",
            s.rope_type
        )));
    }
    Ok(HfConfig {
        arch: Arch::Llama,
        vocab_size: need("vocab_size")?,
        hidden_size: d,
        num_layers: need("num_hidden_layers")?,
        num_heads: h,
        num_kv_heads: uint(v, "num_key_value_heads").unwrap_or(h),
        head_dim: uint(v, "head_dim").unwrap_or(d / h.max(1)),
        intermediate_size: need("intermediate_size")?,
        max_position_embeddings: uint(v, "max_position_embeddings").unwrap_or(2048),
        norm_eps: v
            .get("rms_norm_eps")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-6),
        rope_theta: v
            .get("rope_theta")
            .and_then(|x| x.as_f64())
            .unwrap_or(10000.0),
        rope_scaling,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        attention_bias: v
            .get("attention_bias")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        mlp_bias: v.get("mlp_bias").and_then(|x| x.as_bool()).unwrap_or(false),
        bos_token_id: ids.bos,
        eos_token_ids: ids.eos,
        pad_token_id: ids.pad,
    })
}

/// `config.json` in transformers' names for this family.
pub(crate) fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling,
        "hidden_act": "silu",
        "attention_bias": c.attention_bias,
        "mlp_bias": c.mlp_bias,
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    })
}

/// The ChatML template of SmolLM2-style models, used by the llama presets.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = Family {
    lora: LoraTargets {
        all: &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        default: &["q_proj", "v_proj"],
        fan_in_fan_out: false,
    },
    read_config,
    write_config,
    load: |cfg, ws| Ok(Box::new(Llama::load(cfg, ws)?)),
    init: Init {
        special_tokens: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
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
        arch: Arch::Llama,
        vocab_size: vocab,
        hidden_size: width,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: width / 4,
        intermediate_size: width * 8 / 3,
        max_position_embeddings: 1024,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: id("<|im_start|>"),
        eos_token_ids: id("<|im_end|>").into_iter().collect(),
        pad_token_id: id("<|endoftext|>"),
    }
}

fn tokenizer_config(cfg: &HfConfig) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": cfg.max_position_embeddings,
        "chat_template": CHATML_TEMPLATE,
    })
}

/// Every tensor of the checkpoint: linear weights are `[out, in]`.
fn tensors(cfg: &HfConfig) -> Vec<TensorSpec> {
    let d = cfg.hidden_size as i64;
    let inner = cfg.intermediate_size as i64;
    let hd = cfg.head_dim as i64;
    let (nh, nkv) = (cfg.num_heads as i64, cfg.num_kv_heads as i64);
    let mut t = vec![(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size as i64, d],
        Fill::Normal,
    )];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        t.push((format!("{p}.input_layernorm.weight"), vec![d], Fill::Ones));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            Fill::Ones,
        ));
        for (name, i_, o_) in [
            ("self_attn.q_proj", d, nh * hd),
            ("self_attn.k_proj", d, nkv * hd),
            ("self_attn.v_proj", d, nkv * hd),
            ("self_attn.o_proj", nh * hd, d),
            ("mlp.gate_proj", d, inner),
            ("mlp.up_proj", d, inner),
            ("mlp.down_proj", inner, d),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![o_, i_], Fill::Normal));
        }
    }
    t.push(("model.norm.weight".into(), vec![d], Fill::Ones));
    t
}
