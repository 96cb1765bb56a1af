//! tracing-subscriber set-up: human format on a terminal, plain text without
//! colours otherwise (journald adds its own timestamps), JSON on request.
//! Filters use `RUST_LOG` syntax; `RUST_LOG` wins over `-v/-q` and the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogFormat;

/// How the process should log, resolved from flags, environment and config.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
    /// Log to stderr (commands whose stdout is their output, such as a JSON
    /// report); the daemon logs to stdout, which systemd connects to journald.
    pub to_stderr: bool,
}

impl LogSettings {
    /// `verbosity` is `-v` count minus `-q` count; 0 keeps `config_filter`.
    pub fn new(format: LogFormat, verbosity: i8, config_filter: &str) -> Self {
        let filter = match verbosity {
            i8::MIN..=-2 => "error".to_string(),
            -1 => "warn".to_string(),
            0 => config_filter.to_string(),
            1 => "debug".to_string(),
            _ => "trace".to_string(),
        };
        LogSettings {
            format,
            filter,
            to_stderr: false,
        }
    }
}

/// The output style that `format` resolves to on this process's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Ansi,
    Plain { timestamps: bool },
    Json,
}

pub fn style(format: LogFormat, stdout_is_tty: bool, under_journald: bool) -> Style {
    match format {
        LogFormat::Json => Style::Json,
        LogFormat::Pretty | LogFormat::Auto if stdout_is_tty => Style::Ansi,
        _ => Style::Plain {
            timestamps: !under_journald,
        },
    }
}

/// Installs the global subscriber. Returns an error naming a bad filter.
/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid {what} {filter:?}: {source}")]
    Filter {
        what: &'static str,
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install logger: {0}")]
    Install(String),
}

pub fn init(settings: &LogSettings) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => {
            EnvFilter::try_new(&f).map_err(|source| LogError::Filter {
                what: "RUST_LOG",
                filter: f.clone(),
                source,
            })?
        }
        _ => {
            let f = EnvFilter::try_new(&settings.filter).map_err(|source| LogError::Filter {
                what: "log filter",
                filter: settings.filter.clone(),
                source,
            })?;
            // The scheduler's own start-up chatter is not an event of ours.
            match "tokio_cron_scheduler=warn".parse() {
                Ok(d) if !settings.filter.contains("tokio_cron_scheduler") => f.add_directive(d),
                _ => f,
            }
        }
    };
    // systemd sets JOURNAL_STREAM when stdout is connected to the journal.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let (writer, is_tty) = if settings.to_stderr {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match style(settings.format, is_tty, journald && !settings.to_stderr) {
        Style::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        Style::Ansi => builder.with_ansi(true).try_init(),
        Style::Plain { timestamps: true } => builder.with_ansi(false).try_init(),
        Style::Plain { timestamps: false } => builder.with_ansi(false).without_time().try_init(),
    };
    // The subscriber's error type is not public: keep its message.
    result.map_err(|e| LogError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_follows_terminal_and_request() {
        assert_eq!(style(LogFormat::Auto, true, false), Style::Ansi);
        assert_eq!(
            style(LogFormat::Auto, false, false),
            Style::Plain { timestamps: true }
        );
        assert_eq!(
            style(LogFormat::Auto, false, true),
            Style::Plain { timestamps: false }
        );
        assert_eq!(
            style(LogFormat::Pretty, false, false),
            Style::Plain { timestamps: true }
        );
        assert_eq!(style(LogFormat::Json, true, false), Style::Json);
    }

    #[test]
    fn verbosity_maps_to_filters() {
        assert_eq!(
            LogSettings::new(LogFormat::Auto, 0, "info,lorastream=debug").filter,
            "info,lorastream=debug"
        );
        assert_eq!(LogSettings::new(LogFormat::Auto, 1, "info").filter, "debug");
        assert_eq!(LogSettings::new(LogFormat::Auto, 3, "info").filter, "trace");
        assert_eq!(LogSettings::new(LogFormat::Auto, -1, "info").filter, "warn");
        assert_eq!(
            LogSettings::new(LogFormat::Auto, -5, "info").filter,
            "error"
        );
    }
}
