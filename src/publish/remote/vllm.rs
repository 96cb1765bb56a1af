//! A `vllm` target: every server of a fleet (started with `--enable-lora`
//! and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) brought in line with the
//! versions the target keeps. Per server: `GET /v1/models` says which
//! `lorastream-vN` adapters it has; each kept one it lacks is loaded
//! (`POST /v1/load_lora_adapter`, the `dir` target's `lorastream-vN/` as
//! the server sees it under `lora_path_prefix`), oldest first; then each it
//! has beyond them is unloaded (`POST /v1/unload_lora_adapter`). A version
//! is never reloaded under its own name (vLLM's prefix cache would serve
//! the old one): every version has a name of its own. Servers are
//! reconciled concurrently; one that fails does not stop the others, and
//! the run is an error naming it, retried by the caller.

use std::collections::BTreeSet;

use serde_json::json;

use super::{authed, send, shown};
use crate::config::PublishConfig;
use crate::publish::{Plan, PublishError, RemoteError, TargetState, published_name, version_of};

/// How to reach the fleet.
pub struct Fleet<'a> {
    pub client: &'a reqwest::Client,
    /// `Authorization: Bearer` for every server (their `--api-key`).
    pub key: Option<&'a str>,
    /// Where the servers see the `dir` target's directory.
    pub prefix: &'a str,
}

/// What one server did.
#[derive(Debug, Default)]
struct Changes {
    loaded: Vec<i64>,
    unloaded: Vec<i64>,
}

/// Reconciles every server of `t` with the versions it keeps.
pub async fn reconcile(
    t: &PublishConfig,
    plan: &Plan,
    fleet: &Fleet<'_>,
) -> Result<TargetState, PublishError> {
    let mut kept: Vec<i64> = plan.kept(t.keep()).iter().map(|a| a.id).collect();
    kept.sort_unstable();
    let runs = t.urls.iter().map(|url| server(url, &kept, fleet));
    let results = futures_util::future::join_all(runs).await;
    let (mut written, mut removed) = (BTreeSet::new(), BTreeSet::new());
    let mut errors = Vec::new();
    for (url, r) in t.urls.iter().zip(results) {
        match r {
            Ok(c) => {
                if !c.loaded.is_empty() || !c.unloaded.is_empty() {
                    tracing::info!(target = %t.name, server = %url, loaded = ?c.loaded, unloaded = ?c.unloaded, "vLLM server reconciled");
                }
                written.extend(c.loaded);
                removed.extend(c.unloaded);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(PublishError::Servers {
            failed: errors.len(),
            total: t.urls.len(),
            errors: errors.join("; "),
        });
    }
    Ok(TargetState {
        target: t.name.clone(),
        written: written.into_iter().collect(),
        removed: removed.into_iter().collect(),
        held: kept,
        current: plan.served_id(),
    })
}

/// One server: load what it lacks (oldest first), then unload the rest.
async fn server(url: &str, kept: &[i64], fleet: &Fleet<'_>) -> Result<Changes, RemoteError> {
    let base = url.trim_end_matches('/');
    let loaded = loaded(base, fleet).await?;
    let mut c = Changes::default();
    for &v in kept.iter().filter(|v| !loaded.contains(v)) {
        let name = published_name(v);
        let path = format!("{}/{name}", fleet.prefix.trim_end_matches('/'));
        let body = json!({"lora_name": name, "lora_path": path});
        post(base, "/v1/load_lora_adapter", &body, fleet, "already").await?;
        c.loaded.push(v);
    }
    for &v in loaded.iter().filter(|v| !kept.contains(v)) {
        let body = json!({"lora_name": published_name(v)});
        post(base, "/v1/unload_lora_adapter", &body, fleet, "not found").await?;
        c.unloaded.push(v);
    }
    Ok(c)
}

/// The `lorastream-vN` adapters a server has loaded (`GET /v1/models`).
pub async fn loaded(base: &str, fleet: &Fleet<'_>) -> Result<BTreeSet<i64>, RemoteError> {
    let url = format!("{base}/v1/models");
    let what = "listing the models of";
    let body = send(authed(fleet.client.get(&url), fleet.key), what, &url).await?;
    let answer = |problem: String| RemoteError::Answer {
        what,
        url: shown(&url),
        problem,
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| answer(format!("not JSON ({e})")))?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| answer("no `data` list".into()))?;
    Ok(data
        .iter()
        .filter_map(|m| m["id"].as_str().and_then(version_of))
        .collect())
}

/// POSTs `body` to `path`; a 4xx whose text contains `benign` (an adapter
/// already loaded, or already gone) counts as done.
async fn post(
    base: &str,
    path: &str,
    body: &serde_json::Value,
    fleet: &Fleet<'_>,
    benign: &str,
) -> Result<(), RemoteError> {
    let url = format!("{base}{path}");
    let what = if path.contains("unload") {
        "unloading an adapter on"
    } else {
        "loading an adapter on"
    };
    let req = authed(fleet.client.post(&url), fleet.key).json(body);
    match send(req, what, &url).await {
        Err(RemoteError::Status { status, body, .. })
            if (400..500).contains(&status) && body.to_lowercase().contains(benign) =>
        {
            Ok(())
        }
        r => r.map(|_| ()),
    }
}
