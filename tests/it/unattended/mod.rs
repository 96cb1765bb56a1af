//! Unattended operation (issue 14): no poison item, fault or oversized input
//! stops the daemon for good. Each test reproduces one way it used to.

use crate::common;
mod learning;
mod spool;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A state dir with a tiny model and a config; `extra` is appended.
pub fn setup(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_llama(&dir.join("model"));
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{root}/state\"\n\n[model]\ndtype = \"f32\"\nsource = \"path:{root}/model\"\n\n\
             [streams]\nmin_examples = 4\nmin_eval_examples = 2\n\n\
             [train]\nseq_len = 64\nbatch_size = 4\nepochs_per_stream = 1\nvalidation_fraction = 0.0\n\n\
             [eval]\nprobe = false\n{extra}",
            root = dir.display()
        ),
    )
    .unwrap();
    config
}

pub fn run(config: &Path, args: &[&str]) -> std::process::Output {
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
pub fn stream_file(dir: &Path, topic: &str, n: usize) -> PathBuf {
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

pub fn status(config: &Path) -> Value {
    let out = run(config, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn spool_config(dir: &Path, extra: &str) -> PathBuf {
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
