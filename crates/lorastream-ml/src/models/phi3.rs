//! Phi-3 and Phi-3.5 (Phi3ForCausalLM): the Llama decoder with q, k and v
//! fused in the checkpoint (`self_attn.qkv_proj`) and so gate and up
//! (`mlp.gate_up_proj`, gate first): one linear, and one LoRA, each, as
//! PEFT targets them. Like Mistral, every layer sees `sliding_window` back.
//! LongRoPE (Phi-3.5-mini, the 128k variants) is read within the original
//! context (`original_max_position_embeddings`: the short factors and the
//! scaled cos/sin transformers uses there). Phi-4-mini is the same
//! architecture with partial rotary embeddings (`partial_rotary_factor`: only
//! the leading dimensions of each head rotate) and a tied head.

use super::decoder::Layout;
use super::{Arch, Family, llama};
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, uint};
use crate::nn::lora::LoraTargets;

const LAYOUT: Layout = Layout {
    qkv_bias: false,
    qk_norm: false,
    fused: true,
    gemma: false,
    sandwich: false,
};

fn read_config(v: &serde_json::Value, ids: SpecialIds) -> Result<HfConfig, ConfigProblem> {
    let mut c = llama::read_as(v, ids, Arch::Phi3)?;
    llama::read_window(&mut c, v, None, |_| true)?;
    partial_rotary(&mut c, v)?;
    longrope(&mut c, v)?;
    Ok(c)
}

/// `partial_rotary_factor` (Phi-4-mini: 0.75): the leading
/// `int(head_dim × factor)` dimensions of each head rotate, as transformers
/// counts them; an even number of at least 2.
fn partial_rotary(c: &mut HfConfig, v: &serde_json::Value) -> Result<(), ConfigProblem> {
    let Some(x) = v.get("partial_rotary_factor").filter(|x| !x.is_null()) else {
        return Ok(());
    };
    let factor = x.as_f64().unwrap_or(f64::NAN);
    let dim = (c.head_dim as f64 * factor) as usize;
    if !(factor > 0.0 && factor <= 1.0) || dim < 2 || !dim.is_multiple_of(2) {
        return Err(ConfigProblem::Invalid(format!(
            "partial_rotary_factor {x} must be in (0, 1] and rotate an even number of the \
             {} dimensions of a head",
            c.head_dim
        )));
    }
    c.extras.rotary_dim = (dim < c.head_dim).then_some(dim);
    Ok(())
}

/// The `partial_rotary_factor` that rotates `dim` of `head_dim` dimensions
/// when read back as `int(head_dim × factor)`: `dim / head_dim`, nudged up
/// one ulp where the product would round below `dim` (e.g. 15 of 22).
pub(crate) fn rotary_factor(dim: usize, head_dim: usize) -> f64 {
    let factor = dim as f64 / head_dim as f64;
    if (head_dim as f64 * factor) as usize == dim {
        factor
    } else {
        factor.next_up()
    }
}

/// LongRoPE (Phi-3.5-mini, Phi-3 128k): checks its factors and keeps
/// sequences within `original_max_position_embeddings`, where transformers
/// uses the short factors; `factor` becomes the extension the config claims
/// (max / original), which sets the scale of cos and sin.
fn longrope(c: &mut HfConfig, v: &serde_json::Value) -> Result<(), ConfigProblem> {
    let half = crate::nn::rope::rotary_dim(c) / 2;
    let max = c.max_position_embeddings;
    let Some(s) = c
        .rope_scaling
        .as_mut()
        .filter(|s| s.rope_type == "longrope")
    else {
        return Ok(());
    };
    for (name, f) in [
        ("short_factor", &s.short_factor),
        ("long_factor", &s.long_factor),
    ] {
        let ok = f
            .as_ref()
            .is_some_and(|f| f.len() == half && f.iter().all(|x| x.is_finite() && *x > 0.0));
        if !ok {
            return Err(ConfigProblem::Invalid(format!(
                "rope_scaling.{name} must be {half} positive numbers (rotary dimensions / 2)"
            )));
        }
    }
    let original = uint(v, "original_max_position_embeddings")
        .or(s.original_max_position_embeddings)
        .unwrap_or(max)
        .max(1);
    s.factor = Some(max as f64 / original as f64);
    s.original_max_position_embeddings = Some(original);
    c.max_position_embeddings = max.min(original);
    Ok(())
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    let mut v = llama::write_as(c, eos, "Phi3ForCausalLM");
    llama::write_window(c, &mut v);
    let longrope = c
        .rope_scaling
        .as_ref()
        .filter(|s| s.rope_type == "longrope");
    let (max, original) = match longrope {
        Some(s) => {
            let original = s
                .original_max_position_embeddings
                .unwrap_or(c.max_position_embeddings);
            let max = (original as f64 * s.factor.unwrap_or(1.0)).round();
            (serde_json::json!(max as u64), original)
        }
        None => (
            serde_json::json!(c.max_position_embeddings),
            c.max_position_embeddings,
        ),
    };
    v["max_position_embeddings"] = max;
    v["original_max_position_embeddings"] = serde_json::json!(original);
    if let Some(d) = c.extras.rotary_dim {
        v["partial_rotary_factor"] = serde_json::json!(rotary_factor(d, c.head_dim));
    }
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

#[cfg(test)]
mod tests {
    /// Written factors read back to the same count however the division
    /// rounds, as transformers reads them (`int(head_dim * factor)`).
    #[test]
    fn a_written_rotary_factor_reads_back_to_its_dimension_count() {
        for head_dim in 2..=512usize {
            for dim in (2..=head_dim).step_by(2) {
                let factor = super::rotary_factor(dim, head_dim);
                assert_eq!(
                    (head_dim as f64 * factor) as usize,
                    dim,
                    "{dim} of {head_dim}"
                );
            }
        }
        assert!(super::rotary_factor(30, 44) > 30.0 / 44.0);
    }
}
