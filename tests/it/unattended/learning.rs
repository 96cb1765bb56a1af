//! Streams, candidates and writers: no item the trainer, evaluator or
//! feedback works on can stop them for good.

use std::time::Duration;

use super::common::{self, daemon::Daemon};
use super::{run, setup, status, stream_file};

/// Stream 2 is trained and decided (the daemon went on), then SIGTERM.
fn the_next_stream_is_decided(d: Daemon) {
    let decided = d
        .wait_until(Duration::from_secs(120), |v| {
            v["message"] == "feedback decision"
        })
        .expect("stream 2 was never trained and decided");
    assert_eq!(decided["stream"], 2, "{decided}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

/// A state dir with two imported streams of 12 examples each.
fn two_streams(dir: &std::path::Path) -> std::path::PathBuf {
    let config = setup(dir, "[[sources]]\nname = \"drops\"\nkind = \"spool\"\n");
    for topic in ["rivers", "stars"] {
        let f = stream_file(dir, topic, 12);
        run(&config, &["streams", "import", f.to_str().unwrap()]);
    }
    config
}

/// Before: the oldest stream failed on every try (a corrupt file, out of
/// memory on the same step) and blocked every later stream for good.
#[test]
fn a_stream_that_always_fails_is_set_aside_and_the_next_one_trains() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_streams(dir.path());
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
    the_next_stream_is_decided(d);

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
    let config = two_streams(dir.path());
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
    the_next_stream_is_decided(d);
    let s = status(&config);
    assert_eq!(s["adapters"][0]["state"], "failed");
    assert_eq!(s["streams"][0]["state"], "failed");
    let f = &s["item_failures"][0];
    assert_eq!(
        (f["kind"].as_str(), f["key"].as_str()),
        (Some("version"), Some("1"))
    );
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
        let store = lorastream_store::Store::open(&db).unwrap();
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
    let store = lorastream_store::Store::open(&db).unwrap();
    let a = store.adapter(1).unwrap().unwrap();
    assert_eq!(a.state, lorastream_store::AdapterState::Candidate);
    let log = a.train_log.unwrap();
    assert_eq!(log["resumed_from"], first["steps"], "{log}");
    assert_eq!(log["losses"], first["losses"]);
}

/// Before: a candidate whose stream had no eval example (n_eval = 0) lacked
/// the cell the policy needs; Feedback retried it forever and the trainer
/// waited behind it.
#[test]
fn a_candidate_that_cannot_be_decided_fails_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_streams(dir.path());
    run(&config, &["train"]);
    rusqlite::Connection::open(dir.path().join("state/lorastream.db"))
        .unwrap()
        .execute("UPDATE streams SET n_eval = 0 WHERE id = 1", [])
        .unwrap();
    let d = Daemon::start(&config);
    let failed = d
        .wait_until(Duration::from_secs(60), |v| {
            v["message"]
                == "candidate cannot be decided; it and its stream failed, training goes on"
        })
        .expect("the undecidable candidate was never set aside");
    assert_eq!(failed["adapter"], 1, "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no perplexity of version 1 on stream 1")
    );
    the_next_stream_is_decided(d);
}
