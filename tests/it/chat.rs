//! The chat server of a real daemon over loopback HTTP: OpenAI's wire format
//! (whole and streamed), models, errors, API keys, and memory across a
//! restart (a hot swap under load and the official client: `chat_load`).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use serde_json::{Value, json};

pub(crate) const KEY: &str = "test-key-1234";

/// A raw body and the extra headers to send it with.
type BadRequest = (Vec<u8>, Vec<(&'static str, &'static str)>);

/// A tiny Llama model, a config with the server on an ephemeral port.
pub(crate) fn setup(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_llama(&dir.join("model"));
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:model\"\nthreads = 1\n\
             [server]\nlisten = \"127.0.0.1:0\"\napi_key_env = \"LS_CHAT_KEY\"\nmax_tokens = 12\n{extra}"
        ),
    )
    .unwrap();
    config
}

pub(crate) fn start(config: &Path) -> (Daemon, String) {
    let d = Daemon::start_with_env(config, &[("LS_CHAT_KEY", KEY)]);
    let line = d.wait_for("chat server listening");
    let url = format!("http://{}", line["listen"].as_str().unwrap());
    (d, url)
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    lorastream::util::http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs `body` (raw) to /v1/chat/completions with the key; status, headers, JSON.
async fn post_raw(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        r = r.bearer_auth(KEY);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, h, v)
}

pub(crate) async fn ask(
    url: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_raw(url, body.to_string().into_bytes(), headers).await
}

/// A keyed call of `method` on `path` with an optional JSON body: status and JSON.
async fn call(method: reqwest::Method, url: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = client()
        .request(method, format!("{url}{path}"))
        .bearer_auth(KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub(crate) fn hello(extra: Value) -> Value {
    let mut b = json!({"model": "lorastream", "messages": [{"role": "user", "content": "hello there"}],
                       "max_tokens": 8, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn speaks_openai_chat_with_streams_models_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let (d, url) = start(&config);
    rt().block_on(async {
        // Models: the key is required; base and the served name are listed.
        let r = client()
            .get(format!("{url}/v1/models"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_api_key");
        let (_, m) = call(reqwest::Method::GET, &url, "/v1/models", None).await;
        let ids: Vec<&str> = m["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["lorastream", "base"], "{m}");

        // A whole completion.
        let (status, _, c) = ask(&url, hello(json!({})), &[]).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(
            c["model"], "base",
            "no adapter promoted yet: the base answers"
        );
        let text = c["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let u = &c["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(u["completion_tokens"].as_u64().unwrap() <= 8);
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );

        // The same request streamed: role first, the same text, finish reason, [DONE].
        let resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&hello(json!({"stream": true})))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = resp.text().await.unwrap();
        let events: Vec<&str> = body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(*events.last().unwrap(), "[DONE]", "{body}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, text, "greedy: streamed and whole answers agree");
        assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

        // Twenty malformed requests: each a 4xx error object.
        let long = "x".repeat(2 << 20);
        let bad: Vec<BadRequest> = vec![
            (b"not json".to_vec(), vec![]),
            (b"".to_vec(), vec![]),
            (b"[1, 2]".to_vec(), vec![]),
            (json!({"messages": []}).to_string().into_bytes(), vec![]),
            (json!({"messages": "hi"}).to_string().into_bytes(), vec![]),
            (
                json!({"model": "lorastream"}).to_string().into_bytes(),
                vec![],
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]})
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]})
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                json!({"messages": [{"role": "user"}]})
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                hello(json!({"max_tokens": -1})).to_string().into_bytes(),
                vec![],
            ),
            (
                hello(json!({"max_tokens": "many"}))
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                hello(json!({"temperature": 5})).to_string().into_bytes(),
                vec![],
            ),
            (
                hello(json!({"temperature": "hot"}))
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (hello(json!({"top_p": 0})).to_string().into_bytes(), vec![]),
            (
                hello(json!({"stream": "yes"})).to_string().into_bytes(),
                vec![],
            ),
            (
                hello(json!({"stop": ["a", "b", "c", "d", "e"]}))
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                hello(json!({"model": "gpt-nonexistent"}))
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                hello(json!({"model": "lorastream@v99"}))
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                json!({"messages": [{"role": "user", "content": long}]})
                    .to_string()
                    .into_bytes(),
                vec![],
            ),
            (
                hello(json!({})).to_string().into_bytes(),
                vec![("authorization", "Bearer wrong")],
            ),
        ];
        assert_eq!(bad.len(), 20);
        for (body, headers) in bad {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            let (status, _, e) = post_raw(&url, body, &headers).await;
            assert!((400..500).contains(&status), "{shown}: {status} {e}");
            assert!(e["error"]["message"].is_string(), "{shown}: {e}");
            assert!(e["error"]["type"].is_string(), "{shown}: {e}");
        }
        let (status, e) = call(reqwest::Method::GET, &url, "/v1/nowhere", None).await;
        assert_eq!(status, 404);
        assert!(e["error"]["message"].is_string(), "{e}");
        // Still answering.
        let (status, _, c) = ask(&url, hello(json!({})), &[]).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["choices"][0]["message"]["content"], text);
    });
    // `lorastream chat` reads one message per line from a pipe and streams answers.
    let mut chat = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .args(["chat", "--url", &url, "--user", "cli"])
        .env("LS_CHAT_KEY", KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = chat.stdin.take().unwrap();
        stdin
            .write_all(b"hello there\n/model base\nand again\n/reset\n/quit\n")
            .unwrap();
    }
    let out = chat.wait_with_output().unwrap();
    common::assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "two answers: {stdout:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(model: base)"));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn remembers_a_fact_across_a_restart_and_forgets_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "learn_from_conversations = true\n");
    let (d, url) = start(&config);
    rt().block_on(async {
        let tell = json!({"model": "lorastream", "user": "ann", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Remember this: my cat is called Miso."}]});
        // A conversation id the server did not make is unknown: 404.
        let (status, _, _) = ask(&url, tell.clone(), &[("x-conversation-id", "first")]).await;
        assert_eq!(status, 404);
        let (status, h, _) = ask(&url, tell, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-lorastream-memories"], "0");
        let first = h["x-conversation-id"].to_str().unwrap().to_string();
        assert_eq!(first.len(), 32, "128 random bits: {first}");
        let message: i64 = h["x-lorastream-message-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // Rated helpful: learned only once the user opts in.
        let rate = |body: Value| call(reqwest::Method::POST, &url, "/v1/feedback", Some(body));
        let (_, r) =
            rate(json!({"conversation_id": first, "message_id": message, "rating": 1})).await;
        assert_eq!(r["learned"], false, "not opted in: {r}");
        let (_, r) = rate(
            json!({"conversation_id": first, "message_id": message, "rating": 1, "learn": true}),
        )
        .await;
        assert_eq!(r["learned"], true, "{r}");
        let (status, e) = rate(json!({"conversation_id": "nope", "rating": 1})).await;
        assert_eq!(status, 404, "{e}");
    });
    let taught = |store: &lorastream_store::Store| {
        store
            .raw_items_in_state(lorastream_store::RawState::New, 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.source == lorastream_store::CONVERSATIONS_SOURCE)
            .count()
    };
    let store = lorastream_store::Store::open(&dir.path().join("state/lorastream.db")).unwrap();
    assert_eq!(
        taught(&store),
        1,
        "the helpful exchange waits for preprocessing"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());

    let (d, url) = start(&config);
    let system_prompt_with_memory = rt().block_on(async {
        let question = json!({"model": "lorastream", "user": "ann", "max_tokens": 4,
            "messages": [{"role": "user", "content": "What is my cat called?"}]});
        let (status, h, _) = ask(&url, question.clone(), &[]).await;
        assert_eq!(status, 200);
        let used: u64 = h["x-lorastream-memories"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // Another user does not see ann's memories.
        let mut other = question.clone();
        other["user"] = json!("bob");
        let (_, hb, _) = ask(&url, other, &[]).await;
        assert_eq!(hb["x-lorastream-memories"], "0");
        // Forgetting removes them.
        let (_, r) = call(reqwest::Method::DELETE, &url, "/v1/memory/ann", None).await;
        assert!(r["deleted_messages"].as_u64().unwrap() >= 2, "{r}");
        assert_eq!(taught(&store), 0, "forgotten: kept out of training");
        let (_, h2, _) = ask(&url, question, &[]).await;
        assert_eq!(h2["x-lorastream-memories"], "0");
        (used, h2["x-conversation-id"].to_str().unwrap().to_string())
    });
    let (system_prompt_with_memory, third) = system_prompt_with_memory;
    assert!(
        system_prompt_with_memory >= 1,
        "the fact told before the restart is recalled"
    );
    let listed = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .args(["memory", "list", "ann"])
        .output()
        .unwrap();
    common::assert_ok(&listed);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains("Miso"), "forgotten: {listed}");
    assert!(listed.contains(&third), "asked after forgetting: {listed}");
    let forgot = common::lorastream()
        .args(["--config"])
        .arg(&config)
        .args(["memory", "forget", "ann"])
        .output()
        .unwrap();
    common::assert_ok(&forgot);
    assert!(String::from_utf8_lossy(&forgot.stdout).contains("forgot 2 message(s)"));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
