//! Mistral (MistralForCausalLM): the Llama decoder, whose attention looks at
//! most `sliding_window` tokens back on every layer (4096 in v0.1; none
//! from v0.2 on).

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: false,
    gemma: false,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, Arch::Mistral)?;
    llama::read_window(&mut c, v, None, |_| true)?;
    Ok(c)
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "MistralForCausalLM");
    llama::write_window(c, &mut v);
    v
}

/// Mistral as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Mistral,
    LAYOUT,
    llama::TARGETS,
    read_config,
    write_config
);
