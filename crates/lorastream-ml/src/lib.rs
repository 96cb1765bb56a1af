//! The model layer on libtorch (tch): Hugging Face checkpoints of GPT-2 and
//! Llama-family models, LoRA with PEFT's file format (applied unmerged, as
//! PEFT does), tokenizers with chat templates, generation with a KV cache
//! ([`generate`], [`sampling`]), ragged batches of sequences with their own
//! caches and adapters ([`pass`]), CPU thread budgets shared by serving and
//! learning ([`threads`]), GGUF import, and tiny random models for tests.

pub mod attention;
pub mod data;
pub mod device;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod hf_config;
pub mod hub;
pub mod init;
pub mod kv_pool;
pub mod load;
pub mod lora;
pub mod loss;
pub mod model;
pub mod models;
pub mod pass;
pub mod perplexity;
pub mod rng;
pub mod rope;
pub mod sampling;
pub mod source;
pub mod threads;
pub mod tokenizer;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};

pub use device::DType;
pub use hf_config::HfConfig;
pub use lora::LoraSpec;
pub use model::{CausalLm, KvCache};
pub use models::Arch;
pub use pass::{Adapter, Segment};
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
    #[error("{}: model_type {model_type:?} is not supported (gpt2 and llama are)", path.display())]
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
    Device(#[from] device::DeviceError),
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
