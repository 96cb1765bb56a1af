//! Models from the Hugging Face Hub with the `hf-hub` crate: files go to the
//! standard cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), so a
//! model the user already has is used without a request, and
//! `HF_HUB_OFFLINE=1` reads the cache only. Downloads log their progress.

use std::path::PathBuf;
use std::time::Instant;

use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub:{repo}: {file} is not in the cache ({cache}) and HF_HUB_OFFLINE is set")]
    NotCached {
        repo: String,
        file: &'static str,
        cache: String,
    },
    #[error("hub:{repo}: {file}: {msg}")]
    Download {
        repo: String,
        file: String,
        msg: String,
    },
}

/// Required files; the weights are `model.safetensors` or an index with shards.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
/// Fetched when the repository has them.
const OPTIONAL: [&str; 4] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// Logs a download every 10% (structured lines, not a bar: this runs in the daemon).
struct LogProgress {
    file: String,
    total: usize,
    done: usize,
    next_pct: usize,
    started: Instant,
}

impl Progress for LogProgress {
    fn init(&mut self, size: usize, filename: &str) {
        self.total = size;
        self.file = filename.to_string();
        tracing::info!(
            file = filename,
            bytes = size,
            "downloading from the Hugging Face Hub"
        );
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        let pct = self.done * 100 / self.total.max(1);
        if pct >= self.next_pct && pct < 100 {
            let mb_s = self.done as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(file = %self.file, pct, mb_s = format!("{mb_s:.1}"), "download progress");
            self.next_pct = pct / 10 * 10 + 10;
        }
    }

    fn finish(&mut self) {
        tracing::info!(file = %self.file, secs = self.started.elapsed().as_secs(), "downloaded");
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The local snapshot directory of `repo` at `revision` (default `main`),
/// downloading what the cache lacks.
pub fn snapshot(repo_id: &str, revision: Option<&str>) -> Result<PathBuf, HubError> {
    let repo = Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let err = |file: &str, msg: String| HubError::Download {
        repo: repo_id.to_string(),
        file: file.to_string(),
        msg,
    };
    let cache = Cache::from_env();
    let cached = cache.repo(repo.clone());
    if offline() {
        for file in REQUIRED {
            if cached.get(file).is_none() {
                return Err(HubError::NotCached {
                    repo: repo_id.to_string(),
                    file,
                    cache: cache.path().display().to_string(),
                });
            }
        }
        let config = cached.get("config.json").expect("checked");
        return Ok(config.parent().map(PathBuf::from).unwrap_or_default());
    }
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .with_retries(2)
        .build()
        .map_err(|e| err("(client)", e.to_string()))?;
    let api = api.repo(repo);
    // The cache first (as `ApiRepo::get` does), then a download that logs progress.
    let get = |file: &str| -> Result<PathBuf, HubError> {
        if let Some(p) = cached.get(file) {
            return Ok(p);
        }
        let progress = LogProgress {
            file: file.to_string(),
            total: 0,
            done: 0,
            next_pct: 10,
            started: Instant::now(),
        };
        api.download_with_progress(file, progress)
            .map_err(|e| err(file, e.to_string()))
    };
    let config = get(REQUIRED[0])?;
    get(REQUIRED[1])?;
    for file in OPTIONAL {
        if let Err(e) = get(file) {
            tracing::debug!(file, error = %e, "optional model file not fetched");
        }
    }
    if get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index).map_err(|e| err("index", e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err("index", e.to_string()))?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for shard in &shards {
            get(shard)?;
        }
    }
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}
