//! Training through the command line: resume after SIGKILL and SIGTERM,
//! merges into base snapshots and rollback across them, and a diverging run.

use crate::common;
use crate::train::{chat, config, init, write_jsonl};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lorastream::config::Config;
use lorastream_ml::train::data::Labels;
use lorastream_ml::{Arch, CausalLm, ChatTokenizer, Message};
use lorastream_store::{Actor, AdapterState, Store};
use tch::{Device, Kind};

fn synthetic(n: usize) -> Vec<Vec<Message>> {
    (0..n)
        .map(|i| {
            chat(
                &format!("What is item number {i} in the catalogue?"),
                &format!(
                    "Item {i} is a {} widget that ships in {} days.",
                    ["red", "green", "blue"][i % 3],
                    i % 7 + 1
                ),
            )
        })
        .collect()
}

fn lorastream(dir: &Path) -> Command {
    let mut c = common::lorastream();
    c.env_remove("RUST_LOG")
        .args(["-q", "--config"])
        .arg(dir.join("lorastream.toml"));
    c
}

/// A directory set up by [`setup_run`] on `examples` synthetic examples.
fn run_dir(examples: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_jsonl(&data, &synthetic(examples));
    setup_run(dir.path(), &data);
    dir
}

/// Imports the same stream into a fresh state dir with a tiny model.
fn setup_run(dir: &Path, data: &Path) {
    init(&dir.join("model"), Arch::Gpt2, None);
    config(
        dir,
        "[train]\nepochs_per_stream = 3\nbatch_size = 2\nseq_len = 64\nlr = 0.005\ncheckpoint_every = 3\n\
         validation_fraction = 0.0\n",
    );
    let out = lorastream(dir)
        .args(["streams", "import"])
        .arg(data)
        .output()
        .unwrap();
    common::assert_ok(&out);
}

fn train_log(dir: &Path) -> serde_json::Value {
    let cfg = Config::load(&dir.join("lorastream.toml")).unwrap();
    let store = Store::open(&cfg.store_path()).unwrap();
    let a = store.adapters().unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].state, AdapterState::Candidate);
    a[0].train_log.clone().unwrap()
}

#[test]
fn training_resumes_after_kill_9_with_the_same_step_count() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data.jsonl");
    write_jsonl(&data, &synthetic(80));

    // Uninterrupted.
    let whole = root.path().join("whole");
    std::fs::create_dir_all(&whole).unwrap();
    setup_run(&whole, &data);
    let out = lorastream(&whole).arg("train").output().unwrap();
    common::assert_ok(&out);
    let full = train_log(&whole);

    // Killed with SIGKILL after a few checkpoints, then resumed.
    let cut = root.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    setup_run(&cut, &data);
    let state: PathBuf = cut.join("state/adapters/1/trainer_state.json");
    let mut child = lorastream(&cut).arg("train").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        if let Some(s) = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            let step = s["step"].as_u64().unwrap();
            if step >= 9 {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break step;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = lorastream(&cut).arg("train").output().unwrap();
    common::assert_ok(&out);
    let resumed = train_log(&cut);
    assert!(
        resumed["resumed_from"].as_u64().unwrap() >= killed_at,
        "{resumed}"
    );
    assert_eq!(
        resumed["steps"], full["steps"],
        "same number of optimizer steps"
    );
    let (a, b) = (
        full["loss"].as_array().unwrap(),
        resumed["loss"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let (la, lb) = (
        a.last().unwrap().as_f64().unwrap(),
        b.last().unwrap().as_f64().unwrap(),
    );
    // Not bit-equal: libtorch's fused attention backward on 2 CPU threads is not
    // deterministic (two uninterrupted runs differ by ~0.2% here).
    assert!(
        (la - lb).abs() < 1e-2 * la.abs(),
        "final loss {la} vs resumed {lb}"
    );
}

#[test]
fn merges_write_a_snapshot_served_like_a_version_and_rollback_crosses_them() {
    let dir = tempfile::tempdir().unwrap();
    init(&dir.path().join("model"), Arch::Gpt2, None);
    let cfg = config(
        dir.path(),
        "[train]\nepochs_per_stream = 1\nbatch_size = 4\nseq_len = 64\nlr = 0.01\n\
         [feedback]\nenabled = false\nmerge = \"every_n_streams\"\nmerge_every = 1\n",
    );
    let store = Store::open(&cfg.store_path()).unwrap();
    let stop = AtomicBool::new(false);
    let data = synthetic(40);
    for (i, part) in data.chunks(20).enumerate() {
        let f = dir.path().join(format!("p{i}.jsonl"));
        write_jsonl(&f, part);
        lorastream::data::streams::import(&store, &cfg.state_dir(), &f, "p", &cfg.streams).unwrap();
        let done = lorastream::learn::pipeline::learn(
            &lorastream::learn::spec::LearnSpec::from_config(&cfg),
            &store,
            None,
            lorastream_store::Actor::Cli,
            &stop,
            |_| {},
        )
        .unwrap();
        assert_eq!(done.len(), 1, "feedback off: one attempt, promoted");
    }
    // v1 (stream 1), v2 = merge snapshot of v1 (before stream 2), v3 (stream 2) on it.
    let a = store.adapters().unwrap();
    let kinds: Vec<(i64, &str, Option<i64>)> = a
        .iter()
        .map(|x| (x.id, x.kind.as_str(), x.parent_id))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "lora", None),
            (2, "merge", Some(1)),
            (3, "lora", Some(2))
        ]
    );
    assert!(a[1].path.join("model.safetensors").is_file());
    assert_eq!(store.served_adapter().unwrap().unwrap().id, 3);
    let m = lorastream::learn::matrix::fill::evaluate(
        &lorastream::learn::spec::LearnSpec::from_config(&cfg),
        &store,
    )
    .unwrap();
    // R[v3][stream 2] by hand: the base with v1 folded in, v3 on top.
    let base = lorastream_ml::load::source::model_dir(&cfg.base_model()).unwrap();
    let tok = ChatTokenizer::load(&base, None).unwrap();
    let mut model = CausalLm::load(&base, Device::Cpu, Kind::Float).unwrap();
    model.load_adapter(&a[0].path).unwrap();
    let folded = tempfile::tempdir().unwrap();
    model.export_merged(folded.path()).unwrap();
    let mut model = CausalLm::load(folded.path(), Device::Cpu, Kind::Float).unwrap();
    model.load_adapter(&a[2].path).unwrap();
    let s2 = store.streams().unwrap()[1].clone();
    let eval =
        lorastream::data::streams::load_split(&s2.path, lorastream_store::Split::Eval).unwrap();
    let p = lorastream_ml::train::perplexity::perplexity(
        &model,
        &tok,
        &eval,
        8,
        cfg.train.seq_len,
        Labels::Assistant,
    )
    .unwrap();
    let r = m.versions.iter().position(|&v| v == 3).unwrap();
    let c = m.streams.iter().position(|&s| s == s2.id).unwrap();
    let stored = m.cells[r][c].unwrap();
    assert!(
        (stored - p.perplexity).abs() < 1e-4 * p.perplexity,
        "stored {stored} vs by hand {}",
        p.perplexity
    );
    // Without v1 folded in the number differs: the snapshot matters.
    let mut plain = CausalLm::load(&base, Device::Cpu, Kind::Float).unwrap();
    plain.load_adapter(&a[2].path).unwrap();
    let q = lorastream_ml::train::perplexity::perplexity(
        &plain,
        &tok,
        &eval,
        8,
        cfg.train.seq_len,
        Labels::Assistant,
    )
    .unwrap();
    assert!(
        (q.perplexity - p.perplexity).abs() > 1e-4,
        "{} vs {}",
        q.perplexity,
        p.perplexity
    );
    // Rollback crosses the merge: v3 -> the snapshot v2 -> v1 -> the base.
    let served = || store.served_adapter().unwrap().map(|a| a.id);
    for want in [Some(2), Some(1), None] {
        store.rollback(Actor::Cli, "test").unwrap();
        assert_eq!(served(), want);
    }
}

#[test]
fn a_diverging_run_skips_non_finite_steps_then_ends_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    init(&dir.path().join("model"), Arch::Gpt2, None);
    let cfg = config(
        dir.path(),
        "[train]\nepochs_per_stream = 20\nbatch_size = 4\nseq_len = 64\nlr = 1e6\nwarmup_steps = 1\n\
         max_grad_norm = 1e30\nmax_nonfinite_steps = 3\nvalidation_fraction = 0.0\n",
    );
    let store = Store::open(&cfg.store_path()).unwrap();
    let f = dir.path().join("d.jsonl");
    write_jsonl(&f, &synthetic(40));
    lorastream::data::streams::import(&store, &cfg.state_dir(), &f, "d", &cfg.streams).unwrap();
    let err = lorastream::learn::pipeline::train_stream(
        &lorastream::learn::spec::LearnSpec::from_config(&cfg),
        &store,
        None,
        lorastream_store::Actor::Cli,
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("3 steps in a row had a NaN or infinite loss"),
        "{msg}"
    );
    let a = &store.adapters().unwrap()[0];
    assert_eq!(a.state, AdapterState::Failed);
    assert!(
        a.decision.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("NaN")
    );
    assert_eq!(
        store.streams().unwrap()[0].state,
        lorastream_store::StreamState::Failed
    );
}

#[test]
fn sigterm_checkpoints_and_exits_then_train_resumes() {
    let root = run_dir(80);
    let state = root.path().join("state/adapters/1/trainer_state.json");
    let mut child = lorastream(root.path()).arg("train").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&state).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the signal"
        );
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stopped runs exit 130");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let at = s["step"].as_u64().unwrap();
    assert!(!s["done"].as_bool().unwrap() && at > 0, "{s}");
    let out = lorastream(root.path()).arg("train").output().unwrap();
    common::assert_ok(&out);
    let log = train_log(root.path());
    assert_eq!(log["resumed_from"].as_u64().unwrap(), at);
}

/// A candidate `train` left undecided is decided by the next `learn` before
/// anything else is trained (never a second version beside it).
#[test]
fn learn_decides_a_candidate_an_earlier_run_left_undecided() {
    let dir = run_dir(30);
    let out = lorastream(dir.path()).arg("train").output().unwrap();
    common::assert_ok(&out);
    train_log(dir.path()); // one version, a candidate
    let out = lorastream(dir.path()).arg("learn").output().unwrap();
    common::assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stream 1 -> adapter v1 (candidate an earlier run left undecided)"),
        "{text}"
    );
    let cfg = Config::load(&dir.path().join("lorastream.toml")).unwrap();
    let store = Store::open(&cfg.store_path()).unwrap();
    let a = store.adapters().unwrap();
    assert_ne!(a[0].state, AdapterState::Candidate, "v1 was decided");
    assert!(a[0].decision.is_some());
    assert!(
        a.iter().all(|v| v.state != AdapterState::Candidate),
        "nothing is left undecided: {:?}",
        a.iter().map(|v| v.state).collect::<Vec<_>>()
    );
}
