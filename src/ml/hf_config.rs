//! `config.json` of a Hugging Face model directory, for the architectures we run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MlError;
use crate::text_enum::text_enum;

text_enum! {
    /// The model families we run (`config.json`'s `model_type`).
    pub enum Arch {
        Gpt2 = "gpt2",
        Llama = "llama",
    }
}

impl Arch {
    /// PEFT module names LoRA may target in this architecture.
    pub fn lora_modules(self) -> &'static [&'static str] {
        match self {
            Arch::Gpt2 => &["c_attn", "c_proj", "c_fc"],
            Arch::Llama => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        }
    }

    /// The modules targeted when the config names none.
    pub fn default_lora_targets(self) -> &'static [&'static str] {
        match self {
            Arch::Gpt2 => &["c_attn"],
            Arch::Llama => &["q_proj", "v_proj"],
        }
    }
}

/// RoPE scaling as in `rope_scaling` of Llama configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// The fields of `config.json` the model code reads; names as in transformers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

fn uint(v: &serde_json::Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().into_iter().collect(),
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => Vec::new(),
    }
}

impl HfConfig {
    pub fn load(dir: &Path) -> Result<HfConfig, MlError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| MlError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        HfConfig::from_json(&v).map_err(|msg| match msg {
            ConfigProblem::Unsupported(t) => MlError::UnsupportedModel {
                path: path.clone(),
                model_type: t,
            },
            ConfigProblem::Missing(k) => MlError::Config {
                path: path.clone(),
                msg: format!("missing or invalid `{k}`"),
            },
            ConfigProblem::Invalid(msg) => MlError::Config {
                path: path.clone(),
                msg,
            },
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Result<HfConfig, ConfigProblem> {
        let model_type = v
            .get("model_type")
            .and_then(|t| t.as_str())
            .ok_or(ConfigProblem::Missing("model_type"))?;
        let need = |k: &'static str| uint(v, k).ok_or(ConfigProblem::Missing(k));
        let eos = ids(v.get("eos_token_id").unwrap_or(&serde_json::Value::Null));
        let bos = v.get("bos_token_id").and_then(|x| x.as_i64());
        let pad = v.get("pad_token_id").and_then(|x| x.as_i64());
        let cfg = match model_type {
            "gpt2" => {
                let d = need("n_embd")?;
                let h = need("n_head")?;
                HfConfig {
                    arch: Arch::Gpt2,
                    vocab_size: need("vocab_size")?,
                    hidden_size: d,
                    num_layers: need("n_layer")?,
                    num_heads: h,
                    num_kv_heads: h,
                    head_dim: d / h.max(1),
                    intermediate_size: uint(v, "n_inner").unwrap_or(4 * d),
                    max_position_embeddings: need("n_positions")?,
                    norm_eps: v
                        .get("layer_norm_epsilon")
                        .and_then(|x| x.as_f64())
                        .unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rope_scaling: None,
                    tie_word_embeddings: v
                        .get("tie_word_embeddings")
                        .and_then(|x| x.as_bool())
                        .unwrap_or(true),
                    attention_bias: true,
                    mlp_bias: true,
                    bos_token_id: bos,
                    eos_token_ids: eos,
                    pad_token_id: pad,
                }
            }
            "llama" => {
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
                {
                    return Err(ConfigProblem::Invalid(format!(
                        "rope_scaling type {:?} is not supported (default, linear, llama3 are)",
                        s.rope_type
                    )));
                }
                HfConfig {
                    arch: Arch::Llama,
                    vocab_size: need("vocab_size")?,
                    hidden_size: d,
                    num_layers: need("num_hidden_layers")?,
                    num_heads: h,
                    num_kv_heads: uint(v, "num_key_value_heads").unwrap_or(h),
                    head_dim: uint(v, "head_dim").unwrap_or(d / h.max(1)),
                    intermediate_size: need("intermediate_size")?,
                    max_position_embeddings: uint(v, "max_position_embeddings").unwrap_or(2048),
                    norm_eps: v
                        .get("rms_norm_eps")
                        .and_then(|x| x.as_f64())
                        .unwrap_or(1e-6),
                    rope_theta: v
                        .get("rope_theta")
                        .and_then(|x| x.as_f64())
                        .unwrap_or(10000.0),
                    rope_scaling,
                    tie_word_embeddings: v
                        .get("tie_word_embeddings")
                        .and_then(|x| x.as_bool())
                        .unwrap_or(false),
                    attention_bias: v
                        .get("attention_bias")
                        .and_then(|x| x.as_bool())
                        .unwrap_or(false),
                    mlp_bias: v.get("mlp_bias").and_then(|x| x.as_bool()).unwrap_or(false),
                    bos_token_id: bos,
                    eos_token_ids: eos,
                    pad_token_id: pad,
                }
            }
            other => return Err(ConfigProblem::Unsupported(other.to_string())),
        };
        if cfg.num_heads == 0
            || cfg.num_kv_heads == 0
            || cfg.num_heads % cfg.num_kv_heads != 0
            || (cfg.arch == Arch::Gpt2 && cfg.hidden_size % cfg.num_heads != 0)
        {
            return Err(ConfigProblem::Invalid(format!(
                "{} heads and {} key/value heads do not divide hidden size {}",
                cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size
            )));
        }
        Ok(cfg)
    }

    /// `config.json` in transformers' format, for `model init` and merged exports.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let eos = match self.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        match self.arch {
            Arch::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden_size,
                "n_layer": self.num_layers,
                "n_head": self.num_heads,
                "n_inner": self.intermediate_size,
                "n_positions": self.max_position_embeddings,
                "n_ctx": self.max_position_embeddings,
                "layer_norm_epsilon": self.norm_eps,
                "activation_function": "gelu_new",
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "initializer_range": 0.02,
                "scale_attn_weights": true,
                "tie_word_embeddings": self.tie_word_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": eos,
                "torch_dtype": "float32",
            }),
            Arch::Llama => json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_dim,
                "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings,
                "rms_norm_eps": self.norm_eps,
                "rope_theta": self.rope_theta,
                "rope_scaling": self.rope_scaling,
                "hidden_act": "silu",
                "attention_bias": self.attention_bias,
                "mlp_bias": self.mlp_bias,
                "tie_word_embeddings": self.tie_word_embeddings,
                "initializer_range": 0.02,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": eos,
                "pad_token_id": self.pad_token_id,
                "torch_dtype": "float32",
            }),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum ConfigProblem {
    Unsupported(String),
    Missing(&'static str),
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_llama_with_gqa_and_rope_scaling() {
        let c = HfConfig::from_json(&json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "rope_theta": 50000.0, "tie_word_embeddings": true, "eos_token_id": [2, 3],
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        }))
        .unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta), (2, 16, 50000.0));
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert_eq!(c.rope_scaling.unwrap().factor, Some(8.0));
        let back = HfConfig::from_json(&HfConfig::from_json(&json!({
            "model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 16
        })).unwrap().to_json()).unwrap();
        assert_eq!(back.intermediate_size, 32);
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            HfConfig::from_json(&json!({"model_type": "mamba"})).unwrap_err(),
            ConfigProblem::Unsupported("mamba".into())
        );
        assert_eq!(
            HfConfig::from_json(&json!({"model_type": "gpt2", "vocab_size": 10})).unwrap_err(),
            ConfigProblem::Missing("n_embd")
        );
        assert!(matches!(
            HfConfig::from_json(
                &json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2,
                "intermediate_size": 8})
            ),
            Err(ConfigProblem::Invalid(_))
        ));
    }
}
