//! One function per subcommand; `main` dispatches to them.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use lorastream::config::{Config, ConfigError};
use lorastream::learn::pipeline::PipelineError;
use lorastream::learn::spec::LearnSpec;
use lorastream::run::daemon;
use lorastream::serve::status;
use lorastream::util::logging::{self, LogSettings};
use lorastream_ml::models::init::{InitOptions, Preset, init_model};
use lorastream_ml::train::TrainError;
use lorastream_ml::{Arch, DType};

use super::args::{Cli, EXIT_CONFIG};

/// Runs `f` with the loaded config; an invalid config exits with EX_CONFIG,
/// printed as-is (it names file, key and line).
pub fn with_config(
    cli: &Cli,
    f: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match Config::load(&cli.config) {
        Ok(config) => f(config),
        Err(e) => {
            match &e {
                ConfigError::Read { .. } => eprintln!("error: {e}"),
                ConfigError::Invalid { problems, .. } => {
                    eprintln!("{e}");
                    eprintln!(
                        "error: {} problem(s) in {}",
                        problems.len(),
                        cli.config.display()
                    );
                }
            }
            Ok(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Logging as the flags and `[daemon]` say: to stdout for the daemon
/// (`run`), to stderr for every other command, whose stdout is its output.
pub fn init_logs(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    let verbosity = cli.verbose.min(10) as i8 - cli.quiet.min(10) as i8;
    let format = cli.log_format.unwrap_or(config.daemon.log_format);
    let mut settings = LogSettings::new(format, verbosity, &config.daemon.log_filter);
    settings.to_stderr = !matches!(cli.command, crate::cli::args::Command::Run);
    logging::init(&settings)?;
    Ok(())
}

/// `model init`
pub fn model_init(
    arch: Arch,
    preset: Preset,
    out: &Path,
    corpus: Option<&Path>,
    seed: i64,
    vocab_size: usize,
) -> anyhow::Result<ExitCode> {
    let cfg = init_model(
        out,
        &InitOptions {
            arch,
            preset,
            corpus,
            seed,
            vocab_size,
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

/// `model import`
pub fn model_import(gguf: &Path, out: &Path, dtype: DType) -> anyhow::Result<ExitCode> {
    if out.exists() {
        anyhow::bail!("{} exists; choose a new directory", out.display());
    }
    let kind = dtype.kind(tch::Device::Cpu);
    let started = std::time::Instant::now();
    lorastream_ml::gguf::import::import(gguf, out, kind)?;
    println!(
        "wrote {} from {} in {:.1} s",
        out.display(),
        gguf.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `model export`
pub fn model_export(model: &Path, adapter: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    lorastream_ml::model::export_merged_model(model, adapter, out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `streams import`
pub fn streams_import(
    config: &Config,
    file: &Path,
    name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let name = name.map(str::to_string).unwrap_or_else(|| {
        file.file_stem()
            .map_or("import".into(), |s| s.to_string_lossy().into_owned())
    });
    let (id, new, dup) = lorastream::data::streams::import(
        &store,
        &config.state_dir(),
        file,
        &name,
        &config.streams,
    )?;
    let s = store.stream(id)?.context("stream vanished")?;
    println!(
        "stream {id} {name:?}: {new} new examples ({dup} already stored), train {} / eval {}, {}",
        s.n_train,
        s.n_eval,
        s.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `train`: SIGINT/SIGTERM finish the step, checkpoint and exit 130; `train`
/// again resumes.
pub fn train(config: &Config, stream: Option<i64>) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let stop = stop_on_signals()?;
    let bar = progress_bar();
    let result = lorastream::learn::pipeline::train_stream(
        &LearnSpec::from_config(config),
        &store,
        stream,
        lorastream_store::Actor::Cli,
        &stop,
        show_progress(bar.as_ref(), config.train.log_every),
    );
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
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// `eval [--full]`
pub fn eval(config: &Config, json: bool, full: bool) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let mut spec = LearnSpec::from_config(config);
    if full {
        spec.eval.eval_tokens_per_stream = 0;
        spec.eval.eval_tokens_old_streams = 0;
        let n = store.clear_evals()?;
        eprintln!("eval --full: {n} stored cells are measured again on whole eval splits");
    }
    let m = lorastream::learn::matrix::fill::evaluate(&spec, &store)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status`
pub fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = status::gather(config).context("cannot read the store")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `memory list`
pub fn memory_list(config: &Config, identity: &str, user: &str) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let messages = store.owner_messages(&lorastream_store::Owner::new(identity, Some(user)))?;
    for m in &messages {
        println!(
            "{} {:<9} {}",
            m.conversation_id,
            m.role,
            m.content.replace('\n', " ")
        );
    }
    eprintln!("{} message(s) of {user:?}", messages.len());
    Ok(ExitCode::SUCCESS)
}

/// `memory forget`
pub fn memory_forget(config: &Config, identity: &str, user: &str) -> anyhow::Result<ExitCode> {
    let store = config.open_store()?;
    let gone = store.forget(identity, Some(Some(user)))?;
    println!(
        "forgot {} message(s) of {user:?} ({identity}); {} example(s) kept out of training",
        gone.messages,
        gone.examples + gone.raw_items
    );
    for l in &gone.learned {
        println!(
            "already learned: example {} in stream {} (versions {:?}): roll back to undo",
            l.example_id, l.stream_id, l.versions
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `run`: the daemon in the foreground.
pub fn run(cli: &Cli, config: Config) -> anyhow::Result<ExitCode> {
    let system = actix::System::new();
    let result = system.block_on(async {
        let control = daemon::signals()?;
        daemon::run(cli.config.clone(), config, control).await
    });
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    leave(code)
}

/// Ends the daemon's process at once. Threads may still be inside libtorch
/// (the generation worker loading the model when a stop came): returning
/// from `main` would run libtorch's static destructors under them, a crash
/// and a failed exit status. By now the store is checkpointed and the logs
/// are written (synchronously, to stdout), so nothing needs those handlers.
fn leave(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) only ends the process; std has no call that skips
    // the C++ static destructors (`std::process::exit` runs them).
    unsafe { libc::_exit(code) }
}

/// A flag SIGINT and SIGTERM raise: training checkpoints and stops.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Training progress: on the bar when there is one, else a log line every
/// `log_every` steps.
pub fn show_progress(
    bar: Option<&indicatif::ProgressBar>,
    log_every: usize,
) -> impl FnMut(&lorastream_ml::train::Progress) + '_ {
    move |p| match bar {
        Some(bar) => {
            bar.set_length(p.total_steps as u64);
            bar.set_position(p.step as u64);
            bar.set_message(format!("loss {:.4}  {:.0} tok/s", p.loss, p.tokens_per_s));
        }
        None if p.step.is_multiple_of(log_every.max(1)) || p.step == p.total_steps => p.log(),
        None => {}
    }
}

/// A progress bar with loss, tokens/s and ETA when stderr is a terminal.
pub fn progress_bar() -> Option<indicatif::ProgressBar> {
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
