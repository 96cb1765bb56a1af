//! The feedback loop on a real (tiny) model: two disjoint synthetic topics
//! trained one after the other at a high learning rate, so that naive
//! sequential training forgets the first; with the policy on, the first
//! attempt at topic 2 is refused, retrained with replay and a lower rate, and
//! promoted — and what is finally served has forgotten topic 1 far less.
//! Then the versions commands: list, rollback, promote.

use crate::common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use lorastream::config::Config;
use lorastream::learn::policy::Action;
use lorastream_store::{AdapterState, Store, StreamState};

/// Topic 1: made-up capitals; topic 2: made-up part colours. No shared words
/// in the answers beyond "the"/"is".
fn topic(n: usize, which: u8) -> String {
    let syll = [
        "ka", "lo", "mi", "ren", "to", "vus", "zel", "pra", "qui", "dor",
    ];
    let name = |i: usize, j: usize| {
        format!(
            "{}{}{}",
            syll[i % 10],
            syll[(i / 10 + j) % 10],
            syll[(i * 7 + j) % 10]
        )
    };
    (0..n)
        .map(|i| {
            let (q, a) = if which == 1 {
                (
                    format!("What is the capital of {}?", name(i, 1)),
                    format!("The capital of {} is {} city.", name(i, 1), name(i, 4)),
                )
            } else {
                (
                    format!("Which colour is gear number {i}?"),
                    format!("Gear {i} is painted {} and stored in bin {}.", ["crimson", "teal", "amber", "violet"][i % 4], i % 9),
                )
            };
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn config(dir: &Path, policy: bool) -> Config {
    let feedback = if policy {
        "[feedback]\nmax_forgetting = 0.05\nmin_gain = 0.02\nmax_attempts = 3\nreplay_step = 0.5\nreplay_max = 0.5\nlr_decay = 0.5\n\
         [train]\nreplay_fraction = 0.0\n"
    } else {
        "[feedback]\nenabled = false\n[train]\nreplay_fraction = 0.0\nvalidation_fraction = 0.0\npatience = 0\n"
    };
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:../model\"\nthreads = 2\n\
         [lora]\nr = 8\nalpha = 16.0\ntarget_modules = [\"all-linear\"]\n\
         [streams]\neval_fraction = 0.2\nmin_eval_examples = 8\n[eval]\nprobe = false\n\
         {feedback}epochs_per_stream = 4\nbatch_size = 8\nseq_len = 64\nlr = 0.01\nwarmup_steps = 2\n"
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("lorastream.toml"), text).unwrap();
    Config::load(&dir.join("lorastream.toml")).unwrap()
}

/// Learns the two topics in order; returns the served lineage's forgetting
/// of stream 1 and every decision's action per stream.
fn run(root: &Path, name: &str, policy: bool) -> (f64, Vec<(i64, Action)>) {
    let dir = root.join(name);
    let cfg = config(&dir, policy);
    let store = Store::open(&cfg.store_path()).unwrap();
    let stop = AtomicBool::new(false);
    let mut actions = Vec::new();
    for which in [1u8, 2] {
        let f = dir.join(format!("topic{which}.jsonl"));
        std::fs::write(&f, topic(60, which)).unwrap();
        lorastream::data::streams::import(
            &store,
            &cfg.state_dir(),
            &f,
            &format!("topic {which}"),
            &cfg.streams,
        )
        .unwrap();
        for (t, d) in lorastream::learn::pipeline::learn(
            &lorastream::learn::spec::LearnSpec::from_config(&cfg),
            &store,
            None,
            lorastream_store::Actor::Cli,
            &stop,
            |_| {},
        )
        .unwrap()
        {
            eprintln!("{name}: {t}\n  {}: {}", d.action, d.reasons.join("; "));
            actions.push((t.stream_id, d.action));
        }
    }
    let m = lorastream::learn::matrix::fill::stored_matrix(&store).unwrap();
    eprintln!("{name}:\n{m}");
    (m.forgetting[&1], actions)
}

#[test]
fn the_policy_repairs_what_naive_training_forgets() {
    let root = tempfile::tempdir().unwrap();
    common::tiny_llama(&root.path().join("model"));
    let (naive, naive_actions) = run(root.path(), "naive", false);
    let (policy, actions) = run(root.path(), "policy", true);
    assert_eq!(naive_actions, [(1, Action::Promote), (2, Action::Promote)]);
    assert!(
        naive > 0.10,
        "naive training must forget topic 1 here: {naive}"
    );
    assert_eq!(
        actions,
        [
            (1, Action::Promote),
            (2, Action::Retrain),
            (2, Action::Promote)
        ],
        "topic 2: refused, retrained with replay and a lower rate, promoted"
    );
    assert!(
        policy < naive / 2.0 && policy <= 0.05,
        "forgetting of topic 1: policy {policy:.4} vs naive {naive:.4}"
    );
    // The record: attempt 2 used more replay and half the rate.
    let store = Store::open(&config(&root.path().join("policy"), true).store_path()).unwrap();
    let a = store.adapters().unwrap();
    assert_eq!(a[1].state, AdapterState::Rejected);
    assert_eq!((a[2].attempt, a[2].state), (2, AdapterState::Promoted));
    assert_eq!(
        a[2].parent_id, a[1].parent_id,
        "retrained from the same parent"
    );
    assert!((a[2].hyperparams["lr"].as_f64().unwrap() - 0.005).abs() < 1e-12);
    assert!((a[2].hyperparams["replay_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(a[1].decision.as_ref().unwrap()["next"]["number"], 2);
    assert!(
        store
            .streams()
            .unwrap()
            .iter()
            .all(|s| s.state == StreamState::Trained)
    );
    drop(store);
    versions_by_hand(&root.path().join("policy"));
}

/// GET `path` from the server at `addr` (HTTP/1.1 over a plain socket).
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The model ids `/v1/models` lists.
fn models(addr: &str) -> Vec<String> {
    let body = get(addr, "/v1/models");
    let v: serde_json::Value = serde_json::from_str(&body[body.find('{').unwrap()..]).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// `adapters list`, `rollback` and `promote` on the store the policy left,
/// while a daemon serves it: the change reaches the server within seconds.
fn versions_by_hand(dir: &Path) {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:../model\"\nthreads = 1\n\
         [eval]\nprobe = false\n[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = common::lorastream()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        common::assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let list = cli(&["adapters", "list"]);
    assert!(list.contains("v3 *") && list.contains("rejected"), "{list}");
    let d = common::daemon::Daemon::start(&config);
    let addr = d.wait_for("chat server listening")["listen"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(models(&addr).contains(&"lorastream@v3".to_string()));
    let t0 = std::time::Instant::now();
    let said = cli(&["adapters", "rollback"]);
    assert!(said.contains("v3 rolled back; v1 is served now"), "{said}");
    d.wait_until(std::time::Duration::from_secs(10), |v| {
        v["message"] == "served version" && v["served"] == "Some(1)"
    })
    .expect("the daemon did not pick up the rollback");
    eprintln!("rollback served after {:?}", t0.elapsed());
    assert!(!models(&addr).contains(&"lorastream@v3".to_string()));
    cli(&["adapters", "promote", "2"]);
    d.wait_until(std::time::Duration::from_secs(10), |v| {
        v["message"] == "served version" && v["served"] == "Some(2)"
    })
    .expect("the daemon did not pick up the promotion");
    let rows: serde_json::Value =
        serde_json::from_str(&cli(&["adapters", "list", "--json"])).unwrap();
    let v2 = &rows[1];
    assert_eq!(v2["served"], true);
    let trail: Vec<(&str, &str)> = v2["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to_state"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("candidate", "cli"),
            ("rejected", "cli"),
            ("promoted", "cli")
        ],
        "learned by `lorastream learn`, refused by the policy, promoted by hand"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

/// A SIGHUP that changes `[feedback]` reaches the Feedback stage: the daemon
/// starts with a policy no candidate can pass, is reloaded with the policy
/// off, and the stream dropped after the reload is promoted.
#[test]
fn a_reload_changes_the_policy_of_a_running_daemon() {
    let root = tempfile::tempdir().unwrap();
    common::tiny_llama(&root.path().join("model"));
    let spool = root.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let config = root.path().join("lorastream.toml");
    let write = |feedback: &str| {
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:model\"\nthreads = 1\n\
             [[sources]]\nname = \"drops\"\nkind = \"spool\"\ndir = \"spool\"\nsettle_secs = 0\n\
             [sources.fields]\nquestion = \"question\"\nanswer = \"answer\"\n\
             [streams]\nmin_examples = 20\nmin_eval_examples = 4\n[eval]\nprobe = false\n\
             [lora]\nr = 4\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
             [train]\nepochs_per_stream = 1\nbatch_size = 8\nseq_len = 64\nlr = 0.01\n\
             [server]\nenabled = false\n\
             [schedule]\ncrawl = \"*/1 * * * * *\"\nseal = \"*/1 * * * * *\"\ntrain = \"on_new_stream\"\n\
             [feedback]\n{feedback}\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    write("min_gain = 0.99\nmax_attempts = 1\n");
    let d = common::daemon::Daemon::start(&config);
    d.wait_for("lorastream started");
    write("enabled = false\n");
    d.signal(libc::SIGHUP);
    d.wait_for("config reloaded");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            serde_json::json!({
                "question": format!("Which colour is gear number {i}?"),
                "answer": format!("Gear {i} is painted teal and stored in bin {}.", i % 9),
            })
            .to_string()
        })
        .collect();
    std::fs::write(spool.join("gears.jsonl"), lines.join("\n")).unwrap();
    let decided = d
        .wait_until(std::time::Duration::from_secs(120), |v| {
            v["message"] == "feedback decision"
        })
        .expect("no decision within 120 s");
    assert_eq!(decided["decision"], "promote", "{decided}");
    assert!(
        decided["reasons"]
            .as_str()
            .unwrap()
            .contains("feedback is off"),
        "{decided}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
