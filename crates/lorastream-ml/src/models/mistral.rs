//! Mistral (MistralForCausalLM): the Llama decoder, whose attention looks at
//! most `sliding_window` tokens back (4096 in v0.1; none from v0.2 on).
//! lorastream does not mask a window inside a sequence: it keeps sequences
//! within the window instead (the context is `min(max_position_embeddings,
//! sliding_window)`), where windowed attention and full attention agree.

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, uint};

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, Arch::Mistral)?;
    within_window(&mut c, v);
    Ok(c)
}

/// The context capped at `sliding_window`, if the config has one.
pub(crate) fn within_window(c: &mut HfConfig, v: &serde_json::Value) {
    if let Some(w) = uint(v, "sliding_window").filter(|w| *w > 0) {
        c.max_position_embeddings = c.max_position_embeddings.min(w);
    }
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "MistralForCausalLM");
    v["sliding_window"] = serde_json::json!(c.max_position_embeddings);
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
