//! Loading a model for work: the base a [`ModelSpec`] names (resolved
//! through [`crate::load::source`]) on its device, dtype and threads, with its
//! tokenizer; and putting one version's weights on a loaded model.

pub mod hub;
pub mod source;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::load::source::{BaseModel, ModelSourceError};
use crate::{CausalLm, ChatTokenizer, MlError};

/// How the base model is found and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Source, fallback, device and dtype.
    pub base: BaseModel,
    /// Intra-op threads for CPU tensor work; 0 = number of cores.
    pub threads: usize,
    /// A Jinja chat template file that overrides the model's own.
    pub chat_template: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("base model {} not found: set [model] source (hub:ORG/NAME, path:DIR or gguf:FILE)", .0.display())]
    NoModel(PathBuf),
    #[error("base model: {0}")]
    Source(#[from] ModelSourceError),
    #[error(transparent)]
    Ml(#[from] MlError),
}

/// The base model and its tokenizer, on the spec's device and dtype.
pub fn load_base(m: &ModelSpec) -> Result<(CausalLm, ChatTokenizer), LoadError> {
    let dir = crate::load::source::model_dir(&m.base)?;
    // The tokenizer parses on a second thread while the weights load (a
    // cold start's first token comes sooner by the tokenizer's ~0.1 s).
    let (model, tok) = std::thread::scope(|s| {
        let tok = s.spawn(|| load_tokenizer(m));
        let model = load_weights(m, &dir);
        let tok = tok
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (model, tok)
    });
    Ok((model?, tok?))
}

/// The base model's tokenizer, with the spec's chat template if it sets one.
pub fn load_tokenizer(m: &ModelSpec) -> Result<ChatTokenizer, LoadError> {
    let dir = crate::load::source::model_dir(&m.base)?;
    Ok(ChatTokenizer::load(&dir, m.chat_template.as_deref())?)
}

/// The model in `dir` (the base or a merge snapshot) on the spec's device and dtype.
pub fn load_weights(m: &ModelSpec, dir: &Path) -> Result<CausalLm, LoadError> {
    if !dir.join("config.json").exists() {
        return Err(LoadError::NoModel(dir.to_owned()));
    }
    let (device, kind) =
        crate::runtime::device::select(&m.base.device, m.base.dtype).map_err(MlError::from)?;
    crate::runtime::device::set_threads(m.threads);
    Ok(CausalLm::load(dir, device, kind)?)
}

/// Puts a version on `model`, which holds the weights of `loaded_base`:
/// reloads the weights when the version runs on another `base` (the base
/// model or a merge snapshot), then attaches its `adapter` (none: the base
/// or the snapshot itself).
pub fn switch_to(
    m: &ModelSpec,
    model: &mut CausalLm,
    loaded_base: &mut PathBuf,
    base: &Path,
    adapter: Option<&Path>,
) -> Result<(), LoadError> {
    if base != loaded_base.as_path() {
        *model = load_weights(m, base)?;
        *loaded_base = base.to_owned();
    }
    model.clear_lora();
    if let Some(a) = adapter {
        model.load_adapter(a)?;
    }
    Ok(())
}
