//! The TOML configuration: one struct per section, every key with a default,
//! unknown keys refused, and errors that name the file, the key and the line.
//!
//! `config/lorastream.toml` is the commented reference of every key; a test keeps
//! it complete. Relative paths are resolved against the directory of the config
//! file, so the meaning of a config does not depend on the daemon's working
//! directory.

//!
//! # Layout
//!
//! - this file: [`Config`], loading, path resolution, [`ConfigError`];
//! - `daemon`: `[daemon]`, `[store]`, `[schedule]`, `[retention]`;
//! - `server`: `[server]` and its `[[server.keys]]`;
//! - `publish`: `[[publish]]` targets;
//! - `source`: `[[sources]]` and the checks of one source;
//! - `data`: `[preprocess]`, `[streams]`, `[summarizer]`;
//! - `learning`: `[model]`, `[lora]`, `[train]`, `[eval]`, `[feedback]`;
//! - [`validate`]: the checks serde cannot express, one function per section;
//! - `locate`: key paths and their line and column in the file.

mod daemon;
mod data;
mod learning;
mod locate;
mod publish;
mod server;
mod source;
pub mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use daemon::{
    DaemonConfig, LogFormat, ON_NEW_STREAM, RetentionConfig, ScheduleConfig, StoreConfig,
};
pub use data::{PreprocessConfig, StreamsConfig, SummarizerBackend, SummarizerConfig};
pub use learning::{
    EvalConfig, FeedbackConfig, Inconclusive, LossOn, MergePolicy, ModelConfig, TrainConfig,
};
pub use locate::{KeyPath, LineCol, SpanIndex};
/// The dtype setting is the model layer's own type.
pub use lorastream_ml::DType;
pub use publish::{PublishConfig, PublishKind};
pub use server::{Backend, DEFAULT_IDENTITY, KeyConfig, KeyRole, OverflowPolicy, ServerConfig};
pub use source::{CrawlMode, FieldMap, SourceConfig, SourceKind, SpoolFormat};

/// Where the daemon keeps its state when neither the config nor systemd says.
const STATE_DIR_NAME: &str = "lorastream";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub store: StoreConfig,
    pub sources: Vec<SourceConfig>,
    pub preprocess: PreprocessConfig,
    pub streams: StreamsConfig,
    pub summarizer: SummarizerConfig,
    pub model: ModelConfig,
    pub lora: lorastream_ml::LoraSpec,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub feedback: FeedbackConfig,
    pub server: ServerConfig,
    /// `[[publish]]` targets.
    pub publish: Vec<PublishConfig>,
    pub schedule: ScheduleConfig,
    pub retention: RetentionConfig,
}

/// A config problem tied to a place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: KeyPath,
    pub line: Option<LineCol>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            Some(lc) => format!(
                "{}:{}:{}: `{}`: {}",
                path.display(),
                lc.line,
                lc.col,
                p.key,
                p.message
            ),
            None => format!("{}: `{}`: {}", path.display(), p.key, p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates `text`; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let index = SpanIndex::new(text);
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let key = offset
                .and_then(|o| index.path_at(o))
                .unwrap_or_else(KeyPath::root);
            vec![Problem {
                key,
                line: offset.map(|o| index.line_col(o)),
                message: e.message().trim().to_owned(),
            }]
        })?;
        config.resolve_paths(base);
        let mut problems: Vec<Problem> = validate::validate(&config)
            .into_iter()
            .map(|(key, message)| Problem {
                line: index.locate(&key),
                key,
                message,
            })
            .collect();
        problems.sort_by_key(|p| p.line.map(|l| (l.line, l.col)));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let abs_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                abs(p)
            }
        };
        abs_opt(&mut self.daemon.state_dir);
        abs_opt(&mut self.store.path);
        abs_opt(&mut self.summarizer.api_key_file);
        self.model.source.absolutize(base);
        abs_opt(&mut self.model.gguf_fallback);
        abs_opt(&mut self.model.chat_template);
        abs_opt(&mut self.eval.probe_set);
        abs_opt(&mut self.server.api_key_file);
        abs_opt(&mut self.server.backend_key_file);
        for t in &mut self.publish {
            abs_opt(&mut t.dir);
            abs_opt(&mut t.key_file);
            abs_opt(&mut t.token_file);
        }
        for s in &mut self.sources {
            abs_opt(&mut s.token_file);
            abs_opt(&mut s.dir);
        }
    }

    /// The effective state directory (see [`DaemonConfig::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.daemon.state_dir {
            return dir.clone();
        }
        default_state_dir(|k| std::env::var_os(k))
    }

    /// `[model]` resolved into what decides the base model's directory.
    pub fn base_model(&self) -> lorastream_ml::load::source::BaseModel {
        lorastream_ml::load::source::BaseModel {
            source: self.model.source.clone(),
            gguf_fallback: self.model.gguf_fallback.clone(),
            dtype: self.model.dtype,
            device: self.model.device.clone(),
            models_dir: self.state_dir().join("models"),
        }
    }

    /// Opens the store this config names (`[store] path`, `busy_timeout_ms`;
    /// the WAL truncated to `[retention] wal_max_bytes` after checkpoints).
    pub fn open_store(&self) -> Result<lorastream_store::Store, lorastream_store::StoreError> {
        lorastream_store::Store::open_tuned(
            &self.store_path(),
            std::time::Duration::from_millis(self.store.busy_timeout_ms),
            self.retention.wal_max_bytes,
        )
    }

    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir().join("lorastream.db"))
    }

    /// A one-line description for `config check` and the start-up log.
    pub fn summary(&self) -> String {
        let enabled = self.sources.iter().filter(|s| s.enabled).count();
        let kinds: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{}:{}", s.name, s.kind))
            .collect();
        format!(
            "{} sources ({} enabled{}{}), state_dir {}, model {}, lora r={} alpha={}, train lr={} epochs={}, train schedule {}, server {}",
            self.sources.len(),
            enabled,
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", "),
            self.state_dir().display(),
            self.model.source,
            self.lora.r,
            self.lora.alpha,
            self.train.lr,
            self.train.epochs_per_stream,
            self.schedule.train,
            if self.server.enabled {
                self.server.listen.as_str()
            } else {
                "disabled"
            },
        )
    }
}

/// `$STATE_DIRECTORY` (first entry), `$XDG_STATE_HOME/lorastream`,
/// `$HOME/.local/state/lorastream`, else `./state`.
fn default_state_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dirs) = env("STATE_DIRECTORY")
        && let Some(first) = dirs.to_string_lossy().split(':').find(|s| !s.is_empty())
    {
        return PathBuf::from(first);
    }
    if let Some(x) = env("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join(STATE_DIR_NAME);
    }
    if let Some(home) = env("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home)
            .join(".local/state")
            .join(STATE_DIR_NAME);
    }
    PathBuf::from("state")
}

#[cfg(test)]
mod tests;
