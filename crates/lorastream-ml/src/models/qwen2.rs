//! Qwen2 and Qwen2.5 (Qwen2ForCausalLM): the Llama decoder with biases on
//! the query, key and value projections (not the output one); the ChatML
//! template comes with the checkpoint.

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds};

const LAYOUT: Layout = Layout {
    qkv_bias: true,
    qk_norm: false,
    fused: false,
    gemma: false,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, Arch::Qwen2)?;
    llama::read_qwen_window(&mut c, v)?;
    Ok(c)
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "Qwen2ForCausalLM");
    llama::write_qwen_window(c, &mut v);
    v
}

/// Qwen2 as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Qwen2,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config
);
