//! A PEFT LoRA adapter as llama.cpp's GGUF LoRA file, the format its server
//! (`--lora`) and Ollama (`ADAPTER`) load: metadata `general.type =
//! "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and for each
//! adapted linear `blk.N.<tensor>.weight.lora_a` (`[r, in]`) and `.lora_b`
//! (`[out, r]`) in f32, named as llama.cpp names the base tensors. Llama's
//! q and k rows are permuted as llama.cpp's converter permutes the base
//! weights (B's rows; A is untouched), so the adapter applies to the GGUF
//! base as it does to the checkpoint.

use std::io::Write;
use std::path::Path;

use tch::{Kind, Tensor};

use super::GgmlType;
use crate::MlError;
use crate::hf_config::{Arch, HfConfig};
use crate::nn::lora::read_adapter;

/// llama.cpp's architecture name of a family (Mistral is llama.cpp's `llama`).
pub fn llama_cpp_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::Mistral => "llama",
        Arch::Gemma3 => "gemma3",
        other => other.as_str(),
    }
}

/// The Llama-style projections and llama.cpp's names for them.
const LLAMA_NAMES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// A family's linear layers as (checkpoint module, llama.cpp name), under
/// its layers' checkpoint prefix: one table for export and import.
pub(crate) fn projections(arch: Arch) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match arch {
        Arch::Llama
        | Arch::Qwen2
        | Arch::Qwen3
        | Arch::Mistral
        | Arch::Gemma
        | Arch::Gemma2
        | Arch::Gemma3 => ("model.layers.", LLAMA_NAMES),
        Arch::Phi3 => (
            "model.layers.",
            &[
                ("self_attn.qkv_proj", "attn_qkv"),
                ("self_attn.o_proj", "attn_output"),
                ("mlp.gate_up_proj", "ffn_up"),
                ("mlp.down_proj", "ffn_down"),
            ],
        ),
        Arch::Gpt2 => (
            "transformer.h.",
            &[
                ("attn.c_attn", "attn_qkv"),
                ("attn.c_proj", "attn_output"),
                ("mlp.c_fc", "ffn_up"),
                ("mlp.c_proj", "ffn_down"),
            ],
        ),
    }
}

/// llama.cpp's name of a linear layer, from its checkpoint (PEFT) path.
pub fn gguf_module(arch: Arch, path: &str) -> Option<String> {
    let (prefix, table) = projections(arch);
    let (layer, module) = path.strip_prefix(prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let name = table.iter().find(|(hf, _)| *hf == module)?.1;
    Some(format!("blk.{layer}.{name}"))
}

/// llama.cpp's `permute(w, n_head)` of the rows of `w` (q and k of Llama).
pub fn permute(w: &Tensor, n_head: i64) -> Tensor {
    let shape = w.size();
    let mut split = vec![n_head, 2, shape[0] / n_head / 2];
    split.extend_from_slice(&shape[1..]);
    w.reshape(&split).transpose(1, 2).reshape(&shape)
}

/// Writes the adapter in `adapter_dir` (PEFT layout) for a base of `base`'s
/// family as a GGUF LoRA file at `out`, atomically; the tensors written.
pub fn export_lora(
    adapter_dir: &Path,
    base: &HfConfig,
    out: &Path,
    name: &str,
) -> Result<usize, MlError> {
    let (cfg, tensors) = read_adapter(adapter_dir)?;
    let spec = cfg.to_spec(adapter_dir)?;
    let bad = |msg: String| MlError::Adapter {
        path: adapter_dir.to_owned(),
        msg,
    };
    // llama.cpp scales by alpha / r; an rsLoRA adapter's alpha / sqrt(r) is
    // the same scale with alpha · sqrt(r).
    let alpha = if spec.rslora {
        spec.alpha * (spec.r as f64).sqrt()
    } else {
        spec.alpha
    };
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut out_tensors = Vec::new();
    for key in keys {
        let (path, which) = key
            .strip_prefix("base_model.model.")
            .and_then(|k| k.strip_suffix(".weight"))
            .and_then(|k| k.rsplit_once(".lora_"))
            .ok_or_else(|| bad(format!("unexpected tensor {key}")))?;
        let module = gguf_module(base.arch, path)
            .ok_or_else(|| bad(format!("{path}: llama.cpp has no LoRA target of that name")))?;
        let mut t = tensors[key].to_kind(Kind::Float);
        // llama.cpp's converter permutes q and k for the `llama` architecture
        // only (its rotary layout); Qwen and Phi-3 keep the checkpoint's rows.
        if which == "B" && llama_cpp_arch(base.arch) == "llama" {
            if path.ends_with("self_attn.q_proj") {
                t = permute(&t, base.num_heads as i64);
            } else if path.ends_with("self_attn.k_proj") {
                t = permute(&t, base.num_kv_heads as i64);
            }
        }
        let suffix = if which == "A" { "lora_a" } else { "lora_b" };
        out_tensors.push((format!("{module}.weight.{suffix}"), t.contiguous()));
    }
    let meta = [
        (
            "general.architecture",
            Meta::Str(llama_cpp_arch(base.arch).into()),
        ),
        ("general.type", Meta::Str("adapter".into())),
        ("general.name", Meta::Str(name.into())),
        ("adapter.type", Meta::Str("lora".into())),
        ("adapter.lora.alpha", Meta::F32(alpha as f32)),
    ];
    lorastream_base::fsutil::write_atomic_with(out, |w| write_gguf(w, &meta, &out_tensors))
        .map_err(|e| MlError::io(out, e))?;
    Ok(out_tensors.len())
}

/// A metadata value this writer writes.
enum Meta {
    Str(String),
    F32(f32),
}

const ALIGN: u64 = 32;

/// GGUF version 3: header, metadata, tensor infos (ggml order: the row
/// length first), padding, then each f32 tensor aligned to 32 bytes.
fn write_gguf(
    w: &mut impl Write,
    meta: &[(&str, Meta)],
    tensors: &[(String, Tensor)],
) -> std::io::Result<()> {
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    for (key, value) in meta {
        string(&mut head, key);
        match value {
            Meta::Str(s) => {
                head.extend_from_slice(&8u32.to_le_bytes());
                string(&mut head, s);
            }
            Meta::F32(v) => {
                head.extend_from_slice(&6u32.to_le_bytes());
                head.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for (name, t) in tensors {
        string(&mut head, name);
        let dims: Vec<i64> = t.size().into_iter().rev().collect();
        head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in &dims {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&GgmlType::F32.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset += padded(t.numel() as u64 * 4);
    }
    head.resize(padded(head.len() as u64) as usize, 0);
    w.write_all(&head)?;
    for (_, t) in tensors {
        let values: Vec<f32> = Vec::try_from(t.flatten(0, -1)).map_err(std::io::Error::other)?;
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.resize(padded(bytes.len() as u64) as usize, 0);
        w.write_all(&bytes)?;
    }
    Ok(())
}

fn padded(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_module(Arch::Llama, "model.layers.3.self_attn.o_proj").as_deref(),
            Some("blk.3.attn_output")
        );
        assert_eq!(
            gguf_module(Arch::Gpt2, "transformer.h.0.attn.c_attn").as_deref(),
            Some("blk.0.attn_qkv")
        );
        assert_eq!(gguf_module(Arch::Llama, "lm_head"), None);
    }

    #[test]
    fn permute_is_what_the_importer_undoes() {
        let w = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([8, 3]);
        let p = permute(&w, 2);
        let back = p.reshape([2, 2, 2, 3]).transpose(1, 2).reshape([8, 3]);
        assert!(back.equal(&w));
        assert!(!p.equal(&w));
    }
}
