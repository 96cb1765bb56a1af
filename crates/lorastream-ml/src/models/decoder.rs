//! The decoder the Llama-architecture families share (Llama, Qwen2, Qwen3,
//! Mistral, Phi-3): RMSNorm, rotary position embeddings with the config's
//! theta and scaling, grouped-query attention, SiLU-gated MLP. What differs
//! between them is [`Layout`]: where the biases are, whether queries and
//! keys are normalised per head, whether the checkpoint fuses q/k/v and
//! gate/up. Each family's file names its layout, reads its config and
//! registers itself; the tensors keep the checkpoint's names.

use tch::{Kind, Tensor};

use super::{Backbone, Fill, TensorSpec};
use crate::MlError;
use crate::fused::{Fused, decode_copy, tensor_bytes};
use crate::hf_config::HfConfig;
use crate::lora::Linear;
use crate::pass::Pass;
use crate::rope::{rope_inv_freq, rotate_half};
use crate::weights::Weights;

/// How a family's checkpoint lays out the shared decoder.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Layout {
    /// q, k and v have biases and o has none (Qwen2), whatever
    /// `attention_bias` says (which, in Llama, sets all four).
    pub qkv_bias: bool,
    /// Queries and keys pass an RMSNorm over each head before the rotary
    /// embedding (Qwen3: `self_attn.q_norm`, `self_attn.k_norm`).
    pub qk_norm: bool,
    /// The checkpoint holds `self_attn.qkv_proj` and `mlp.gate_up_proj`
    /// (Phi-3): one linear each, and one LoRA each, as PEFT targets them.
    pub fused: bool,
}

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

/// The sizes every layer's projections have.
struct Dims {
    d: i64,
    nh: i64,
    nkv: i64,
    hd: i64,
    inter: i64,
}

impl Dims {
    fn of(cfg: &HfConfig) -> Dims {
        Dims {
            d: cfg.hidden_size as i64,
            nh: cfg.num_heads as i64,
            nkv: cfg.num_kv_heads as i64,
            hd: cfg.head_dim as i64,
            inter: cfg.intermediate_size as i64,
        }
    }
}

/// Every linear of a layer in the checkpoint's names: (module, in, out, bias).
fn projections(cfg: &HfConfig, layout: Layout) -> Vec<(&'static str, i64, i64, bool)> {
    let Dims {
        d,
        nh,
        nkv,
        hd,
        inter,
    } = Dims::of(cfg);
    let (qkv_b, o_b) = match layout.qkv_bias {
        true => (true, false),
        false => (cfg.attention_bias, cfg.attention_bias),
    };
    let mb = cfg.mlp_bias;
    let mut p = if layout.fused {
        vec![("self_attn.qkv_proj", d, (nh + 2 * nkv) * hd, qkv_b)]
    } else {
        vec![
            ("self_attn.q_proj", d, nh * hd, qkv_b),
            ("self_attn.k_proj", d, nkv * hd, qkv_b),
            ("self_attn.v_proj", d, nkv * hd, qkv_b),
        ]
    };
    p.push(("self_attn.o_proj", nh * hd, d, o_b));
    if layout.fused {
        p.push(("mlp.gate_up_proj", d, 2 * inter, mb));
    } else {
        p.push(("mlp.gate_proj", d, inter, mb));
        p.push(("mlp.up_proj", d, inter, mb));
    }
    p.push(("mlp.down_proj", inter, d, mb));
    p
}

struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// q, k, v (or the fused qkv), o, gate, up (or gate_up), down.
    linears: Vec<Linear>,
    /// The same as matrices: q/k/v, o, gate/up, down.
    fused: [Fused; 4],
}

impl Layer {
    fn load(ws: &mut Weights, cfg: &HfConfig, layout: Layout, i: usize) -> Result<Layer, MlError> {
        let p = format!("model.layers.{i}");
        let mut linears = projections(cfg, layout)
            .into_iter()
            .map(|(m, fi, fo, b)| linear(ws, &format!("{p}.{m}"), fi, fo, b))
            .collect::<Result<Vec<_>, _>>()?;
        let (d, hd, eps) = (cfg.hidden_size as i64, cfg.head_dim as i64, cfg.norm_eps);
        let norm =
            |ws: &mut Weights, name: &str, n| RmsNorm::load(ws, &format!("{p}.{name}"), n, eps);
        let (q_norm, k_norm) = if layout.qk_norm {
            (
                Some(norm(ws, "self_attn.q_norm", hd)?),
                Some(norm(ws, "self_attn.k_norm", hd)?),
            )
        } else {
            (None, None)
        };
        let n_in = if layout.fused { 1 } else { 3 };
        let n_mlp = if layout.fused { 1 } else { 2 };
        let (attn_in, rest) = linears.split_at_mut(n_in);
        let (o, rest) = rest.split_at_mut(1);
        let (mlp_in, down) = rest.split_at_mut(n_mlp);
        let all = |ls: &mut [Linear]| Fused::new(&mut ls.iter_mut().collect::<Vec<_>>());
        let fused = [all(attn_in), all(o), all(mlp_in), all(down)];
        Ok(Layer {
            input_norm: norm(ws, "input_layernorm", d)?,
            post_norm: norm(ws, "post_attention_layernorm", d)?,
            q_norm,
            k_norm,
            linears,
            fused,
        })
    }

    /// Queries, keys and values `[b, t, heads · hd]` for `h`.
    fn qkv(&self, h: &Tensor, dims: &Dims, pass: &Pass) -> [Tensor; 3] {
        match &self.linears[..] {
            [qkv, _, _, _] => {
                let [y] = self.fused[0].forward(h, [qkv], pass);
                let (q, kv) = (dims.nh * dims.hd, dims.nkv * dims.hd);
                let parts = y.split_with_sizes([q, kv, kv], -1);
                let mut it = parts.into_iter();
                std::array::from_fn(|_| it.next().expect("three parts"))
            }
            [q, k, v, ..] => self.fused[0].forward(h, [q, k, v], pass),
            _ => unreachable!("a layer has at least four linears"),
        }
    }

    /// The output projection: after q, k, v (or the fused qkv).
    fn o(&self) -> &Linear {
        &self.linears[if self.linears.len() == 4 { 1 } else { 3 }]
    }

    /// The SiLU-gated MLP of `h`.
    fn mlp(&self, h: &Tensor, pass: &Pass) -> Tensor {
        let n = self.linears.len();
        let (gate, up) = match &self.linears[n - 3..] {
            [_, gate_up, _] if n == 4 => {
                let [y] = self.fused[2].forward(h, [gate_up], pass);
                let halves = y.chunk(2, -1);
                (halves[0].shallow_clone(), halves[1].shallow_clone())
            }
            [gate, up, _] => {
                let [g, u] = self.fused[2].forward(h, [gate, up], pass);
                (g, u)
            }
            _ => unreachable!("an MLP has its projections"),
        };
        let down = &self.linears[n - 1];
        let [y] = self.fused[3].forward(&(gate.silu() * up), [down], pass);
        y
    }
}

pub struct Decoder {
    cfg: HfConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    head_decode: Option<Tensor>,
    /// `[head_dim / 2]` inverse frequencies after rope scaling, f32 on the model's device.
    inv_freq: Tensor,
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
        let inv_freq = Tensor::from_slice(&rope_inv_freq(cfg))
            .to_kind(Kind::Float)
            .to_device(embed.device());
        Ok(Decoder {
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
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        let kind = x.kind();
        // cos/sin: [b, 1, t, hd] from positions [b, t], computed in f32 as transformers does.
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().to_kind(kind).unsqueeze(1);
        let sin = emb.sin().to_kind(kind).unsqueeze(1);
        let rope = |x: &Tensor| x * &cos + rotate_half(x) * &sin;
        let head_norm = |n: &Option<RmsNorm>, x: Tensor| match n {
            Some(n) => n.forward(&x),
            None => x,
        };
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.input_norm.forward(&x);
            let [q, k, v] = l.qkv(&h, &dims, pass);
            let q = head_norm(&l.q_norm, q.view([b, t, nh, hd])).transpose(1, 2);
            let k = head_norm(&l.k_norm, k.view([b, t, nkv, hd])).transpose(1, 2);
            // A copy of v alone: attention keeps v for the backward pass, and a
            // view would keep the whole fused q/k/v output alive with it.
            let v = if train { v.contiguous() } else { v };
            let v = v.view([b, t, nkv, hd]).transpose(1, 2);
            let (q, k) = (rope(&q), rope(&k));
            let a = pass.attention(i, &q, k, v, nkv != nh);
            let a = a.transpose(1, 2).contiguous().view([b, t, nh * hd]);
            let [o] = l.fused[1].forward(&a, [l.o()], pass);
            x = x + o;
            let h = l.post_norm.forward(&x);
            x = x + l.mlp(&h, pass);
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
/// weights are `[out, in]`, biases zero, norms one.
pub fn tensors(cfg: &HfConfig, layout: Layout) -> Vec<TensorSpec> {
    let d = cfg.hidden_size as i64;
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
        if layout.qk_norm {
            for n in ["q_norm", "k_norm"] {
                t.push((
                    format!("{p}.self_attn.{n}.weight"),
                    vec![cfg.head_dim as i64],
                    Fill::Ones,
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
    t.push(("model.norm.weight".into(), vec![d], Fill::Ones));
    if !cfg.tie_word_embeddings {
        t.push((
            "lm_head.weight".into(),
            vec![cfg.vocab_size as i64, d],
            Fill::Normal,
        ));
    }
    t
}
