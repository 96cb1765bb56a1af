//! One target's run and its record: local kinds ([`run_local`]: files,
//! written in place) and remote kinds ([`run_remote`]: HTTP, awaited), each
//! recorded in the store's `publish_targets` ([`record`]) for `status`, the
//! web page and `/metrics`. [`publish`] runs every target from the CLI.

use std::sync::Arc;
use std::time::Duration;

use super::remote::hub::{File, Hub};
use super::remote::vllm::Fleet;
use super::{Plan, PublishError, TargetState, dir, files, gguf, plan, published_name};
use crate::config::{Config, PublishConfig, PublishKind};
use crate::util::http::read_secret;
use lorastream_store::{AdapterRow, Store};

/// Runs a local target (`dir`, `gguf`).
pub fn run_local(
    config: &Config,
    store: &Store,
    plan: &Plan,
    t: &PublishConfig,
) -> Result<TargetState, PublishError> {
    match t.kind {
        PublishKind::Dir => dir::reconcile(t, store, plan, &plan::base_model(config, Some(t))),
        PublishKind::Gguf => gguf::reconcile(&config.base_model(), t, plan),
        PublishKind::Vllm | PublishKind::HfHub => {
            unreachable!("remote targets run through run_remote")
        }
    }
}

/// Runs a remote target (`vllm`, `hf_hub`); the local ones must have run.
pub async fn run_remote(
    config: &Arc<Config>,
    plan: &Plan,
    t: &PublishConfig,
) -> Result<TargetState, PublishError> {
    let client = crate::util::http::client(crate::util::http::Timeouts {
        total: Some(Duration::from_secs(t.timeout_secs)),
        ..Default::default()
    });
    match t.kind {
        PublishKind::Vllm => {
            let key = read_secret("vLLM API key", t.key_file.as_deref(), t.key_env.as_deref())?;
            let prefix = lora_path_prefix(config, t);
            let fleet = Fleet {
                client: &client,
                key: key.as_deref(),
                prefix: &prefix,
            };
            super::remote::vllm::reconcile(t, plan, &fleet).await
        }
        PublishKind::HfHub => hub(config, plan, t, &client).await,
        PublishKind::Dir | PublishKind::Gguf => unreachable!("local targets run through run_local"),
    }
}

/// Where a `vllm` target's servers find `lorastream-vN/`: its
/// `lora_path_prefix`, else the first `dir` target's directory.
pub fn lora_path_prefix(config: &Config, t: &PublishConfig) -> String {
    t.lora_path_prefix.clone().unwrap_or_else(|| {
        config
            .publish
            .iter()
            .find(|d| d.kind == PublishKind::Dir)
            .and_then(|d| d.dir.as_ref())
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    })
}

/// An `hf_hub` target: each version the repository lacks committed and
/// tagged (oldest first), then `main` brought to the served version.
async fn hub(
    config: &Arc<Config>,
    plan: &Plan,
    t: &PublishConfig,
    client: &reqwest::Client,
) -> Result<TargetState, PublishError> {
    let token = read_secret("Hub token", t.token_file.as_deref(), t.token_env.as_deref())?
        .ok_or_else(|| PublishError::Aborted("no Hub token configured".into()))?;
    let endpoint = t
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok())
        .unwrap_or_else(|| "https://huggingface.co".into());
    let hub = Hub {
        client,
        endpoint: &endpoint,
        repo: t.repo.as_deref().unwrap_or_default(),
        token: &token,
        private: t.private.unwrap_or(true),
    };
    let holds = hub.holds().await?;
    let base = plan::base_model(config, Some(t));
    let (mut written, mut main) = (Vec::new(), holds.main);
    for v in plan
        .wanted
        .iter()
        .rev()
        .filter(|v| !holds.tagged.contains(&v.id))
    {
        let files = files_of(config, plan, v, &base).await?;
        let summary = format!("Publish {}", published_name(v.id));
        hub.commit(v.id, files, &summary, true).await?;
        tracing::info!(target = %t.name, version = v.id, repo = %hub.repo, "version pushed to the Hub");
        written.push(v.id);
        main = Some(v.id);
    }
    if let Some(s) = plan.served.as_ref().filter(|s| main != Some(s.id)) {
        let files = files_of(config, plan, s, &base).await?;
        let summary = format!("Serve {} again", published_name(s.id));
        hub.commit(s.id, files, &summary, false).await?;
        tracing::info!(target = %t.name, version = s.id, repo = %hub.repo, "main follows the served version");
    }
    let mut held: Vec<i64> = holds
        .tagged
        .into_iter()
        .chain(written.iter().copied())
        .collect();
    held.sort_unstable();
    Ok(TargetState {
        target: t.name.clone(),
        written,
        removed: Vec::new(),
        held,
        current: plan.served_id(),
    })
}

/// `v`'s PEFT files, read on a blocking thread with a store of its own.
async fn files_of(
    config: &Arc<Config>,
    plan: &Plan,
    v: &AdapterRow,
    base: &str,
) -> Result<Vec<File>, PublishError> {
    let (config, all, v, base) = (
        Arc::clone(config),
        plan.all.clone(),
        v.clone(),
        base.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let store = config.open_store()?;
        files::peft_files(&store, &all, &v, &base)
    })
    .await
    .map_err(|e| PublishError::Aborted(e.to_string()))?
}

/// Records a run of `t` for `status`; a failure to record is only logged.
pub fn record(store: &Store, t: &PublishConfig, result: &Result<TargetState, PublishError>) {
    let kind = t.kind.as_str();
    let r = match result {
        Ok(s) => store.publish_ok(&t.name, kind, s.current, &s.held),
        Err(e) => store.publish_failed(&t.name, kind, &e.to_string()),
    };
    if let Err(e) = r {
        tracing::warn!(target = %t.name, error = %e, "cannot record the publish state");
    }
}

/// Every target's result, by name.
pub type Results = Vec<(String, Result<TargetState, PublishError>)>;

/// Brings `targets` (all when `to` is None) in line with the store, local
/// ones first (the remote ones load their files), each recorded; with
/// `version`, that version is published too.
pub fn publish(
    config: &Config,
    store: &Store,
    version: Option<i64>,
    to: Option<&str>,
) -> Result<Results, PublishError> {
    let targets: Vec<&PublishConfig> = config
        .publish
        .iter()
        .filter(|t| to.is_none_or(|n| n == t.name))
        .collect();
    if let (Some(n), true) = (to, targets.is_empty()) {
        return Err(PublishError::NoTarget(n.to_string()));
    }
    let plan = Plan::read(store, version)?;
    let mut out = Vec::new();
    for t in targets.iter().filter(|t| !t.kind.is_remote()) {
        let r = run_local(config, store, &plan, t);
        record(store, t, &r);
        out.push((t.name.clone(), r));
    }
    let remote: Vec<&&PublishConfig> = targets.iter().filter(|t| t.kind.is_remote()).collect();
    if remote.is_empty() {
        return Ok(out);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PublishError::Aborted(format!("cannot start a runtime: {e}")))?;
    let shared = Arc::new(config.clone());
    for t in remote {
        let r = rt.block_on(run_remote(&shared, &plan, t));
        record(store, t, &r);
        out.push((t.name.clone(), r));
    }
    Ok(out)
}
