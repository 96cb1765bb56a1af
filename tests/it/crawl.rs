//! `lorastream crawl` as a process: the spool source on the project's own
//! fixtures (tests/fixtures/quora: five topic CSVs in the export's layout, our
//! own text) and on the real Quora exports in ../shared/data/quora (that
//! test skipped with a reason when absent), the five topic CSVs becoming five streams, a second
//! crawl adding nothing, bad and unsettled files, and the OpenAI-compatible
//! summarizer over loopback (with its fallback).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::loopback::{Reply, Req, Server};
use common::{assert_ok, lorastream};
use serde_json::{Value, json};

const TOPICS: [&str; 5] = [
    "software engineering",
    "ai",
    "algorithms",
    "machine learning",
    "web development",
];

fn shared_quora() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/quora");
    if dir.join("answers.json").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} is absent (a fresh clone without ../shared); the fixture tests still run",
            dir.display()
        );
        None
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for d in ["csv", "json"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let config = root.join("lorastream.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[daemon]
state_dir = "{root}/state"
log_format = "json"

[[sources]]
name = "quora-csv"
kind = "spool"
dir = "{root}/csv"
settle_secs = 0
[sources.fields]
question = "Questions"
answer = "Answers"
date = "Time"

[[sources]]
name = "quora-json"
kind = "spool"
dir = "{root}/json"
settle_secs = 0
[sources.fields]
question = "title"
answer = "answer"
upvotes = "num upvote"
url = "title_url"

[streams]
min_examples = 20
min_eval_examples = 1
{extra}
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

    /// One `crawl --once --json`: the report, and the log lines.
    fn crawl(&self, args: &[&str]) -> (Value, String) {
        let out = lorastream()
            .arg("-c")
            .arg(&self.config)
            .args(["crawl", "--once", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert_ok(&out);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let report: Value = stdout
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str(l)
                    .ok()
                    .filter(|v: &Value| v.get("sources").is_some())
            })
            .unwrap_or_else(|| panic!("no report in {stdout}"));
        (report, stdout + &String::from_utf8_lossy(&out.stderr))
    }

    /// `lorastream status --json`.
    fn status(&self) -> Value {
        let st = lorastream()
            .arg("-c")
            .arg(&self.config)
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert_ok(&st);
        serde_json::from_slice(&st.stdout).unwrap()
    }

    /// The examples of the `i`-th stream (train and eval), from its files.
    fn stream_examples(&self, i: usize) -> Vec<Vec<lorastream_ml::Message>> {
        let status = self.status();
        let dir = PathBuf::from(status["streams"][i]["path"].as_str().unwrap());
        let mut all =
            lorastream::data::streams::load_split(&dir, lorastream_store::Split::Train).unwrap();
        all.extend(
            lorastream::data::streams::load_split(&dir, lorastream_store::Split::Eval).unwrap(),
        );
        all
    }

    fn drop_file(&self, sub: &str, from: &Path) {
        std::fs::copy(from, self.root.join(sub).join(from.file_name().unwrap())).unwrap();
    }
}

fn source<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// (fetched, new, duplicate) of one source in a report.
fn fetch(r: &Value, name: &str) -> (u64, u64, u64) {
    let f = &source(r, name)["fetch"];
    (
        f["fetched"].as_u64().unwrap(),
        f["new"].as_u64().unwrap(),
        f["duplicate"].as_u64().unwrap(),
    )
}

fn examples(r: &Value, name: &str) -> u64 {
    r["preprocess"]["by_source"][name]["examples"]
        .as_u64()
        .unwrap_or(0)
}

fn dropped(r: &Value, name: &str) -> Value {
    r["preprocess"]["by_source"][name]["dropped"].clone()
}

/// A set of exports and what it holds: the stem of each topic's CSV and of
/// the JSON file; per topic file (rows, new, duplicate, examples kept, drops
/// by reason), and of the JSON file (rows, examples kept, drops).
struct Expected {
    topic_stem: fn(&str) -> String,
    json_stem: &'static str,
    topics: [(u64, u64, u64, u64, Value); 5],
    json: (u64, u64, Value),
}

#[test]
fn five_quora_topic_files_become_five_streams_and_a_second_crawl_adds_nothing() {
    // The bundled exports (tests/fixtures/quora/make.py says what each holds).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quora");
    five_topics(
        &fixture,
        Expected {
            topic_stem: |t| format!("topic-{}", t.replace(' ', "-")),
            json_stem: "scraped-answers",
            topics: [
                (30, 30, 0, 30, json!({})),
                (30, 30, 0, 28, json!({"answer_too_long": 1, "no_answer": 1})),
                (30, 28, 2, 27, json!({"answer_too_long": 1})),
                (30, 24, 6, 24, json!({})),
                (30, 27, 3, 27, json!({})),
            ],
            json: (20, 11, json!({"no_answer": 1, "low_upvotes": 8})),
        },
    );
}

#[test]
fn the_real_quora_exports_when_present() {
    let Some(quora) = shared_quora() else { return };
    // Hand-checked with Python's csv module.
    five_topics(
        &quora,
        Expected {
            topic_stem: |t| format!("{t} - Quora_with_responses"),
            json_stem: "answers",
            topics: [
                (90, 90, 0, 90, json!({})),
                (90, 90, 0, 88, json!({"answer_too_long": 1, "no_answer": 1})),
                (90, 88, 2, 87, json!({"answer_too_long": 1})),
                (90, 61, 29, 61, json!({})),
                (90, 87, 3, 87, json!({})),
            ],
            json: (39, 15, json!({"no_answer": 1, "low_upvotes": 23})),
        },
    );
}

/// Five topic files, then the JSON file, crawled twice: five streams, one
/// waiting set, and nothing new the second time.
fn five_topics(quora: &Path, want: Expected) {
    let s = Setup::new("[preprocess]\nmin_upvotes = 10\n");
    // Rows new to the store, rows already stored from an earlier topic,
    // examples kept, and drops by reason.
    for (topic, (rows, new, dup, kept, drops)) in TOPICS.iter().zip(want.topics.clone()) {
        s.drop_file(
            "csv",
            &quora.join(format!("{}.csv", (want.topic_stem)(topic))),
        );
        let (r, _) = s.crawl(&["--source", "quora-csv"]);
        assert_eq!(fetch(&r, "quora-csv"), (rows, new, dup), "{topic}");
        assert_eq!(examples(&r, "quora-csv"), kept, "{topic}");
        assert_eq!(dropped(&r, "quora-csv"), drops, "{topic}");
        let streams = r["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 1, "{topic}: {streams:?}");
        assert_eq!(streams[0][1], (want.topic_stem)(topic));
        assert_eq!(
            streams[0][2].as_u64().unwrap() + streams[0][3].as_u64().unwrap(),
            kept
        );
        assert!(
            streams[0][3].as_u64().unwrap() > 0,
            "every stream has an eval split"
        );
        assert!(
            s.root
                .join("csv/done")
                .join(format!("{}.csv", (want.topic_stem)(topic)))
                .exists()
        );
    }
    // The JSON export: empty answers and answers under 10 upvotes dropped.
    let (json_rows, json_kept, json_drops) = want.json;
    s.drop_file("json", &quora.join(format!("{}.json", want.json_stem)));
    let (r, _) = s.crawl(&[]);
    assert_eq!(fetch(&r, "quora-json"), (json_rows, json_rows, 0));
    assert_eq!(examples(&r, "quora-json"), json_kept);
    assert_eq!(dropped(&r, "quora-json"), json_drops);
    assert_eq!(
        r["streams"].as_array().unwrap().len(),
        0,
        "{json_kept} < min_examples"
    );

    // The same data again: all duplicates, no new examples, no stream.
    for topic in TOPICS {
        s.drop_file(
            "csv",
            &quora.join(format!("{}.csv", (want.topic_stem)(topic))),
        );
    }
    s.drop_file("json", &quora.join(format!("{}.json", want.json_stem)));
    let (r, _) = s.crawl(&[]);
    let csv_rows: u64 = want.topics.iter().map(|t| t.0).sum();
    assert_eq!(fetch(&r, "quora-csv"), (csv_rows, 0, csv_rows));
    assert_eq!(fetch(&r, "quora-json"), (json_rows, 0, json_rows));
    assert_eq!(r["preprocess"]["by_source"], json!({}));
    assert_eq!(r["streams"].as_array().unwrap().len(), 0);

    // The stream files are the format training reads, with condensed answers.
    let status = s.status();
    let streams = status["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 5);
    let dir = PathBuf::from(streams[0]["path"].as_str().unwrap());
    let train =
        lorastream::data::streams::load_split(&dir, lorastream_store::Split::Train).unwrap();
    assert_eq!(train.len() as i64, streams[0]["n_train"].as_i64().unwrap());
    assert!(
        train
            .iter()
            .all(|m| m.len() == 2 && m[0].role == "user" && m[1].role == "assistant")
    );
    // Answers over 256 tokens were condensed (approximate count: no model configured).
    let longest = train.iter().map(|m| m[1].content.len()).max().unwrap();
    assert!(longest < 256 * 6, "longest trained answer {longest} chars");
    // Force-sealing the waiting JSON examples makes a sixth stream named after the file.
    let (r, _) = s.crawl(&["--seal"]);
    assert_eq!(r["streams"][0][1], want.json_stem);
    assert_eq!(
        r["streams"][0][2].as_u64().unwrap() + r["streams"][0][3].as_u64().unwrap(),
        json_kept
    );
}

#[test]
fn spool_fixtures_bad_files_and_unsettled_files() {
    let s = Setup::new("");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool");
    for f in ["topic-a.csv", "broken.csv"] {
        s.drop_file("csv", &fixtures.join(f));
    }
    s.drop_file("json", &fixtures.join("qa.jsonl"));
    // A file still being written: modified just now, with a settle time.
    let mut cfg = std::fs::read_to_string(&s.config).unwrap();
    cfg = cfg.replacen("settle_secs = 0", "settle_secs = 3600", 2);
    std::fs::write(s.root.join("settling.toml"), &cfg).unwrap();
    let out = lorastream()
        .arg("-c")
        .arg(s.root.join("settling.toml"))
        .args(["crawl", "--once", "--json"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(
        s.root.join("csv/topic-a.csv").exists(),
        "an unsettled file is left in place"
    );

    let (r, logs) = s.crawl(&[]);
    assert_eq!(source(&r, "quora-csv")["fetch"]["files_done"], 1);
    assert_eq!(source(&r, "quora-csv")["fetch"]["files_failed"], 1);
    let reason = std::fs::read_to_string(s.root.join("csv/failed/broken.csv.reason")).unwrap();
    assert!(reason.contains("no column `Questions`"), "{reason}");
    assert!(logs.contains("spool file refused"), "{logs}");
    // topic-a.csv: 6 rows with quoted multi-line answers, one unanswered, one
    // duplicate of another row after case and punctuation folding.
    assert_eq!(fetch(&r, "quora-csv"), (6, 6, 0));
    assert_eq!(examples(&r, "quora-csv"), 4);
    assert_eq!(
        dropped(&r, "quora-csv"),
        json!({"no_answer": 1, "near_duplicate": 1})
    );
    // qa.jsonl (question = "title" mapping): 3 lines, one with a too-short answer.
    assert_eq!(fetch(&r, "quora-json"), (3, 3, 0));
    assert_eq!(dropped(&r, "quora-json"), json!({"answer_too_short": 1}));
    assert_eq!(r["streams"].as_array().unwrap().len(), 0);
    let (r, _) = s.crawl(&["--seal"]);
    assert_eq!(r["streams"][0][1], "topic-a + qa");
    // Multi-line answers keep their paragraphs; HTML is gone; PII scrubbed.
    let all = s.stream_examples(0);
    let text: Vec<&str> = all.iter().map(|m| m[1].content.as_str()).collect();
    assert!(
        text.iter().any(|t| t.contains("ownership.\n\nBorrowing")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .all(|t| !t.contains('<') && !t.contains("Continue Reading")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("[email]")), "{text:?}");
    assert!(text.iter().all(|t| !t.contains("@example.com")), "{text:?}");
}

#[test]
fn openai_summarizer_is_used_and_falls_back_to_extractive() {
    let server = Server::start(|req: &Req| {
        assert_eq!(req.path, "/v1/chat/completions");
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let prompt = body["messages"][0]["content"].as_str().unwrap();
        assert!(prompt.contains("at most 40 tokens"), "{prompt}");
        if prompt.contains("garbage collection") {
            return Reply::status(500, &[]);
        }
        Reply::json(
            200,
            &json!({"choices": [{"message": {"role": "assistant", "content": "  A condensed answer from the model.  "}}]}),
        )
    });
    let s = Setup::new(&format!(
        "[summarizer]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"tiny\"\nmax_answer_tokens = 40\ntimeout_secs = 5\n",
        server.base
    ));
    let long = |topic: &str| {
        (0..12)
            .map(|i| {
                format!("Point {i} about {topic} is that it matters for the design of the program.")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lines = [
        json!({"title": "How should I think about ownership in Rust?", "answer": long("ownership")}),
        json!({"title": "How does garbage collection work in Java?", "answer": long("garbage collection")}),
        json!({"title": "What is a short answer like?", "answer": "It is short enough to keep."}),
    ];
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(s.root.join("json/long.jsonl"), text).unwrap();
    let (r, logs) = s.crawl(&["--seal"]);
    assert_eq!(r["summarize"]["ready"], 3);
    assert_eq!(
        r["summarize"]["condensed"],
        json!({"openai": 1, "extractive": 1})
    );
    assert_eq!(r["summarize"]["fallbacks"], 1);
    assert!(
        logs.contains("summarizer endpoint failed; using extractive"),
        "{logs}"
    );
    let all = s.stream_examples(0);
    let answers: Vec<&str> = all.iter().map(|m| m[1].content.as_str()).collect();
    assert!(
        answers.contains(&"A condensed answer from the model."),
        "{answers:?}"
    );
    assert!(
        answers.contains(&"It is short enough to keep."),
        "{answers:?}"
    );
    let gc = answers
        .iter()
        .find(|a| a.contains("garbage collection"))
        .unwrap();
    assert!(gc.len() < long("garbage collection").len() / 2, "{gc}");
}

#[test]
fn crawlbase_token_never_reaches_the_logs() {
    const TOKEN: &str = "tok-4c1d-never-log-me";
    let server = Server::start(|req: &Req| {
        assert_eq!(req.query["token"], TOKEN);
        if req.n == 0 {
            return Reply::status(502, &[]);
        }
        Reply::json(
            200,
            &json!({"original_status": 404, "pc_status": 200, "url": req.query["url"], "body": ""}),
        )
    });
    let s = Setup::new("");
    let cfg = std::fs::read_to_string(&s.config).unwrap()
        + &format!(
            "\n[[sources]]\nname = \"cb\"\nkind = \"crawlbase\"\nbase_url = \"{}\"\ntoken_env = \"LS_TEST_CB_TOKEN\"\nmode = \"question\"\nquestions = [\"https://www.quora.com/Is-this-question-gone\"]\nbackoff_initial_ms = 10\nrate_limit_per_sec = 100.0\n",
            server.base
        );
    std::fs::write(&s.config, cfg).unwrap();
    let out = lorastream()
        .arg("-c")
        .arg(&s.config)
        .args(["-v", "crawl", "--once", "--source", "cb"])
        .env("LS_TEST_CB_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_ok(&out);
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("request failed; retrying"), "{all}");
    assert!(all.contains("token=REDACTED"), "{all}");
    assert!(!all.contains(TOKEN), "{all}");
    assert_eq!(server.seen().len(), 2);
}

/// Before: with the endpoint black-holed, every long example waited for three
/// timed-out attempts, and the crawl chain waited with it. Now after
/// `breaker_failures` examples in a row the pass goes on extractively.
#[test]
fn a_black_holed_summarizer_trips_the_breaker() {
    let server = Server::start(|_: &Req| {
        Reply::Delay(Duration::from_secs(30), Box::new(Reply::status(200, &[])))
    });
    let s = Setup::new(&format!(
        "[summarizer]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"tiny\"\nmax_answer_tokens = 16\ntimeout_secs = 1\nbreaker_failures = 2\n",
        server.base
    ));
    let lines: String = (0..6)
        .map(|i| {
            let answer = format!("Sentence one of answer {i} is long enough. ").repeat(8);
            json!({"title": format!("Question number {i} about breakers?"), "answer": answer})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(s.root.join("json/long.jsonl"), lines).unwrap();
    let (r, logs) = s.crawl(&["--seal"]);
    assert_eq!(r["summarize"]["ready"], 6, "{r}");
    assert_eq!(r["summarize"]["condensed"], json!({"extractive": 6}));
    assert_eq!(r["summarize"]["breaker_open"], true);
    // Two examples, three attempts each; the other four never called it.
    assert_eq!(server.seen().len(), 6, "requests to the endpoint");
    assert_eq!(
        logs.matches("extractive for the rest of this pass").count(),
        1,
        "{logs}"
    );
}
