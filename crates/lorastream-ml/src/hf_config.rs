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
        Gemma = "gemma",
        Gemma2 = "gemma2",
        Gemma3 = "gemma3_text",
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
    /// LongRoPE (Phi-3.5, Phi-3 128k): per-frequency divisors within the
    /// original context, and beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
    /// LongRoPE's scale of cos and sin (None: from `factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
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
    /// Attention and head settings some families add (the defaults elsewhere).
    #[serde(default)]
    pub extras: Extras,
}

text_enum! {
    /// The gate's activation in a gated MLP (`hidden_act`, Gemma's
    /// `hidden_activation`).
    #[derive(Default)]
    pub enum Activation {
        #[default]
        Silu = "silu",
        /// GELU with the tanh approximation (transformers' `gelu_pytorch_tanh`).
        GeluTanh = "gelu_pytorch_tanh",
        Gelu = "gelu",
    }
}

impl Activation {
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Gelu => x.gelu("none"),
        }
    }
}

/// Attention and head settings beyond a plain causal decoder, each off by
/// default: only the families that have them set them (Gemma's scale, caps and
/// activation; the sliding windows of Mistral, Phi-3, Qwen and Gemma).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Extras {
    /// Multiplies q·kᵀ (None: 1/√head_dim); Gemma: `query_pre_attn_scalar`^-½.
    pub attn_scale: Option<f64>,
    /// Attention scores pass `cap · tanh(s / cap)` (`attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// Logits pass `cap · tanh(z / cap)` (`final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// How many positions back a sliding layer sees, itself included.
    pub sliding_window: Option<usize>,
    /// Per layer, whether it attends within `sliding_window` (`layer_types`).
    pub sliding_layers: Vec<bool>,
    /// Rotary theta of the sliding layers, without scaling (Gemma 3's
    /// `rope_local_base_freq`; None: they use the global rotary embedding).
    pub local_rope_theta: Option<f64>,
    /// The gated MLP's activation.
    pub activation: Activation,
    /// Leading dimensions of each head that rotate (`head_dim` ×
    /// `partial_rotary_factor`, Phi-4-mini); None: all of them.
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// The text model of a multimodal checkpoint (Gemma 3 4B and up,
    /// `model_type` `gemma3`): its weights and PEFT's module names are under
    /// `model.language_model.` (older checkpoints: `language_model.model.`);
    /// the vision tower is not read.
    #[serde(default)]
    pub multimodal: bool,
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
        // Mistral v0.1 and Phi-3-mini: every layer slides; the context is the model's.
        let m = with(json!({"model_type": "mistral", "sliding_window": 4096})).unwrap();
        assert_eq!((m.arch, m.max_position_embeddings), (Arch::Mistral, 32768));
        assert_eq!(m.extras.sliding_window, Some(4096));
        assert_eq!(m.extras.sliding_layers, vec![true, true]);
        let m = with(json!({"model_type": "mistral", "sliding_window": null})).unwrap();
        assert_eq!(m.extras.sliding_window, None);
        let p = with(json!({"model_type": "phi3", "sliding_window": 2047})).unwrap();
        assert_eq!(p.extras.sliding_window, Some(2047));
        let q = with(json!({"model_type": "qwen3", "head_dim": 128})).unwrap();
        assert_eq!((q.arch, q.head_dim), (Arch::Qwen3, 128));
        // Qwen's switch: the layers from max_window_layers on slide.
        let q = with(json!({"model_type": "qwen2", "use_sliding_window": true,
            "sliding_window": 64, "max_window_layers": 1}))
        .unwrap();
        assert_eq!(q.extras.sliding_layers, vec![false, true]);
        let q = with(json!({"model_type": "qwen2", "sliding_window": 64})).unwrap();
        assert_eq!(q.extras.sliding_window, None);
        // Gemma: tied head, GELU(tanh), Gemma 2's caps and alternate layers,
        // Gemma 3's one global layer in six.
        let g = with(json!({"model_type": "gemma2"})).unwrap();
        assert!(g.tie_word_embeddings);
        assert_eq!(g.extras.activation, Activation::GeluTanh);
        assert_eq!(
            (g.extras.attn_softcap, g.extras.final_softcap),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(
            (g.extras.sliding_window, g.extras.attn_scale),
            (Some(4096), Some(1.0 / 16.0))
        );
        assert_eq!(g.extras.sliding_layers, vec![true, false]);
        let g =
            with(json!({"model_type": "gemma3_text", "final_logit_softcapping": null})).unwrap();
        assert_eq!(
            (g.extras.final_softcap, g.extras.local_rope_theta),
            (None, Some(10000.0))
        );
        assert_eq!(g.extras.sliding_layers, vec![true, true]);
        let back = HfConfig::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
        let e =
            with(json!({"model_type": "gemma2", "layer_types": ["full_attention"]})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("layer_types has 1")));
        let e = HfConfig::from_json(&json!({"model_type": "gemma3"})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Missing("text_config")));
        let e = with(json!({"model_type": "gemma3_text", "use_bidirectional_attention": true}))
            .unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("bidirectional")));
        let e = with(json!({"model_type": "gemma2", "attn_logit_softcapping": -1})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("attn_logit_softcapping")));
        let e = with(json!({"model_type": "gemma", "hidden_act": "relu"})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("relu")));
        // Phi-4-mini: the leading 3/4 of each head rotate.
        let p = with(json!({"model_type": "phi3", "partial_rotary_factor": 0.75})).unwrap();
        assert_eq!((p.head_dim, p.extras.rotary_dim), (16, Some(12)));
        assert_eq!(crate::nn::rope::rope_inv_freq(&p).len(), 6);
        assert_eq!(HfConfig::from_json(&p.to_json()).unwrap(), p);
        for bad in [json!(0.1), json!(1.5), json!(-1), json!("half")] {
            let e = with(json!({"model_type": "phi3", "partial_rotary_factor": bad})).unwrap_err();
            assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("partial_rotary_factor")));
        }
        // Phi-3.5's LongRoPE: within the original context, cos/sin scaled.
        let p = with(
            json!({"model_type": "phi3", "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]}}),
        );
        let p = p.unwrap();
        assert_eq!(p.max_position_embeddings, 4096);
        assert_eq!(p.rope_scaling.as_ref().unwrap().factor, Some(8.0));
        let scale = crate::nn::rope::rope_attention_factor(&p);
        assert!((scale - (1.0 + 8f64.ln() / 4096f64.ln()).sqrt()).abs() < 1e-12);
        assert_eq!(HfConfig::from_json(&p.to_json()).unwrap(), p);
        let e = with(json!({"model_type": "phi3", "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("short_factor must be 8")));
        let e =
            with(json!({"model_type": "llama", "rope_scaling": {"type": "longrope"}})).unwrap_err();
        assert!(matches!(e, ConfigProblem::Invalid(m) if m.contains("longrope")));
    }

    /// The shape of google/gemma-3-4b-it's `config.json`: the text model
    /// names only what differs from transformers' defaults.
    #[test]
    fn a_multimodal_gemma3_config_is_read_as_its_text_model() {
        let v = json!({"architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3", "eos_token_id": [1, 106], "image_token_index": 262144,
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_hidden_layers": 34,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152}});
        let c = HfConfig::from_json(&v).unwrap();
        assert_eq!(c.arch, Arch::Gemma3);
        assert!(c.extras.multimodal && c.tie_word_embeddings);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (2560, 34, 8, 4, 256)
        );
        assert_eq!(
            (c.vocab_size, c.eos_token_ids.clone()),
            (262_208, vec![1, 106])
        );
        assert_eq!(c.extras.attn_scale, Some(1.0 / 16.0));
        assert_eq!(c.extras.sliding_window, Some(1024));
        assert_eq!(c.extras.local_rope_theta, Some(10_000.0));
        let global: Vec<usize> = (0..34).filter(|i| !c.extras.sliding_layers[*i]).collect();
        assert_eq!(global, vec![5, 11, 17, 23, 29]);
        assert_eq!(c.rope_scaling.as_ref().unwrap().factor, Some(8.0));
        assert_eq!(
            c.peft_module("model.layers.0.mlp.up_proj"),
            "model.language_model.layers.0.mlp.up_proj"
        );
        // A text_config naming its own end token adds to the top level's.
        let mut v = v;
        v["text_config"]["eos_token_id"] = json!([2, 1]);
        let c = HfConfig::from_json(&v).unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 106, 2]);
    }
}
