//! Gemma 3 text models (Gemma3ForCausalLM, `model_type` `gemma3_text`: the
//! 1B and the text-only checkpoints): Gemma 2's layer ([`super::gemma2`])
//! with a per-head RMSNorm of queries and keys (`self_attn.q_norm`,
//! `self_attn.k_norm`) instead of soft-capping, five sliding layers to each
//! global one (`sliding_window_pattern`, or `layer_types`), and the sliding
//! layers' own rotary embedding (`rope_local_base_freq`, unscaled; the
//! global layers use `rope_theta` and `rope_scaling`). Bidirectional
//! attention (`use_bidirectional_attention`, the embedding variants) is
//! refused; the multimodal checkpoints (`model_type` `gemma3`) are not
//! read.

use super::decoder::Layout;
use super::{Arch, Family, gemma, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, uint};

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
