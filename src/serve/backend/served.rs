//! The weights the worker serves from: one copy of the base model (or of the
//! merge snapshot the running versions share), never modified, and the LoRA
//! adapters of recent versions beside it, applied per row at run time.
//!
//! A LoRA delta is never added into the base weights: in bf16 (the base's
//! dtype on CUDA and on CPUs with native bf16) the sum loses the delta's low
//! bits and subtracting it at the next swap does not give the base back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::learn::lineage;
use crate::learn::spec::model_spec;
use crate::serve::backend::jobs::{EngineError, ModelInfo, VersionRef};
use lorastream_ml::load::{LoadError, ModelSpec, load_tokenizer, load_weights};
use lorastream_ml::{Adapter, CausalLm, ChatTokenizer};

/// Adapters kept loaded beside the base (the least recently used go first).
const ADAPTERS_KEPT: usize = 8;

pub(super) struct Served {
    pub model: CausalLm,
    pub tok: Arc<ChatTokenizer>,
    /// How the weights load (the serving dtype).
    spec: ModelSpec,
    /// The model directory `[model]` resolves to.
    source_base: PathBuf,
    decode_bf16: bool,
    /// The model directory the weights came from (base or snapshot).
    pub base: PathBuf,
    /// Loaded adapters by version id, with when each was last asked for.
    adapters: HashMap<i64, (Rc<Adapter>, u64)>,
    clock: u64,
}

fn no_model(e: LoadError) -> EngineError {
    EngineError::NoModel(e.to_string())
}

impl Served {
    /// The base model as `[model]` names it.
    pub fn load(config: &Config) -> Result<Served, EngineError> {
        let configured = model_spec(config);
        let base = lorastream_ml::load::source::model_dir(&configured.base)
            .map_err(|e| no_model(LoadError::Source(e)))?;
        // The weights in the serving dtype, from the directory the configured
        // source resolved to (a GGUF source is imported once, as configured).
        let mut spec = configured.clone();
        let device = lorastream_ml::runtime::device::resolve(&spec.base.device)
            .map_err(|e| EngineError::NoModel(e.to_string()))?;
        spec.base.dtype = lorastream_ml::runtime::device::serving_dtype(
            device,
            spec.base.dtype,
            config.server.decode_bf16,
        );
        let tok = load_tokenizer(&configured).map_err(no_model)?;
        let model = load_weights(&spec, &base).map_err(no_model)?;
        let mut s = Served {
            model,
            tok: Arc::new(tok),
            source_base: base.clone(),
            spec,
            decode_bf16: config.server.decode_bf16,
            base,
            adapters: HashMap::new(),
            clock: 0,
        };
        s.set_decode_kind();
        s.warm_up();
        Ok(s)
    }

    /// One token through the model, so that the first request does not pay
    /// for libtorch's first calls (kernel selection, thread pools).
    fn warm_up(&self) {
        let dev = self.model.device;
        let ids = tch::Tensor::from_slice(&[0i64]).unsqueeze(0).to_device(dev);
        let mut cache = self.model.new_cache();
        let seg = lorastream_ml::Segment {
            len: 1,
            cache: &mut cache,
            adapter: None,
        };
        let h = self.model.forward_segments(&ids, &ids, vec![seg], None);
        let _ = self.model.head_rows(&h).argmax(-1, false);
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            tok: Arc::clone(&self.tok),
            config: self.model.config.clone(),
        }
    }

    /// The model directory `v` runs on.
    pub fn base_of(&self, v: &VersionRef) -> PathBuf {
        v.base.clone().unwrap_or_else(|| self.source_base.clone())
    }

    /// Loads the weights of another base (only while nothing runs on these).
    pub fn switch_base(&mut self, base: PathBuf) -> Result<(), EngineError> {
        self.model = load_weights(&self.spec, &base).map_err(no_model)?;
        self.base = base;
        self.adapters.clear();
        self.set_decode_kind();
        tracing::info!(base = %self.base.display(), "serving base loaded");
        Ok(())
    }

    /// The adapter `v` adds to the base (None: the base itself).
    pub fn adapter(&mut self, v: &VersionRef) -> Result<Option<Rc<Adapter>>, EngineError> {
        let Some(row) = &v.adapter else {
            return Ok(None);
        };
        let Some(dir) = lineage::adapter_path(row) else {
            return Ok(None); // a merge snapshot: its weights are the base
        };
        self.clock += 1;
        if let Some((a, used)) = self.adapters.get_mut(&row.id) {
            *used = self.clock;
            return Ok(Some(Rc::clone(a)));
        }
        let a = Rc::new(
            self.model
                .read_adapter(dir)
                .map_err(|e| EngineError::NoModel(format!("{}: {e}", v.label)))?,
        );
        if self.adapters.len() >= ADAPTERS_KEPT {
            // Sequences running on an evicted adapter keep their own reference.
            if let Some(old) = self
                .adapters
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                self.adapters.remove(&old);
            }
        }
        self.adapters.insert(row.id, (Rc::clone(&a), self.clock));
        tracing::info!(version = %v.label, "serving version loaded");
        Ok(Some(a))
    }

    /// bf16 copies for decoding steps where `[server] decode_bf16` asks and they help.
    fn set_decode_kind(&mut self) {
        let m = &mut self.model;
        m.set_decode_kind(lorastream_ml::runtime::device::decode_kind(
            m.device,
            m.kind,
            self.decode_bf16,
        ));
    }
}
