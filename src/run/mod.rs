//! The running daemon: `lorastream run` and everything that keeps it going.
//!
//! # Layout
//!
//! - [`daemon`]: store, signals, reload, shutdown, the chat server beside the
//!   pipeline.
//! - [`actors`]: the actor pipeline of DESIGN.md §1 (one actor per file), its
//!   schedule and its supervisor.
//! - [`retention`]: what may be deleted (`[retention]`).

pub mod actors;
pub mod daemon;
pub mod retention;
