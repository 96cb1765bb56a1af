//! `lorastream status`: what the store says about sources, items, streams and
//! adapters, plus the libtorch the binary runs on.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::util::disk::DiskUse;
use lorastream_ml::runtime::device::{RuntimeInfo, runtime_info};
use lorastream_store::{
    AdapterRow, ExampleState, ItemFailure, PublishRow, RawState, SourceRow, StageRow, Store,
    StoreError, StreamRow,
};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub state_dir: PathBuf,
    pub db: PathBuf,
    /// False when the daemon has never run with this config (no database yet).
    pub initialized: bool,
    pub schema_version: Option<i64>,
    pub libtorch: RuntimeInfo,
    pub sources: Vec<SourceStatus>,
    /// (state, drop reason, count) over raw items.
    pub raw_items: Vec<(RawState, Option<String>, i64)>,
    /// (state, count) over examples.
    pub examples: Vec<(String, i64)>,
    pub streams: Vec<StreamRow>,
    pub adapters: Vec<AdapterRow>,
    pub served_adapter: Option<i64>,
    /// The daemon's stages: what each does now, runs and failures.
    pub stages: Vec<StageRow>,
    /// Items that failed (pages, streams, candidates, files), set-aside ones
    /// first: each is tried `max_item_failures` times, then set aside.
    pub item_failures: Vec<ItemFailure>,
    pub max_item_failures: u32,
    /// The state dir's size by part and its file system's free space.
    pub disk: Option<DiskUse>,
    /// Each `[[publish]]` target and where it stands.
    pub publish: Vec<PublishStatus>,
}

#[derive(Debug, Serialize)]
pub struct PublishStatus {
    pub name: String,
    pub kind: String,
    /// Where it publishes: a directory, servers, a repository.
    pub to: String,
    /// None when it has never run.
    pub store: Option<PublishRow>,
}

#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub kind: String,
    pub enabled: bool,
    pub schedule: Option<String>,
    /// How data reaches it, in words (where to drop files, which dataset).
    pub feeds: String,
    /// None when the source is configured but has never run.
    pub store: Option<SourceRow>,
}

/// How data reaches source `s`, for the page and `status` before any stream exists.
fn feeds(s: &crate::config::SourceConfig, state_dir: &std::path::Path) -> String {
    use crate::config::{SourceKind, SpoolFormat};
    match s.kind {
        SourceKind::Spool => format!(
            "drop {} exports into {}",
            match s.spool_format() {
                SpoolFormat::Auto => "CSV, JSON or JSONL".to_string(),
                f => f.to_string().to_uppercase(),
            },
            s.spool_dir(state_dir).display()
        ),
        SourceKind::HfDatasets => format!(
            "rows of {} ({}, {}) from the datasets-server",
            s.dataset.as_deref().unwrap_or("?"),
            s.dataset_config(),
            s.split()
        ),
        SourceKind::Conversations => {
            "conversations users opted into learning ([server] learn_from_conversations)".into()
        }
        SourceKind::Crawlbase => format!(
            "Quora pages through Crawlbase: topics {}, questions {}",
            s.topics.as_ref().map_or(0, Vec::len),
            s.questions.as_ref().map_or(0, Vec::len)
        ),
    }
}

/// Gathers the report. A missing database is reported, not created; an
/// existing one is opened read-only, never migrated.
pub fn gather(config: &Config) -> Result<StatusReport, StoreError> {
    if config.store_path().exists() {
        report(config, Some(&Store::open_read_only(&config.store_path())?))
    } else {
        report(config, None)
    }
}

/// The report from an open store (`None`: the daemon never ran with `config`).
pub fn report(config: &Config, store: Option<&Store>) -> Result<StatusReport, StoreError> {
    let mut report = StatusReport {
        state_dir: config.state_dir(),
        db: config.store_path(),
        initialized: store.is_some(),
        schema_version: None,
        libtorch: runtime_info(),
        sources: Vec::new(),
        raw_items: Vec::new(),
        examples: Vec::new(),
        streams: Vec::new(),
        adapters: Vec::new(),
        served_adapter: None,
        stages: Vec::new(),
        item_failures: Vec::new(),
        max_item_failures: config.daemon.max_item_failures,
        disk: None,
        publish: Vec::new(),
    };
    let rows = match store {
        Some(s) => s.sources()?,
        None => Vec::new(),
    };
    for s in &config.sources {
        report.sources.push(SourceStatus {
            name: s.name.clone(),
            kind: s.kind.to_string(),
            enabled: s.enabled,
            schedule: s.schedule.clone().or_else(|| config.schedule.crawl.clone()),
            feeds: feeds(s, &config.state_dir()),
            store: rows.iter().find(|r| r.name == s.name).cloned(),
        });
    }
    if let Some(store) = store {
        report.schema_version = Some(store.schema_version()?);
        report.raw_items = store.raw_item_counts()?;
        for &state in ExampleState::ALL {
            report
                .examples
                .push((state.to_string(), store.count_examples(state)?));
        }
        report.streams = store.streams()?;
        report.adapters = store.adapters()?;
        report.served_adapter = store.served_adapter()?.map(|a| a.id);
        report.stages = store.stages()?;
        report.item_failures = store.item_failures()?;
        report.disk = Some(crate::util::disk::disk_use(config));
        // A store of an older schema (opened read-only, never migrated) has
        // no publish records yet.
        let rows = store.publish_targets().unwrap_or_default();
        report.publish = config
            .publish
            .iter()
            .map(|t| PublishStatus {
                name: t.name.clone(),
                kind: t.kind.to_string(),
                to: match (&t.dir, &t.repo) {
                    (Some(d), _) => d.display().to_string(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => t
                        .urls
                        .iter()
                        .map(|u| crate::publish::remote::shown(u))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                store: rows.iter().find(|r| r.name == t.name).cloned(),
            })
            .collect();
    }
    Ok(report)
}

/// "512 B", "3.4 MB", "12.0 GB" (decimal units).
fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        x if x < 1e3 => format!("{x} B"),
        x if x < 1e6 => format!("{:.1} kB", x / 1e3),
        x if x < 1e9 => format!("{:.1} MB", x / 1e6),
        x => format!("{:.1} GB", x / 1e9),
    }
}

/// "12s ago", "5m ago", "3h ago", "2d ago" or "never".
pub fn ago(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let secs = (lorastream_store::now_ms() - t).max(0) / 1000;
            match secs {
                0..120 => format!("{secs}s ago"),
                120..7200 => format!("{}m ago", secs / 60),
                7200..172800 => format!("{}h ago", secs / 3600),
                _ => format!("{}d ago", secs / 86400),
            }
        }
    }
}

impl fmt::Display for StatusReport {
    /// The human-readable form (`lorastream status`), section by section.
    fn fmt(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_header(o)?;
        self.fmt_stages(o)?;
        self.fmt_sources(o)?;
        self.fmt_data(o)?;
        self.fmt_adapters(o)?;
        self.fmt_publish(o)
    }
}

impl StatusReport {
    /// State dir, store, libtorch and disk.
    fn fmt_header(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(o, "state_dir  {}", self.state_dir.display())?;
        match self.schema_version {
            Some(v) => {
                writeln!(o, "store      {} (schema {v})", self.db.display())?;
            }
            None => {
                writeln!(
                    o,
                    "store      {} (not created yet: the daemon has not run)",
                    self.db.display()
                )?;
            }
        }
        writeln!(
            o,
            "libtorch   {} ({} CUDA device(s), {} threads)",
            self.libtorch.libtorch_lib, self.libtorch.cuda_devices, self.libtorch.threads
        )?;
        if let Some(d) = &self.disk {
            let total: u64 = d.parts.iter().map(|p| p.1).sum();
            let parts: Vec<String> = d
                .parts
                .iter()
                .map(|(p, n)| format!("{p} {}", bytes(*n)))
                .collect();
            writeln!(
                o,
                "disk       {} in the state dir ({}); {} free of {}{}",
                bytes(total),
                parts.join(", "),
                bytes(d.free_bytes),
                bytes(d.fs_bytes),
                if d.low {
                    "  LOW (under [retention] min_free_bytes)"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }

    /// What each stage does, and the items that failed.
    fn fmt_stages(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.stages.is_empty() {
            writeln!(
                o,
                "stage      {}",
                StageRow::running(&self.stages).unwrap_or_else(|| "idle".into())
            )?;
            writeln!(o, "\nstages")?;
            for s in &self.stages {
                writeln!(
                    o,
                    "  {:<13} {:<8} runs {:<5} failures {:<4} updated {}{}",
                    s.name,
                    s.state,
                    s.runs,
                    s.failures,
                    ago(Some(s.updated_at)),
                    s.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                )?;
            }
        }
        if !self.item_failures.is_empty() {
            writeln!(
                o,
                "\nfailed items (set aside after {} failures)",
                self.max_item_failures
            )?;
            for f in &self.item_failures {
                writeln!(
                    o,
                    "  {:<9} {:<30} {} failure(s) {:<10} {}  last error: {}",
                    f.kind,
                    f.key,
                    f.failures,
                    if f.set_aside { "SET ASIDE" } else { "retrying" },
                    ago(Some(f.updated_at)),
                    f.last_error
                )?;
            }
        }
        Ok(())
    }

    /// Each configured source: last run, items, health.
    fn fmt_sources(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(o, "\nsources ({})", self.sources.len())?;
        for s in &self.sources {
            let (last, health, items) = match &s.store {
                None => ("never".to_string(), "ok".to_string(), 0),
                Some(r) => (
                    ago(r.last_run_at),
                    if r.degraded {
                        format!(
                            "DEGRADED ({} failures: {})",
                            r.error_count,
                            r.last_error.as_deref().unwrap_or("?")
                        )
                    } else if r.error_count > 0 {
                        format!("{} failure(s)", r.error_count)
                    } else {
                        "ok".to_string()
                    },
                    r.items_total,
                ),
            };
            writeln!(
                o,
                "  {:<20} {:<12} {:<8} last run {:<10} items {:<7} {}  schedule {}",
                s.name,
                s.kind,
                if s.enabled { "enabled" } else { "disabled" },
                last,
                items,
                health,
                s.schedule.as_deref().unwrap_or("on demand"),
            )?;
            if self.streams.is_empty() && s.enabled {
                writeln!(o, "  {:<20} {}", "", s.feeds)?;
            }
        }
        Ok(())
    }

    /// Raw items, examples and streams.
    fn fmt_data(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.raw_items.is_empty() {
            writeln!(o, "\nraw items")?;
            for (state, reason, n) in &self.raw_items {
                match reason {
                    Some(r) => writeln!(o, "  {state:<10} {r:<24} {n}"),
                    None => writeln!(o, "  {state:<10} {:<24} {n}", ""),
                }?;
            }
        }
        if self.schema_version.is_some() {
            let ex: Vec<String> = self
                .examples
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            writeln!(o, "\nexamples   {}", ex.join(", "))?;
        }
        writeln!(o, "\nstreams ({})", self.streams.len())?;
        let w = self
            .streams
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(24);
        for s in &self.streams {
            writeln!(
                o,
                "  #{:<4} {:<w$} train {:<6} eval {:<6} {}",
                s.id, s.name, s.n_train, s.n_eval, s.state
            )?;
        }
        Ok(())
    }

    /// Every version, the served one marked, with its decision's reasons.
    fn fmt_adapters(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(o, "\nadapters ({})", self.adapters.len())?;
        for a in &self.adapters {
            let served = if Some(a.id) == self.served_adapter {
                "  <- serving"
            } else {
                ""
            };
            let why = crate::learn::records::outcome(a)
                .map(|o| format!("  ({})", o.reasons().join("; ")))
                .unwrap_or_default();
            writeln!(
                o,
                "  v{:<4} stream #{:<4} attempt {} {:<9}{served}{why}",
                a.id,
                a.stream_id,
                a.attempt,
                a.state.to_string()
            )?;
        }
        Ok(())
    }
}

impl StatusReport {
    /// `publish`: per target, ok or degraded, what it holds, the last error.
    fn fmt_publish(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.publish.is_empty() {
            return Ok(());
        }
        writeln!(o, "\npublish")?;
        for t in &self.publish {
            let Some(r) = &t.store else {
                writeln!(o, "  {:<14} {:<7} {}  not run yet", t.name, t.kind, t.to)?;
                continue;
            };
            let held: Vec<String> = r.published.iter().map(|v| format!("v{v}")).collect();
            writeln!(
                o,
                "  {:<14} {:<7} {}  {}  holds [{}], current {}, last ok {}",
                t.name,
                t.kind,
                t.to,
                if r.ok { "ok" } else { "DEGRADED" },
                held.join(", "),
                r.version.map_or("base".into(), |v| format!("v{v}")),
                ago(r.last_ok_at),
            )?;
            if let Some(e) = r.last_error.as_deref().filter(|_| !r.ok) {
                writeln!(o, "      {} failed run(s) in a row: {e}", r.failures)?;
            }
        }
        Ok(())
    }
}
