//! Fuzzing the parsers of untrusted input (issue 14): the config parser, the
//! spool readers (CSV, JSON, JSONL), the datasets-server and Crawlbase
//! response parsers, the HTML cleaner and the chat request parser.
//!
//! Inputs are seed documents of each format mutated byte by byte (replace,
//! insert, delete, insert a syntax token, duplicate or cut a range) plus raw
//! random bytes, drawn by proptest from a fixed seed, so every run tries the
//! same inputs. Each must return — a value or a clear error — without a
//! panic and within 1 s. `make test` runs a short budget; the long run is
//!
//! ```text
//! FUZZ_CASES=100000 cargo test --release --test it fuzz:: -- --nocapture --test-threads 1
//! ```

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use lorastream::config::{Config, SourceConfig, SourceKind, SpoolFormat};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunConfig, RngAlgorithm, TestRng, TestRunner};

/// Inputs per target: `FUZZ_CASES`, default 5,000.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// Syntax fragments spliced in, so mutations reach the parsers' structure.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b",",
    b"\n",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"<",
    b">",
    b"</",
    b"<!--",
    b"&amp;",
    b"&#x1F600;",
    b"&#99999999;",
    b"=",
    b"[[sources]]",
    b"\"rows\":",
    b"\"row\":",
    b"\"body\":",
    b"null",
    b"1e999",
    b"-0",
    b"\xEF\xBB\xBF",
    b"\xff\xfe",
    b"\xc3",
    b"\t",
    b"\0",
    b"\"\"\"",
    b"<script>",
    b"<br>",
];

fn apply(mut data: Vec<u8>, edits: Vec<(u8, Index, Index, u8)>) -> Vec<u8> {
    for (op, i, j, b) in edits {
        let n = data.len();
        let at = if n == 0 { 0 } else { i.index(n + 1) };
        match op % 6 {
            0 if at < n => data[at] = b,
            1 => data.insert(at, b),
            2 if at < n => {
                data.remove(at);
            }
            3 => {
                let t = TOKENS[b as usize % TOKENS.len()];
                data.splice(at..at, t.iter().copied());
            }
            4 if n > 0 => {
                let end = (at + 1 + j.index(64)).min(n);
                let start = at.min(end);
                let piece = data[start..end].to_vec();
                data.splice(end..end, piece);
            }
            5 => data.truncate(at),
            _ => {}
        }
    }
    data
}

/// Seeds with a few edits (mostly still well-formed, so the deep paths run),
/// seeds with many edits, or random bytes.
fn inputs(seeds: &[&[u8]]) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let edits = |n: std::ops::Range<usize>| {
        prop::collection::vec(
            (any::<u8>(), any::<Index>(), any::<Index>(), any::<u8>()),
            n,
        )
    };
    prop_oneof![
        5 => (prop::sample::select(seeds.clone()), edits(0..3)).prop_map(|(s, e)| apply(s, e)),
        3 => (prop::sample::select(seeds), edits(3..24)).prop_map(|(s, e)| apply(s, e)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// Runs `target` on `cases()` inputs from a fixed seed; fails on a panic or
/// on an input that takes 1 s or more. `target` says whether the input was
/// accepted all the way through: the first seed must be (a parser broken at
/// its first check fails here), and so must at least a tenth of the inputs
/// (the mutations reach past the first syntax check).
fn fuzz(name: &str, seeds: &[&[u8]], target: impl Fn(&[u8]) -> bool) {
    assert!(
        target(seeds[0]),
        "fuzz {name}: the first seed is not accepted"
    );
    let n = cases();
    let config = RunConfig {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 1_000,
        ..RunConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]));
    let slowest = Cell::new(Duration::ZERO);
    let accepted = Cell::new(0u32);
    let started = Instant::now();
    let result = runner.run(&inputs(seeds), |input| {
        let t = Instant::now();
        accepted.set(accepted.get() + target(&input) as u32);
        let took = t.elapsed();
        slowest.set(slowest.get().max(took));
        prop_assert!(
            took < Duration::from_secs(1),
            "{name}: {took:?} on {} bytes",
            input.len()
        );
        Ok(())
    });
    eprintln!(
        "fuzz {name}: {n} inputs in {:.2} s, {} accepted, 0 panics, slowest {:.2} ms",
        started.elapsed().as_secs_f64(),
        accepted.get(),
        slowest.get().as_secs_f64() * 1e3
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    assert!(
        accepted.get() >= n / 10,
        "fuzz {name}: only {} of {n} inputs accepted: the target rejects what it should read",
        accepted.get()
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_parser() {
    let example = include_bytes!("../../config/lorastream.toml");
    let small = b"[daemon]\nstate_dir = \"s\"\n[[sources]]\nname = \"a\"\nkind = \"crawlbase\"\ntopics = [\"x\"]\n[train]\nlr = 1e-3\n[feedback]\nmerge = \"every_n_streams\"\n";
    let base = std::path::Path::new("/nonexistent");
    fuzz("config", &[example, small], |b| {
        Config::from_toml(&text(b), base).is_ok()
    });
}

fn spool(format: SpoolFormat) -> impl Fn(&[u8]) -> bool {
    move |b: &[u8]| {
        let mut n = 0usize;
        let r = lorastream::data::sources::spool::rows(b, format, "question", &mut |row| {
            n += row.fields.len();
            ControlFlow::Continue(())
        });
        r.is_ok() && n > 0
    }
}

#[test]
fn spool_csv_reader() {
    let seeds: &[&[u8]] = &[
        b"question,answer,upvotes\n\"Why?\",\"Line one,\nline \"\"two\"\"\",1.2K\nWho?,Me,3\n",
        b"\xEF\xBB\xBFQuestions,Answers\nq,a\n",
        b"question,answer,date\n\"How do I learn Rust?\",\"Read the book.\n\nThen write code, a lot of it.\",2024-01-01\n\"Is LoRA cheap?\",Yes,\n",
    ];
    fuzz("spool csv", seeds, spool(SpoolFormat::Csv));
}

#[test]
fn spool_json_reader() {
    let seeds: &[&[u8]] = &[
        br#"[{"question":"Q","answer":"A","n":1.5},{"question":"Q2","answer":null}]"#,
        br#"{"rows":[{"row_idx":0,"row":{"question":"Q","answer":"A"}}],"num_rows_total":1}"#,
        br#"{"meta":{"x":[1,2]},"data":[{"question":"Q"}],"items":[]}"#,
    ];
    fuzz("spool json", seeds, spool(SpoolFormat::Json));
}

#[test]
fn spool_jsonl_reader() {
    let seeds: &[&[u8]] = &[
        b"{\"question\":\"Q\",\"answer\":\"A\"}\n\n{\"question\":\"Q2\"}\r\n",
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
    ];
    fuzz("spool jsonl", seeds, spool(SpoolFormat::Jsonl));
}

#[test]
fn datasets_server_response_parser() {
    let mut src = SourceConfig::new("hf", SourceKind::HfDatasets);
    src.fields.question = "question".into();
    let seeds: &[&[u8]] = &[
        br#"{"features":[{"name":"question"}],"rows":[{"row_idx":0,"row":{"question":"Why?","answer":"Because.","upvotes":"1.2K"},"truncated_cells":[]},{"row_idx":1,"row":{"question":"Q2","answer":null}}],"num_rows_total":2,"num_rows_per_page":100,"partial":false}"#,
        br#"{"error":"The dataset does not exist."}"#,
    ];
    fuzz("datasets-server rows", seeds, |b| {
        lorastream::util::http::parse_json(b, "rows API").is_ok_and(|v| {
            lorastream::data::sources::hf::parse_page(&v, &src, "quora/x", 100).is_ok()
        })
    });
}

#[test]
fn crawlbase_response_parser() {
    let question = serde_json::json!({
        "question_title": "What is a thread?", "question_details": "Details.",
        "answers": [{"author": "Ada", "upvotes": "1.2K", "text": "A path of execution."}, {"text": ""}]
    });
    let as_string = serde_json::json!({"original_status": 200, "pc_status": 200, "url": "https://www.quora.com/What-is-a-thread", "body": question.to_string()}).to_string();
    let as_object =
        serde_json::json!({"original_status": 200, "pc_status": 200, "body": question}).to_string();
    let topic = br#"{"original_status":200,"pc_status":200,"body":"<html><a href=\"/What-is-a-thread\">q</a><a href=\"https://www.quora.com/topic/X\">t</a><a href=\"//evil.com/a-b\">e</a></html>"}"#;
    let seeds: &[&[u8]] = &[as_string.as_bytes(), as_object.as_bytes(), topic];
    fuzz("crawlbase pages", seeds, |b| {
        use lorastream::data::sources::crawlbase::{question_links, question_records, scraped};
        let Ok(v) = lorastream::util::http::parse_json(b, "Crawlbase") else {
            return false;
        };
        let records = scraped(&v).map_or(0, |d| {
            question_records(&d, "https://www.quora.com/q", "t").len()
        });
        let links = v.get("body").and_then(|b| b.as_str()).map_or(0, |h| {
            question_links(h, "https://www.quora.com/topic/X").len()
        });
        records + links > 0
    });
}

#[test]
fn html_cleaner() {
    let seeds: &[&[u8]] = &[
        b"<p>Use <b>LoRA</b> &amp; replay.<br>Then <a href='x'>measure</a>.</p><script>alert(1)</script><ul><li>one</li><li>two</li></ul>",
        b"<div><pre>code &lt;T&gt;</pre><!-- hidden --><img src=x onerror=y>text&nbsp;&#x27;q&#x27;</div>",
    ];
    fuzz("html cleaner", seeds, |b| {
        !lorastream::data::preprocess::html_to_text(&text(b)).is_empty()
    });
}

#[test]
fn chat_request_parser() {
    let seeds: &[&[u8]] = &[
        br#"{"model":"lorastream","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":32,"temperature":0.7,"stream":true,"stream_options":{"include_usage":true},"user":"u1","stop":["\n\n"]}"#,
        br#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"n":1,"top_p":0.9,"seed":3,"metadata":{"conversation_id":"c"}}"#,
    ];
    fuzz("chat request", seeds, |b| {
        serde_json::from_slice::<lorastream::serve::openai::api::ChatRequest>(b).is_ok_and(|r| {
            r.check(&lorastream::config::ServerConfig::default())
                .is_ok()
        })
    });
}
