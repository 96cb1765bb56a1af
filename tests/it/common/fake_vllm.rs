//! A loopback server that follows vLLM's published OpenAI-compatible API
//! where these tests need it: runtime LoRA (`POST /v1/load_lora_adapter`,
//! `POST /v1/unload_lora_adapter`, loaded adapters listed by `GET
//! /v1/models`; loading a name twice is a 400, unloading a missing one a
//! 404, a `lora_path` without `adapter_config.json` a 400) and streamed
//! `POST /v1/chat/completions` (404 for a model it does not have). It
//! records every call, checks the API key, and can be told to fail (500).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::loopback::{Reply, Req, Server};

/// The base model's name on the fake fleet.
pub const BASE: &str = "acme/tiny-llama";

#[derive(Debug, Default)]
pub struct Fleet {
    pub loaded: BTreeSet<String>,
    /// `load NAME` / `unload NAME`, in order.
    pub calls: Vec<String>,
    /// Every chat request body.
    pub chats: Vec<Value>,
    /// Answer 500 to everything.
    pub fail: bool,
}

pub struct FakeVllm {
    pub server: Server,
    pub fleet: Arc<Mutex<Fleet>>,
}

impl FakeVllm {
    pub fn start(key: Option<&str>) -> FakeVllm {
        FakeVllm::start_on("127.0.0.1:0", key)
    }

    /// On `addr`: a server that comes back where one was.
    pub fn start_on(addr: &str, key: Option<&str>) -> FakeVllm {
        let fleet: Arc<Mutex<Fleet>> = Arc::default();
        let f = Arc::clone(&fleet);
        let key = key.map(|k| format!("Bearer {k}"));
        let server = Server::start_on(addr, move |req| {
            if key.is_some() && req.headers.get("authorization") != key.as_ref() {
                return error(401, "Unauthorized");
            }
            let mut fleet = f.lock().unwrap();
            if fleet.fail {
                return error(500, "Internal Server Error");
            }
            handle(&mut fleet, req)
        });
        FakeVllm { server, fleet }
    }

    pub fn loaded(&self) -> Vec<String> {
        self.fleet.lock().unwrap().loaded.iter().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.fleet.lock().unwrap().calls.clone()
    }

    pub fn chats(&self) -> Vec<Value> {
        self.fleet.lock().unwrap().chats.clone()
    }

    pub fn set_failing(&self, fail: bool) {
        self.fleet.lock().unwrap().fail = fail;
    }
}

/// vLLM's error object.
fn error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"message": message, "type": "BadRequestError", "code": status}}),
    )
}

fn handle(fleet: &mut Fleet, req: &Req) -> Reply {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => {
            let mut data = vec![json!({"id": BASE, "object": "model", "root": BASE})];
            for name in &fleet.loaded {
                data.push(json!({"id": name, "object": "model", "root": name, "parent": BASE}));
            }
            Reply::json(200, &json!({"object": "list", "data": data}))
        }
        ("POST", "/v1/load_lora_adapter") => {
            let name = body["lora_name"].as_str().unwrap_or_default().to_string();
            let path = body["lora_path"].as_str().unwrap_or_default();
            if fleet.loaded.contains(&name) {
                return error(
                    400,
                    &format!("The lora adapter '{name}' has already been loaded."),
                );
            }
            if !std::path::Path::new(path)
                .join("adapter_config.json")
                .is_file()
            {
                return error(
                    400,
                    &format!("Loading lora {name} failed: No adapter found for {path}"),
                );
            }
            fleet.calls.push(format!("load {name}"));
            fleet.loaded.insert(name.clone());
            let ok = format!("Success: LoRA adapter '{name}' added successfully.");
            Reply::Full(200, vec![], ok.into_bytes())
        }
        ("POST", "/v1/unload_lora_adapter") => {
            let name = body["lora_name"].as_str().unwrap_or_default().to_string();
            if !fleet.loaded.remove(&name) {
                return error(404, &format!("The lora adapter '{name}' cannot be found."));
            }
            fleet.calls.push(format!("unload {name}"));
            let ok = format!("Success: LoRA adapter '{name}' removed successfully.");
            Reply::Full(200, vec![], ok.into_bytes())
        }
        ("POST", "/v1/chat/completions") => chat(fleet, body),
        _ => error(404, "Not Found"),
    }
}

/// A streamed answer: "echo:" and the first words of the last message.
fn chat(fleet: &mut Fleet, body: Value) -> Reply {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if model != BASE && !fleet.loaded.contains(&model) {
        return error(404, &format!("The model `{model}` does not exist."));
    }
    fleet.chats.push(body.clone());
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let words: Vec<&str> = std::iter::once("echo:")
        .chain(last.split_whitespace().take(3))
        .collect();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut sse = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for (i, w) in words.iter().enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        sse.push(chunk(json!({"content": text}), Value::Null));
    }
    sse.push(chunk(json!({}), json!("stop")));
    sse.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": words.len(), "total_tokens": 11 + words.len()}}));
    let mut out: String = sse.iter().map(|c| format!("data: {c}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    Reply::Full(
        200,
        vec![("Content-Type".into(), "text/event-stream".into())],
        out.into_bytes(),
    )
}
