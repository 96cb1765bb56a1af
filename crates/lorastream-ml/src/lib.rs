//! The model layer on libtorch (tch): Hugging Face checkpoints of the GPT-2,
//! Llama, Qwen2/3, Mistral, Phi-3 and Gemma 1/2/3 families, LoRA with PEFT's
//! file format (applied unmerged, as PEFT does), tokenizers with chat
//! templates, generation with a KV cache, ragged batches of sequences with
//! their own caches and adapters, CPU thread budgets shared by serving and
//! learning, GGUF import, and tiny random models for tests.
//!
//! # Layout
//!
//! - [`model`]: [`CausalLm`], one decoder-only model of any family, its
//!   forward passes and KV cache; [`hf_config`]: `config.json` read into
//!   [`HfConfig`] and the [`Arch`] it names; [`tokenizer`]: tokenizers and
//!   chat templates;
//! - [`models`]: one file per family mirroring its checkpoint's names (the
//!   Llama-architecture ones over `models/decoder/`), and `init` (tiny
//!   random models);
//! - [`nn`]: the layers: attention (and its masks), rotary embeddings, LoRA
//!   linears, the fused projections, the KV pool, and the ragged batch pass
//!   of continuous batching;
//! - [`load`]: where a model comes from (hub, path, GGUF fallback: `source`,
//!   `hub`), its safetensors mapped (`weights`), loading and switching
//!   weights and adapters;
//! - [`generation`]: generation with stop tokens, sampling;
//! - [`train`]: a training run (plan, optimizer, checkpoints, early
//!   stopping), its loss, example batches, and perplexity;
//! - [`gguf`]: llama.cpp files read and imported;
//! - [`runtime`]: device and dtype, CPU thread budgets, the seeded RNG.

pub mod generation;
pub mod gguf;
pub mod hf_config;
pub mod load;
pub mod model;
pub mod models;
pub mod nn;
pub mod runtime;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

pub use hf_config::HfConfig;
pub use model::{CausalLm, KvCache};
pub use models::Arch;
pub use nn::lora::LoraSpec;
pub use nn::pass::{Adapter, Segment};
pub use runtime::device::DType;
pub use tokenizer::{ChatTokenizer, Message};

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: model_type {model_type:?} is not supported (see `hf_config::Arch` for the families read)", path.display())]
    UnsupportedModel { path: PathBuf, model_type: String },
    #[error("{}: tensor {name} is missing", path.display())]
    MissingTensor { name: String, path: PathBuf },
    #[error("{}: tensor {name} has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
        path: PathBuf,
    },
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Adapter { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Device(#[from] runtime::device::DeviceError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl MlError {
    pub fn io(path: &Path, source: std::io::Error) -> MlError {
        MlError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
