//! The daemon's small shared services, used by every stage.
//!
//! # Layout
//!
//! - [`http`]: outbound HTTP: every client made in one place, the fetching
//!   client (retries, rate limits, size caps) of the sources and the
//!   summarizer, redaction of URLs, secret reading, the one SSE decoder.
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
