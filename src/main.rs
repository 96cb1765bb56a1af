//! The `lorastream` command line: arguments in `cli::args`, one function per
//! subcommand in `cli::commands` (crawl and bench in their own files).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{
    AdaptersCommand, BenchCommand, Cli, Command, ConfigCommand, MemoryCommand, ModelCommand,
    StreamsCommand,
};
use cli::commands::{self, init_logs, with_config};

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

fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Model { command } => model(command),
        Command::Bench { command } => {
            let line = match command {
                BenchCommand::Generate(args) => cli::bench::bench_generate(args)?,
                BenchCommand::Train(args) => cli::bench::bench_train(args)?,
                BenchCommand::Eval(args) => cli::bench::bench_eval(args)?,
                BenchCommand::Chat(args) => {
                    cli::bench_chat::bench_chat(args)?;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => with_config(cli, |config| {
            println!("{}: valid: {}", cli.config.display(), config.summary());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { json } => with_config(cli, |config| commands::status(&config, *json)),
        Command::Demo(args) => cli::demo::demo(args),
        Command::Chat { url, model, user } => with_config(cli, |config| {
            let args = cli::chat::ChatArgs {
                url: url.clone(),
                model: model.clone(),
                user: user.clone(),
            };
            cli::chat::command(&config, args)
        }),
        Command::Memory { command } => with_config(cli, |config| match command {
            MemoryCommand::List { user, identity } => {
                commands::memory_list(&config, identity, user)
            }
            MemoryCommand::Forget { user, identity } => {
                commands::memory_forget(&config, identity, user)
            }
        }),
        Command::Adapters { command } => with_config(cli, |config| {
            init_logs(cli, &config)?;
            match command {
                AdaptersCommand::List { json } => cli::adapters::list(&config, *json),
                AdaptersCommand::Promote { version } => cli::adapters::promote(&config, *version),
                AdaptersCommand::Rollback => cli::adapters::rollback(&config),
                AdaptersCommand::Merge => cli::adapters::merge(&config),
                AdaptersCommand::Publish { version, to } => {
                    cli::adapters::publish(&config, *version, to.as_deref())
                }
                AdaptersCommand::Export {
                    version,
                    format,
                    out,
                } => cli::adapters::export(&config, *version, format, out),
            }
        }),
        Command::Run => with_config(cli, |config| {
            init_logs(cli, &config)?;
            commands::run(cli, config)
        }),
        writer => with_config(cli, |config| {
            init_logs(cli, &config)?;
            state_writer(writer, &config)
        }),
    }
}

/// `lorastream model …`: needs no config.
fn model(command: &ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Init {
            arch,
            preset,
            out,
            corpus,
            seed,
            vocab_size,
        } => commands::model_init(*arch, *preset, out, corpus.as_deref(), *seed, *vocab_size),
        ModelCommand::Import { gguf, out, dtype } => commands::model_import(gguf, out, *dtype),
        ModelCommand::Export {
            model,
            adapter,
            out,
        } => commands::model_export(model, adapter, out),
    }
}

/// The commands that write the state dir, each under its writer lock.
fn state_writer(
    command: &Command,
    config: &lorastream::config::Config,
) -> anyhow::Result<ExitCode> {
    let name = match command {
        Command::Streams { .. } => "lorastream streams import",
        Command::Train { .. } => "lorastream train",
        Command::Crawl { .. } => "lorastream crawl",
        Command::Learn { .. } => "lorastream learn",
        Command::Eval { .. } => "lorastream eval",
        _ => unreachable!("dispatch sends only the state writers here"),
    };
    let _lock = lorastream::util::lock::acquire(&config.state_dir(), name)?;
    match command {
        Command::Streams {
            command: StreamsCommand::Import { file, name },
        } => commands::streams_import(config, file, name.as_deref()),
        Command::Train { stream } => commands::train(config, *stream),
        Command::Crawl {
            source,
            once,
            seal,
            json,
        } => cli::crawl::command(config, source.as_deref(), *once, *seal, *json),
        Command::Learn { stream, json } => cli::adapters::learn(config, *stream, *json),
        Command::Eval { json, full } => commands::eval(config, *json, *full),
        _ => unreachable!("dispatch sends only the state writers here"),
    }
}
