//! Phi-3 and Phi-3.5 (Phi3ForCausalLM): the Llama decoder with q, k and v
//! fused in the checkpoint (`self_attn.qkv_proj`) and so gate and up
//! (`mlp.gate_up_proj`, gate first): one linear, and one LoRA, each, as
//! PEFT targets them. Like Mistral, every layer sees `sliding_window` back.
//! Partial rotary embeddings (Phi-4-mini) and LongRoPE (the 128k variants)
//! are refused by name.

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds};
use crate::lora::LoraTargets;

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: true,
    gemma: false,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let partial = v
        .get("partial_rotary_factor")
        .and_then(|x| x.as_f64())
        .unwrap_or(1.0);
    if partial != 1.0 {
        return Err(ConfigProblem::Invalid(format!(
            "partial_rotary_factor {partial} is not supported (only 1.0)"
        )));
    }
    let mut c = llama::read_as(v, ids, Arch::Phi3)?;
    llama::read_window(&mut c, v, None, |_| true)?;
    Ok(c)
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "Phi3ForCausalLM");
    llama::write_window(c, &mut v);
    v["original_max_position_embeddings"] = serde_json::json!(c.max_position_embeddings);
    v
}

/// Phi-3 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Phi3,
    LAYOUT,
    LoraTargets {
        all: &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        default: &["qkv_proj"],
        fan_in_fan_out: false,
    },
    read_config,
    write_config
);
