//! `lorastream demo`: the whole loop, offline, in a few minutes. A private
//! state directory and config; the real daemon (this binary's `run`) with a
//! spool source; two streams of sample questions about lorastream itself
//! (`demo/*.json`, built into the binary); the matrix and the decisions; and
//! two questions asked through the chat API before and after learning.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use lorastream_ml::load::source::DEFAULT_SOURCE;
use lorastream_store::{AdapterState, Store};

/// The two streams, in order.
const STREAMS: [(&str, &str); 2] = [
    ("running.json", include_str!("demo/running.json")),
    ("learning.json", include_str!("demo/learning.json")),
];
const QUESTIONS: [&str; 2] = [
    "What does `lorastream demo` do?",
    "What does [feedback] max_forgetting control?",
];

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo's config, state and log go (default: a new directory under $TMPDIR).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The model (default: the daemon's default, with its offline GGUF fallback).
    #[arg(long, default_value = DEFAULT_SOURCE)]
    pub model: String,
    /// Port of the demo's chat server on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1500)]
    pub timeout_secs: u64,
}

fn config_text(dir: &Path, model: &str, port: u16) -> String {
    format!(
        r#"# Written by `lorastream demo`.
[daemon]
state_dir = "{state}"
shutdown_grace_secs = 10
log_format = "json"

[[sources]]
name = "demo"
kind = "spool"
dir = "{spool}"
format = "json"
settle_secs = 0
schedule = "*/2 * * * * *"
[sources.fields]
question = "question"
answer = "answer"

[preprocess]
min_question_chars = 10

[streams]
min_examples = 40
max_examples = 60
eval_fraction = 0.2

[summarizer]
backend = "none"

[model]
source = "{model}"

[lora]
r = 8
alpha = 16.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]

[train]
epochs_per_stream = 3
batch_size = 4
seq_len = 192
lr = 0.001
warmup_steps = 3
checkpoint_every = 1000
log_every = 5

[feedback]
max_forgetting = 0.10

[server]
listen = "127.0.0.1:{port}"
memory = false

[schedule]
crawl = "*/2 * * * * *"
seal = "*/2 * * * * *"
train = "on_new_stream"
crawl_on_start = true
"#,
        state = dir.join("state").display(),
        spool = dir.join("spool").display(),
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Stops the daemon on every way out.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SIGTERM: the daemon checkpoints and exits within its grace.
            let _ = std::process::Command::new("kill")
                .arg(self.0.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Demo {
    client: reqwest::Client,
    base: String,
    progress: indicatif::ProgressBar,
    started: Instant,
    deadline: Instant,
    last_line: String,
}

impl Demo {
    /// Asks before, drops each stream into the spool and waits for its
    /// decision, asks after.
    async fn run(&mut self, dir: &Path) -> anyhow::Result<Answers> {
        self.wait_for("the daemon's server", |_| true).await?;
        self.say("loading the model (first start: import of the GGUF fallback when offline)");
        let before = self.ask_all("base", "before", json!({})).await?;
        for (i, (name, text)) in STREAMS.iter().enumerate() {
            std::fs::write(dir.join("spool").join(name), text)?;
            self.say(&format!(
                "dropped {name} into the spool: stream {} of 2",
                i + 1
            ));
            self.wait_for(
                &format!("stream {} trained, evaluated and decided", i + 1),
                |s| decided(s) > i,
            )
            .await?;
        }
        let after = self.ask_all("lorastream", "after", json!({})).await?;
        // The same questions without the default repetition penalty: how
        // the answers read before it (distinct-2 beside each other).
        let plain = json!({"repetition_penalty": 1.0});
        let unpenalised = self
            .ask_all("lorastream", "after, no penalty", plain)
            .await?;
        Ok(Answers {
            before,
            after,
            unpenalised,
        })
    }

    fn say(&self, line: &str) {
        self.progress
            .suspend(|| println!("[{:>5.1}s] {line}", self.started.elapsed().as_secs_f64()));
    }

    async fn status(&self) -> anyhow::Result<Value> {
        Ok(self
            .client
            .get(format!("{}/api/status", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Shows what the daemon is doing: the running stages' details.
    fn show(&mut self, s: &Value) {
        let line = s["status"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|st| st["state"] == "running")
            .map(|st| {
                format!(
                    "{}: {}",
                    st["name"].as_str().unwrap_or("?"),
                    st["detail"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(" | ");
        if !line.is_empty() && line != self.last_line {
            if self.progress.is_hidden() {
                self.say(&line);
            }
            self.progress.set_message(line.clone());
            self.last_line = line;
        }
    }

    /// Polls until `done(status)` holds, showing progress.
    async fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.say(&format!("waiting: {what}"));
        loop {
            if Instant::now() > self.deadline {
                bail!("timed out waiting for {what}");
            }
            if let Ok(s) = self.status().await {
                self.show(&s);
                if done(&s) {
                    return Ok(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }

    async fn ask(&self, model: &str, question: &str, extra: &Value) -> anyhow::Result<String> {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": question}],
                          "max_tokens": 80, "temperature": 0});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let v: Value = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    async fn ask_all(&self, model: &str, when: &str, extra: Value) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for q in QUESTIONS {
            let a = self.ask(model, q, &extra).await?;
            self.say(&format!("{when} ({model}) Q: {q}\n         A: {a}"));
            out.push(a);
        }
        Ok(out)
    }
}

/// Streams the feedback loop is done with: learned (an adapter of it
/// promoted) or given up (`not_learned`); a stream being retrained is not.
fn decided(s: &Value) -> usize {
    let empty = Vec::new();
    let adapters = s["status"]["adapters"].as_array().unwrap_or(&empty);
    let streams = s["status"]["streams"].as_array().unwrap_or(&empty);
    streams
        .iter()
        .filter(|st| {
            st["state"] == "not_learned"
                || (st["state"] == "trained"
                    && adapters
                        .iter()
                        .any(|a| a["stream_id"] == st["id"] && a["state"] == "promoted"))
        })
        .count()
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("lorastream-demo-{}", std::process::id())),
    };
    if dir.join("state").exists() {
        bail!(
            "{} holds an earlier demo; choose a new --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("spool"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let port = if args.port == 0 {
        free_port()?
    } else {
        args.port
    };
    let log = dir.join("daemon.log");
    let _daemon = start_daemon(&dir, &args.model, port, &log)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut d = Demo {
        client: lorastream::util::http::client_builder()
            .timeout(Duration::from_secs(600))
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
        progress: spinner(),
        started,
        deadline: started + Duration::from_secs(args.timeout_secs),
        last_line: String::new(),
    };
    let result = rt.block_on(d.run(&dir));
    d.progress.finish_and_clear();
    let answers = result.with_context(|| format!("see {}", log.display()))?;
    report(&dir, &answers, started)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the demo's config and starts `lorastream run` on it, its log in `log`.
fn start_daemon(dir: &Path, model: &str, port: u16, log: &Path) -> anyhow::Result<Daemon> {
    let config = dir.join("demo.toml");
    std::fs::write(&config, config_text(dir, model, port))?;
    println!("lorastream demo: state and log in {}", dir.display());
    println!("  web page while it runs: http://127.0.0.1:{port}/");
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the daemon")?;
    Ok(Daemon(child))
}

/// The answers to [`QUESTIONS`]: from the base, from the served version,
/// and from it again without the default repetition penalty.
struct Answers {
    before: Vec<String>,
    after: Vec<String>,
    unpenalised: Vec<String>,
}

/// Distinct-2 (distinct word pairs over all pairs: 1 = no pair repeats) and
/// how many sentences repeat an earlier one of the same text.
fn repetition(text: &str) -> (f64, usize) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let pairs: Vec<(&str, &str)> = words.windows(2).map(|w| (w[0], w[1])).collect();
    let distinct: std::collections::HashSet<_> = pairs.iter().collect();
    let d2 = if pairs.is_empty() {
        1.0
    } else {
        distinct.len() as f64 / pairs.len() as f64
    };
    let mut seen = std::collections::HashSet::new();
    let repeated = text
        .split(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| s.split_whitespace().count() >= 3)
        .filter(|s| !seen.insert(s.to_lowercase()))
        .count();
    (d2, repeated)
}

/// A spinner on a terminal, nothing elsewhere.
fn spinner() -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let p = indicatif::ProgressBar::new_spinner();
        p.enable_steady_tick(Duration::from_millis(120));
        p
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// The matrix, the decisions, the served version and the answers before and after.
fn report(dir: &Path, a: &Answers, started: Instant) -> anyhow::Result<()> {
    let store = Store::open(&dir.join("state/lorastream.db"))?;
    let matrix = lorastream::learn::matrix::fill::stored_matrix(&store)?;
    println!("\nperplexity matrix (rows: versions, columns: streams; lower is better)\n{matrix}");
    println!("feedback decisions");
    let adapters = store.adapters()?;
    for a in &adapters {
        let reasons = lorastream::learn::records::outcome(a)
            .map_or_else(String::new, |o| o.reasons().join("; "));
        println!(
            "  v{} (stream {}): {}  {reasons}",
            a.id, a.stream_id, a.state
        );
    }
    let served = store.served_adapter()?;
    println!(
        "\nserved: {}",
        served.map_or("the base model (nothing promoted)".into(), |a| format!(
            "v{}",
            a.id
        ))
    );
    for (i, q) in QUESTIONS.iter().enumerate() {
        println!(
            "\nQ: {q}\n  before: {}\n  after:  {}",
            a.before[i], a.after[i]
        );
        let (d, r) = repetition(&a.after[i]);
        let (d0, r0) = repetition(&a.unpenalised[i]);
        println!(
            "  after: distinct-2 {d:.2}, {r} repeated sentence(s); without the repetition penalty: distinct-2 {d0:.2}, {r0} repeated"
        );
    }
    let promoted = adapters
        .iter()
        .filter(|a| a.state == AdapterState::Promoted)
        .count();
    println!(
        "\ndemo finished in {:.0} s ({promoted} of 2 streams promoted); state kept in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}
