//! Qwen3 (Qwen3ForCausalLM): the Llama decoder with an RMSNorm over each
//! head's queries and keys before the rotary embedding
//! (`self_attn.q_norm`, `self_attn.k_norm`), an explicit `head_dim`, and
//! biases only where `attention_bias` says.

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: true,
    fused: false,
    gemma: false,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, Arch::Qwen3)?;
    llama::read_qwen_window(&mut c, v)?;
    Ok(c)
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "Qwen3ForCausalLM");
    llama::write_qwen_window(c, &mut v);
    v
}

/// Qwen3 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Qwen3,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config
);
