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
pub fn tiny_llama(out: &std::path::Path) {
    let run = lorastream()
        .args(["model", "init", "--arch", "llama", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert_ok(&run);
}

pub mod daemon;
pub mod loopback;
