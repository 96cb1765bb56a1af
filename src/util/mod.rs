//! The daemon's small shared services, used by every stage.
//!
//! # Layout
//!
//! - [`http`]: the one HTTP client (retries, rate limits, size caps,
//!   redaction) and secret reading, used by the sources and the summarizer.
//! - [`sse`]: the one Server-Sent Events decoder (the chat CLI, the gateway).
//! - [`retry`]: the one exponential backoff (HTTP retries, stage restarts,
//!   publish targets, the worker's model reload).
//! - [`ids`]: unguessable ids (conversations, requests).
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`logging`]: tracing-subscriber set-up (terminal, plain, JSON).
//! - [`notify`]: systemd's notify protocol (READY, STATUS, WATCHDOG …).
//! - [`lock`]: the state dir's writer lock (one writer process at a time).
//! - [`disk`]: the state dir's disk use and free space.

pub mod disk;
pub mod http;
pub mod ids;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod retry;
pub mod sse;
