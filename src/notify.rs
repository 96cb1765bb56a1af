//! systemd's notify protocol (sd_notify(3)): datagrams to `$NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). Everything is a no-op
//! when the daemon does not run under systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; none set (or unusable): every call does nothing.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let path = path.to_string_lossy().into_owned();
        match UnixDatagram::unbound() {
            Ok(sock) => Notifier {
                socket: Some((sock, path)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the notify socket; systemd will not hear from us");
                Notifier::default()
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines).
    pub fn notify(&self, state: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let sent = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        } else {
            sock.send_to(state.as_bytes(), path)
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, state, "notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd ≥ 253 wants beside it.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set
/// for this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                path.to_string_lossy().into(),
            )),
        };
        n.ready("ok");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        n.reloading();
        let len = server.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        Notifier::default().ready("x");
    }
}
