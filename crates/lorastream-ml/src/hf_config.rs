//! `config.json` of a Hugging Face model directory: the fields the model code
//! reads, in one struct for every family (each family reads and writes its
//! own names, see [`crate::models`]).

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

text_enum! {
    /// The model families we run (`config.json`'s `model_type`).
    pub enum Arch {
        Gpt2 = "gpt2",
        Llama = "llama",
        Qwen2 = "qwen2",
        Qwen3 = "qwen3",
        Mistral = "mistral",
        Phi3 = "phi3",
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

/// The special token ids every family's `config.json` may name.
pub struct SpecialIds {
    pub bos: Option<i64>,
    pub eos: Vec<i64>,
    pub pad: Option<i64>,
}

pub(crate) fn uint(v: &serde_json::Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

pub(crate) fn ids(v: &serde_json::Value) -> Vec<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().into_iter().collect(),
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => Vec::new(),
    }
}

/// What is wrong with a `config.json`.
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

    #[test]
    fn llama_style_families_read_their_own_keys() {
        let base = json!({"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "max_position_embeddings": 32768});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            HfConfig::from_json(&v)
        };
        // Mistral v0.1 and Phi-3-mini: the context stays within the window.
        let m = with(json!({"model_type": "mistral", "sliding_window": 4096})).unwrap();
        assert_eq!((m.arch, m.max_position_embeddings), (Arch::Mistral, 4096));
        let m = with(json!({"model_type": "mistral", "sliding_window": null})).unwrap();
        assert_eq!(m.max_position_embeddings, 32768);
        let p = with(json!({"model_type": "phi3", "sliding_window": 2047})).unwrap();
        assert_eq!(p.max_position_embeddings, 2047);
        let q = with(json!({"model_type": "qwen3", "head_dim": 128})).unwrap();
        assert_eq!((q.arch, q.head_dim), (Arch::Qwen3, 128));
        // What lorastream does not do is refused by name.
        let e = with(json!({"model_type": "qwen2", "use_sliding_window": true})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("use_sliding_window")));
        let e = with(json!({"model_type": "phi3", "partial_rotary_factor": 0.75})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("partial_rotary_factor")));
        let e = with(json!({"model_type": "phi3", "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("longrope")));
    }
}
