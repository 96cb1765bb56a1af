//! Gemma (GemmaForCausalLM): the Llama decoder with Gemma's RMSNorm (scale
//! by `1 + w`), embeddings × √hidden, a GELU-gated MLP (`hidden_act`, the
//! tanh approximation by default) and a tied head unless the config unties
//! it. Its config reader and writer are the ones Gemma 2 and 3 build on,
//! with the attention settings they add (scale, soft-capping, sliding
//! layers).

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{Activation, ConfigProblem, HfConfig, SpecialIds};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: false,
    gemma: true,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    read_as(v, ids, Arch::Gemma, "hidden_act")
}

/// A Gemma-style `config.json` as a config of `arch`: Llama's keys, the head
/// tied unless `tie_word_embeddings` is false, the activation under `act_key`.
pub(crate) fn read_as(
    v: &serde_json::Value,
    ids: SpecialIds,
    arch: Arch,
    act_key: &str,
) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, arch)?;
    c.tie_word_embeddings = v
        .get("tie_word_embeddings")
        .and_then(|x| x.as_bool())
        .unwrap_or(true);
    let act = v
        .get(act_key)
        .and_then(|x| x.as_str())
        .unwrap_or("gelu_pytorch_tanh");
    c.extras.activation = act.parse().map_err(|_| {
        ConfigProblem::Invalid(format!(
            "{act_key} {act:?} is not supported ({} are)",
            Activation::NAMES.join(", ")
        ))
    })?;
    Ok(c)
}

/// A positive finite number under `key`: `default` when absent, None when null.
pub(crate) fn positive(
    v: &serde_json::Value,
    key: &str,
    default: Option<f64>,
) -> Result<Option<f64>, ConfigProblem> {
    match v.get(key) {
        None => Ok(default),
        Some(serde_json::Value::Null) => Ok(None),
        Some(x) => match x.as_f64() {
            Some(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
            _ => Err(ConfigProblem::Invalid(format!(
                "{key} must be a positive number, not {x}"
            ))),
        },
    }
}

/// Gemma 2/3's attention settings into `c`: the scale
/// (`query_pre_attn_scalar`), the soft-caps (`caps`: defaults of the
/// attention scores' and the logits'), `sliding_window` and which layers
/// slide (`layer_types`, or every layer but each `pattern`-th).
pub(crate) fn read_attention(
    c: &mut HfConfig,
    v: &serde_json::Value,
    caps: (Option<f64>, Option<f64>),
    pattern: usize,
) -> Result<(), ConfigProblem> {
    let scalar = positive(v, "query_pre_attn_scalar", Some(256.0))?.unwrap_or(256.0);
    let e = &mut c.extras;
    e.attn_scale = Some(scalar.powf(-0.5));
    e.attn_softcap = positive(v, "attn_logit_softcapping", caps.0)?;
    e.final_softcap = positive(v, "final_logit_softcapping", caps.1)?;
    llama::read_window(c, v, Some(4096), slides(pattern))
}

/// Whether layer `i` slides when every layer but each `pattern`-th does
/// (transformers' default `layer_types`).
fn slides(pattern: usize) -> impl Fn(usize) -> bool {
    move |i| (i + 1) % pattern.max(1) != 0
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "GemmaForCausalLM");
    v["hidden_act"] = serde_json::json!(c.extras.activation);
    v
}

/// `config.json` of Gemma 2/3 in transformers' names (`architecture`).
pub(crate) fn write_as(
    c: &HfConfig,
    eos: serde_json::Value,
    architecture: &str,
) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, architecture);
    let e = &c.extras;
    let scalar = e
        .attn_scale
        .map(|s| s.powi(-2))
        .unwrap_or(c.head_dim as f64);
    if let Some(o) = v.as_object_mut() {
        o.remove("hidden_act");
    }
    v["hidden_activation"] = serde_json::json!(e.activation);
    v["query_pre_attn_scalar"] = serde_json::json!(round(scalar));
    v["attn_logit_softcapping"] = serde_json::json!(e.attn_softcap);
    v["final_logit_softcapping"] = serde_json::json!(e.final_softcap);
    llama::write_window(c, &mut v);
    v
}

/// `x` as the integer it is within rounding (a scale read back to its scalar).
fn round(x: f64) -> f64 {
    if (x - x.round()).abs() < 1e-6 {
        x.round()
    } else {
        x
    }
}

/// A tiny Gemma-style config of `arch` for `model init`: Llama's, with
/// GELU(tanh), a window of 128 on every layer but each `pattern`-th, and
/// soft-caps where `caps` gives them.
pub(crate) fn tiny_as(
    arch: Arch,
    (vocab, width, layers): (usize, usize, usize),
    id: &dyn Fn(&str) -> Option<i64>,
    caps: (Option<f64>, Option<f64>),
    pattern: usize,
) -> HfConfig {
    let mut c = llama::tiny_as(arch, vocab, width, layers, id);
    let e = &mut c.extras;
    e.activation = Activation::GeluTanh;
    e.attn_scale = Some((c.head_dim as f64).powf(-0.5));
    (e.attn_softcap, e.final_softcap) = caps;
    e.sliding_window = Some(128);
    e.sliding_layers = (0..layers).map(slides(pattern)).collect();
    c
}

/// Gemma as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Gemma,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config,
    |v, w, l, id| {
        let mut c = llama::tiny_as(Arch::Gemma, v, w, l, id);
        c.extras.activation = Activation::GeluTanh;
        c
    }
);
