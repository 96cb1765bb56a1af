//! A GGUF file of a Llama, Qwen2, Qwen3, Phi-3, Gemma 2 or Gemma 3 model as a
//! Hugging Face model
//! directory: `config.json` from the `<arch>.*` metadata,
//! `model.safetensors` with every tensor de-quantized and renamed to its
//! checkpoint name (undoing the Q/K row permutation llama.cpp's converter
//! applies to its `llama` architecture), and the tokenizer and chat
//! template from `tokenizer.*` (`vocab`). Gemma's norm weights are stored
//! as 1 + w, and some of its attention settings are derived by llama.cpp
//! rather than stored (`gemma_config`). Llama 3.1+'s `rope_freqs` (its
//! rope scaling, one divisor per frequency) becomes `rope_scaling` llama3
//! again ([`super::rope_freqs`]); Phi-3's `rope_factors_*` become its
//! LongRoPE scaling (`longrope`).

use std::path::Path;

use serde_json::json;
use tch::{Kind, Tensor};

use super::lora::projections;
use super::{Gguf, GgufError, TensorInfo};
use crate::{Arch, MlError};

/// The families whose llama.cpp files are read, by `general.architecture`
/// (Mistral's files are `llama` ones).
fn family(cpp_arch: &str) -> Option<Arch> {
    match cpp_arch {
        "llama" => Some(Arch::Llama),
        "qwen2" => Some(Arch::Qwen2),
        "qwen3" => Some(Arch::Qwen3),
        "phi3" => Some(Arch::Phi3),
        "gemma2" => Some(Arch::Gemma2),
        "gemma3" => Some(Arch::Gemma3),
        _ => None,
    }
}

/// The Hugging Face name of a llama.cpp tensor of a model of `arch`.
pub fn hf_name(arch: Arch, name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    // Gemma 2/3 norm each block's output too; `ffn_norm` is the MLP's input norm.
    let ffn_norm = match arch {
        Arch::Gemma2 | Arch::Gemma3 => "pre_feedforward_layernorm",
        _ => "post_attention_layernorm",
    };
    let gemma_post = match arch {
        Arch::Gemma2 | Arch::Gemma3 => "post_attention_layernorm",
        _ => "",
    };
    let norms = [
        ("input_layernorm", "attn_norm"),
        (ffn_norm, "ffn_norm"),
        (gemma_post, "post_attention_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
    ];
    let (prefix, table) = projections(arch);
    let hf = norms
        .iter()
        .chain(table)
        .find(|(hf, cpp)| *cpp == module && !hf.is_empty())?
        .0;
    matches!(param, "weight" | "bias").then(|| format!("{prefix}{layer}.{hf}.{param}"))
}

/// Undoes llama.cpp's `permute(w, n_head)`: its rows are, per head, the even
/// then the odd rotary halves interleaved; transformers wants the halves.
fn unpermute(w: &Tensor, n_head: i64) -> Tensor {
    let shape = w.size();
    let rows = shape[0];
    let mut split = vec![n_head, rows / n_head / 2, 2];
    split.extend_from_slice(&shape[1..]);
    w.reshape(&split).transpose(1, 2).reshape(&shape)
}

fn tensor(g: &Gguf, info: &TensorInfo) -> Result<Tensor, GgufError> {
    let values = g.read_f32(info)?;
    Ok(Tensor::from_slice(&values).reshape(info.shape()))
}

/// Imports `src` into the directory `out` (which must not exist yet) with
/// weights stored as `kind`. Written to a temporary sibling and renamed, so a
/// directory that exists is complete.
pub fn import(src: &Path, out: &Path, kind: Kind) -> Result<(), MlError> {
    let g = Gguf::open(src)?;
    let cpp = g.need("general.architecture", |v| v.as_str())?;
    let Some(arch) = family(cpp) else {
        return Err(g
            .unsupported(format!(
                "general.architecture {cpp:?} is not supported (llama, qwen2, qwen3, phi3, gemma2, gemma3 are)"
            ))
            .into());
    };
    let u = |key: &str| g.need(&format!("{cpp}.{key}"), |v| v.as_u64());
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
    let context = u("context_length")?;
    let head_dim = u("attention.key_length").unwrap_or(hidden / heads.max(1));
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
        return Err(g
            .unsupported(format!(
                "{heads} heads, {kv_heads} key/value heads, head size {head_dim}"
            ))
            .into());
    }
    // Only Phi-3's files rotate part of a head (Phi-4-mini).
    let rotary = u("rope.dimension_count").unwrap_or(head_dim);
    if rotary != head_dim && (arch != Arch::Phi3 || rotary == 0 || rotary > head_dim) {
        return Err(g
            .unsupported(format!(
                "rope.dimension_count {rotary} with head size {head_dim}"
            ))
            .into());
    }
    let vocab = super::vocab::build(&g, cpp, context)?;
    let tied = g.tensor("output.weight").is_none();
    let token_id = |key: &str| g.get(key).and_then(|v| v.as_u64());
    let mut config = json!({
        "model_type": arch.as_str(),
        "hidden_act": "silu",
        "vocab_size": u("vocab_size").unwrap_or(vocab.tokens.len() as u64),
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": g.need(&format!("{cpp}.attention.layer_norm_rms_epsilon"), |v| v.as_f64())?,
        "rope_theta": g.get(&format!("{cpp}.rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0),
        "tie_word_embeddings": tied,
        "attention_bias": g.tensor("blk.0.attn_q.bias").is_some(),
        "mlp_bias": false,
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id"),
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id"),
        "sliding_window": g.get(&format!("{cpp}.attention.sliding_window")).and_then(|v| v.as_u64()),
        "torch_dtype": format!("{kind:?}").to_lowercase(),
        "lorastream_source": src.display().to_string(),
    });
    if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
        gemma_config(&g, cpp, &mut config);
    }
    if rotary != head_dim {
        config["partial_rotary_factor"] = json!(crate::models::phi3::rotary_factor(
            rotary as usize,
            head_dim as usize
        ));
    }
    if let Some(info) = g.tensor("rope_freqs.weight") {
        config["rope_scaling"] = rope_scaling(&g, info, &config)?;
    }
    longrope(&g, arch, &mut config)?;
    // llama.cpp permutes q and k rows for its `llama` architecture only.
    let heads = (cpp == "llama").then_some((heads as i64, kv_heads as i64));
    let tensors = hf_tensors(&g, arch, heads, kind)?;
    write_dir(out, &config, &vocab, &tensors)
}

/// Tensors llama.cpp stores a model's rope scaling in.
const ROPE_TENSORS: [&str; 3] = [
    "rope_freqs.weight",
    "rope_factors_short.weight",
    "rope_factors_long.weight",
];

/// Phi-3's LongRoPE (Phi-3.5-mini, Phi-3 128k, Phi-4-mini) from a llama.cpp
/// file: the short and long factors it stores as tensors, the original
/// context and attention factor as metadata. Such tensors in any other file,
/// or one without the other, are refused by name.
fn longrope(g: &Gguf, arch: Arch, config: &mut serde_json::Value) -> Result<(), MlError> {
    let (short, long) = (
        g.tensor("rope_factors_short.weight"),
        g.tensor("rope_factors_long.weight"),
    );
    let (short, long) = match (short, long) {
        (None, None) => return Ok(()),
        (Some(s), Some(l)) if arch == Arch::Phi3 => (s, l),
        _ => {
            return Err(g
                .unsupported("rope_factors_short/long tensors outside a phi3 file's pair".into())
                .into());
        }
    };
    let (short, long) = (g.read_f32(short)?, g.read_f32(long)?);
    let context = config["max_position_embeddings"].clone();
    let original = g
        .get("phi3.rope.scaling.original_context_length")
        .and_then(|v| v.as_u64())
        .map_or(context, |n| json!(n));
    config["original_max_position_embeddings"] = original;
    config["rope_scaling"] =
        json!({"type": "longrope", "short_factor": short, "long_factor": long});
    if let Some(a) = g
        .get("phi3.rope.scaling.attn_factor")
        .and_then(|v| v.as_f64())
    {
        config["rope_scaling"]["attention_factor"] = json!(a);
    }
    Ok(())
}

/// `rope_scaling` from llama.cpp's per-frequency divisors (Llama 3.1+).
fn rope_scaling(
    g: &Gguf,
    info: &TensorInfo,
    config: &serde_json::Value,
) -> Result<serde_json::Value, MlError> {
    let divisors: Vec<f64> = g.read_f32(info)?.into_iter().map(f64::from).collect();
    let theta = config["rope_theta"].as_f64().unwrap_or(10000.0);
    let head_dim = config["head_dim"].as_u64().unwrap_or(0) as usize;
    let scaling = (config["model_type"] == "llama")
        .then(|| super::rope_freqs::llama3(&divisors, theta, head_dim))
        .flatten();
    let Some(s) = scaling else {
        return Err(g
            .unsupported(
                "rope_freqs.weight: per-frequency rope factors that are no llama3 rope scaling"
                    .into(),
            )
            .into());
    };
    Ok(
        json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low,
        "high_freq_factor": s.high, "original_max_position_embeddings": s.old.round() as u64}),
    )
}

/// Gemma 2/3's `config.json` keys from a llama.cpp file: the soft-caps and
/// window it stores, and what llama.cpp derives from the model instead of
/// storing (the attention scale: 1/√head_dim, 1/√(hidden/heads) for the 27B
/// models — 46 layers in Gemma 2, 62 in Gemma 3; Gemma 3's five sliding
/// layers to a global one, their rotary theta 10000).
fn gemma_config(g: &Gguf, cpp: &str, config: &mut serde_json::Value) {
    let f = |key: &str| g.get(&format!("{cpp}.{key}")).and_then(|v| v.as_f64());
    let (hidden, heads) = (
        config["hidden_size"].clone(),
        config["num_attention_heads"].clone(),
    );
    let layers = config["num_hidden_layers"].as_u64().unwrap_or(0);
    let big = (cpp == "gemma2" && layers == 46) || (cpp == "gemma3" && layers == 62);
    config["query_pre_attn_scalar"] = match (big, hidden.as_u64(), heads.as_u64()) {
        (true, Some(h), Some(n)) if n > 0 => json!(h / n),
        _ => config["head_dim"].clone(),
    };
    config["hidden_activation"] = json!("gelu_pytorch_tanh");
    config["attn_logit_softcapping"] = json!(f("attn_logit_softcapping"));
    config["final_logit_softcapping"] = json!(f("final_logit_softcapping"));
    if cpp == "gemma3" {
        config["sliding_window_pattern"] = json!(6);
        config["rope_local_base_freq"] = json!(10000.0);
        if let (Some("linear"), Some(factor)) = (
            g.get("gemma3.rope.scaling.type").and_then(|v| v.as_str()),
            f("rope.scaling.factor"),
        ) {
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
    }
}

/// Every tensor in Hugging Face names and `kind`, q and k un-permuted where
/// `permuted` gives their head counts.
fn hf_tensors(
    g: &Gguf,
    arch: Arch,
    permuted: Option<(i64, i64)>,
    kind: Kind,
) -> Result<Vec<(String, Tensor)>, MlError> {
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        if ROPE_TENSORS.contains(&info.name.as_str()) {
            continue; // read into the config's rope_scaling
        }
        let Some(name) = hf_name(arch, &info.name) else {
            return Err(g
                .unsupported(format!("tensor {} has no Hugging Face name", info.name))
                .into());
        };
        let mut t = tensor(g, info)?;
        // llama.cpp stores Gemma's norm weights as 1 + w.
        if matches!(arch, Arch::Gemma2 | Arch::Gemma3) && info.name.ends_with("norm.weight") {
            t -= 1.0;
        }
        if let Some((heads, kv_heads)) = permuted {
            let n = &info.name;
            if n.ends_with("attn_q.weight") || n.ends_with("attn_q.bias") {
                t = unpermute(&t, heads);
            } else if n.ends_with("attn_k.weight") || n.ends_with("attn_k.bias") {
                t = unpermute(&t, kv_heads);
            }
        }
        tensors.push((name, t.to_kind(kind)));
    }
    Ok(tensors)
}

/// Writes the model directory beside `out` and renames it into place, so a
/// crash leaves no half-imported model.
fn write_dir(
    out: &Path,
    config: &serde_json::Value,
    vocab: &super::vocab::Vocab,
    tensors: &[(String, Tensor)],
) -> Result<(), MlError> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| MlError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("import"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| MlError::io(&tmp, e))?;
    let write = |file: &str, v: &serde_json::Value| {
        lorastream_base::fsutil::write_json_atomic(&tmp.join(file), v)
            .map_err(|e| MlError::io(&tmp, e))
    };
    write("config.json", config)?;
    write("tokenizer.json", &vocab.tokenizer_json)?;
    write("tokenizer_config.json", &vocab.tokenizer_config)?;
    crate::load::weights::write_safetensors_atomic(&tmp.join("model.safetensors"), tensors)?;
    std::fs::rename(&tmp, out).map_err(|e| MlError::io(out, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_checkpoint_names() {
        assert_eq!(
            hf_name(Arch::Llama, "blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name(Arch::Llama, "token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name(Arch::Qwen3, "blk.0.attn_q_norm.weight").as_deref(),
            Some("model.layers.0.self_attn.q_norm.weight")
        );
        assert_eq!(hf_name(Arch::Llama, "blk.x.attn_k.weight"), None);
        assert_eq!(hf_name(Arch::Llama, "rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).
        let w = Tensor::arange(8 * 3, (Kind::Float, tch::Device::Cpu)).reshape([8, 3]);
        let permuted = w.reshape([2, 2, 2, 3]).transpose(1, 2).reshape([8, 3]);
        assert!(unpermute(&permuted, 2).equal(&w));
    }
}
