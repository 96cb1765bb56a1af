//! tracing-subscriber set-up: human format on a terminal, plain text without
//! colours otherwise (journald adds its own timestamps), JSON on request.
//! Filters use `RUST_LOG` syntax; `RUST_LOG` wins over `-v/-q` and the config.
//!
//! One event is one line: in the text formats every control character a
//! field carries (a newline in a name a request sent, say) is written
//! escaped (`\n`, `\u{1b}`), so no value can forge a line of its own; JSON
//! escapes them itself.

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
    let is_tty = if settings.to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let style = style(settings.format, is_tty, journald && !settings.to_stderr);
    // ANSI colours are escape sequences of our own: kept on a terminal.
    let keep_esc = style == Style::Ansi;
    let writer = match (style, settings.to_stderr) {
        (Style::Json, true) => BoxMakeWriter::new(std::io::stderr),
        (Style::Json, false) => BoxMakeWriter::new(std::io::stdout),
        (_, true) => BoxMakeWriter::new(move || OneLine::new(std::io::stderr(), keep_esc)),
        (_, false) => BoxMakeWriter::new(move || OneLine::new(std::io::stdout(), keep_esc)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match style {
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

/// A writer of formatted events that escapes every control character but
/// the event's final newline (tab kept; ESC kept when `keep_esc`). The fmt
/// layer writes each event with one `write_all`.
pub struct OneLine<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: std::io::Write> OneLine<W> {
    pub fn new(inner: W, keep_esc: bool) -> OneLine<W> {
        OneLine { inner, keep_esc }
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let keep = |b: u8| b == b'\t' || (self.keep_esc && b == 0x1b) || (b >= 0x20 && b != 0x7f);
        if body.iter().all(|&b| keep(b)) {
            return self.inner.write_all(buf);
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                _ if keep(b) => out.push(b),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes()),
            }
        }
        out.extend_from_slice(end);
        self.inner.write_all(&out)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_is_one_line() {
        use std::io::Write;
        let mut out = Vec::new();
        OneLine::new(&mut out, false)
            .write_all(
                b"INFO chat feedback identity=x\nERROR lorastream::audit forged\r\x1b[2J\tok\n",
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO chat feedback identity=x\\nERROR lorastream::audit forged\\r\\u{1b}[2J\tok\n"
        );
        let mut out = Vec::new();
        OneLine::new(&mut out, true)
            .write_all(b"\x1b[1mbold\x1b[0m\n")
            .unwrap();
        assert_eq!(out, b"\x1b[1mbold\x1b[0m\n");
    }

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
