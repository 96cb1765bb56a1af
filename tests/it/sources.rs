//! The HTTP sources against loopback servers that replay realistic responses
//! and inject faults: 429 with Retry-After, 500, a timeout, truncated JSON, a
//! 50 MB body, invalid UTF-8, a dead port. Nothing panics, nothing accepted is
//! lost, and the cursor never skips a row that was not stored.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::loopback::{Reply, Req, Server};
use lorastream::config::{CrawlMode, SourceConfig, SourceKind};
use lorastream::data::sources::{FetchReport, run_source};
use lorastream::util::http::Http;
use lorastream_store::Store;
use serde_json::{Value, json};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A dataset row as `toughdata`-like datasets have them, with the optional fields.
fn dataset_row(i: usize) -> Value {
    json!({
        "question": format!("How does step {i} of a TCP handshake work?"),
        "answer_text": format!("Step {i}: the peer answers with its own sequence number and acknowledges ours, so both sides agree on where the stream starts."),
        "upvotes": i * 3,
        "comment_count": i % 4,
        "answer_shared": i % 2,
        "answer_date": format!("2023-01-{:02}", 1 + i % 28),
    })
}

fn rows_page(offset: usize, length: usize, total: usize) -> Value {
    let rows: Vec<Value> = (offset..(offset + length).min(total))
        .map(|i| json!({"row_idx": i, "row": dataset_row(i), "truncated_cells": []}))
        .collect();
    json!({
        "features": [
            {"feature_idx": 0, "name": "question", "type": {"dtype": "string", "_type": "Value"}},
            {"feature_idx": 1, "name": "answer_text", "type": {"dtype": "string", "_type": "Value"}},
        ],
        "rows": rows,
        "num_rows_total": total,
        "num_rows_per_page": 100,
        "partial": false,
    })
}

fn hf_source(base: &str) -> SourceConfig {
    let mut s = SourceConfig::new("hf", SourceKind::HfDatasets);
    s.base_url = Some(base.into());
    s.dataset = Some("someone/quora-answers".into());
    s.page_size = Some(10);
    s.max_rows_per_run = Some(100);
    s.timeout_secs = 1;
    s.max_retries = 3;
    s.backoff_initial_ms = 20;
    s.backoff_max_ms = 200;
    s.rate_limit_per_sec = 1000.0;
    s.degraded_after = 2;
    s.fields.answer = "answer_text".into();
    s.fields.upvotes = Some("upvotes".into());
    s.fields.comment_count = Some("comment_count".into());
    s.fields.shares = Some("answer_shared".into());
    s.fields.date = Some("answer_date".into());
    s
}

fn stored_rows(store: &Store) -> Vec<u64> {
    let mut idx: Vec<u64> = store
        .raw_items_in_state(lorastream_store::RawState::New, 10_000)
        .unwrap()
        .iter()
        .map(|r| {
            r.external_id
                .as_deref()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    idx.sort();
    idx
}

fn cursor(store: &Store, name: &str) -> Option<String> {
    store.source(name).unwrap().unwrap().cursor
}

#[test]
fn hf_datasets_survives_faults_without_losing_or_skipping_rows() {
    const TOTAL: usize = 35;
    // Which fault each run meets at offset 30 (the last page).
    let phase = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&phase);
    let hits: Arc<std::sync::Mutex<std::collections::HashMap<usize, usize>>> = Arc::default();
    let server = Server::start(move |req: &Req| {
        assert_eq!(req.path, "/rows");
        assert_eq!(req.query["dataset"], "someone/quora-answers");
        assert_eq!(req.query["config"], "default");
        assert_eq!(req.query["split"], "train");
        let offset: usize = req.query["offset"].parse().unwrap();
        let length: usize = req.query["length"].parse().unwrap();
        assert!(length <= 100);
        let n = {
            let mut h = hits.lock().unwrap();
            let e = h.entry(offset).or_default();
            *e += 1;
            *e
        };
        match (offset, n) {
            (0, 1) => Reply::status(429, &[("Retry-After", "1")]),
            (10, 1) => Reply::status(500, &[]),
            (20, 1) => Reply::Delay(
                Duration::from_secs(3),
                Box::new(Reply::json(200, &rows_page(20, length, TOTAL))),
            ),
            (30, _) => match p.load(Ordering::SeqCst) {
                0 => {
                    // Truncated JSON: the body ends in the middle of a row.
                    let full = rows_page(30, length, TOTAL).to_string();
                    Reply::Full(200, vec![], full.as_bytes()[..full.len() / 2].to_vec())
                }
                1 => Reply::Endless { bytes: 50 << 20 },
                2 => Reply::Truncated {
                    declared: 1 << 20,
                    body: b"{\"rows\": [".to_vec(),
                },
                _ => {
                    // Invalid UTF-8 inside a string.
                    let mut body = rows_page(30, length, TOTAL).to_string().into_bytes();
                    let at = body.windows(6).position(|w| w == b"Step 3").unwrap();
                    body[at] = 0xff;
                    Reply::Full(200, vec![], body)
                }
            },
            _ => Reply::json(200, &rows_page(offset, length, TOTAL)),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
    let src = hf_source(&server.base);
    let http = Http::new();
    let rt = rt();
    let run = |store: &Store| -> FetchReport {
        rt.block_on(run_source(&http, store, dir.path(), &src, 3))
    };

    // Run 1: 429 (Retry-After 1 s honoured), 500, a timeout: all retried; then truncated JSON.
    let t = Instant::now();
    let r1 = run(&store);
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!((r1.fetched, r1.new), (30, 30), "{r1:?}");
    let e1 = r1.error.as_deref().unwrap();
    assert!(e1.contains("not valid JSON"), "{e1}");
    assert_eq!(stored_rows(&store), (0..30).collect::<Vec<_>>());
    assert_eq!(cursor(&store, "hf").as_deref(), Some("30"));
    let row = store.source("hf").unwrap().unwrap();
    assert_eq!(
        (row.error_count, row.degraded, row.items_total),
        (1, false, 30)
    );

    // Run 2: a 50 MB body without Content-Length: refused at the cap, nothing stored.
    phase.store(1, Ordering::SeqCst);
    let mut capped = src.clone();
    capped.max_response_bytes = 4 << 20;
    let r2 = rt.block_on(run_source(&http, &store, dir.path(), &capped, 3));
    let e2 = r2.error.as_deref().unwrap();
    assert!(e2.contains("larger than the 4194304-byte cap"), "{e2}");
    assert_eq!(r2.new, 0);
    assert_eq!(cursor(&store, "hf").as_deref(), Some("30"));
    let row = store.source("hf").unwrap().unwrap();
    assert!(
        row.degraded,
        "two failed runs in a row with degraded_after = 2"
    );

    // Run 3: the connection closes before the declared length: retried, then given up.
    phase.store(2, Ordering::SeqCst);
    let r3 = run(&store);
    assert!(
        r3.error
            .as_deref()
            .unwrap()
            .contains("gave up after 4 attempts"),
        "{r3:?}"
    );
    assert_eq!(cursor(&store, "hf").as_deref(), Some("30"));

    // Run 4: invalid UTF-8 is replaced, the page is stored, the source recovers.
    phase.store(3, Ordering::SeqCst);
    let r4 = run(&store);
    assert_eq!(
        (r4.fetched, r4.new, r4.error.as_deref()),
        (5, 5, None),
        "{r4:?}"
    );
    assert_eq!(stored_rows(&store), (0..35).collect::<Vec<_>>());
    assert_eq!(cursor(&store, "hf").as_deref(), Some("35"));
    let row = store.source("hf").unwrap().unwrap();
    assert_eq!(
        (row.error_count, row.degraded, row.items_total),
        (0, false, 35)
    );
    let items = store
        .raw_items_in_state(lorastream_store::RawState::New, 100)
        .unwrap();
    let bad = items
        .iter()
        .find(|i| i.answer.as_deref().unwrap().contains('\u{FFFD}'))
        .unwrap();
    assert!(
        bad.answer.as_deref().unwrap().contains("\u{FFFD}tep 30"),
        "{:?}",
        bad.answer
    );
    // The mapped optional fields are kept as provenance.
    let first = items
        .iter()
        .find(|i| i.external_id.as_deref() == Some("someone/quora-answers/default/train/7"))
        .unwrap();
    assert_eq!(first.meta["upvotes"], 21);
    assert_eq!(first.meta["comment_count"], 3);
    assert_eq!(first.meta["shares"], 1);
    assert_eq!(first.meta["date"], "2023-01-08");

    // Run 5: nothing new: one request at offset 35, no rows, nothing stored.
    let before = server.seen().len();
    let r5 = run(&store);
    assert_eq!(
        (r5.fetched, r5.new, r5.error.as_deref()),
        (0, 0, None),
        "{r5:?}"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen.last().unwrap().query["offset"], "35");
    assert_eq!(stored_rows(&store).len(), 35);
}

#[test]
fn hf_datasets_respects_max_rows_per_run_and_a_dead_port() {
    let server = Server::start(|req: &Req| {
        let offset: usize = req.query["offset"].parse().unwrap();
        let length: usize = req.query["length"].parse().unwrap();
        Reply::json(200, &rows_page(offset, length, 250))
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
    let mut src = hf_source(&server.base);
    src.page_size = Some(100);
    src.max_rows_per_run = Some(120);
    let http = Http::new();
    let rt = rt();
    let r = rt.block_on(run_source(&http, &store, dir.path(), &src, 3));
    assert_eq!((r.new, r.error.as_deref()), (120, None));
    let lengths: Vec<String> = server
        .seen()
        .iter()
        .map(|q| q.query["length"].clone())
        .collect();
    assert_eq!(lengths, ["100", "20"]);
    assert_eq!(cursor(&store, "hf").as_deref(), Some("120"));

    // Nothing listens on this port: connect errors are retried, then the run fails cleanly.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut gone = hf_source(&format!("http://127.0.0.1:{port}"));
    gone.name = "gone".into();
    gone.max_retries = 1;
    let r = rt.block_on(run_source(&http, &store, dir.path(), &gone, 3));
    let e = r.error.unwrap();
    assert!(
        e.contains("cannot connect") && e.contains("gave up after 2 attempts"),
        "{e}"
    );
    assert_eq!(store.source("gone").unwrap().unwrap().error_count, 1);
}

const TOKEN: &str = "cb-secret-7f3a";

fn topic_html() -> String {
    r#"<!DOCTYPE html><html><head><title>Technology - Quora</title></head><body>
    <div class="q-box"><a class="q-box qu-cursor--pointer" href="https://www.quora.com/What-is-the-difference-between-a-process-and-a-thread">
      <span>What is the difference between a process and a thread?</span></a></div>
    <div class="q-box"><a href="/How-does-HTTPS-keep-data-private?top_ans=1">How does HTTPS keep data private?</a></div>
    <div><a href="/topic/Computer-Programming">Computer Programming</a>
      <a href="/profile/Jane-Engineer">Jane Engineer</a>
      <a href="https://www.quora.com/Why-do-databases-use-B-trees#answers">Why do databases use B-trees?</a>
      <a href="https://twitter.com/quora">Twitter</a></div>
    <div class="spacing"><a href="/What-is-the-difference-between-a-process-and-a-thread">again</a></div>
    </body></html>"#
        .to_string()
}

fn question_json(slug: &str) -> Value {
    let title = slug.replace('-', " ") + "?";
    json!({
        "question_title": title,
        "question_details": null,
        "tags": ["Technology"],
        "answer_count": 2,
        "answers": [
            {"author": "Ada", "upvotes": "1.2K", "date": "2y",
             "text": format!("Short version for {slug}: it depends on the isolation the operating system gives each one, and on what they share.")},
            {"author": "Linus", "upvotes": 14,
             "text": format!("A longer view of {slug}. Memory, file handles and scheduling are the three things to compare.")},
        ],
    })
}

fn crawlbase_source(base: &str, token_file: &Path) -> SourceConfig {
    let mut s = SourceConfig::new("quora-tech", SourceKind::Crawlbase);
    s.base_url = Some(base.into());
    s.token_file = Some(token_file.into());
    s.mode = Some(CrawlMode::Topic);
    s.topics = Some(vec!["Technology".into()]);
    s.max_questions_per_run = Some(10);
    s.max_retries = 2;
    s.backoff_initial_ms = 20;
    s.backoff_max_ms = 100;
    s.rate_limit_per_sec = 1000.0;
    s
}

#[test]
fn crawlbase_topic_and_questions_with_faults_and_no_token_leaks() {
    let fail_https_once = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fail_https_once);
    let server = Server::start(move |req: &Req| {
        assert_eq!(req.query.get("token").map(String::as_str), Some(TOKEN));
        assert_eq!(req.query["format"], "json");
        let target = req.query["url"].clone();
        if req.n == 0 {
            // Crawlbase is busy: 503 with a Retry-After of zero seconds.
            return Reply::status(503, &[("Retry-After", "0")]);
        }
        match req.query.get("scraper").map(String::as_str) {
            None => {
                assert_eq!(target, "https://www.quora.com/topic/Technology");
                Reply::json(
                    200,
                    &json!({"original_status": 200, "pc_status": 200, "url": target, "body": topic_html()}),
                )
            }
            Some("quora-question") => {
                let slug = target.rsplit('/').next().unwrap().to_string();
                if slug.starts_with("How-does-HTTPS") && f.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Crawlbase could not fetch the page this time.
                    return Reply::json(
                        200,
                        &json!({"original_status": 503, "pc_status": 520, "url": target, "body": ""}),
                    );
                }
                // The scraper's object arrives as a JSON string in `body`.
                Reply::json(
                    200,
                    &json!({"original_status": 200, "pc_status": 200, "url": target, "body": question_json(&slug).to_string()}),
                )
            }
            Some(other) => panic!("unexpected scraper {other}"),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("crawlbase.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
    let src = crawlbase_source(&server.base, &token_file);
    let http = Http::new();
    let rt = rt();

    // Run 1: 503 retried; the second question fails (pc_status 520), the run
    // goes on to the third; the failure is counted, without the token.
    let r1 = rt.block_on(run_source(&http, &store, dir.path(), &src, 3));
    assert_eq!(
        (r1.fetched, r1.new, r1.items_failed, r1.error.as_deref()),
        (4, 4, 1, None),
        "{r1:?}"
    );
    let f = &store.item_failures().unwrap()[0];
    let https = "https://www.quora.com/How-does-HTTPS-keep-data-private";
    assert_eq!(
        (f.key.as_str(), f.set_aside),
        (&*format!("quora-tech {https}"), false)
    );
    assert!(f.last_error.contains("pc_status 520") && !f.last_error.contains(TOKEN));

    // Run 2: the topic page again; only the failed question is fetched again.
    let before = server.seen().len();
    let r2 = rt.block_on(run_source(&http, &store, dir.path(), &src, 3));
    assert_eq!(
        (r2.fetched, r2.new, r2.error.as_deref()),
        (2, 2, None),
        "{r2:?}"
    );
    let fetched: Vec<String> = server.seen()[before..]
        .iter()
        .filter(|r| r.query.contains_key("scraper"))
        .map(|r| r.query["url"].clone())
        .collect();
    assert_eq!(fetched, [https]);
    assert!(store.item_failures().unwrap().is_empty(), "success forgets");
    let items = store
        .raw_items_in_state(lorastream_store::RawState::New, 100)
        .unwrap();
    assert_eq!(items.len(), 6);
    let ada = items.iter().find(|i| i.meta["author"] == "Ada").unwrap();
    assert_eq!(ada.meta["upvotes"], 1200);
    assert_eq!(ada.meta["label"], "Technology");
    assert_eq!(
        ada.question,
        "What is the difference between a process and a thread?"
    );

    // Run 3: everything seen: only the topic page is fetched.
    let before = server.seen().len();
    let r3 = rt.block_on(run_source(&http, &store, dir.path(), &src, 3));
    assert_eq!((r3.new, r3.error.as_deref()), (0, None));
    assert_eq!(server.seen().len(), before + 1);

    // A missing token file is a clear error that names the file, not a panic.
    let mut broken = src.clone();
    broken.token_file = Some(dir.path().join("nope.token"));
    let r = rt.block_on(run_source(&http, &store, dir.path(), &broken, 3));
    assert!(r.error.unwrap().contains("nope.token"));
}

/// Before: one question page that always failed was fetched first on every
/// run and ended the run, so the questions after it were never reached.
#[test]
fn crawlbase_a_page_that_always_fails_is_set_aside_and_the_rest_is_reached() {
    let outage = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&outage);
    let server = Server::start(move |req: &Req| {
        let target = req.query["url"].clone();
        let slug = target.rsplit('/').next().unwrap().to_string();
        let bad = slug.starts_with("What-is-the-difference") || o.load(Ordering::SeqCst) > 0;
        // The topic page; its first question never works (nor any, in an outage).
        let body = match req.query.get("scraper") {
            None => json!(topic_html()),
            Some(_) if bad => json!("{truncated"),
            Some(_) => json!(question_json(&slug).to_string()),
        };
        Reply::json(
            200,
            &json!({"original_status": 200, "pc_status": 200, "url": target, "body": body}),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("crawlbase.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
    let src = crawlbase_source(&server.base, &token_file);
    let http = Http::new();
    let rt = rt();
    let poison = "https://www.quora.com/What-is-the-difference-between-a-process-and-a-thread";
    let r1 = rt.block_on(run_source(&http, &store, dir.path(), &src, 2));
    assert_eq!(
        (r1.new, r1.items_failed, r1.error.as_deref()),
        (4, 1, None),
        "{r1:?}"
    );
    let r2 = rt.block_on(run_source(&http, &store, dir.path(), &src, 2));
    assert_eq!((r2.new, r2.items_failed), (0, 1), "{r2:?}");
    let f = &store.item_failures().unwrap()[0];
    assert_eq!((f.failures, f.set_aside), (2, true), "{f:?}");
    assert!(f.last_error.contains("Crawlbase scraper body"), "{f:?}");
    // Set aside: never asked for again.
    let before = server.seen().len();
    let r3 = rt.block_on(run_source(&http, &store, dir.path(), &src, 2));
    assert_eq!((r3.items_failed, r3.error.as_deref()), (0, None));
    let asked: Vec<Req> = server.seen().split_off(before);
    assert!(asked.iter().all(|r| r.query["url"] != poison));
    // Several pages, all failing: the source's problem; none is counted.
    outage.store(1, Ordering::SeqCst);
    let fresh = Store::open(&dir.path().join("fresh.sqlite")).unwrap();
    let r4 = rt.block_on(run_source(&http, &fresh, dir.path(), &src, 1));
    assert!(r4.error.is_some() && r4.items_failed == 0, "{r4:?}");
    assert!(fresh.item_failures().unwrap().is_empty());
}
