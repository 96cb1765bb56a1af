//! The `lorastream` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use lorastream::config::{Config, ConfigError, LogFormat};
use lorastream::logging::{self, LogSettings};
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
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match &cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("{}: valid: {}", cli.config.display(), config.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let report = status::gather(&config).context("cannot read the store")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            init_logs(cli, &config)?;
            let system = actix::System::new();
            system.block_on(async {
                let control = daemon::signals()?;
                daemon::run(cli.config.clone(), config, control).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
