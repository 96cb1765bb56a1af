//! The model families, registered in one place.
//!
//! Each family is one file that mirrors its checkpoint's names (candle's
//! layout): the layers and their `load`, the forward pass, how its
//! `config.json` reads and writes, its LoRA target names as PEFT spells
//! them, and how `model init` makes a tiny random one. This file lists the
//! families: adding one is its model file, one variant and one arm here,
//! and its parity test (`tests/it/parity.rs`). The Llama-architecture
//! families (Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 1/2/3) share
//! [`decoder`] and differ by its [`decoder::Layout`] and their `config.json`.

/// The registration of a Llama-architecture family: `llama_family!(arch,
/// layout, targets, read_config, write_config[, tiny_config])` is its
/// [`Family`], loading [`Decoder`] with `layout`, and `model init` making a
/// tiny random one (Llama's config unless `tiny_config` is given) with
/// Llama's tokenizer recipe.
macro_rules! llama_family {
    ($arch:expr, $layout:expr, $targets:expr, $read:expr, $write:expr) => {
        llama_family!($arch, $layout, $targets, $read, $write, |v, w, l, id| {
            $crate::models::llama::tiny_as($arch, v, w, l, id)
        })
    };
    ($arch:expr, $layout:expr, $targets:expr, $read:expr, $write:expr, $tiny:expr) => {
        $crate::models::Family {
            lora: $targets,
            read_config: $read,
            write_config: $write,
            load: |cfg, ws| {
                Ok(Box::new($crate::models::decoder::Decoder::load(
                    cfg, ws, $layout,
                )?))
            },
            init: $crate::models::Init {
                special_tokens: $crate::models::llama::SPECIAL_TOKENS,
                config: $tiny,
                tokenizer_config: $crate::models::llama::tokenizer_config,
                tensors: |cfg| $crate::models::decoder::tensors(cfg, $layout),
            },
        }
    };
}

pub mod decoder;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod init;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::MlError;
pub use crate::hf_config::Arch;
use crate::hf_config::{ConfigProblem, HfConfig, SpecialIds, ids};
use crate::load::weights::Weights;
use crate::nn::fused::tensor_bytes;
use crate::nn::lora::{Linear, LoraTargets};
use crate::nn::pass::Pass;

impl Arch {
    /// What the family's model file says about it.
    pub fn family(self) -> &'static Family {
        match self {
            Arch::Gpt2 => &gpt2::FAMILY,
            Arch::Llama => &llama::FAMILY,
            Arch::Qwen2 => &qwen2::FAMILY,
            Arch::Qwen3 => &qwen3::FAMILY,
            Arch::Mistral => &mistral::FAMILY,
            Arch::Phi3 => &phi3::FAMILY,
            Arch::Gemma => &gemma::FAMILY,
            Arch::Gemma2 => &gemma2::FAMILY,
            Arch::Gemma3 => &gemma3::FAMILY,
        }
    }

    /// PEFT module names LoRA may target in this architecture.
    pub fn lora_modules(self) -> &'static [&'static str] {
        self.family().lora.all
    }
}

/// `config.json`, read and written by the family it names.
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
        if model_type == "gemma3" {
            let mut c = Self::from_json(&gemma3::text_config(v)?)?;
            c.extras.multimodal = true;
            return Ok(c);
        }
        let arch: Arch = model_type
            .parse()
            .map_err(|_| ConfigProblem::Unsupported(model_type.to_string()))?;
        let tokens = SpecialIds {
            bos: v.get("bos_token_id").and_then(|x| x.as_i64()),
            eos: ids(v.get("eos_token_id").unwrap_or(&serde_json::Value::Null)),
            pad: v.get("pad_token_id").and_then(|x| x.as_i64()),
        };
        let cfg = (arch.family().read_config)(v, tokens)?;
        if cfg.num_heads == 0 || cfg.num_kv_heads == 0 || cfg.num_heads % cfg.num_kv_heads != 0 {
            return Err(ConfigProblem::Invalid(format!(
                "{} heads and {} key/value heads do not divide hidden size {}",
                cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size
            )));
        }
        Ok(cfg)
    }

    /// `config.json` in transformers' format, for `model init` and merged exports.
    pub fn to_json(&self) -> serde_json::Value {
        let eos = match self.eos_token_ids.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        (self.arch.family().write_config)(self, eos)
    }

    /// The module `path` (as the text model names it: `model.layers.…`) as
    /// PEFT names it on this checkpoint: under `model.language_model.` for
    /// the text model of a multimodal one.
    pub fn peft_module(&self, path: &str) -> String {
        match path.strip_prefix("model.") {
            Some(rest) if self.extras.multimodal => format!("model.language_model.{rest}"),
            _ => path.to_string(),
        }
    }
}

/// Loads a family's layers from the checkpoint's tensors.
pub type LoadFn = fn(&HfConfig, &mut Weights) -> Result<Box<dyn Backbone>, MlError>;
/// The config of a tiny model: (vocab, width, layers, a special token's id).
pub type TinyConfigFn = fn(usize, usize, usize, &dyn Fn(&str) -> Option<i64>) -> HfConfig;
/// A tensor `model init` writes: (checkpoint name, shape, fill).
pub type TensorSpec = (String, Vec<i64>, Fill);

/// A model family as its file describes it.
pub struct Family {
    /// Where LoRA may attach.
    pub lora: LoraTargets,
    /// `config.json` in this family's names.
    pub read_config: fn(&serde_json::Value, SpecialIds) -> Result<HfConfig, ConfigProblem>,
    /// `config.json` for transformers (the EOS id or ids given).
    pub write_config: fn(&HfConfig, serde_json::Value) -> serde_json::Value,
    /// The weights in checkpoint names, taken from `ws`.
    pub load: LoadFn,
    /// How `model init` makes a tiny random model of the family.
    pub init: Init,
}

/// `model init`'s recipe for a family.
pub struct Init {
    /// Special tokens the trained tokenizer gets.
    pub special_tokens: &'static [&'static str],
    /// The config of a model `width` wide and `layers` deep over `vocab`
    /// tokens; `id` finds a special token's id.
    pub config: TinyConfigFn,
    /// `tokenizer_config.json`.
    pub tokenizer_config: fn(&HfConfig) -> serde_json::Value,
    /// The shapes of every tensor, in checkpoint names: (name, shape, fill).
    pub tensors: fn(&HfConfig) -> Vec<TensorSpec>,
}

/// How `model init` fills a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Normal(0, 0.02): matrices and embeddings.
    Normal,
    Ones,
    Zeros,
}

impl Fill {
    /// `shapes` filled, on the CPU in f32.
    pub fn all(shapes: Vec<TensorSpec>) -> HashMap<String, Tensor> {
        let opts = (Kind::Float, tch::Device::Cpu);
        shapes
            .into_iter()
            .map(|(name, shape, fill)| {
                let t = match fill {
                    Fill::Normal => Tensor::randn(&shape, opts) * 0.02,
                    Fill::Ones => Tensor::ones(&shape, opts),
                    Fill::Zeros => Tensor::zeros(&shape, opts),
                };
                (name, t)
            })
            .collect()
    }
}

/// The layers of a loaded model, behind [`crate::CausalLm`].
pub trait Backbone: Send {
    /// The checkpoint's linear layers (where LoRA attaches), in order.
    fn linears(&self) -> Vec<&Linear>;
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
    /// Base tensors in checkpoint names (for merged exports).
    fn named_tensors(&self) -> Vec<(String, &Tensor)>;
    /// Final hidden states `[b, t, hidden]` for `ids`, `positions` `[b, t]`;
    /// `pass` says which rows attend to what and which LoRA each uses.
    fn forward_hidden(&self, ids: &Tensor, positions: &Tensor, pass: &mut Pass) -> Tensor;
    /// The `[vocab, hidden]` LM head weight (the embedding when tied).
    fn head_weight(&self) -> &Tensor;
    /// The head's decode copy, where kept (see [`Backbone::set_decode_kind`]).
    fn head_decode(&self) -> Option<&Tensor> {
        None
    }
    /// Keeps (`Some(kind)`) or drops low-precision copies of the matrices
    /// for single-token steps; a family without them ignores it.
    fn set_decode_kind(&mut self, _kind: Option<Kind>) {}
    /// Bytes of the matrices one decoding step reads.
    fn decode_bytes(&self) -> i64 {
        self.linears()
            .iter()
            .map(|l| tensor_bytes(&l.weight))
            .sum::<i64>()
            + tensor_bytes(self.head_weight())
    }
}
