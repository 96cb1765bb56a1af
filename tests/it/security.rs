//! A team's daemon over real HTTP: three identities (alice and bob with user
//! keys, ops with an admin key) and what each can reach — memory,
//! conversations, feedback, forgetting, admin routes — plus the browser-safety
//! checks (content type, Host), request checks, and per-key limits.

use crate::chat::rt;
use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use serde_json::{Value, json};

pub(crate) const ALICE: &str = "alice-key-0123456789";
pub(crate) const BOB: &str = "bob-key-0123456789";
pub(crate) const OPS: &str = "ops-key-0123456789";
pub(crate) const RATED: &str = "rated-key-0123456789";
pub(crate) const PAIR: &str = "pair-key-0123456789";

/// A tiny model and a config with five identities; `extra` goes in `[server]`.
pub(crate) fn setup(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_llama(&dir.join("model"));
    let config = dir.join("lorastream.toml");
    let key = |name: &str, env: &str, more: &str| {
        format!("[[server.keys]]\nname = \"{name}\"\nkey_env = \"{env}\"\n{more}\n")
    };
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:model\"\nthreads = 1\n\
             [server]\nlisten = \"127.0.0.1:0\"\nmax_tokens = 1000\nlearn_from_conversations = true\n{extra}\n{}{}{}{}{}",
            key("alice", "LS_ALICE", "learn = true"),
            key("bob", "LS_BOB", ""),
            key("ops", "LS_OPS", "role = \"admin\""),
            key("rated", "LS_RATED", "rpm = 10"),
            key("pair", "LS_PAIR", "max_concurrent = 2"),
        ),
    )
    .unwrap();
    config
}

pub(crate) fn start(config: &Path) -> (Daemon, String) {
    let d = Daemon::start_with_env(
        config,
        &[
            ("LS_ALICE", ALICE),
            ("LS_BOB", BOB),
            ("LS_OPS", OPS),
            ("LS_RATED", RATED),
            ("LS_PAIR", PAIR),
        ],
    );
    let line = d.wait_for("chat server listening");
    let url = format!("http://{}", line["listen"].as_str().unwrap());
    (d, url)
}

/// One call: method, path, key, JSON body, extra headers → status, headers, JSON.
pub(crate) async fn call(
    url: &str,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = lorastream::util::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut r = client.request(method, format!("{url}{path}"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn chat(
    url: &str,
    key: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let path = "/v1/chat/completions";
    call(
        url,
        reqwest::Method::POST,
        path,
        Some(key),
        Some(&body),
        headers,
    )
    .await
}

pub(crate) fn say(user: Option<&str>, text: &str) -> Value {
    let mut b = json!({"model": "lorastream", "max_tokens": 8, "temperature": 1.0, "seed": 5,
        "messages": [{"role": "user", "content": text}]});
    if let Some(u) = user {
        b["user"] = json!(u);
    }
    b
}

pub(crate) fn memories(h: &reqwest::header::HeaderMap) -> u64 {
    h["x-lorastream-memories"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Replaces the tiny model with the small preset (1,000 tokens take seconds).
pub(crate) fn small_model(dir: &Path) {
    std::fs::remove_dir_all(dir.join("model")).unwrap();
    let out = common::lorastream()
        .args([
            "model", "init", "--arch", "llama", "--preset", "small", "--out",
        ])
        .arg(dir.join("model"))
        .output()
        .unwrap();
    common::assert_ok(&out);
}

/// Rows of the store: alice's (conversations, messages), and all feedback.
fn rows(dir: &Path) -> (i64, i64, i64) {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("state/lorastream.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let n = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        n("SELECT COUNT(*) FROM conversations WHERE identity = 'alice'"),
        n("SELECT COUNT(*) FROM messages WHERE conversation_id IN
           (SELECT id FROM conversations WHERE identity = 'alice')"),
        n("SELECT COUNT(*) FROM message_feedback"),
    )
}

const FACT: &str = "Remember this: my locker code is zanzibar-4471.";
const ASK: &str = "What is my locker code zanzibar?";

#[test]
fn identities_never_reach_each_others_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let (d, url) = start(&config);
    rt().block_on(async {
        let (status, h, _) = chat(&url, ALICE, say(Some("u1"), FACT), &[]).await;
        assert_eq!(status, 200);
        let alices = h["x-conversation-id"].to_str().unwrap().to_string();
        // Positive control: alice's u1 recalls it; alice's u2 does not.
        let (_, h, _) = chat(&url, ALICE, say(Some("u1"), ASK), &[]).await;
        assert!(memories(&h) >= 1, "alice recalls her own fact");
        let (_, h, _) = chat(&url, ALICE, say(Some("u2"), ASK), &[]).await;
        assert_eq!(memories(&h), 0, "another user of the same key");
        let before = rows(dir.path());
        // Whatever bob claims, nothing of alice's comes back.
        for user in [Some("u1"), Some("alice"), None] {
            let (status, h, body) = chat(&url, BOB, say(user, ASK), &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(memories(&h), 0, "bob as {user:?}");
            let all = format!("{h:?}{body}");
            assert!(!all.contains("zanzibar-4471"), "{all}");
        }
        let conv = [("x-conversation-id", alices.as_str())];
        let (status, _, _) = chat(&url, BOB, say(Some("u1"), ASK), &conv).await;
        assert_eq!(status, 404, "bob appends to alice's conversation");
        let (status, _, _) = chat(&url, ALICE, say(Some("u2"), ASK), &conv).await;
        assert_eq!(
            status, 404,
            "alice's other user appends to u1's conversation"
        );
        let rate = json!({"conversation_id": alices, "rating": 1, "learn": true});
        let post = reqwest::Method::POST;
        let (status, _, _) = call(
            &url,
            post.clone(),
            "/v1/feedback",
            Some(BOB),
            Some(&rate),
            &[],
        )
        .await;
        assert_eq!(status, 404, "bob rates alice's answer");
        let path = format!("/v1/conversations/{alices}");
        for m in [reqwest::Method::GET, reqwest::Method::DELETE] {
            let (status, _, _) = call(&url, m, &path, Some(BOB), None, &[]).await;
            assert_eq!(status, 404);
        }
        let del = reqwest::Method::DELETE;
        let (status, _, r) = call(&url, del.clone(), "/v1/memory/u1", Some(BOB), None, &[]).await;
        assert_eq!(
            (status, &r["identity"]),
            (200, &json!("bob")),
            "bob's own u1 only: {r}"
        );
        let (status, _, _) = call(
            &url,
            del.clone(),
            "/v1/memory/u1?identity=alice",
            Some(BOB),
            None,
            &[],
        )
        .await;
        assert_eq!(status, 403, "only an admin names another identity");
        let after = rows(dir.path());
        assert_eq!(
            before, after,
            "alice's conversations and ratings are untouched"
        );
        // Alice reads and rates her own; an admin forgets for her.
        let (status, _, c) = call(&url, reqwest::Method::GET, &path, Some(ALICE), None, &[]).await;
        assert_eq!((status, c["messages"].as_array().unwrap().len()), (200, 2));
        let (status, _, r) = call(&url, post, "/v1/feedback", Some(ALICE), Some(&rate), &[]).await;
        assert_eq!((status, &r["learned"]), (200, &json!(true)), "{r}");
        let (status, _, r) = call(
            &url,
            del,
            "/v1/memory/u1?identity=alice",
            Some(OPS),
            None,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["deleted_messages"], 4, "{r}");
        assert_eq!(
            r["dropped_examples"], 1,
            "the learned exchange, not yet in a stream: {r}"
        );
        let (_, h, _) = chat(&url, ALICE, say(Some("u1"), ASK), &[]).await;
        assert_eq!(memories(&h), 0, "forgotten");
        // Admin routes.
        for (key, want) in [(None, 401), (Some(ALICE), 403), (Some(OPS), 200)] {
            for path in ["/metrics", "/api/status"] {
                let (status, _, _) = call(&url, reqwest::Method::GET, path, key, None, &[]).await;
                assert_eq!(status, want, "{path} with {key:?}");
            }
        }
    });
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn browser_safety_and_request_checks() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let (d, url) = start(&config);
    rt().block_on(async {
        let client = lorastream::util::http::client_builder().build().unwrap();
        let path = format!("{url}/v1/chat/completions");
        let body = say(Some("u1"), "hi").to_string();
        let r = client.post(&path).bearer_auth(ALICE).header("content-type", "text/plain")
            .body(body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415);
        let r = client.post(&path).bearer_auth(ALICE).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "no content type");
        let host = [("host", "attacker.example")];
        let (status, _, _) = chat(&url, ALICE, say(None, "hi"), &host).await;
        assert_eq!(status, 421);
        let (status, h, _) = call(&url, reqwest::Method::GET, "/", None, None, &host).await;
        assert_eq!(status, 421, "the page too");
        let (_, h2, _) = call(&url, reqwest::Method::GET, "/", None, None, &[]).await;
        assert!(h2["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
        assert!(!h.contains_key("access-control-allow-origin"));
        let lower = [("authorization", "bearer alice-key-0123456789")];
        let (status, _, _) = call(&url, reqwest::Method::GET, "/v1/models", None, None, &lower).await;
        assert_eq!(status, 200, "the scheme is case-insensitive");

        let before = rows(dir.path());
        let long = "x".repeat(200_000);
        for (bad, param) in [
            (say(Some("a\u{1}b"), "hi"), "user"),
            (say(Some(&long), "hi"), "user"),
            (json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}), "n"),
            (json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
            (json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}), "response_format"),
        ] {
            let (status, h, e) = chat(&url, ALICE, bad, &[]).await;
            assert_eq!((status, e["error"]["param"].as_str()), (400, Some(param)), "{e}");
            assert!(format!("{h:?}").len() < 4000, "nothing unbounded echoed");
        }
        assert_eq!(rows(dir.path()), before, "refused before anything was stored");

        let many: Vec<Value> = (0..20_000).map(|_| json!({"role": "user", "content": "hi"})).collect();
        let big = json!({"messages": many}).to_string();
        println!("20,000 messages: {} KB body", big.len() / 1024);
        let sent = Instant::now();
        let r = client.post(&path).bearer_auth(ALICE).header("content-type", "application/json")
            .body(big).send().await.unwrap();
        let took = sent.elapsed();
        assert_eq!(r.status().as_u16(), 400);
        println!("BENCH 20,000 messages refused in {} ms (body upload included)", took.as_millis());
    });
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

/// Calls `GET /v1/models` with `key` until it answers `want`, at most `tries`
/// times `pause` apart; whether it did.
async fn models_until(url: &str, key: &str, want: u16, tries: usize, pause: Duration) -> bool {
    for _ in 0..tries {
        let (s, _, _) = call(
            url,
            reqwest::Method::GET,
            "/v1/models",
            Some(key),
            None,
            &[],
        )
        .await;
        if s == want {
            return true;
        }
        tokio::time::sleep(pause).await;
    }
    false
}

/// The statuses of 50 concurrent `GET /v1/models` with `key`.
async fn burst(url: &str, key: &str) -> Vec<u16> {
    let calls = (0..50).map(|_| {
        call(
            url,
            reqwest::Method::GET,
            "/v1/models",
            Some(key),
            None,
            &[],
        )
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect()
}

#[test]
fn per_key_rate_and_concurrency_limits_hold_under_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    small_model(dir.path());
    let (d, url) = start(&config);
    rt().block_on(async {
        let statuses = burst(&url, RATED).await;
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        println!("BENCH rpm = 10, burst of 50: {ok} × 200, {limited} × 429");
        assert!(
            (10..=11).contains(&ok) && ok + limited == 50,
            "{statuses:?}"
        );
        let (_, h, _) = call(
            &url,
            reqwest::Method::GET,
            "/v1/models",
            Some(RATED),
            None,
            &[],
        )
        .await;
        assert!(h.contains_key("retry-after"));

        // Two streams held open: the pair key's third request waits its turn.
        let client = lorastream::util::http::client_builder().build().unwrap();
        let stream = |started: tokio::sync::oneshot::Sender<u16>| {
            let mut b = say(None, "count to a thousand");
            b["stream"] = json!(true);
            b["max_tokens"] = json!(1000);
            b["ignore_eos"] = json!(true);
            let send = client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(PAIR)
                .json(&b)
                .send();
            async move {
                let r = send.await.unwrap();
                let _ = started.send(r.status().as_u16());
                let _ = r.bytes().await;
            }
        };
        // Two streams of 1,000 tokens held open: the key's two places taken.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let a = tokio::spawn(stream(tx));
        assert_eq!(rx.await.unwrap(), 200, "the first stream runs");
        let (tx, rx_b) = tokio::sync::oneshot::channel();
        let b = tokio::spawn(stream(tx));
        // Both in flight once the second one's headers came (continuous
        // batching starts it beside the first). No request of this key may
        // run meanwhile: it would take the second one's place.
        let second = tokio::time::timeout(Duration::from_secs(60), rx_b).await;
        assert_eq!(
            second.ok().and_then(Result::ok),
            Some(200),
            "the second stream runs"
        );
        let statuses = burst(&url, PAIR).await;
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        println!(
            "BENCH max_concurrent = 2 with 2 streams open, burst of 50: {} × 200, {limited} × 429",
            50 - limited
        );
        a.abort();
        b.abort();
        assert_eq!(limited, 50, "{statuses:?}");
        // The streams' places come back when they go.
        let freed = models_until(&url, PAIR, 200, 50, Duration::from_millis(100)).await;
        assert!(freed, "the dropped streams free their places");
    });
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
