//! Gemma 3 text models (Gemma3ForCausalLM, `model_type` `gemma3_text`: the
//! 1B and the text-only checkpoints): Gemma 2's layer ([`super::gemma2`])
//! with a per-head RMSNorm of queries and keys (`self_attn.q_norm`,
//! `self_attn.k_norm`) instead of soft-capping, five sliding layers to each
//! global one (`sliding_window_pattern`, or `layer_types`), and the sliding
//! layers' own rotary embedding (`rope_local_base_freq`, unscaled; the
//! global layers use `rope_theta` and `rope_scaling`). Bidirectional
//! attention (`use_bidirectional_attention`, the embedding variants) is
//! refused. The multimodal checkpoints (`model_type` `gemma3`: 4B, 12B,
//! 27B) are read as their text model ([`text_config`]; the vision tower is
//! left unread): text in, text out.

use super::decoder::Layout;
use super::{Arch, Family, gemma, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, ids, uint};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: true,
    fused: false,
    gemma: true,
    sandwich: true,
};

/// The sliding layers' rotary theta unless the config says.
const LOCAL_THETA: f64 = 10_000.0;

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    if v.get("use_bidirectional_attention")
        .and_then(|x| x.as_bool())
        == Some(true)
    {
        return Err(ConfigProblem::Invalid(
            "use_bidirectional_attention = true is not supported (a causal model is)".into(),
        ));
    }
    let mut c = gemma::read_as(v, ids, Arch::Gemma3, "hidden_activation")?;
    let pattern = uint(v, "sliding_window_pattern").unwrap_or(6);
    gemma::read_attention(&mut c, v, (None, None), pattern)?;
    c.extras.local_rope_theta = gemma::positive(v, "rope_local_base_freq", Some(LOCAL_THETA))?;
    Ok(c)
}

/// The `gemma3_text` config of a multimodal Gemma 3 checkpoint: its
/// `text_config` over transformers' defaults; the special token ids the
/// top level names (the instruct models' `eos_token_id` [1, 106]) unless
/// `text_config` names its own, the end tokens of both.
pub(crate) fn text_config(v: &serde_json::Value) -> Result<serde_json::Value, ConfigProblem> {
    let text = v
        .get("text_config")
        .and_then(|t| t.as_object())
        .ok_or(ConfigProblem::Missing("text_config"))?;
    // transformers' `Gemma3TextConfig` defaults: `text_config` names only
    // what differs from them.
    let defaults = serde_json::json!({
        "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "rope_local_base_freq": LOCAL_THETA, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2,
    });
    let mut out = defaults.as_object().cloned().unwrap_or_default();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
            out.insert(key.into(), x.clone());
        }
    }
    out.extend(text.iter().map(|(k, x)| (k.clone(), x.clone())));
    // Generation ends at any end token either level names (the instruct
    // models' <end_of_turn>, 106, is only at the top).
    let mut eos: Vec<i64> = Vec::new();
    for id in [v.get("eos_token_id"), text.get("eos_token_id")]
        .into_iter()
        .flatten()
        .flat_map(ids)
    {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if !eos.is_empty() {
        out.insert("eos_token_id".into(), serde_json::json!(eos));
    }
    out.insert("model_type".into(), serde_json::json!("gemma3_text"));
    Ok(serde_json::Value::Object(out))
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = gemma::write_as(c, eos, "Gemma3ForCausalLM");
    v["rope_local_base_freq"] = serde_json::json!(c.extras.local_rope_theta);
    v
}

/// Gemma 3 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Gemma3,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config,
    |v, w, l, id| {
        let mut c = gemma::tiny_as(Arch::Gemma3, (v, w, l), id, (None, None), 6);
        c.extras.local_rope_theta = Some(LOCAL_THETA);
        c.rope_theta = 1_000_000.0;
        c
    }
);
