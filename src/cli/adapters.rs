//! `lorastream learn` and `lorastream adapters {list,promote,rollback,merge,publish}`:
//! the feedback loop by hand, and the versions it leaves. Every change is
//! recorded in the store as done by `cli`; a running daemon serves the new
//! version within a second or two (the server re-reads the store every second).

use std::path::Path;
use std::process::ExitCode;

use lorastream::config::Config;
use lorastream::learn::pipeline::{self, PipelineError};
use lorastream::learn::policy::Decision;
use lorastream::learn::spec::LearnSpec;
use lorastream_ml::train::TrainError;
use lorastream_store::{Actor, AdapterKind, AdapterRow, AdapterState};

/// `learn`
pub fn learn(config: &Config, stream: Option<i64>, json: bool) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let stop = super::commands::stop_on_signals()?;
    let bar = super::commands::progress_bar();
    let mut attempts = Vec::new();
    let spec = LearnSpec::from_config(config);
    if let Some((v, s, d)) = pipeline::decide_pending(&spec, &store, Actor::Cli)? {
        if !json {
            println!("stream {s} -> adapter v{v} (candidate an earlier run left undecided)");
            println!("  {}: {}", d.action, d.reasons.join("; "));
        }
        attempts.push(serde_json::json!({"undecided": v, "decision": d}));
    }
    loop {
        let result = pipeline::learn(
            &spec,
            &store,
            stream,
            Actor::Cli,
            &stop,
            super::commands::show_progress(bar.as_ref(), config.train.log_every),
        );
        let done = match result {
            Err(PipelineError::NothingToTrain) if stream.is_none() => break,
            Err(PipelineError::Train(TrainError::Stopped(step))) => {
                eprintln!(
                    "stopped at step {step}; checkpoint saved; run `lorastream learn` again to resume"
                );
                return Ok(ExitCode::from(130));
            }
            other => other?,
        };
        for (t, d) in done {
            if !json {
                println!("{t}");
                println!("  {}: {}", d.action, d.reasons.join("; "));
            }
            attempts.push(serde_json::json!({"trained": t, "decision": d}));
        }
        if stream.is_some() {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    lorastream::publish::after_change(config, &store);
    let m = lorastream::learn::matrix::fill::stored_matrix(&store)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"attempts": attempts, "matrix": m}))?
        );
    } else {
        print!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A figure of the version's decision.
fn figure(a: &AdapterRow, f: impl Fn(&Decision) -> Option<f64>) -> Option<f64> {
    f(lorastream::learn::records::outcome(a)?.decision()?)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:+.1}%", x * 100.0))
}

/// `adapters list`
pub fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let all = store.adapters()?;
    let served = store.served_adapter()?.map(|a| a.id);
    if json {
        let events = store.adapter_events(None)?;
        let rows: Vec<_> = all
            .iter()
            .map(|a| {
                serde_json::json!({
                    "version": a.id, "parent": a.parent_id, "stream": a.stream_id, "attempt": a.attempt,
                    "kind": a.kind, "state": a.state, "served": Some(a.id) == served,
                    "promoted_seq": a.promoted_seq, "ppl": figure(a, |d| Some(d.new_ppl).filter(|p| p.is_finite())),
                    "max_forgetting": figure(a, |d| d.max_forgetting), "probe_change": figure(a, |d| d.probe_change),
                    "created_at": a.created_at, "decision": a.decision,
                    "events": events.iter().filter(|e| e.adapter_id == a.id).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<9} {:>6} {:>7} {:<12} {:>10} {:>14} {:>8}  created",
        "version", "stream", "attempt", "state", "ppl", "max forgetting", "probe"
    );
    for a in &all {
        let mark = if Some(a.id) == served { " *" } else { "" };
        let state = match a.kind {
            AdapterKind::Merge => format!("{} (merge)", a.state),
            AdapterKind::Lora => a.state.to_string(),
        };
        println!(
            "{:<9} {:>6} {:>7} {:<12} {:>10} {:>14} {:>8}  {}",
            format!("v{}{mark}", a.id),
            a.stream_id,
            a.attempt,
            state,
            figure(a, |d| Some(d.new_ppl).filter(|p| p.is_finite()))
                .map_or("-".into(), |p| format!("{p:.3}")),
            pct(figure(a, |d| d.max_forgetting)),
            pct(figure(a, |d| d.probe_change)),
            lorastream::serve::status::ago(Some(a.created_at)),
        );
    }
    match served {
        Some(v) => println!("* served: v{v}"),
        None => println!("served: the base model"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `adapters promote V`
pub fn promote(config: &Config, version: i64) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let a = store.adapter(version)?.ok_or_else(|| {
        anyhow::anyhow!("there is no version v{version} (see `lorastream adapters list`)")
    })?;
    if !matches!(
        a.state,
        AdapterState::Promoted
            | AdapterState::Rejected
            | AdapterState::RolledBack
            | AdapterState::NotLearned
    ) {
        anyhow::bail!(
            "v{version} is {}: only a trained, decided version can be served",
            a.state
        );
    }
    let weights = match a.kind {
        lorastream_store::AdapterKind::Lora => a.path.join("adapter_model.safetensors"),
        lorastream_store::AdapterKind::Merge => a.path.clone(),
    };
    if !weights.exists() {
        anyhow::bail!(
            "v{version}'s files are gone ({} is missing; [retention] keep_rejected removes \
             the files of older rejected versions): it cannot be served",
            weights.display()
        );
    }
    store.set_adapter_state(
        version,
        AdapterState::Promoted,
        None,
        Actor::Cli,
        "promoted by the operator",
    )?;
    tracing::info!(version, by = "cli", "version promoted");
    println!("v{version} is served now");
    lorastream::publish::after_change(config, &store);
    Ok(ExitCode::SUCCESS)
}

/// `adapters rollback`
pub fn rollback(config: &Config) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let (from, to) = store.rollback(Actor::Cli, "rolled back by the operator")?;
    tracing::info!(rolled_back = from, served = ?to, by = "cli", "version rolled back");
    match to {
        Some(v) => println!("v{from} rolled back; v{v} is served now"),
        None => println!("v{from} rolled back; the base model is served now"),
    }
    lorastream::publish::after_change(config, &store);
    Ok(ExitCode::SUCCESS)
}

/// `adapters merge`
pub fn merge(config: &Config) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let id = lorastream::learn::lineage::merge(
        &LearnSpec::from_config(config),
        &store,
        Actor::Cli,
        "merged by the operator",
    )?;
    println!("v{id}: the served adapter merged into a new base snapshot, served now");
    lorastream::publish::after_change(config, &store);
    Ok(ExitCode::SUCCESS)
}

/// `adapters publish [VERSION] [--to NAME]`: one line per target; exit 1
/// when any failed (the others are published all the same).
pub fn publish(
    config: &Config,
    version: Option<i64>,
    to: Option<&str>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !config.publish.is_empty(),
        "no [[publish]] target in the config: add one (kind = \"dir\", dir = ...)"
    );
    let store = config.open_store()?;
    let list = |v: &[i64]| -> String {
        let s: Vec<String> = v.iter().map(|v| format!("v{v}")).collect();
        if s.is_empty() {
            "nothing".into()
        } else {
            s.join(", ")
        }
    };
    let mut failed = false;
    for (name, r) in lorastream::publish::publish(config, &store, version, to)? {
        match r {
            Ok(t) => println!(
                "{name}: published {}; removed {}; holds {}; current: {}",
                list(&t.written),
                list(&t.removed),
                list(&t.held),
                t.current
                    .map_or("none (the base is served)".into(), |v| format!("v{v}"))
            ),
            Err(e) => {
                failed = true;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `adapters export VERSION --format peft|gguf --out PATH`.
pub fn export(config: &Config, version: i64, format: &str, out: &Path) -> anyhow::Result<ExitCode> {
    use lorastream::publish::{Plan, files, gguf, plan};
    anyhow::ensure!(!out.exists(), "{} exists already", out.display());
    let store = config.open_store()?;
    let p = Plan::read(&store, Some(version))?;
    let v = p
        .wanted
        .iter()
        .find(|a| a.id == version)
        .expect("Plan::read includes the version asked for");
    if format == "gguf" {
        let n = gguf::export(v, &gguf::base_config(&config.base_model())?, out)?;
        println!("v{version}: {n} tensors written to {}", out.display());
    } else {
        let base = plan::base_model(config, None);
        std::fs::create_dir_all(out)?;
        for (name, bytes) in files::peft_files(&store, &p.all, v, &base)? {
            lorastream_base::fsutil::write_atomic(&out.join(name), &bytes)?;
        }
        println!(
            "v{version}: PEFT adapter (base {base}) written to {}",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
