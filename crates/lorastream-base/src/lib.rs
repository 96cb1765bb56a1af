//! The foundations every lorastream crate shares, and nothing else.
//!
//! # Layout
//!
//! - [`fsutil`]: crash-safe file writes (temp name, fsync, rename, fsync the
//!   directory) for every artifact, and the writable-directory check.
//! - [`text_enum`](mod@text_enum): the one enum ⇄ string mechanism (config, store, logs, CLI).

pub mod fsutil;
pub mod text_enum;
