//! Llama (LlamaForCausalLM, also SmolLM2, TinyLlama): RMSNorm, rotary position
//! embeddings with the config's theta and scaling, grouped-query attention,
//! SiLU-gated MLP.

use tch::{Kind, Tensor};

use super::MlError;
use super::attention::{LayerCache, attention};
use super::hf_config::HfConfig;
use super::lora::Linear;
use super::weights::Weights;

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
        merged: false,
    })
}

/// Projections of one input as one matrix: the checkpoint's linears keep
/// their names, but their weights are views into `weight` (a LoRA merge into
/// one updates both), so a layer runs one matmul where the checkpoint has
/// two or three, and each part adds its own unmerged LoRA.
struct Fused {
    weight: Tensor,
    bias: Option<Tensor>,
    sizes: Vec<i64>,
    /// A low-precision copy for single-token steps ([`Llama::set_decode_kind`]).
    decode: Option<Tensor>,
}

impl Fused {
    fn new(parts: &mut [&mut Linear]) -> Fused {
        // One part is its own matrix: no copy.
        let cat = |ts: Vec<Tensor>| match ts.as_slice() {
            [one] => one.shallow_clone(),
            _ => Tensor::cat(&ts, 0),
        };
        let weight = cat(parts.iter().map(|l| l.weight.shallow_clone()).collect());
        let bias = parts
            .iter()
            .map(|l| l.bias.as_ref().map(Tensor::shallow_clone))
            .collect::<Option<Vec<_>>>()
            .map(cat);
        let mut sizes = Vec::with_capacity(parts.len());
        let mut off = 0;
        for l in parts.iter_mut() {
            let n = l.weight.size()[0];
            l.weight = weight.narrow(0, off, n);
            if let Some(b) = &bias {
                l.bias = Some(b.narrow(0, off, n));
            }
            sizes.push(n);
            off += n;
        }
        Fused {
            weight,
            bias,
            sizes,
            decode: None,
        }
    }

    /// The parts' outputs for `x`, each with its LoRA.
    fn forward<const N: usize>(&self, x: &Tensor, parts: [&Linear; N], train: bool) -> [Tensor; N] {
        let single = !train && x.numel() as i64 == *x.size().last().unwrap_or(&0);
        let y = match &self.decode {
            Some(d) if single => {
                let y = decode_linear(x, d);
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
            _ => x.linear(&self.weight, self.bias.as_ref()),
        };
        let ys = if N == 1 {
            vec![y]
        } else {
            y.split_with_sizes(&self.sizes, -1)
        };
        let mut it = ys
            .into_iter()
            .zip(parts)
            .map(|(y, l)| l.with_lora(y, x, train));
        std::array::from_fn(|_| it.next().expect("one output per part"))
    }

    fn set_decode_kind(&mut self, kind: Option<Kind>) {
        self.decode = decode_copy(&self.weight, kind);
    }
}

/// A copy of `w` in `kind` for single-token steps (none when it is that kind).
fn decode_copy(w: &Tensor, kind: Option<Kind>) -> Option<Tensor> {
    kind.filter(|k| *k != w.kind())
        .map(|k| w.detach().to_kind(k))
}

/// `x · dᵀ` computed in the decode copy's kind, returned in `x`'s.
pub(crate) fn decode_linear(x: &Tensor, d: &Tensor) -> Tensor {
    x.to_kind(d.kind())
        .linear::<Tensor>(d, None)
        .to_kind(x.kind())
}

/// Bytes of a tensor's elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> i64 {
    t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
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

/// Inverse RoPE frequencies for the config's theta and scaling (default, linear, llama3).
pub fn rope_inv_freq(cfg: &HfConfig) -> Vec<f64> {
    let hd = cfg.head_dim;
    let mut inv: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        let factor = s.factor.unwrap_or(1.0);
        match s.rope_type.as_str() {
            "linear" => inv.iter_mut().for_each(|f| *f /= factor),
            "llama3" => {
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            _ => {}
        }
    }
    inv
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
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

    pub fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| l.linears()).collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
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
            let [q, k, v] = l.qkv.forward(&h, [&l.q, &l.k, &l.v], train);
            let q = q.view([b, t, nh, hd]).transpose(1, 2);
            let k = k.view([b, t, nkv, hd]).transpose(1, 2);
            // A copy of v alone: attention keeps v for the backward pass, and a
            // view would keep the whole fused q/k/v output alive with it.
            let v = if train { v.contiguous() } else { v };
            let v = v.view([b, t, nkv, hd]).transpose(1, 2);
            let (q, k) = (rope(&q), rope(&k));
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[i]);
            let a = attention(&q, k, v, mask, layer_cache, nkv != nh);
            let a = a.transpose(1, 2).contiguous().view([b, t, nh * hd]);
            let [o] = l.o_only.forward(&a, [&l.o], train);
            x = x + o;
            let h = l.post_norm.forward(&x);
            let [gate, up] = l.gate_up.forward(&h, [&l.gate, &l.up], train);
            let [down] = l.down_only.forward(&(gate.silu() * up), [&l.down], train);
            x = x + down;
        }
        self.norm.forward(&x)
    }

    /// The `[vocab, hidden]` output projection (the embedding when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of the matrices a single-token step reads (decode copies where
    /// kept): what bounds decoding speed.
    pub fn decode_bytes(&self) -> i64 {
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
    pub fn head_decode(&self) -> Option<&Tensor> {
        self.head_decode.as_ref()
    }

    /// Keeps (`Some(kind)`) or drops copies of every matrix in `kind` for
    /// single-token steps: decoding one token is bound by reading the weights,
    /// and bf16 halves the bytes even where bf16 matmuls over many rows are
    /// slow. Call again after the weights change (a LoRA merge).
    pub fn set_decode_kind(&mut self, kind: Option<Kind>) {
        for l in &mut self.layers {
            l.fused_mut()
                .into_iter()
                .for_each(|f| f.set_decode_kind(kind));
        }
        self.head_decode = decode_copy(self.head_weight(), kind);
    }
}
