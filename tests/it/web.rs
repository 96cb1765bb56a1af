//! The web page and `/metrics` of a real daemon that learned one stream: a
//! headless Chromium (Debian's, driven by Selenium) checks the page, and
//! Prometheus' `promtool` checks the metrics. Each part skips, saying why,
//! where its tool is not installed (`scripts/setup-libtorch.sh` installs them).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::daemon::Daemon;
use serde_json::json;

/// A crawled question whose text (after HTML cleaning decodes the entities)
/// holds markup: it must show as text and never run.
const INJECTED_RAW: &str = "<p>&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img src=x onerror=\"window.__pwned=2\"&gt; What is injected?</p>";
const INJECTED: &str =
    "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> What is injected?";

fn setup(dir: &Path) -> std::path::PathBuf {
    common::tiny_llama(&dir.join("model"));
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut items: Vec<serde_json::Value> = (0..14)
        .map(|i| {
            json!({"question": format!("What is fact number {i} about lorastream?"),
                   "answer": format!("Fact {i}: lorastream keeps a model learning, stream after stream.")})
        })
        .collect();
    items.push(json!({"question": INJECTED_RAW, "answer": "It must show as text, never run."}));
    std::fs::write(
        spool.join("qa.json"),
        serde_json::to_string(&items).unwrap(),
    )
    .unwrap();
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n\
             [[sources]]\nname = \"demo\"\nkind = \"spool\"\ndir = \"{}\"\nsettle_secs = 0\n\
             [sources.fields]\nquestion = \"question\"\nanswer = \"answer\"\n\
             [streams]\nmin_examples = 10\neval_fraction = 0.2\n\
             [summarizer]\nbackend = \"none\"\n\
             [model]\ndtype = \"f32\"\nsource = \"path:model\"\nthreads = 1\n\
             [train]\nepochs_per_stream = 1\nseq_len = 64\n\
             [server]\nlisten = \"127.0.0.1:0\"\nmax_tokens = 12\n",
            spool.display()
        ),
    )
    .unwrap();
    config
}

fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = lorastream::util::http::client_builder().build().unwrap();
        let r = client.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// The value of an unlabelled or labelled sample line, if present.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn page_and_metrics_of_a_learning_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let d = Daemon::start(&config);
    let line = d.wait_for("chat server listening");
    let url = format!("http://{}", line["listen"].as_str().unwrap());
    d.wait_for("feedback decision");

    // The page and its script: no external assets, a strict CSP.
    let (status, page) = get(&format!("{url}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/app.js\"></script>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "external asset in page"
    );
    let (status, script) = get(&format!("{url}/app.js"));
    assert_eq!(status, 200);
    assert!(
        !script.contains("innerHTML"),
        "the page script must not parse HTML"
    );

    // The browser.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    let out = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser.py"))
        .arg(&url)
        .arg(&shot)
        .arg(INJECTED)
        .output()
        .expect("run browser.py");
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}{}", String::from_utf8_lossy(&out.stderr));
    // The browser sends two chat messages; without it, the test sends one.
    let chats = if out.status.code() == Some(0) {
        2.0
    } else {
        1.0
    };
    match out.status.code() {
        Some(0) => {
            assert!(shot.exists());
            eprintln!("screenshot: {}", shot.display());
        }
        Some(3) => eprintln!("skipped the browser part: {}", said.trim()),
        _ => panic!("browser checks failed:\n{said}"),
    }
    if out.status.code() != Some(0) {
        // The chat request the browser would have made, so the metrics below see one.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = lorastream::util::http::client_builder()
                .build()
                .unwrap()
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        });
    }

    // Metrics: what happened is counted, and promtool accepts the format.
    let (status, text) = get(&format!("{url}/metrics"));
    assert_eq!(status, 200);
    let new = sample(
        &text,
        "lorastream_source_items_total{outcome=\"new\",source=\"demo\"}",
    );
    assert_eq!(new, Some(15.0), "{text}");
    assert!(sample(&text, "lorastream_train_steps_total").unwrap_or(0.0) >= 1.0);
    assert!(
        sample(
            &text,
            "lorastream_stream_examples{split=\"train\",stream=\"1\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(&text, "lorastream_served_perplexity{stream=\"1\"}").is_some_and(f64::is_finite),
        "{text}"
    );
    assert!(text.contains("lorastream_feedback_decisions_total{decision="));
    assert_eq!(
        sample(&text, "lorastream_chat_requests_total{status=\"200\"}"),
        Some(chats)
    );
    let first_tokens = sample(&text, "lorastream_chat_time_to_first_token_seconds_count");
    assert!(
        first_tokens.is_some_and(|n| (1.0..=chats).contains(&n)),
        "{first_tokens:?}"
    );
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!("skipped promtool: {e} (Debian's prometheus package provides it)"),
    }
    drop(d);
}
