//! `[[publish]]`: where every promoted version goes besides the daemon's own
//! server. Each target has a name and a kind; `dir` writes PEFT adapter
//! directories that vLLM's filesystem resolver, LoRAX and PEFT read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

text_enum! {
    /// What a publish target is.
    pub enum PublishKind {
        /// `DIR/lorastream-vN/` in PEFT layout with a model card, and a
        /// `current` link to the served version.
        Dir = "dir",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    pub name: String,
    pub kind: PublishKind,
    /// Where `dir` targets write.
    pub dir: Option<PathBuf>,
    /// `base_model_name_or_path` in the published `adapter_config.json`: the
    /// base as the fleet knows it (default: the `[model] source`'s hub id,
    /// else its directory).
    pub base_model: Option<String>,
    /// Published versions kept (the newest; never the served one); 0 = all.
    #[serde(default)]
    pub keep: usize,
}
