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
