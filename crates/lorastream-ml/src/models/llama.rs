//! Llama (LlamaForCausalLM, also SmolLM2, TinyLlama, Llama 3.x): the shared
//! decoder ([`super::decoder`]) with biases where `attention_bias` and
//! `mlp_bias` say. Its `config.json` reader is the one the other
//! Llama-architecture families start from.

use super::decoder::Layout;
use super::{Arch, Family};
use crate::hf_config::{ConfigProblem, HfConfig, RopeScaling, SpecialIds, uint};
use crate::nn::lora::LoraTargets;

/// `config.json` read as this family's names say.
pub(crate) fn read_config(
    v: &serde_json::Value,
    ids: SpecialIds,
) -> Result<HfConfig, ConfigProblem> {
    read_as(v, ids, Arch::Llama)
}

/// A Llama-style `config.json` (the names Llama, Qwen, Mistral and Phi-3
/// share) as a config of `arch`.
pub(crate) fn read_as(
    v: &serde_json::Value,
    ids: SpecialIds,
    arch: Arch,
) -> Result<HfConfig, ConfigProblem> {
    let need = |k: &'static str| uint(v, k).ok_or(ConfigProblem::Missing(k));
    let d = need("hidden_size")?;
    let h = need("num_attention_heads")?;
    let rope_scaling = match v.get("rope_scaling") {
        None | Some(serde_json::Value::Null) => None,
        Some(s) => Some(
            serde_json::from_value::<RopeScaling>(s.clone())
                .map_err(|e| ConfigProblem::Invalid(format!("rope_scaling: {e}")))?,
        ),
    };
    if let Some(s) = &rope_scaling
        && !matches!(s.rope_type.as_str(), "default" | "linear" | "llama3")
        && !(arch == Arch::Phi3 && s.rope_type == "longrope")
    {
        return Err(ConfigProblem::Invalid(format!(
            "rope_scaling type {:?} is not supported (default, linear, llama3 are; longrope for phi3)",
            s.rope_type
        )));
    }
    let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let float = |k: &str, default: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(default);
    Ok(HfConfig {
        arch,
        vocab_size: need("vocab_size")?,
        hidden_size: d,
        num_layers: need("num_hidden_layers")?,
        num_heads: h,
        num_kv_heads: uint(v, "num_key_value_heads").unwrap_or(h),
        head_dim: uint(v, "head_dim").unwrap_or(d / h.max(1)),
        intermediate_size: need("intermediate_size")?,
        max_position_embeddings: uint(v, "max_position_embeddings").unwrap_or(2048),
        norm_eps: float("rms_norm_eps", 1e-6),
        rope_theta: float("rope_theta", 10000.0),
        rope_scaling,
        tie_word_embeddings: flag("tie_word_embeddings"),
        attention_bias: flag("attention_bias"),
        mlp_bias: flag("mlp_bias"),
        bos_token_id: ids.bos,
        eos_token_ids: ids.eos,
        pad_token_id: ids.pad,
        extras: Default::default(),
    })
}

/// The sliding window of a config (`sliding_window`, else `default`) and
/// the layers it applies to: those `layer_types` marks `sliding_attention`,
/// or without that list each layer `slides(i)` picks. No window: none.
pub(crate) fn read_window(
    c: &mut HfConfig,
    v: &serde_json::Value,
    default: Option<usize>,
    slides: impl Fn(usize) -> bool,
) -> Result<(), ConfigProblem> {
    let window = match v.get("sliding_window") {
        None => default,
        Some(w) => w.as_u64().map(|w| w as usize),
    };
    let Some(window) = window.filter(|w| *w > 0) else {
        return Ok(());
    };
    let layers: Vec<bool> = match v.get("layer_types").and_then(|x| x.as_array()) {
        None => (0..c.num_layers).map(slides).collect(),
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(ConfigProblem::Invalid(format!(
                    "layer_types: {t} is not sliding_attention or full_attention"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    if layers.len() != c.num_layers {
        return Err(ConfigProblem::Invalid(format!(
            "layer_types has {} entries for {} layers",
            layers.len(),
            c.num_layers
        )));
    }
    c.extras.sliding_window = Some(window);
    c.extras.sliding_layers = layers;
    Ok(())
}

/// Qwen's switch: with `use_sliding_window`, the layers from
/// `max_window_layers` (28) on slide (or those `layer_types` marks).
pub(crate) fn read_qwen_window(
    c: &mut HfConfig,
    v: &serde_json::Value,
) -> Result<(), ConfigProblem> {
    if v.get("use_sliding_window").and_then(|x| x.as_bool()) != Some(true) {
        return Ok(());
    }
    let full = uint(v, "max_window_layers").unwrap_or(28);
    read_window(c, v, None, |i| i >= full)
}

/// Qwen's switch as [`read_qwen_window`] reads it: on, with `layer_types`
/// saying which layers slide, where the model has a window.
pub(crate) fn write_qwen_window(c: &HfConfig, v: &mut serde_json::Value) {
    if c.extras.sliding_window.is_some() {
        v["use_sliding_window"] = serde_json::json!(true);
        v["max_window_layers"] = serde_json::json!(0);
        write_window(c, v);
    }
}

/// `config.json`'s `sliding_window` and `layer_types`, where the model has a window.
pub(crate) fn write_window(c: &HfConfig, v: &mut serde_json::Value) {
    let e = &c.extras;
    let types: Vec<&str> = e
        .sliding_layers
        .iter()
        .map(|s| match s {
            true => "sliding_attention",
            false => "full_attention",
        })
        .collect();
    v["sliding_window"] = serde_json::json!(e.sliding_window);
    if e.sliding_window.is_some() {
        v["layer_types"] = serde_json::json!(types);
    }
}

fn write_config(c: &HfConfig, eos: serde_json::Value) -> serde_json::Value {
    write_as(c, eos, "LlamaForCausalLM")
}

/// `config.json` in transformers' names for a Llama-style family.
pub(crate) fn write_as(
    c: &HfConfig,
    eos: serde_json::Value,
    architecture: &str,
) -> serde_json::Value {
    serde_json::json!({
        "architectures": [architecture],
        "model_type": c.arch.as_str(),
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling,
        "hidden_act": "silu",
        "attention_bias": c.attention_bias,
        "mlp_bias": c.mlp_bias,
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    })
}

/// The ChatML template of SmolLM2-style models, used by the llama presets.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Where LoRA attaches in the Llama-style families with separate projections.
pub(crate) const TARGETS: LoraTargets = LoraTargets {
    all: &[
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
    default: &["q_proj", "v_proj"],
    fan_in_fan_out: false,
};

/// The special tokens `model init` trains into a Llama-style tokenizer.
pub(crate) const SPECIAL_TOKENS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Llama as lorastream registers it (see [`super::Arch::family`]).
pub(crate) const FAMILY: Family = llama_family!(
    Arch::Llama,
    Layout::default(),
    TARGETS,
    read_config,
    write_config
);

/// The config of a tiny random model of a Llama-style `arch`.
pub(crate) fn tiny_as(
    arch: Arch,
    vocab: usize,
    width: usize,
    layers: usize,
    id: &dyn Fn(&str) -> Option<i64>,
) -> HfConfig {
    HfConfig {
        arch,
        vocab_size: vocab,
        hidden_size: width,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: width / 4,
        intermediate_size: width * 8 / 3,
        max_position_embeddings: 1024,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: id("<|im_start|>"),
        eos_token_ids: id("<|im_end|>").into_iter().collect(),
        pad_token_id: id("<|endoftext|>"),
        extras: Default::default(),
    }
}

pub(crate) fn tokenizer_config(cfg: &HfConfig) -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": cfg.max_position_embeddings,
        "chat_template": CHATML_TEMPLATE,
    })
}
