//! The versions the server can answer with: the base model, every promoted
//! adapter, and the served one (the newest promoted), as `/v1/models` lists
//! them and a request's `model` names them (`lorastream`, `lorastream@v3`,
//! `base`). A thread re-reads the store every second, so a promotion (by the
//! feedback loop or an operator in another process) reaches new requests
//! within seconds.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use crate::config::Config;
use crate::serve::backend::jobs::VersionRef;
use crate::serve::error::ApiError;
use lorastream_store::{AdapterRow, AdapterState, Store, StoreError};

/// What the store said at the last read.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    /// The served version (None: the base model serves).
    pub served: Option<AdapterRow>,
    pub promoted: Vec<AdapterRow>,
    all: Vec<AdapterRow>,
}

impl Versions {
    pub fn read(store: &Store) -> Result<Versions, StoreError> {
        let all = store.adapters()?;
        Ok(Versions {
            served: store.served_adapter()?,
            promoted: all
                .iter()
                .filter(|a| a.state == AdapterState::Promoted)
                .cloned()
                .collect(),
            all,
        })
    }

    /// The version `requested` names (`None`: the served one); `name` is
    /// `[server] model_name`.
    pub fn resolve(&self, requested: Option<&str>, name: &str) -> Result<VersionRef, ApiError> {
        let requested = requested.unwrap_or(name);
        if requested == "base" || requested == format!("{name}@base") {
            return Ok(self.base());
        }
        if requested == name {
            return Ok(match &self.served {
                Some(a) => self.adapter(name, a),
                None => self.base(),
            });
        }
        let version = requested
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix("@v"))
            .and_then(|v| v.parse::<i64>().ok());
        match version.and_then(|v| self.promoted.iter().find(|a| a.id == v)) {
            Some(a) => Ok(self.adapter(name, a)),
            // The caller's own words, bounded: they are echoed back.
            None => Err(ApiError::not_found(format!(
                "the model `{}` does not exist: GET /v1/models lists {}",
                requested.chars().take(100).collect::<String>(),
                self.ids(name).join(", ")
            ))
            .with_code("model_not_found")),
        }
    }

    fn base(&self) -> VersionRef {
        VersionRef {
            label: "base".into(),
            adapter: None,
            base: None,
        }
    }

    fn adapter(&self, name: &str, a: &AdapterRow) -> VersionRef {
        VersionRef {
            label: format!("{name}@v{}", a.id),
            adapter: Some(a.clone()),
            base: crate::learn::lineage::snapshot(&self.all, a).map(|m| m.path.clone()),
        }
    }

    /// Model ids, served first: `lorastream`, `lorastream@vN`…, `base`.
    pub fn ids(&self, name: &str) -> Vec<String> {
        let mut ids = vec![name.to_string()];
        ids.extend(self.promoted.iter().map(|a| format!("{name}@v{}", a.id)));
        ids.push("base".into());
        ids
    }

    /// Creation time (seconds) of a listed id.
    pub fn created(&self, id: &str, name: &str) -> i64 {
        let ms = match self.resolve(Some(id), name) {
            Ok(VersionRef {
                adapter: Some(a), ..
            }) => a.created_at,
            _ => 0,
        };
        ms / 1000
    }
}

/// The versions shared by the request handlers, refreshed in the background.
pub type Shared = Arc<RwLock<Arc<Versions>>>;

/// Reads the versions now and starts the thread that re-reads them every
/// second while `shared` is alive.
pub fn watch(config: &Config) -> Result<Shared, StoreError> {
    let store = config.open_store()?;
    let shared: Shared = Arc::new(RwLock::new(Arc::new(Versions::read(&store)?)));
    let weak: Weak<RwLock<Arc<Versions>>> = Arc::downgrade(&shared);
    let spawned = std::thread::Builder::new()
        .name("versions".into())
        .spawn(move || {
            let mut last_served = None;
            while let Some(shared) = weak.upgrade() {
                match Versions::read(&store) {
                    Ok(v) => {
                        let served = v.served.as_ref().map(|a| a.id);
                        // In place first, then said: whoever reads the log line
                        // and asks the server gets what the line reports.
                        *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                        if served != last_served {
                            tracing::info!(served = ?served, "served version");
                            last_served = served;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the served version"),
                }
                drop(shared);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch for promotions; the served version is read once");
    }
    Ok(shared)
}

/// The versions as last read.
pub fn current(shared: &Shared) -> Arc<Versions> {
    Arc::clone(&shared.read().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(id: i64, state: AdapterState) -> AdapterRow {
        AdapterRow {
            id,
            parent_id: None,
            stream_id: id,
            attempt: 1,
            kind: lorastream_store::AdapterKind::Lora,
            path: Default::default(),
            hyperparams: serde_json::json!({}),
            train_log: None,
            decision: None,
            state,
            promoted_seq: Some(id),
            created_at: id * 1000,
            updated_at: id * 1000,
        }
    }

    #[test]
    fn names_resolve_to_versions() {
        let a1 = adapter(1, AdapterState::Promoted);
        let a3 = adapter(3, AdapterState::Promoted);
        let v = Versions {
            served: Some(a3.clone()),
            promoted: vec![a1.clone(), a3.clone()],
            all: vec![a1, adapter(2, AdapterState::Rejected), a3],
        };
        let label = |name: Option<&str>| v.resolve(name, "lorastream").map(|r| r.label);
        assert_eq!(label(None).unwrap(), "lorastream@v3");
        assert_eq!(label(Some("lorastream")).unwrap(), "lorastream@v3");
        assert_eq!(label(Some("lorastream@v1")).unwrap(), "lorastream@v1");
        assert_eq!(label(Some("base")).unwrap(), "base");
        let e = label(Some("lorastream@v2")).unwrap_err();
        assert_eq!(e.status.as_u16(), 404, "a rejected version is not served");
        assert_eq!(
            label(Some("gpt-4")).unwrap_err().code,
            Some("model_not_found")
        );
        assert_eq!(
            v.ids("lorastream"),
            ["lorastream", "lorastream@v1", "lorastream@v3", "base"]
        );
        assert_eq!(v.created("lorastream@v1", "lorastream"), 1);
        let none = Versions::default();
        assert_eq!(none.resolve(None, "lorastream").unwrap().label, "base");
    }
}
