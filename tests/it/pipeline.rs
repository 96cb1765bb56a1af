//! The daemon end to end: a loopback datasets-server serving Quora-like Q&A
//! (the bundled tests/fixtures/quora), a tiny Llama, second-level cron schedules:
//! crawl → preprocess → summarize → seal → train → evaluate → feedback, for
//! two streams. Once in-process without interruption, once as a process
//! killed with SIGKILL during a crawl, during training and between training
//! and evaluation: the final store must be the same.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::loopback::rows_api;
use lorastream_store::{AdapterState, ExampleState, RawState, StreamState};
use serde_json::{Value, json};

const ROWS: usize = 60;
const PER_STREAM: usize = 25;

/// The first `ROWS` rows of the bundled Quora-like exports (two topic files
/// of tests/fixtures/quora), as dataset rows.
fn quora_rows() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quora");
    let mut out = Vec::new();
    for topic in ["software engineering", "ai"] {
        let path = dir.join(format!("topic-{}.csv", topic.replace(' ', "-")));
        let mut rd = csv::Reader::from_path(&path).unwrap();
        for r in rd.deserialize::<std::collections::HashMap<String, String>>() {
            let r = r.unwrap();
            out.push(
                json!({"question": r["Questions"], "answer": r["Answers"], "date": r["Time"]}),
            );
        }
    }
    out.truncate(ROWS);
    assert_eq!(out.len(), ROWS, "the fixture has {ROWS} rows");
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn setup(base: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    common::tiny_llama(&root.join("model"));
    let config = root.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
state_dir = "{root}/state"
shutdown_grace_secs = 30

[[sources]]
name = "quora-hf"
kind = "hf_datasets"
base_url = "{base}"
dataset = "quora/software-engineering"
page_size = 10
max_rows_per_run = 30
rate_limit_per_sec = 100.0
backoff_initial_ms = 50
[sources.fields]
question = "question"
answer = "answer"
date = "date"

[streams]
min_examples = {PER_STREAM}
max_examples = {PER_STREAM}

[summarizer]
max_answer_tokens = 96

[model]
dtype = "f32"
source = "path:{root}/model"

[train]
seq_len = 128
batch_size = 2
epochs_per_stream = 20
checkpoint_every = 2
log_every = 1
seed = 7

[eval]
max_examples_per_stream = 8

[schedule]
crawl = "*/2 * * * * *"
"#,
            root = root.display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        root,
        config,
    }
}

/// What the run must end with, read from the store.
#[derive(Debug, PartialEq)]
struct Final {
    raw: usize,
    examples_sealed: i64,
    examples_ready: i64,
    streams: Vec<(i64, i64, StreamState)>,
    adapters: Vec<(i64, i64, bool)>,
    eval_cells: Vec<(i64, i64)>,
}

fn snapshot(root: &Path) -> Option<Final> {
    let db = root.join("state/lorastream.db");
    if !db.exists() {
        return None;
    }
    let store = lorastream_store::Store::open(&db).ok()?;
    let raw = store.raw_items_in_state(RawState::New, 1000).ok()?.len()
        + store
            .raw_items_in_state(RawState::Processed, 1000)
            .ok()?
            .len()
        + store
            .raw_items_in_state(RawState::Dropped, 1000)
            .ok()?
            .len();
    let mut cells: Vec<(i64, i64)> = store
        .evals()
        .ok()?
        .iter()
        .map(|e| (e.adapter_id, e.stream_id))
        .collect();
    cells.sort();
    Some(Final {
        raw,
        examples_sealed: store.count_examples(ExampleState::Sealed).ok()?,
        examples_ready: store.count_examples(ExampleState::Ready).ok()?,
        streams: store
            .streams()
            .ok()?
            .iter()
            .map(|s| (s.n_train, s.n_eval, s.state))
            .collect(),
        adapters: store
            .adapters()
            .ok()?
            .iter()
            .map(|a| {
                (
                    a.id,
                    a.stream_id,
                    a.decision.is_some()
                        && matches!(a.state, AdapterState::Promoted | AdapterState::Rejected),
                )
            })
            .collect(),
        eval_cells: cells,
    })
}

/// Done: both streams trained and decided.
fn finished(f: &Final) -> bool {
    f.streams.len() == 2 && f.adapters.len() == 2 && f.adapters.iter().all(|a| a.2)
}

fn wait_finished(root: &Path, within: Duration) -> Final {
    let deadline = Instant::now() + within;
    loop {
        if let Some(f) = snapshot(root)
            && finished(&f)
        {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "not finished within {within:?}: {:?}",
            snapshot(root)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_final(f: &Final) {
    assert_eq!(f.raw, ROWS);
    assert_eq!(f.streams.len(), 2);
    for (train, eval, state) in &f.streams {
        assert_eq!((train + eval) as usize, PER_STREAM);
        assert!(*eval > 0);
        assert_eq!(*state, StreamState::Trained);
    }
    assert_eq!(f.examples_sealed as usize, 2 * PER_STREAM);
    assert_eq!(
        f.adapters.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
        [(1, 1), (2, 2)]
    );
    // The matrix: the base on both streams, each version up to its stream.
    for cell in [(0, 1), (0, 2), (1, 1), (2, 1), (2, 2)] {
        assert!(
            f.eval_cells.contains(&cell),
            "missing {cell:?} in {:?}",
            f.eval_cells
        );
    }
}

#[test]
fn two_streams_flow_from_crawl_to_feedback_in_process() {
    let rows = quora_rows();
    let server = rows_api(rows, Duration::ZERO);
    let s = setup(&server.base);
    let config = lorastream::config::Config::load(&s.config).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = s.config.clone();
    let daemon = std::thread::spawn(move || {
        actix::System::new().block_on(lorastream::run::daemon::run(path, config, rx))
    });
    let f = wait_finished(&s.root, Duration::from_secs(240));
    tx.blocking_send(lorastream::run::daemon::Control::Shutdown("test"))
        .unwrap();
    daemon.join().unwrap().unwrap();
    check_final(&f);
    // Decisions carry their reasons and numbers.
    let store = lorastream_store::Store::open(&s.root.join("state/lorastream.db")).unwrap();
    for a in store.adapters().unwrap() {
        let d = a.decision.unwrap();
        assert!(
            d["new_ppl"].as_f64().unwrap() > 0.0 && !d["reasons"].as_array().unwrap().is_empty(),
            "{d}"
        );
        assert_eq!(d["stream"], a.stream_id);
    }
    // Stages were recorded; nothing failed.
    let stages = store.stages().unwrap();
    assert!(stages.iter().all(|s| s.failures == 0), "{stages:?}");
    assert!(stages.iter().any(|s| s.name == "trainer" && s.runs > 0));
}

#[test]
fn killed_anywhere_the_daemon_resumes_and_ends_the_same() {
    let rows = quora_rows();
    // Pages take 400 ms, so a crawl can be caught in flight.
    let server = rows_api(rows, Duration::from_millis(400));
    let s = setup(&server.base);
    let log = |msg: &'static str| move |v: &Value| v["message"] == msg;

    // 1. SIGKILL during the first crawl, after one page was stored.
    let d = Daemon::start(&s.config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.seen().len() < 2 {
        assert!(Instant::now() < deadline, "no crawl started");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let after_crawl_kill = snapshot(&s.root).unwrap();
    assert!(after_crawl_kill.raw <= 20, "{after_crawl_kill:?}");

    // 2. SIGKILL during training, after a checkpoint.
    let d = Daemon::start(&s.config);
    let step = d
        .wait_until(Duration::from_secs(120), |v| {
            v["message"] == "training" && v["step"].as_u64().unwrap_or(0) >= 5
        })
        .expect("training did not start");
    d.kill9();
    let killed_at = step["step"].as_u64().unwrap();

    // 3. SIGKILL right after a candidate is trained, before its evaluation is done.
    let d = Daemon::start(&s.config);
    let resumed = d
        .wait_until(Duration::from_secs(120), log("candidate trained"))
        .expect("no candidate");
    d.kill9();
    assert!(
        resumed["resumed_from"].as_u64().unwrap() >= 2,
        "training restarted instead of resuming (killed at step {killed_at}): {resumed}"
    );

    // 4. While the second stream trains, `status` answers from the store; then
    //    SIGTERM: the step finishes, a checkpoint is written, the daemon exits 0.
    let d = Daemon::start(&s.config);
    d.wait_until(Duration::from_secs(120), |v| {
        v["message"] == "training" && v["step"].as_u64().unwrap_or(0) >= 3
    })
    .expect("second stream did not train");
    let config = lorastream::config::Config::load(&s.config).unwrap();
    lorastream::serve::status::gather(&config).unwrap();
    let t = Instant::now();
    let report = lorastream::serve::status::gather(&config).unwrap();
    let took = t.elapsed();
    eprintln!("status during training: {took:?}");
    assert!(
        took < Duration::from_millis(200),
        "status took {took:?} during training"
    );
    assert!(
        report
            .stages
            .iter()
            .any(|s| s.name == "trainer" && s.state == lorastream_store::StageState::Running),
        "{:?}",
        report.stages
    );
    d.signal(libc::SIGTERM);
    d.wait_until(
        Duration::from_secs(60),
        log("training stopped for shutdown; checkpoint saved"),
    )
    .expect("training did not stop at a checkpoint");
    d.wait_until(Duration::from_secs(60), log("shutdown complete"))
        .expect("no clean shutdown");
    assert!(d.wait_exit().success());

    // 5. Run to the end, then SIGTERM.
    let d = Daemon::start(&s.config);
    let f = wait_finished(&s.root, Duration::from_secs(240));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    check_final(&f);
    // No page was fetched twice past its commit: every row stored exactly once.
    let store = lorastream_store::Store::open(&s.root.join("state/lorastream.db")).unwrap();
    assert_eq!(
        store.source("quora-hf").unwrap().unwrap().cursor.as_deref(),
        Some("60")
    );
    for id in [1, 2] {
        let log = store.adapter(id).unwrap().unwrap().train_log.unwrap();
        assert!(
            log["resumed_from"].as_u64().unwrap() >= 2,
            "adapter {id}: {log}"
        );
    }
}
