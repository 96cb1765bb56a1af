//! Unattended operation (issue 14): no poison item, fault or oversized input
//! stops the daemon for good. Each test reproduces one way it used to.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use serde_json::{Value, json};

/// A state dir with a tiny model and a config; `extra` is appended.
fn setup(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_llama(&dir.join("model"));
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{root}/state\"\n\n[model]\nsource = \"path:{root}/model\"\n\n\
             [streams]\nmin_examples = 4\nmin_eval_examples = 2\n\n\
             [train]\nseq_len = 64\nbatch_size = 4\nepochs_per_stream = 1\nvalidation_fraction = 0.0\n\n\
             [eval]\nprobe = false\n{extra}",
            root = dir.display()
        ),
    )
    .unwrap();
    config
}

fn run(config: &Path, args: &[&str]) -> std::process::Output {
    let out = common::lorastream()
        .args(["-q", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    common::assert_ok(&out);
    out
}

/// `n` chat examples about `topic`, as a JSONL file for `streams import`.
fn stream_file(dir: &Path, topic: &str, n: usize) -> PathBuf {
    let path = dir.join(format!("{topic}.jsonl"));
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("Tell me fact {i} about {topic}.")},
                {"role": "assistant", "content": format!("Fact {i}: {topic} has {} parts.", i + 2)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn status(config: &Path) -> Value {
    let out = run(config, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Before: the oldest stream failed on every try (a corrupt file, out of
/// memory on the same step) and blocked every later stream for good.
#[test]
fn a_stream_that_always_fails_is_set_aside_and_the_next_one_trains() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[[sources]]\nname = \"drops\"\nkind = \"spool\"\n",
    );
    for topic in ["rivers", "stars"] {
        let f = stream_file(dir.path(), topic, 12);
        run(&config, &["streams", "import", f.to_str().unwrap()]);
    }
    // Stream 1's training data is corrupted on disk.
    std::fs::write(
        dir.path().join("state/streams/1/train.jsonl"),
        "{not json\n",
    )
    .unwrap();
    let d = Daemon::start(&config);
    let aside = d
        .wait_until(Duration::from_secs(60), |v| {
            v["message"]
                == "stream set aside after repeated failures; training goes on with the next stream"
        })
        .expect("stream 1 was never set aside");
    assert_eq!(aside["stream"], 1);
    assert_eq!(aside["failures"], 3);
    let decided = d
        .wait_until(Duration::from_secs(120), |v| {
            v["message"] == "feedback decision"
        })
        .expect("stream 2 was never trained and decided");
    assert_eq!(decided["stream"], 2, "{decided}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());

    let s = status(&config);
    let streams = s["streams"].as_array().unwrap();
    assert_eq!(streams[0]["state"], "failed");
    let f = &s["item_failures"][0];
    assert_eq!(
        (f["kind"].as_str(), f["key"].as_str()),
        (Some("stream"), Some("1"))
    );
    assert_eq!(f["set_aside"], true);
    assert!(
        f["last_error"].as_str().unwrap().contains("train.jsonl"),
        "{f}"
    );
    let text = String::from_utf8(run(&config, &["status"]).stdout).unwrap();
    assert!(
        text.contains("failed items (set aside after 3 failures)") && text.contains("SET ASIDE"),
        "{text}"
    );
}

/// Before: a candidate whose weights could not be loaded failed its
/// evaluation on every pass, and the trainer waited for its decision forever.
#[test]
fn a_candidate_that_cannot_be_evaluated_fails_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[[sources]]\nname = \"drops\"\nkind = \"spool\"\n",
    );
    for topic in ["rivers", "stars"] {
        let f = stream_file(dir.path(), topic, 12);
        run(&config, &["streams", "import", f.to_str().unwrap()]);
    }
    run(&config, &["train"]);
    // The candidate's weights are damaged before it is evaluated.
    std::fs::write(
        dir.path()
            .join("state/adapters/1/adapter_model.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let d = Daemon::start(&config);
    let failed = d
        .wait_until(Duration::from_secs(60), |v| {
            v["message"]
                == "candidate cannot be evaluated; it and its stream failed, training goes on"
        })
        .expect("the candidate was never set aside");
    assert_eq!(
        (failed["adapter"].as_i64(), failed["stream"].as_i64()),
        (Some(1), Some(1))
    );
    let decided = d
        .wait_until(Duration::from_secs(120), |v| {
            v["message"] == "feedback decision"
        })
        .expect("stream 2 was never trained and decided");
    assert_eq!(decided["stream"], 2, "{decided}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let s = status(&config);
    assert_eq!(s["adapters"][0]["state"], "failed");
    assert_eq!(s["streams"][0]["state"], "failed");
    let f = &s["item_failures"][0];
    assert_eq!(
        (f["kind"].as_str(), f["key"].as_str()),
        (Some("version"), Some("1"))
    );
}

fn spool_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{root}/state\"\n\n[[sources]]\nname = \"drops\"\nkind = \"spool\"\n\
             dir = \"{root}/spool\"\nsettle_secs = 0\n{extra}",
            root = dir.display()
        ),
    )
    .unwrap();
    config
}

/// Before: a file was read whole into memory and stored in one transaction;
/// a drop larger than memory was OOM-killed before it could be moved, and
/// read again after every restart.
#[test]
fn a_spool_file_over_max_file_bytes_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "max_file_bytes = 4096\n");
    let big = "question,answer\n".to_string() + &"Why?,Because.\n".repeat(1000);
    std::fs::write(dir.path().join("spool/big.csv"), &big).unwrap();
    std::fs::write(
        dir.path().join("spool/small.csv"),
        "question,answer\nWho?,Me.\n",
    )
    .unwrap();
    let out = run(&config, &["crawl", "--once", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fetch = &report["sources"][0]["fetch"];
    assert_eq!(
        (fetch["files_done"].as_u64(), fetch["files_failed"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let reason = std::fs::read_to_string(dir.path().join("spool/failed/big.csv.reason")).unwrap();
    assert_eq!(
        reason.trim(),
        format!("file is {} bytes, over max_file_bytes (4096)", big.len())
    );
    assert!(dir.path().join("spool/done/small.csv").exists());
}

/// Before: a large file was one transaction; killed midway, a restart read
/// and parsed it from the start. Now it is stored in chunks with a cursor and
/// a restart resumes after the last stored chunk: nothing lost, nothing twice.
#[test]
fn a_spool_file_killed_midway_resumes_after_its_last_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "");
    const ROWS: usize = 60_000;
    let mut text = String::from("question,answer\n");
    for i in 0..ROWS {
        text.push_str(&format!(
            "Question {i} about spools?,Answer {i}: in chunks.\n"
        ));
    }
    std::fs::write(dir.path().join("spool/big.csv"), text).unwrap();
    let mut child = common::lorastream()
        .args(["-q", "--config"])
        .arg(&config)
        .args(["crawl", "--once", "--source", "drops"])
        .spawn()
        .unwrap();
    let db = dir.path().join("state/lorastream.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done_at_kill = loop {
        assert!(std::time::Instant::now() < deadline, "no chunk was stored");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        let done =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.query_row("SELECT rows_done FROM spool_files", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap_or(0);
        if done >= 2000 {
            child.kill().unwrap();
            child.wait().unwrap();
            break done;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let store = lorastream::store::Store::open(&db).unwrap();
    let cursor = store.spool_files("drops").unwrap();
    assert_eq!(cursor.len(), 1);
    let stored = cursor[0].rows_done;
    assert!(
        stored >= done_at_kill && (stored as usize) < ROWS,
        "{cursor:?}"
    );
    assert_eq!(stored % 1000, 0, "chunks of 1000");
    let cfg = lorastream::config::Config::load(&config).unwrap();
    let report = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(lorastream::sources::run_source(
            &lorastream::http::Http::new(),
            &store,
            &cfg.state_dir(),
            &cfg.sources[0],
            3,
        ));
    assert_eq!(report.error, None);
    assert_eq!(
        (report.fetched, report.new, report.duplicate),
        (
            (ROWS as i64 - stored) as u64,
            (ROWS as i64 - stored) as u64,
            0
        ),
        "resumed after row {stored}"
    );
    let total: i64 = store.raw_item_counts().unwrap().iter().map(|r| r.2).sum();
    assert_eq!(total as usize, ROWS);
    assert!(store.spool_files("drops").unwrap().is_empty());
    assert!(dir.path().join("spool/done/big.csv").exists());
}

/// Before: `lorastream train` by hand while the service ran: each process
/// deleted the checkpoint the other recorded and the stream ended `failed`.
/// Now writers take the state dir's lock; `status` reads without it, opens
/// the database read-only and never migrates it.
#[test]
fn a_second_writer_is_refused_and_status_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[[sources]]\nname = \"drops\"\nkind = \"spool\"\n",
    );
    let d = Daemon::start(&config);
    d.wait_for("lorastream started");
    let device = d.wait_for("compute device");
    assert_eq!(device["device"], "Cpu", "{device}");
    for args in [vec!["train"], vec!["crawl", "--once"], vec!["eval"]] {
        let out = common::lorastream()
            .args(["-q", "--config"])
            .arg(&config)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran beside the daemon");
        assert!(
            stderr.contains("is in use by another lorastream process")
                && stderr.contains(&format!("pid {} (lorastream run)", d.child.id())),
            "{args:?}: {stderr}"
        );
    }
    status(&config); // reads beside the daemon
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());

    // A database of an older schema: status says so and leaves it as it is.
    let db = dir.path().join("state/lorastream.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "DROP TABLE item_failures; DROP TABLE spool_files; PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let out = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("older than this lorastream's"),
        "{stderr}"
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 5, "status migrated the database");
}

/// Before: a run that had finished (`done: true` in its state) but was not
/// recorded before a crash was trained again from step 0.
#[test]
fn a_finished_run_that_was_not_recorded_is_not_trained_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let f = stream_file(dir.path(), "rivers", 12);
    run(&config, &["streams", "import", f.to_str().unwrap()]);
    run(&config, &["train"]);
    let db = dir.path().join("state/lorastream.db");
    let first = {
        let store = lorastream::store::Store::open(&db).unwrap();
        store.adapter(1).unwrap().unwrap().train_log.unwrap()
    };
    assert_eq!(first["resumed_from"], 0);
    // The crash: the run's files say done, the store never heard of it.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE adapters SET state = 'training'; UPDATE streams SET state = 'training';",
        )
        .unwrap();
    let out = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .arg("train")
        .output()
        .unwrap();
    common::assert_ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("training had finished; using its result"),
        "{logs}"
    );
    let store = lorastream::store::Store::open(&db).unwrap();
    let a = store.adapter(1).unwrap().unwrap();
    assert_eq!(a.state, lorastream::store::AdapterState::Candidate);
    let log = a.train_log.unwrap();
    assert_eq!(log["resumed_from"], first["steps"], "{log}");
    assert_eq!(log["losses"], first["losses"]);
}

/// Before: a spool file name was logged as it is, so a newline in a dropped
/// file's name could forge a log line. Now names are quoted and escaped.
#[test]
fn a_file_name_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path(), "");
    let name = "x.csv\nERROR forged: all data deleted\n.csv";
    std::fs::write(
        dir.path().join("spool").join(name),
        "question,answer\nQ?,A.\n",
    )
    .unwrap();
    let out = common::lorastream()
        .args(["--log-format", "pretty", "--config"])
        .arg(&config)
        .args(["crawl", "--once"])
        .output()
        .unwrap();
    common::assert_ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains(r#"file="x.csv\nERROR forged: all data deleted\n.csv""#),
        "{logs}"
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("ERROR forged")),
        "{logs}"
    );
}
