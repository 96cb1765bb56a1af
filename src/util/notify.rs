//! systemd's notify protocol (sd_notify(3)), the states spelled by the
//! `sd-notify` crate and sent without ever blocking:
//! READY, STATUS, RELOADING (with MONOTONIC_USEC), STOPPING and WATCHDOG, to
//! the socket path in `$NOTIFY_SOCKET` (the crate does not take abstract
//! `@name` sockets, which systemd does not hand to services). Everything is a
//! no-op when the daemon does not run under systemd.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Default)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; none set: every call does nothing.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        // Never blocks: a full socket queue (systemd not reading, a test
        // that stopped reading) drops the message rather than stalling the
        // caller, which is the supervisor whose watchdog must keep deciding.
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
            sock.set_nonblocking(true)?;
            sock.send_to(msg.as_bytes(), &path)
        });
        if let Err(e) = sent {
            tracing::debug!(error = %e, ?states, "notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd ≥ 253 wants beside it.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        match NotifyState::monotonic_usec_now() {
            Ok(now) => states.push(now),
            Err(e) => tracing::debug!(error = %e, "cannot read the monotonic clock"),
        }
        states.push(NotifyState::Status("reloading the configuration"));
        self.send(&states);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set
/// for this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}
