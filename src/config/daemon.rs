//! The operational sections: `[daemon]`, `[store]`, `[schedule]`,
//! `[retention]` (`[server]` has a file of its own).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// State directory. Unset: `$STATE_DIRECTORY` (systemd), else
    /// `$XDG_STATE_HOME/lorastream`, else `~/.local/state/lorastream`.
    pub state_dir: Option<PathBuf>,
    /// Seconds SIGTERM waits for the current step to finish and checkpoint.
    pub shutdown_grace_secs: u64,
    /// Log format when `--log-format` is not given.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax) when neither `RUST_LOG` nor `-v/-q` is given.
    pub log_filter: String,
    /// How often one item (a page, a stream, a candidate) may
    /// fail before it is set aside with its reason and the rest goes on.
    pub max_item_failures: u32,
    /// A stage that is running but records no progress for this many seconds
    /// is stuck: the watchdog pings stop, and systemd restarts the daemon.
    pub stall_secs: u64,
}

impl DaemonConfig {
    /// How long shutdown may take in all: the grace for the current step, and
    /// 5 s to stop the stages and flush the store after it.
    pub fn shutdown_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs + 5)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            shutdown_grace_secs: 30,
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
            max_item_failures: 3,
            stall_secs: 1800,
        }
    }
}

text_enum! {
    pub enum LogFormat {
        /// Human format with colours on a terminal, plain text otherwise.
        Auto = "auto",
        /// Human format, colours only on a terminal.
        Pretty = "pretty",
        /// One JSON object per line.
        Json = "json",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file. Unset: `<state_dir>/lorastream.db`.
    pub path: Option<PathBuf>,
    /// How long a writer waits for a lock before failing, in milliseconds.
    pub busy_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            busy_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Cron (with seconds, UTC) for sources without their own `schedule`.
    pub crawl: Option<String>,
    /// Cron for sealing ready examples into a stream.
    pub seal: Option<String>,
    /// `on_new_stream` or a cron expression.
    pub train: String,
    /// Cron for filling missing cells of the evaluation matrix.
    pub eval: Option<String>,
    /// Run every enabled source once when the daemon starts (and after a
    /// reload adds one), instead of waiting for its first scheduled time.
    pub crawl_on_start: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            crawl: None,
            seal: None,
            train: ON_NEW_STREAM.into(),
            eval: None,
            crawl_on_start: true,
        }
    }
}

/// The value of `[schedule] train` that trains as soon as a stream is sealed.
pub const ON_NEW_STREAM: &str = "on_new_stream";

/// `[retention]`: what the daemon deletes so the state dir does not grow
/// without bound, and when it warns about disk space.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Rejected, not-learned and failed versions whose files are kept (the
    /// newest); older ones lose their directory (the row and decision stay).
    pub keep_rejected: usize,
    /// Delete the training checkpoints (`checkpoint-*.safetensors`,
    /// `best.safetensors`, about 3× the adapter) of decided versions.
    pub drop_checkpoints: bool,
    /// Days ingested spool files stay in `done/`; 0 keeps them.
    pub done_days: u64,
    /// The WAL file is truncated to this size after a checkpoint.
    pub wal_max_bytes: u64,
    /// Below this much free space on the state dir's file system the daemon
    /// logs a warning (once per crossing) and `status` shows it.
    pub min_free_bytes: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_rejected: 3,
            drop_checkpoints: true,
            done_days: 30,
            wal_max_bytes: 64 << 20,
            min_free_bytes: 2 << 30,
        }
    }
}
