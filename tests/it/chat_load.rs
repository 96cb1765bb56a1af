//! The chat server under load and with a real client: a hot swap while the
//! daemon trains and answers 50+ requests, and the official Python `openai`
//! client against it.

use crate::chat::{KEY, ask, hello, rt, setup, start};
use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

/// Chat examples about one made-up fact, for a stream the daemon trains on.
fn write_stream(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("What colour is the door of house {i}?")},
                {"role": "assistant", "content": format!("The door of house {i} is painted blue.")}
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn hot_swap_under_load_while_training_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "[train]\nepochs_per_stream = 20\nbatch_size = 4\nseq_len = 64\nlr = 0.01\nwarmup_steps = 2\n\
         [streams]\neval_fraction = 0.2\n[feedback]\nenabled = false\n\
         [lora]\nr = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n",
    );
    let file = dir.path().join("doors.jsonl");
    write_stream(&file, 40);
    let out = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .args(["streams", "import"])
        .arg(&file)
        .output()
        .unwrap();
    common::assert_ok(&out);
    // The daemon trains the sealed stream on start; requests go on meanwhile.
    let (d, url) = start(&config);
    let requests = std::thread::spawn(move || {
        rt().block_on(async {
            let mut seen: Vec<(Instant, u16, String)> = Vec::new();
            let mut after_swap = 0;
            let deadline = Instant::now() + Duration::from_secs(240);
            while (seen.len() < 50 || after_swap < 10) && Instant::now() < deadline {
                let (status, _, c) = ask(&url, hello(json!({"max_tokens": 4})), &[]).await;
                let model = c["model"].as_str().unwrap_or("").to_string();
                if model.starts_with("lorastream@") {
                    after_swap += 1;
                }
                seen.push((Instant::now(), status, model));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    });
    let training = d.wait_for("training stream");
    let t_start = Instant::now();
    d.wait_for("candidate trained");
    let t_end = Instant::now();
    let decision = d.wait_for("feedback decision");
    assert_eq!(decision["decision"], "promote", "{decision}");
    let seen = requests.join().unwrap();
    assert!(seen.len() >= 50, "{} requests", seen.len());
    assert!(
        seen.iter().all(|(_, s, _)| *s == 200),
        "a request was dropped: {seen:?}"
    );
    let models: Vec<&str> = seen.iter().map(|(_, _, m)| m.as_str()).collect();
    let first_new = models
        .iter()
        .position(|m| *m != "base")
        .expect("the swap happened");
    assert!(first_new > 0, "{models:?}");
    assert!(
        models[first_new..]
            .iter()
            .all(|m| *m == format!("lorastream@v{}", decision["adapter"])),
        "after the swap every answer names the new version: {models:?}"
    );
    let during = seen
        .iter()
        .filter(|(t, _, _)| *t > t_start && *t < t_end)
        .count();
    assert!(during > 0, "answered while training ({training})");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn the_official_openai_client_works() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_client.py");
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let (d, url) = start(&config);
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(format!("{url}/v1"))
        .arg(KEY)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup-libtorch.sh)", python.display()));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai client: ok"));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
