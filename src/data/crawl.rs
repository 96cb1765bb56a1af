//! One pass of the data plane, as `lorastream crawl` runs it: the sources,
//! then preprocessing, the summarizer, and stream sealing. The daemon's actors
//! call the same stage functions one by one.

use std::fmt;

use serde::Serialize;

use crate::config::Config;
use crate::data::preprocess::{self, PreprocessReport};
use crate::data::sources::{self, FetchReport};
use crate::data::streams::{self, StreamError};
use crate::data::summarize::{SummarizeReport, Summarizer};
use crate::util::http::Http;
use lorastream_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error("no source named {name:?} in the config (sources: {known})")]
    UnknownSource { name: String, known: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

#[derive(Debug, Serialize)]
pub struct SourceLine {
    pub name: String,
    pub kind: String,
    pub fetch: FetchReport,
}

#[derive(Debug, Serialize)]
pub struct CrawlReport {
    pub sources: Vec<SourceLine>,
    pub preprocess: PreprocessReport,
    pub summarize: SummarizeReport,
    /// (id, name, train, eval) of the streams sealed by this pass.
    pub streams: Vec<(i64, String, i64, i64)>,
}

impl CrawlReport {
    /// True when some source failed in this pass.
    pub fn any_failed(&self) -> bool {
        self.sources.iter().any(|s| s.fetch.error.is_some())
    }
}

impl fmt::Display for CrawlReport {
    fn fmt(&self, o: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            o,
            "{:<20} {:<12} {:>8} {:>6} {:>9} {:>8} {:>8}  dropped by reason",
            "source", "kind", "fetched", "new", "duplicate", "dropped", "examples"
        )?;
        let mut names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        // Items left from earlier runs may belong to sources not run now.
        for k in self.preprocess.by_source.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        for name in names {
            self.fmt_source(o, name)?;
        }
        let condensed: Vec<String> = self
            .summarize
            .condensed
            .iter()
            .map(|(b, n)| format!("{n} by {b}"))
            .collect();
        writeln!(
            o,
            "\nexamples ready {}, condensed {}{}",
            self.summarize.ready,
            if condensed.is_empty() {
                "0".into()
            } else {
                condensed.join(", ")
            },
            if self.summarize.fallbacks > 0 {
                format!(
                    " ({} endpoint failures fell back to extractive)",
                    self.summarize.fallbacks
                )
            } else {
                String::new()
            }
        )?;
        writeln!(o, "streams sealed {}", self.streams.len())?;
        for (id, name, train, eval) in &self.streams {
            writeln!(o, "  #{id:<4} {name:<40} train {train:<5} eval {eval}")?;
        }
        Ok(())
    }
}

impl CrawlReport {
    /// One source's line: what it fetched, and what preprocessing made of it.
    fn fmt_source(&self, o: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        let line = self.sources.iter().find(|s| s.name == name);
        let pre = self.preprocess.by_source.get(name);
        let dropped: u64 = pre.map_or(0, |p| p.dropped.values().sum());
        let reasons = pre
            .map(|p| {
                p.dropped
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let f = line.map(|l| &l.fetch);
        writeln!(
            o,
            "{:<20} {:<12} {:>8} {:>6} {:>9} {:>8} {:>8}  {}",
            name,
            line.map_or("(earlier)", |l| l.kind.as_str()),
            f.map_or(0, |f| f.fetched),
            f.map_or(0, |f| f.new),
            f.map_or(0, |f| f.duplicate),
            dropped,
            pre.map_or(0, |p| p.examples),
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons
            },
        )?;
        if let Some(f) = f {
            if f.files_done + f.files_failed > 0 {
                writeln!(
                    o,
                    "{:<20} files ingested {}, failed {}",
                    "", f.files_done, f.files_failed
                )?;
            }
            if let Some(e) = &f.error {
                writeln!(o, "{:<20} FAILED: {e}", "")?;
            }
        }
        Ok(())
    }
}

/// Runs the enabled sources (or just `only`, enabled or not), preprocesses,
/// summarizes and seals. A failing source does not stop the others.
pub async fn crawl(
    config: &Config,
    store: &Store,
    http: &Http,
    only: Option<&str>,
    force_seal: bool,
) -> Result<CrawlReport, CrawlError> {
    let selected: Vec<_> = match only {
        Some(name) => {
            let s = config
                .sources
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| CrawlError::UnknownSource {
                    name: name.into(),
                    known: config
                        .sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            vec![s]
        }
        None => config.sources.iter().filter(|s| s.enabled).collect(),
    };
    let state_dir = config.state_dir();
    let mut lines = Vec::new();
    for src in selected {
        let fetch = sources::run_source(
            http,
            store,
            &state_dir,
            src,
            config.daemon.max_item_failures,
        )
        .await;
        lines.push(SourceLine {
            name: src.name.clone(),
            kind: src.kind.to_string(),
            fetch,
        });
    }
    let pre = preprocess::run(store, &config.preprocess)?;
    let summarize = Summarizer::for_model(&config.summarizer, &config.base_model(), http.clone())
        .run(store)
        .await?;
    let sealed = streams::seal_ready(store, &state_dir, &config.streams, force_seal)?
        .into_iter()
        .map(|row| (row.id, row.name, row.n_train, row.n_eval))
        .collect();
    Ok(CrawlReport {
        sources: lines,
        preprocess: pre,
        summarize,
        streams: sealed,
    })
}
