//! lorastream: a daemon that keeps a language model learning from the web.
//!
//! # Layout
//!
//! The folders read like the pipeline, each layer importing only those below
//! it (`scripts/check-layers.py` checks it):
//!
//! - [`run`]: `lorastream run` — the daemon, one actor per stage, their
//!   schedule and supervisor, retention.
//! - [`serve`]: the OpenAI-compatible chat server (hot swap, memory,
//!   feedback, the web page) and the status report.
//! - [`publish`]: learn → publish → serve: promoted versions written to the
//!   `[[publish]]` targets (a directory, GGUF, a vLLM fleet, the Hub).
//! - [`learn`]: train → evaluate → decide: the base model's location, the
//!   pipeline over the store, the matrix, the feedback policy, replay,
//!   lineage and merges.
//! - [`data`]: crawl → clean → condense → seal: sources, preprocess,
//!   summarize, streams.
//! - [`util`]: the HTTP client, metrics, logging, systemd notify, the state
//!   dir's lock and disk use.
//! - [`config`]: the TOML configuration, defaults, validation with key and
//!   line; it resolves into the specs each stage takes.
//!
//! Below the daemon, crates of their own: `lorastream-ml` (the model layer on
//! libtorch: model families, LoRA, tokenizer, generation, the training step,
//! perplexity), `lorastream-store` (SQLite with typed rows) and
//! `lorastream-base` (atomic files, the enum ⇄ text mechanism).
//!
//! The binary (`src/main.rs` and `src/cli/`: arguments, one function per
//! subcommand, the crawl loop, the benchmarks comparable with the
//! transformers + PEFT peer) is the clap command line over these modules.

pub mod config;
pub mod data;
pub mod learn;
pub mod publish;
pub mod run;
pub mod serve;
pub mod util;
