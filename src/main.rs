//! The `lorastream` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use lorastream::bench::{self, EvalArgs, GenerateArgs, TrainArgs};
use lorastream::config::{Config, ConfigError, LogFormat};
use lorastream::logging::{self, LogSettings};
use lorastream::ml::Arch;
use lorastream::ml::init::{InitOptions, Preset, init_model};
use lorastream::pipeline::PipelineError;
use lorastream::train::TrainError;
use lorastream::{daemon, status};

/// sysexits' EX_CONFIG: the configuration is invalid.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "lorastream",
    version,
    about = "Keeps a language model learning from the web: crawl, clean, train LoRA adapters stream by stream, measure forgetting, serve the best."
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "LORASTREAM_CONFIG",
        default_value = "/etc/lorastream/lorastream.toml"
    )]
    config: PathBuf,
    /// Log format (default: the config's [daemon] log_format, else auto).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output (-q warnings, -qq errors).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM (SIGHUP reloads the config).
    Run,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show sources, items, streams and adapters from the store.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch from the sources, clean, summarize and seal ready examples into
    /// streams; prints counts per source. Without --once, keeps running on the
    /// sources' schedules until SIGINT/SIGTERM.
    Crawl {
        /// Only this source (even if disabled).
        #[arg(long)]
        source: Option<String>,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        /// Seal whatever is ready, even below [streams] min_examples.
        #[arg(long)]
        seal: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream commands.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Train the oldest untrained stream (or --stream ID) into a candidate adapter;
    /// an interrupted run resumes from its checkpoint.
    Train {
        #[arg(long)]
        stream: Option<i64>,
    },
    /// Fill missing cells of the perplexity matrix and print it with forgetting.
    Eval {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Model commands.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Benchmarks printing one JSON line, comparable with ../shared/bench/peer_hf.py.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a small random model (HF layout) with a BPE tokenizer trained on a corpus.
    Init {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Text to train the tokenizer on (default: a built-in corpus).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Target tokenizer vocabulary size.
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
    },
    /// Merge a LoRA adapter into its base model and write a standalone HF model directory.
    Export {
        /// Base model directory.
        #[arg(long)]
        model: PathBuf,
        /// PEFT adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Greedy decoding with a KV cache: new tokens per second.
    Generate(GenerateArgs),
    /// LoRA training throughput: tokens per second over timed optimizer steps.
    Train(TrainArgs),
    /// Perplexity over a data set, and tokens per second.
    Eval(EvalArgs),
}

#[derive(Subcommand)]
enum StreamsCommand {
    /// Seal a JSONL of chat examples ({"messages": [...]} per line) into a new stream.
    Import {
        file: PathBuf,
        /// Stream name (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config file: exit 0 with a summary, or name each bad key and its line.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, printing a config error as-is (it names file, key and line).
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        match &e {
            ConfigError::Read { .. } => eprintln!("error: {e}"),
            ConfigError::Invalid { problems, .. } => {
                eprintln!("{e}");
                eprintln!("error: {} problem(s) in {}", problems.len(), path.display());
            }
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logs(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    let verbosity = cli.verbose.min(10) as i8 - cli.quiet.min(10) as i8;
    let format = cli.log_format.unwrap_or(config.daemon.log_format);
    logging::init(&LogSettings::new(
        format,
        verbosity,
        &config.daemon.log_filter,
    ))
    .map_err(anyhow::Error::msg)
}

fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Model {
            command:
                ModelCommand::Init {
                    arch,
                    preset,
                    out,
                    corpus,
                    seed,
                    vocab_size,
                },
        } => {
            let cfg = init_model(
                out,
                &InitOptions {
                    arch: *arch,
                    preset: *preset,
                    corpus: corpus.as_deref(),
                    seed: *seed,
                    vocab_size: *vocab_size,
                },
            )?;
            println!(
                "wrote {} ({:?}, {} layers, width {}, vocab {})",
                out.display(),
                cfg.arch,
                cfg.num_layers,
                cfg.hidden_size,
                cfg.vocab_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Model {
            command:
                ModelCommand::Export {
                    model,
                    adapter,
                    out,
                },
        } => {
            lorastream::ml::model::export_merged_model(model, adapter, out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command } => {
            let line = match command {
                BenchCommand::Generate(args) => bench::bench_generate(args)?,
                BenchCommand::Train(args) => bench::bench_train(args)?,
                BenchCommand::Eval(args) => bench::bench_eval(args)?,
            };
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Streams {
            command: StreamsCommand::Import { file, name },
        } => with_config(cli, |config| {
            init_logs(cli, &config)?;
            let store = lorastream::store::Store::open_for(&config)?;
            let name = name.clone().unwrap_or_else(|| {
                file.file_stem()
                    .map_or("import".into(), |s| s.to_string_lossy().into_owned())
            });
            let (id, new, dup) = lorastream::streams::import(
                &store,
                &config.state_dir(),
                file,
                &name,
                config.streams.eval_fraction,
            )?;
            let s = store.stream(id)?.context("stream vanished")?;
            println!(
                "stream {id} {name:?}: {new} new examples ({dup} already stored), train {} / eval {}, {}",
                s.n_train,
                s.n_eval,
                s.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Train { stream } => {
            with_config(cli, |config| {
                init_logs(cli, &config)?;
                let store = lorastream::store::Store::open_for(&config)?;
                // SIGINT/SIGTERM: finish the step, checkpoint, exit; `train` again resumes.
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                    signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
                }
                let bar = progress_bar();
                let log_every = config.train.log_every;
                let result =
                    lorastream::pipeline::train_stream(&config, &store, *stream, &stop, |p| {
                        match &bar {
                            Some(bar) => {
                                bar.set_length(p.total_steps as u64);
                                bar.set_position(p.step as u64);
                                bar.set_message(format!(
                                    "loss {:.4}  {:.0} tok/s",
                                    p.loss, p.tokens_per_s
                                ));
                            }
                            None if p.step % log_every == 0 || p.step == p.total_steps => p.log(),
                            None => {}
                        }
                    });
                if let Some(bar) = bar {
                    bar.finish();
                }
                let t = match result {
                    Err(PipelineError::Train(TrainError::Stopped(step))) => {
                        eprintln!(
                            "stopped at step {step}; checkpoint saved; run `lorastream train` again to resume"
                        );
                        return Ok(ExitCode::from(130));
                    }
                    other => other?,
                };
                let o = &t.outcome;
                println!(
                    "stream {} -> adapter v{} (candidate): {} steps{}, loss {:.4} -> {:.4}, {:.0} tokens/s",
                    t.stream_id,
                    t.adapter_id,
                    o.steps,
                    if o.resumed_from > 0 {
                        format!(" (resumed at {})", o.resumed_from)
                    } else {
                        String::new()
                    },
                    o.losses.first().copied().unwrap_or(f32::NAN),
                    o.losses.last().copied().unwrap_or(f32::NAN),
                    o.tokens_per_s
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Crawl {
            source,
            once,
            seal,
            json,
        } => with_config(cli, |config| {
            init_logs(cli, &config)?;
            let store = lorastream::store::Store::open_for(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(crawl_command(
                &config,
                &store,
                source.as_deref(),
                *once,
                *seal,
                *json,
            ))
        }),
        Command::Eval { json } => with_config(cli, |config| {
            init_logs(cli, &config)?;
            let store = lorastream::store::Store::open_for(&config)?;
            let m = lorastream::pipeline::evaluate(&config, &store)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print!("{}", m.render());
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Config {
            command: ConfigCommand::Check,
        } => with_config(cli, |config| {
            println!("{}: valid: {}", cli.config.display(), config.summary());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { json } => with_config(cli, |config| {
            let report = status::gather(&config).context("cannot read the store")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Run => with_config(cli, |config| {
            init_logs(cli, &config)?;
            let system = actix::System::new();
            system.block_on(async {
                let control = daemon::signals()?;
                daemon::run(cli.config.clone(), config, control).await
            })?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// `lorastream crawl`: one pass, or passes on the sources' schedules.
async fn crawl_command(
    config: &Config,
    store: &lorastream::store::Store,
    source: Option<&str>,
    once: bool,
    seal: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use lorastream::crawl::crawl;
    let http = lorastream::sources::Http::new();
    let print = |r: &lorastream::crawl::CrawlReport| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            print!("{}", r.render());
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

/// A progress bar with loss, tokens/s and ETA when stderr is a terminal.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(1);
    let style =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  eta {eta}")
            .ok()?;
    bar.set_style(style);
    Some(bar)
}

/// Runs `f` with the loaded config; an invalid config exits with EX_CONFIG.
fn with_config(
    cli: &Cli,
    f: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match load(&cli.config) {
        Ok(config) => f(config),
        Err(code) => Ok(code),
    }
}
