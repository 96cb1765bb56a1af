//! Where the base model comes from (`[model] source`, resolved by the config
//! into a [`BaseModel`]) and how it becomes a local Hugging Face directory:
//! - `hub:ORG/NAME[@revision]`: the Hugging Face Hub cache ([`crate::load::hub`]);
//! - `path:DIR`: a directory in Hugging Face layout;
//! - `gguf:FILE`: a llama.cpp file, imported once into `<state_dir>/models/`.
//!
//! When the hub cannot be reached and nothing is cached, `[model] gguf_fallback`
//! is imported instead, with one log line saying so. A resolved directory is
//! remembered for the life of the process, so a download or import happens once.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use sha2::Digest;

use crate::{self as ml, DType, MlError};

/// The model the daemon learns with when the config names none.
pub const DEFAULT_SOURCE: &str = "hub:HuggingFaceTB/SmolLM2-135M-Instruct";
/// The file the set-up script installs as the offline fallback.
pub const FALLBACK_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSource {
    Hub {
        repo: String,
        revision: Option<String>,
    },
    Path(PathBuf),
    Gguf(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a model source: use hub:ORG/NAME[@revision], path:DIR or gguf:FILE")]
pub struct BadSource(pub String);

impl FromStr for ModelSource {
    type Err = BadSource;

    fn from_str(s: &str) -> Result<Self, BadSource> {
        let bad = || BadSource(s.to_string());
        let (scheme, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.trim().is_empty() {
            return Err(bad());
        }
        match scheme {
            "hub" => {
                let (repo, revision) = match rest.split_once('@') {
                    Some((r, v)) if !v.is_empty() => (r, Some(v.to_string())),
                    Some(_) => return Err(bad()),
                    None => (rest, None),
                };
                let ok_part = |p: &str| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                };
                match repo.split_once('/') {
                    Some((org, name)) if ok_part(org) && ok_part(name) => Ok(ModelSource::Hub {
                        repo: repo.to_string(),
                        revision,
                    }),
                    _ => Err(bad()),
                }
            }
            "path" => Ok(ModelSource::Path(PathBuf::from(rest))),
            "gguf" => Ok(ModelSource::Gguf(PathBuf::from(rest))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Hub { repo, revision } => match revision {
                Some(r) => write!(f, "hub:{repo}@{r}"),
                None => write!(f, "hub:{repo}"),
            },
            ModelSource::Path(p) => write!(f, "path:{}", p.display()),
            ModelSource::Gguf(p) => write!(f, "gguf:{}", p.display()),
        }
    }
}

impl Default for ModelSource {
    fn default() -> Self {
        DEFAULT_SOURCE.parse().expect("the default source parses")
    }
}

impl TryFrom<String> for ModelSource {
    type Error = BadSource;
    fn try_from(s: String) -> Result<Self, BadSource> {
        s.parse()
    }
}

impl From<ModelSource> for String {
    fn from(s: ModelSource) -> String {
        s.to_string()
    }
}

impl ModelSource {
    /// Resolves relative paths against `base` (the config file's directory).
    pub fn absolutize(&mut self, base: &Path) {
        if let ModelSource::Path(p) | ModelSource::Gguf(p) = self
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }
}

/// The default `gguf_fallback`: `$XDG_CACHE_HOME/lorastream/models/` (else
/// `~/.cache/…`), where `scripts/setup-libtorch.sh` puts it.
pub fn default_fallback() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("lorastream/models").join(FALLBACK_FILE))
}

/// Everything that decides which local directory holds the base model.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModel {
    pub source: ModelSource,
    /// Imported when the hub cannot be reached and nothing is cached (None:
    /// [`default_fallback`]).
    pub gguf_fallback: Option<PathBuf>,
    /// The dtype GGUF files are imported in (`auto` resolved on `device`).
    pub dtype: DType,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Where GGUF files are imported (`<state_dir>/models`).
    pub models_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelSourceError {
    #[error(transparent)]
    Hub(#[from] ml::load::hub::HubError),
    #[error("{hub}; and the GGUF fallback {} does not exist (run scripts/setup-libtorch.sh, or set [model] gguf_fallback)", fallback.display())]
    NoFallback {
        hub: ml::load::hub::HubError,
        fallback: PathBuf,
    },
    #[error(transparent)]
    Import(#[from] MlError),
}

/// Source string → resolved directory, for this process.
static RESOLVED: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The resolved directory of `base` if it is already known (a
/// `path:` source, or one resolved earlier in this process); never downloads.
pub fn resolved(base: &BaseModel) -> Option<PathBuf> {
    if let ModelSource::Path(p) = &base.source {
        return Some(p.clone());
    }
    let memo = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    memo.as_ref()?.get(&memo_key(base)).cloned()
}

fn memo_key(base: &BaseModel) -> String {
    format!("{} {:?}", base.source, base.dtype)
}

/// The local Hugging Face directory of `base`: downloads or imports
/// it the first time. Serialized, so two callers never download the same file.
pub fn model_dir(base: &BaseModel) -> Result<PathBuf, ModelSourceError> {
    let mut memo = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    let key = memo_key(base);
    if let Some(dir) = memo.as_ref().and_then(|m| m.get(&key)) {
        return Ok(dir.clone());
    }
    let dir = resolve(base)?;
    memo.get_or_insert_with(HashMap::new)
        .insert(key, dir.clone());
    Ok(dir)
}

fn resolve(base: &BaseModel) -> Result<PathBuf, ModelSourceError> {
    let models = &base.models_dir;
    let kind = base
        .dtype
        .kind(ml::runtime::device::resolve(&base.device).unwrap_or(tch::Device::Cpu));
    match &base.source {
        ModelSource::Path(p) => Ok(p.clone()),
        ModelSource::Gguf(file) => Ok(imported(file, models, kind)?),
        ModelSource::Hub { repo, revision } => {
            match ml::load::hub::snapshot(repo, revision.as_deref()) {
                Ok(dir) => {
                    tracing::info!(source = %base.source, dir = %dir.display(), "model from the Hugging Face cache");
                    Ok(dir)
                }
                Err(hub) => {
                    let fallback = base
                        .gguf_fallback
                        .clone()
                        .or_else(default_fallback)
                        .unwrap_or_default();
                    if !fallback.is_file() {
                        return Err(ModelSourceError::NoFallback { hub, fallback });
                    }
                    tracing::warn!(source = %base.source, error = %hub, fallback = %fallback.display(), "the hub is unavailable and the model is not cached: using the GGUF fallback");
                    Ok(imported(&fallback, models, kind)?)
                }
            }
        }
    }
}

/// The directory `file` is imported into: named by its stem, the dtype, and a
/// hash of its canonical path, size and modification time, so a changed file
/// is imported again.
fn imported(file: &Path, models: &Path, kind: tch::Kind) -> Result<PathBuf, MlError> {
    let meta = std::fs::metadata(file).map_err(|e| MlError::io(file, e))?;
    let canon = std::fs::canonicalize(file).map_err(|e| MlError::io(file, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let hash = sha2::Sha256::digest(format!("{} {} {mtime}", canon.display(), meta.len()));
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let dir = models.join(format!(
        "{stem}-{}-{}",
        format!("{kind:?}").to_lowercase(),
        &hex::encode(hash)[..12]
    ));
    if !dir.join("config.json").exists() {
        let started = std::time::Instant::now();
        tracing::info!(file = %file.display(), dir = %dir.display(), "importing GGUF");
        ml::gguf::import::import(file, &dir, kind)?;
        tracing::info!(dir = %dir.display(), secs = format!("{:.1}", started.elapsed().as_secs_f64()), "GGUF imported");
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print() {
        for s in [
            "hub:HuggingFaceTB/SmolLM2-135M-Instruct",
            "hub:org/name@v1.0",
            "path:/models/x",
            "gguf:/m/a.gguf",
        ] {
            assert_eq!(s.parse::<ModelSource>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "hub:",
            "hub:noslash",
            "hub:a/b@",
            "hub:a/b c",
            "ftp:x",
            "path:",
        ] {
            assert!(bad.parse::<ModelSource>().is_err(), "{bad}");
        }
    }
}
