//! The binary's own modules (not part of the library): clap arguments, one
//! function per subcommand, the crawl loop and the benchmarks.

pub mod adapters;
pub mod args;
pub mod bench;
pub mod bench_chat;
pub mod chat;
pub mod commands;
pub mod crawl;
pub mod demo;
pub mod sse;
