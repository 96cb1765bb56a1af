//! `lorastream run` as a real process: it opens the store, logs its config,
//! survives a bad SIGHUP reload, applies a good one, and exits 0 on SIGTERM and
//! SIGINT with 'shutdown complete' logged. `status` reads what it left.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::daemon::Daemon;

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
    assert_eq!(started["schema"], lorastream_store::SCHEMA_VERSION);
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
    assert_eq!(report["schema_version"], lorastream_store::SCHEMA_VERSION);
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
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let out = common::lorastream()
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("schema version 99") && stderr.contains("refusing"),
        "{stderr}"
    );
}

/// Reads the datagrams the daemon sends to a NOTIFY_SOCKET we bind, as systemd
/// would: newline-separated assignments (a trailing newline is allowed).
fn notifications(
    sock: &std::os::unix::net::UnixDatagram,
    until: &str,
    within: Duration,
) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(until);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no {until:?} within {within:?}; got {got:?}");
}

/// The daemon with a NOTIFY_SOCKET we read, and a 400 ms watchdog.
fn with_notify_socket(dir: &Path, config: &Path) -> (Daemon, std::os::unix::net::UnixDatagram) {
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let d = Daemon::start_with_env(
        config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    (d, sock)
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (d, sock) = with_notify_socket(dir.path(), &config);
    let got = notifications(&sock, "READY=1", Duration::from_secs(30));
    // READY only once the store is open and the stages run.
    assert!(dir.path().join("state/lorastream.db").exists());
    let ready = got.last().unwrap();
    assert!(ready.contains("STATUS=running: 1 source(s)"), "{ready}");
    // Watchdog pings every WATCHDOG_USEC / 2 while healthy.
    let pings = notifications(&sock, "WATCHDOG=1", Duration::from_secs(5));
    assert!(
        pings.iter().any(|p| p.trim_end() == "WATCHDOG=1"),
        "{pings:?}"
    );
    // Reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    d.signal(libc::SIGHUP);
    let got = notifications(&sock, "RELOADING=1", Duration::from_secs(10));
    let reloading = got.last().unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("{reloading}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    notifications(&sock, "READY=1", Duration::from_secs(10));
    d.signal(libc::SIGTERM);
    notifications(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(d.wait_exit().success());
}

#[test]
fn sighup_changes_schedules_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First: the source runs once a year.
    let config = write_config(
        dir.path(),
        "schedule = \"0 0 0 1 1 *\"\n\n[schedule]\ncrawl_on_start = false\n",
    );
    let d = Daemon::start(&config);
    let v = d.wait_for("scheduled");
    assert_eq!(v["cron"], "0 0 0 1 1 *");
    // Then every second: the crawler runs within a few seconds of the reload.
    let store = lorastream_store::Store::open(&dir.path().join("state/lorastream.db")).unwrap();
    assert_eq!(store.source("drops").unwrap().unwrap().last_run_at, None);
    write_config(
        dir.path(),
        "schedule = \"* * * * * *\"\n\n[schedule]\ncrawl_on_start = false\n",
    );
    d.signal(libc::SIGHUP);
    let v = d.wait_for("scheduled");
    assert_eq!(v["cron"], "* * * * * *");
    let mut ran = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let rows = store.sources().unwrap();
        if rows
            .iter()
            .any(|r| r.name == "drops" && r.last_run_at.is_some())
        {
            ran = true;
            break;
        }
    }
    assert!(ran, "the new schedule did not run the source");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn a_scheduled_crawl_still_running_is_skipped_not_queued() {
    use common::loopback::{Reply, Req, Server};
    // Every page takes 2.5 s; the schedule fires every second.
    let server = Server::start(|_: &Req| {
        Reply::Delay(
            Duration::from_millis(2500),
            Box::new(Reply::json(
                200,
                &serde_json::json!({"rows": [], "num_rows_total": 0}),
            )),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n\n[[sources]]\nname = \"slow\"\nkind = \"hf_datasets\"\ndataset = \"x/y\"\nbase_url = \"{}\"\nschedule = \"* * * * * *\"\ntimeout_secs = 10\n",
            server.base
        ),
    )
    .unwrap();
    let d = Daemon::start(&config);
    let skipped = d
        .wait_until(Duration::from_secs(20), |v| {
            v["message"] == "scheduled run skipped: the previous one is still running"
        })
        .expect("no skip logged");
    assert_eq!(skipped["job"], "crawl:slow");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    // One request per finished run: overlapping ticks were dropped, not queued.
    let seen = server.seen().len();
    assert!((1..=3).contains(&seen), "{seen} requests");
}

#[test]
fn a_failing_stage_is_retried_with_backoff_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool");
    std::fs::copy(fixtures.join("topic-a.csv"), spool.join("topic-a.csv")).unwrap();
    let model = dir.path().join("model");
    let config = write_config(
        dir.path(),
        &format!(
            "dir = \"{}\"\nsettle_secs = 0\n[sources.fields]\nquestion = \"Questions\"\nanswer = \"Answers\"\n\n[streams]\nmin_examples = 3\nmin_eval_examples = 1\n\n[model]\ndtype = \"f32\"\nsource = \"path:{}\"\n\n[train]\nseq_len = 64\n",
            spool.display(),
            model.display()
        ),
    );
    // No model yet: the trainer fails, and is retried after 1 s, 2 s …
    let d = Daemon::start(&config);
    let first = d.wait_for("stage failed; restarting it after a backoff");
    assert_eq!(first["stage"], "trainer");
    assert_eq!(first["retry_in_ms"], 1000);
    assert!(
        first["error"].as_str().unwrap().contains("base model"),
        "{first}"
    );
    let second = d.wait_for("stage failed; restarting it after a backoff");
    assert_eq!(second["retry_in_ms"], 2000);
    // A missing model fails every stream alike: it is retried, and never
    // counted against the stream (which would be set aside at the third).
    let third = d.wait_for("stage failed; restarting it after a backoff");
    assert_eq!(third["retry_in_ms"], 4000);
    let store = lorastream_store::Store::open(&dir.path().join("state/lorastream.db")).unwrap();
    let trainer = store
        .stages()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "trainer")
        .unwrap();
    assert!(trainer.failures >= 2, "{trainer:?}");
    assert!(trainer.last_error.unwrap().contains("base model"));
    // The model appears: the next retry trains the waiting stream.
    let out = common::lorastream()
        .args(["model", "init", "--arch", "gpt2", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let decided = d
        .wait_until(Duration::from_secs(60), |v| {
            v["message"] == "feedback decision"
        })
        .expect("no decision after the model appeared");
    assert_eq!(decided["adapter"], 1);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

/// Before: the watchdog pinged while SQLite answered, so a stage stuck
/// forever (here a crawl whose server never answers) kept a dead daemon
/// "healthy". Now the pings stop once a running stage made no progress for
/// `stall_secs`, and systemd would restart it.
#[test]
fn the_watchdog_stops_when_a_stage_makes_no_progress() {
    let server = common::loopback::Server::start(|_: &common::loopback::Req| {
        common::loopback::Reply::Delay(
            Duration::from_secs(60),
            Box::new(common::loopback::Reply::status(500, &[])),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\nstall_secs = 2\n\n[[sources]]\nname = \"rows\"\nkind = \"hf_datasets\"\n\
             base_url = \"{}\"\ndataset = \"quora/x\"\ntimeout_secs = 120\n",
            server.base
        ),
    )
    .unwrap();
    let (d, sock) = with_notify_socket(dir.path(), &config);
    notifications(&sock, "WATCHDOG=1", Duration::from_secs(30));
    let stalled = d
        .wait_until(Duration::from_secs(20), |v| {
            v["message"]
                == "stage made no progress; watchdog pings stop so systemd restarts the daemon"
        })
        .expect("the stall was not noticed");
    assert_eq!(stalled["stage"], "crawler", "{stalled}");
    // Drain what was sent before, then: silence.
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    let quiet_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < quiet_until {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            assert!(!msg.contains("WATCHDOG=1"), "pinged while stalled: {msg}");
        }
    }
    d.signal(libc::SIGKILL);
}
