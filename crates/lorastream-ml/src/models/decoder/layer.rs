//! One layer of the shared decoder as its checkpoint lays it out: the
//! [`Layout`] a family names, the norms, the projections (separate or
//! fused) and the gated MLP.

use tch::{Kind, Tensor};

use crate::MlError;
use crate::hf_config::{Activation, HfConfig};
use crate::load::weights::Weights;
use crate::nn::fused::Fused;
use crate::nn::lora::Linear;
use crate::nn::pass::Pass;

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
    /// Gemma: norms scale by `1 + w` (in f32, before the cast back), and
    /// the embeddings are multiplied by √hidden.
    pub gemma: bool,
    /// Gemma 2/3: the attention and MLP outputs pass a norm of their own
    /// before the residual add (`post_attention_layernorm`,
    /// `post_feedforward_layernorm`), and the MLP's input norm is
    /// `pre_feedforward_layernorm`.
    pub sandwich: bool,
}

pub(super) struct RmsNorm {
    pub(super) w: Tensor,
    pub(super) eps: f64,
    /// Gemma's scale `1 + w` in f32, formed once at load.
    pub(super) plus_one: Option<Tensor>,
}

impl RmsNorm {
    pub(super) fn load(
        ws: &mut Weights,
        name: &str,
        d: i64,
        eps: f64,
        layout: Layout,
    ) -> Result<Self, MlError> {
        let w = ws.take(&format!("{name}.weight"), &[d])?;
        let plus_one = layout.gemma.then(|| w.to_kind(Kind::Float) + 1.0);
        Ok(RmsNorm { w, eps, plus_one })
    }
    /// As transformers: normalise in f32, cast back, then scale (Gemma:
    /// scale by `1 + w`, then cast back). Without a gradient to keep,
    /// libtorch's fused kernel does the same in one pass (its backward is
    /// slower than autograd's over the plain ops).
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if !x.requires_grad() && kind == Kind::Float {
            let scale = self.plus_one.as_ref().unwrap_or(&self.w);
            return x.rms_norm([self.w.size()[0]], Some(scale), self.eps);
        }
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = xf * (var + self.eps).rsqrt();
        match &self.plus_one {
            Some(scale) => (normed * scale).to_kind(kind),
            None => &self.w * normed.to_kind(kind),
        }
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
pub(super) struct Dims {
    pub(super) d: i64,
    pub(super) nh: i64,
    pub(super) nkv: i64,
    pub(super) hd: i64,
    pub(super) inter: i64,
}

impl Dims {
    pub(super) fn of(cfg: &HfConfig) -> Dims {
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
pub(super) fn projections(cfg: &HfConfig, layout: Layout) -> Vec<(&'static str, i64, i64, bool)> {
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

pub(super) struct Layer {
    pub(super) input_norm: RmsNorm,
    pub(super) post_norm: RmsNorm,
    /// Gemma 2/3: the MLP's input norm and its output's (see [`Layout::sandwich`]).
    pub(super) ff_norms: Option<(RmsNorm, RmsNorm)>,
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    /// q, k, v (or the fused qkv), o, gate, up (or gate_up), down.
    pub(super) linears: Vec<Linear>,
    /// The same as matrices: q/k/v, o, gate/up, down.
    pub(super) fused: [Fused; 4],
}

impl Layer {
    pub(super) fn load(
        ws: &mut Weights,
        cfg: &HfConfig,
        layout: Layout,
        i: usize,
    ) -> Result<Layer, MlError> {
        let p = format!("model.layers.{i}");
        let mut linears = projections(cfg, layout)
            .into_iter()
            .map(|(m, fi, fo, b)| linear(ws, &format!("{p}.{m}"), fi, fo, b))
            .collect::<Result<Vec<_>, _>>()?;
        let (d, hd, eps) = (cfg.hidden_size as i64, cfg.head_dim as i64, cfg.norm_eps);
        let norm = |ws: &mut Weights, name: &str, n| {
            RmsNorm::load(ws, &format!("{p}.{name}"), n, eps, layout)
        };
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
        let ff_norms = match layout.sandwich {
            true => Some((
                norm(ws, "pre_feedforward_layernorm", d)?,
                norm(ws, "post_feedforward_layernorm", d)?,
            )),
            false => None,
        };
        Ok(Layer {
            input_norm: norm(ws, "input_layernorm", d)?,
            post_norm: norm(ws, "post_attention_layernorm", d)?,
            ff_norms,
            q_norm,
            k_norm,
            linears,
            fused,
        })
    }

    /// Queries, keys and values `[b, t, heads · hd]` for `h`.
    pub(super) fn qkv(&self, h: &Tensor, dims: &Dims, pass: &Pass) -> [Tensor; 3] {
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
    pub(super) fn o(&self) -> &Linear {
        &self.linears[if self.linears.len() == 4 { 1 } else { 3 }]
    }

    /// The gated MLP of `h`.
    pub(super) fn mlp(&self, h: &Tensor, act: Activation, pass: &Pass) -> Tensor {
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
        let [y] = self.fused[3].forward(&(act.apply(&gate) * up), [down], pass);
        y
    }
}
