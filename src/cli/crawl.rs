//! `lorastream crawl`: one pass, or passes on the sources' schedules until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use lorastream::config::Config;
use lorastream::data::crawl::{CrawlReport, crawl};
use lorastream::util::http::Http;
use lorastream_store::Store;

/// Runs the command on a current-thread runtime.
pub fn command(
    config: &Config,
    source: Option<&str>,
    once: bool,
    seal: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crawl_loop(config, &store, source, once, seal, json))
}

/// `lorastream crawl`: one pass, or passes on the sources' schedules.
async fn crawl_loop(
    config: &Config,
    store: &Store,
    source: Option<&str>,
    once: bool,
    seal: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let http = Http::new();
    let print = |r: &CrawlReport| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            print!("{r}");
        }
        Ok(())
    };
    let first = crawl(config, store, &http, source, seal).await?;
    print(&first)?;
    // Schedules of the sources this command runs.
    let scheduled: Vec<(String, String)> = config
        .sources
        .iter()
        .filter(|s| source.map_or(s.enabled, |n| n == s.name))
        .filter_map(|s| {
            let expr = s
                .schedule
                .clone()
                .or_else(|| config.schedule.crawl.clone())?;
            Some((s.name.clone(), expr))
        })
        .collect();
    if once || scheduled.is_empty() {
        if !once {
            eprintln!("no source has a schedule ([schedule] crawl or the source's own); done");
        }
        return Ok(if first.any_failed() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let now = chrono::Utc::now();
        let next = scheduled
            .iter()
            .filter_map(|(name, expr)| {
                lorastream::config::validate::next_fire(expr, &now)
                    .ok()
                    .map(|t| (t, name.clone()))
            })
            .min();
        let Some((at, name)) = next else {
            return Ok(ExitCode::SUCCESS);
        };
        tracing::info!(source = %name, at = %at.to_rfc3339(), "next crawl");
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
        }
        let r = crawl(config, store, &http, Some(&name), seal).await?;
        print(&r)?;
    }
}
