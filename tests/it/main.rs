//! The integration tests, one binary (libtorch is linked once, not once per
//! file): each module is one area, run with `cargo test --release --test it AREA::`,
//! e.g. `cargo test --release --test it train::` or `KILLS=50 cargo test --release --test it kill::`.
//! Shared helpers are in `common/` (loopback servers, tiny models, daemons).

mod attack;
mod chat;
mod chat_load;
mod common;
mod config_check;
mod crawl;
mod daemon;
mod eval_scale;
mod feedback;
mod fleet;
mod fuzz;
mod gguf;
mod kill;
mod model;
mod parity;
mod pipeline;
mod publish;
mod security;
mod security_slow;
mod serving;
mod sources;
mod systemd;
mod train;
mod train_runs;
mod unattended;
mod web;
