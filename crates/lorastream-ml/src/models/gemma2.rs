//! Gemma 2 (Gemma2ForCausalLM): Gemma ([`super::gemma`]) with a norm on
//! each block's output as well as its input (`post_attention_layernorm`,
//! `pre_feedforward_layernorm`, `post_feedforward_layernorm`), attention
//! scaled by `query_pre_attn_scalar`^-½, soft-capped attention scores
//! (`attn_logit_softcapping`, 50) and logits (`final_logit_softcapping`,
//! 30), and layers alternating between a sliding window
//! (`sliding_window`, 4096) and the whole sequence (`layer_types`).

use super::decoder::Layout;
use super::{Arch, Family, gemma, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: false,
    gemma: true,
    sandwich: true,
};

/// transformers' defaults: attention scores and logits capped at 50 and 30.
const CAPS: (Option<f64>, Option<f64>) = (Some(50.0), Some(30.0));

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = gemma::read_as(v, ids, Arch::Gemma2, "hidden_activation")?;
    gemma::read_attention(&mut c, v, CAPS, 2)?;
    Ok(c)
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    gemma::write_as(c, eos, "Gemma2ForCausalLM")
}

/// Gemma 2 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Gemma2,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config,
    |v, w, l, id| gemma::tiny_as(Arch::Gemma2, (v, w, l), id, CAPS, 2)
);
