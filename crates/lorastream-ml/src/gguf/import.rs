//! A GGUF file as a Hugging Face model directory: `config.json` from the
//! `llama.*` metadata, `model.safetensors` with every tensor de-quantized and
//! renamed to its checkpoint name (undoing the Q/K row permutation llama.cpp's
//! converter applies for its rotary embedding layout), and the tokenizer and
//! chat template from `tokenizer.*` (`vocab`).

use std::path::Path;

use serde_json::json;
use tch::{Kind, Tensor};

use super::{Gguf, GgufError, TensorInfo};
use crate::MlError;

/// The Hugging Face name of a llama.cpp tensor of a Llama-architecture model.
pub fn hf_name(name: &str) -> Option<String> {
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
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    matches!(param, "weight" | "bias").then(|| format!("model.layers.{layer}.{hf}.{param}"))
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
    let arch = g.need("general.architecture", |v| v.as_str())?;
    if arch != "llama" {
        return Err(g
            .unsupported(format!(
                "general.architecture {arch:?} is not supported (llama is)"
            ))
            .into());
    }
    let u = |key: &str| g.need(&format!("llama.{key}"), |v| v.as_u64());
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
    let vocab = super::vocab::build(&g, context)?;
    let tied = g.tensor("output.weight").is_none();
    let token_id = |key: &str| g.get(key).and_then(|v| v.as_u64());
    let config = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "vocab_size": u("vocab_size").unwrap_or(vocab.tokens.len() as u64),
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": g.need("llama.attention.layer_norm_rms_epsilon", |v| v.as_f64())?,
        "rope_theta": g.get("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10000.0),
        "tie_word_embeddings": tied,
        "attention_bias": g.tensor("blk.0.attn_q.bias").is_some(),
        "mlp_bias": false,
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id"),
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id"),
        "torch_dtype": format!("{kind:?}").to_lowercase(),
        "lorastream_source": src.display().to_string(),
    });
    let tensors = hf_tensors(&g, heads as i64, kv_heads as i64, kind)?;
    write_dir(out, &config, &vocab, &tensors)
}

/// Every tensor in Hugging Face names and `kind`, q and k un-permuted.
fn hf_tensors(
    g: &Gguf,
    heads: i64,
    kv_heads: i64,
    kind: Kind,
) -> Result<Vec<(String, Tensor)>, MlError> {
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else {
            return Err(g
                .unsupported(format!("tensor {} has no Hugging Face name", info.name))
                .into());
        };
        let mut t = tensor(g, info)?;
        if info.name.ends_with("attn_q.weight") || info.name.ends_with("attn_q.bias") {
            t = unpermute(&t, heads);
        } else if info.name.ends_with("attn_k.weight") || info.name.ends_with("attn_k.bias") {
            t = unpermute(&t, kv_heads);
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
    crate::weights::write_safetensors_atomic(&tmp.join("model.safetensors"), tensors)?;
    std::fs::rename(&tmp, out).map_err(|e| MlError::io(out, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_checkpoint_names() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_k.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).
        let w = Tensor::arange(8 * 3, (Kind::Float, tch::Device::Cpu)).reshape([8, 3]);
        let permuted = w.reshape([2, 2, 2, 3]).transpose(1, 2).reshape([8, 3]);
        assert!(unpermute(&permuted, 2).equal(&w));
    }
}
