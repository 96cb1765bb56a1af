//! `[[publish]]`: where every promoted version goes besides the daemon's own
//! server. Each target has a name and a kind: `dir` writes PEFT adapter
//! directories (what vLLM's filesystem resolver, LoRAX and PEFT read), `gguf`
//! llama.cpp LoRA files, `vllm` loads them into a fleet of vLLM servers,
//! `hf_hub` pushes them to a Hugging Face Hub repository.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

text_enum! {
    /// What a publish target is.
    pub enum PublishKind {
        /// `DIR/lorastream-vN/` in PEFT layout with a model card, and a
        /// `current` link to the served version.
        Dir = "dir",
        /// `DIR/lorastream-vN.gguf`, llama.cpp's LoRA adapter format, and a
        /// `current.gguf` link.
        Gguf = "gguf",
        /// vLLM servers, each told to load the versions (runtime LoRA).
        Vllm = "vllm",
        /// A Hugging Face Hub model repository: a commit per version, tagged.
        HfHub = "hf_hub",
    }
}

impl PublishKind {
    /// Whether publishing talks to other machines (retried with backoff, in
    /// the background) rather than writing local files.
    pub fn is_remote(self) -> bool {
        matches!(self, PublishKind::Vllm | PublishKind::HfHub)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    pub name: String,
    pub kind: PublishKind,
    /// Where `dir` and `gguf` targets write.
    pub dir: Option<PathBuf>,
    /// `base_model_name_or_path` in the published `adapter_config.json`: the
    /// base as the fleet knows it (default: the `[model] source`'s hub id,
    /// else its directory).
    pub base_model: Option<String>,
    /// Published versions kept (the newest; never the served one); 0 = all.
    /// Default: 2 for `vllm` (each loaded adapter takes a slot of
    /// `--max-loras`), all for the others.
    pub keep: Option<usize>,
    /// `vllm`: the servers' base URLs (`http://vllm-1:8000`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// `vllm`: where the servers see the `dir` target's directory (default:
    /// that directory's own path, for a fleet on the same file system).
    pub lora_path_prefix: Option<String>,
    /// `vllm`: the servers' API key (`--api-key`), from a file or a variable.
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    /// `hf_hub`: the repository (`owner/name`), created if missing.
    pub repo: Option<String>,
    /// `hf_hub`: whether a repository it creates is private (default true).
    pub private: Option<bool>,
    /// `hf_hub`: a write token, from a file or a variable (never logged).
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// `hf_hub`: the Hub's address (default `$HF_ENDPOINT`, else
    /// `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Remote targets: seconds between reconciliations (a server that
    /// restarted, or was changed by hand, converges within this).
    #[serde(default = "default_reconcile_secs")]
    pub reconcile_secs: u64,
    /// Remote targets: seconds one request may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_reconcile_secs() -> u64 {
    60
}

fn default_timeout_secs() -> u64 {
    60
}

impl PublishConfig {
    /// A target of `kind` named `name`, every other key unset.
    pub fn new(name: &str, kind: PublishKind) -> PublishConfig {
        PublishConfig {
            name: name.into(),
            kind,
            dir: None,
            base_model: None,
            keep: None,
            urls: Vec::new(),
            lora_path_prefix: None,
            key_file: None,
            key_env: None,
            repo: None,
            private: None,
            token_file: None,
            token_env: None,
            endpoint: None,
            reconcile_secs: default_reconcile_secs(),
            timeout_secs: default_timeout_secs(),
        }
    }

    /// Versions kept (0 = all), with the kind's default.
    pub fn keep(&self) -> usize {
        self.keep.unwrap_or(match self.kind {
            PublishKind::Vllm => 2,
            _ => 0,
        })
    }

    /// The keys only some kinds read, with the kinds that read them.
    pub fn kind_keys(&self) -> Vec<(&'static str, bool, &'static [PublishKind])> {
        use PublishKind::*;
        vec![
            ("dir", self.dir.is_some(), &[Dir, Gguf]),
            ("urls", !self.urls.is_empty(), &[Vllm]),
            ("lora_path_prefix", self.lora_path_prefix.is_some(), &[Vllm]),
            ("key_file", self.key_file.is_some(), &[Vllm]),
            ("key_env", self.key_env.is_some(), &[Vllm]),
            ("repo", self.repo.is_some(), &[HfHub]),
            ("private", self.private.is_some(), &[HfHub]),
            ("token_file", self.token_file.is_some(), &[HfHub]),
            ("token_env", self.token_env.is_some(), &[HfHub]),
            ("endpoint", self.endpoint.is_some(), &[HfHub]),
        ]
    }
}
