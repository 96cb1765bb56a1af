//! `lorastream run` as a real process: it opens the store, logs its config,
//! survives a bad SIGHUP reload, applies a good one, and exits 0 on SIGTERM and
//! SIGINT with 'shutdown complete' logged. `status` reads what it left.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("lorastream.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"state\"\n\n[[sources]]\nname = \"drops\"\nkind = \"spool\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = common::lorastream()
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lorastream run");
        let lines = reader(child.stdout.take().unwrap());
        Daemon { child, lines }
    }

    /// Waits for a JSON log line whose message is `msg`; every line must parse.
    fn wait_for(&self, msg: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {msg:?} log line within 30 s"));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if v["message"] == msg {
                return v;
            }
        }
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn wait_exit(mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("daemon did not exit within 30 s");
    }
}

#[test]
fn runs_reloads_and_shuts_down_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let d = Daemon::start(&config);
    let started = d.wait_for("lorastream started");
    assert_eq!(started["level"], "INFO");
    assert!(
        started["summary"].as_str().unwrap().contains("drops:spool"),
        "{started}"
    );
    assert_eq!(started["schema"], lorastream::store::SCHEMA_VERSION);
    assert!(dir.path().join("state/lorastream.db").exists());

    // A broken file is refused and the daemon keeps running.
    std::fs::write(&config, "[train]\nlr = -1\n").unwrap();
    d.signal(libc::SIGHUP);
    let failed = d.wait_for("config reload failed; keeping the running config");
    assert!(
        failed["error"].as_str().unwrap().contains("train.lr"),
        "{failed}"
    );

    // A good file is applied.
    write_config(
        dir.path(),
        "\n[[sources]]\nname = \"more\"\nkind = \"spool\"\n",
    );
    d.signal(libc::SIGHUP);
    let reloaded = d.wait_for("config reloaded");
    assert!(
        reloaded["summary"].as_str().unwrap().contains("more:spool"),
        "{reloaded}"
    );

    d.signal(libc::SIGTERM);
    let stopping = d.wait_for("shutting down");
    assert_eq!(stopping["reason"], "SIGTERM");
    d.wait_for("shutdown complete");
    assert!(d.wait_exit().success());

    // status sees both sources registered by the daemon.
    let out = common::lorastream()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["initialized"], true);
    assert_eq!(report["schema_version"], lorastream::store::SCHEMA_VERSION);
    let names: Vec<&str> = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["store"].is_null())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["drops", "more"]);
}

#[test]
fn sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let d = Daemon::start(&config);
    d.wait_for("lorastream started");
    d.signal(libc::SIGINT);
    assert_eq!(d.wait_for("shutting down")["reason"], "SIGINT");
    d.wait_for("shutdown complete");
    assert!(d.wait_exit().success());
}

#[test]
fn status_before_first_run_does_not_create_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = common::lorastream()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    common::assert_ok(&out);
    assert!(stdout.contains("not created yet"), "{stdout}");
    assert!(stdout.contains("drops"), "{stdout}");
    assert!(!dir.path().join("state/lorastream.db").exists());
}

#[test]
fn a_newer_store_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let db = dir.path().join("state/lorastream.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    let out = common::lorastream()
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("schema version 7") && stderr.contains("refusing"),
        "{stderr}"
    );
}
