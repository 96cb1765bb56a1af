//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The built binary, with no RUST_LOG or LORASTREAM_CONFIG from the caller's environment.
pub fn lorastream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lorastream"));
    c.env_remove("RUST_LOG").env_remove("LORASTREAM_CONFIG");
    c
}

/// Asserts the command succeeded, showing its stderr when it did not.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
/// Writes a tiny random Llama model (`model init`) to `out`.
/// Attaches a LoRA on every linear layer (r 4, alpha 8) with random A and B
/// of standard deviation `std`, so that it changes the outputs.
pub fn random_lora(m: &mut lorastream_ml::CausalLm, std: f64) {
    m.attach_lora(lorastream_ml::LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["all-linear".into()],
        rslora: false,
    })
    .unwrap();
    tch::no_grad(|| {
        for (_, t) in m.lora_params() {
            let _ = t.shallow_clone().normal_(0.0, std);
        }
    });
}

pub fn tiny_llama(out: &std::path::Path) {
    let run = lorastream()
        .args(["model", "init", "--arch", "llama", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert_ok(&run);
}

/// Runs `script` with `sh -c` in a private user and mount namespace
/// (`unshare -rm`), `$0` being the lorastream binary and `$1…` `args`: the
/// way to make read-only bind mounts or a small tmpfs as systemd or a full
/// disk would. The script exits 99 when it cannot mount; then `None`, with
/// the reason printed, and the test skips.
pub fn in_mount_namespace(script: &str, args: &[&std::ffi::OsStr]) -> Option<Output> {
    let out = match Command::new("unshare")
        .args(["-rm", "sh", "-c", script, env!("CARGO_BIN_EXE_lorastream")])
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP: cannot run unshare (util-linux): {e}");
            return None;
        }
    };
    if matches!(out.status.code(), Some(99) | None) {
        eprintln!(
            "SKIP: cannot mount in a private namespace here (unshare -rm): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(out)
}

/// A CSV of `rows` distinct question/answer rows about `what`.
pub fn big_csv(path: &std::path::Path, rows: usize, what: &str) {
    let mut text = String::from("question,answer\n");
    for i in 0..rows {
        text.push_str(&format!(
            "Question {i} about {what}?,Answer {i}: it depends.\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

pub mod daemon;
pub mod fake_hub;
pub mod fake_vllm;
pub mod loopback;
