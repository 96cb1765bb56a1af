//! What the store wants published: every promoted LoRA version (newest
//! first), the served one, and the name the fleet knows the base by.

use super::PublishError;
use crate::config::{Config, PublishConfig};
use crate::learn::lineage;
use lorastream_ml::load::source::ModelSource;
use lorastream_store::{AdapterKind, AdapterRow, AdapterState, Store};

/// A snapshot of the store's versions, read once per run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every version (lineage for the model cards).
    pub all: Vec<AdapterRow>,
    /// The promoted LoRA versions, plus one asked for by hand; newest first.
    pub wanted: Vec<AdapterRow>,
    /// Promoted versions left out: adapters on a merge snapshot, which the
    /// fleet's base cannot take.
    pub on_snapshot: Vec<i64>,
    /// The served version, when it is a LoRA adapter (None: the base, or a
    /// merge snapshot, which no adapter target can hold).
    pub served: Option<AdapterRow>,
}

impl Plan {
    /// Reads the plan; with `version`, that version is published too
    /// (promoted or not), and must exist and be a LoRA adapter.
    pub fn read(store: &Store, version: Option<i64>) -> Result<Plan, PublishError> {
        let all = store.adapters()?;
        let on_base =
            |a: &AdapterRow| a.kind == AdapterKind::Lora && lineage::snapshot(&all, a).is_none();
        let served = store.served_adapter()?.filter(|a| on_base(a));
        let promoted = |a: &&AdapterRow| a.state == AdapterState::Promoted;
        let mut wanted: Vec<AdapterRow> = all
            .iter()
            .filter(promoted)
            .filter(|a| on_base(a))
            .cloned()
            .collect();
        let on_snapshot = all
            .iter()
            .filter(promoted)
            .filter(|a| a.kind == AdapterKind::Lora && !on_base(a))
            .map(|a| a.id)
            .collect();
        if let Some(id) = version {
            let v = all
                .iter()
                .find(|a| a.id == id)
                .ok_or(PublishError::NoVersion(id))?;
            if !on_base(v) {
                return Err(PublishError::NotLora(id));
            }
            if !wanted.iter().any(|a| a.id == id) {
                wanted.push(v.clone());
            }
        }
        wanted.sort_by_key(|a| std::cmp::Reverse(a.id));
        Ok(Plan {
            all,
            wanted,
            on_snapshot,
            served,
        })
    }

    /// The versions a target keeping `keep` holds (0 = all): the newest
    /// `keep`, and the served one whatever its age; newest first.
    pub fn kept(&self, keep: usize) -> Vec<&AdapterRow> {
        let served = self.served.as_ref().map(|s| s.id);
        self.wanted
            .iter()
            .enumerate()
            .filter(|(i, a)| keep == 0 || *i < keep || Some(a.id) == served)
            .map(|(_, a)| a)
            .collect()
    }

    pub fn served_id(&self) -> Option<i64> {
        self.served.as_ref().map(|s| s.id)
    }
}

/// `base_model_name_or_path` for target `t` (or the gateway): its
/// `base_model`, else the first target's that sets one (the fleet knows the
/// base by one name), else the `[model] source`'s hub id, else its directory.
pub fn base_model(config: &Config, t: Option<&PublishConfig>) -> String {
    let named = t.into_iter().chain(&config.publish);
    if let Some(b) = named.filter_map(|t| t.base_model.clone()).next() {
        return b;
    }
    match &config.model.source {
        ModelSource::Hub { repo, .. } => repo.clone(),
        ModelSource::Path(p) | ModelSource::Gguf(p) => p.display().to_string(),
    }
}
