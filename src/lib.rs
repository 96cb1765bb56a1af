//! lorastream: a daemon that keeps a language model learning from the web.
//!
//! # Layout
//!
//! - [`text_enum`]: the one enum ⇄ string mechanism (config, store, logs, CLI).
//! - [`config`]: the TOML configuration, defaults, validation with key and line.
//! - [`store`]: SQLite (WAL) with numbered migrations and a typed API per table.
//! - [`fsutil`]: atomic file writes used for every artifact.
//! - [`lock`]: the state dir's writer lock (one writer process at a time).
//! - [`logging`]: tracing-subscriber set-up (terminal, plain, JSON).
//! - [`ml`]: the model layer on libtorch (tch): GPT-2 and Llama, LoRA in PEFT's
//!   format, tokenizer and chat templates, generation, `model init`.
//! - [`daemon`]: `lorastream run`: store, signals, reload, shutdown.
//! - [`actors`]: the actor pipeline of DESIGN.md §1 and its supervisor.
//! - [`notify`]: systemd's notify protocol (READY, STATUS, WATCHDOG …).
//! - [`http`]: the one HTTP client (retries, rate limits, size caps,
//!   redaction) and secret reading, used by the sources and the summarizer.
//! - [`sources`]: hf_datasets, crawlbase and spool sources.
//! - [`preprocess`]: raw items to chat examples (cleaning, limits, dedup).
//! - [`summarize`]: condensing long answers (extractive, OpenAI-compatible).
//! - [`crawl`]: one pass of sources → preprocess → summarize → seal.
//! - [`status`]: the report behind `lorastream status`.
//! - [`streams`]: sealed streams of chat examples and their train/eval files.
//! - [`train`]: continual LoRA training with checkpoints and replay.
//! - [`eval`]: perplexity and the forgetting matrix.
//! - [`replay`]: the replay pool: a bounded reservoir per earlier stream, read
//!   lazily, weighted toward the streams forgotten most recently.
//! - [`retention`]: what may be deleted (`[retention]`), disk use and free space.
//! - [`lineage`]: the chain of versions, base snapshots and merges.
//! - [`policy`]: the feedback policy: promote, retrain with replay and a lower
//!   rate, or give a stream up (docs/continual-learning.md).
//! - [`pipeline`]: train / evaluate / learn over the store (CLI and daemon).
//! - [`server`]: the OpenAI-compatible chat server with hot swap and memory.
//!
//! The binary (`src/main.rs` and `src/cli/`: arguments, one function per
//! subcommand, the crawl loop, the benchmarks comparable with
//! `../shared/bench/peer_hf.py`) is the clap command line over these modules.

pub mod actors;
pub mod config;
pub mod crawl;
pub mod daemon;
pub mod eval;
pub mod fsutil;
pub mod http;
pub mod lineage;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod ml;
pub mod model_source;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod preprocess;
pub mod replay;
pub mod retention;
pub mod server;
pub mod sources;
pub mod status;
pub mod store;
pub mod streams;
pub mod summarize;
pub mod text_enum;
pub mod train;
