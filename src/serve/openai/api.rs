//! The OpenAI wire format of `/v1/chat/completions`: the request and its
//! checks, completions, chunks and log-probabilities (errors are
//! [`crate::serve::error::ApiError`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use lorastream_ml::Message;

use crate::serve::error::ApiError;

/// Longest `stop` string accepted (characters).
pub const MAX_STOP_CHARS: usize = 128;

/// A request of `POST /v1/chat/completions`. Unknown fields are accepted (and
/// ignored) as OpenAI's server does; known fields of the wrong type are a 400.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    /// Extension (as vLLM's): generate `max_tokens` even past end-of-sequence.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Parameters this server does not implement: refused with a 400 naming
    /// them rather than silently ignored.
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// 0–20 alternatives per token (needs `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// OpenAI's, -2 to 2.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Extension (transformers' and vLLM's meaning): > 1 discourages tokens
    /// already in the prompt or the answer.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// A last chunk with no choices carries the usage.
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or OpenAI's list of `{"type": "text", "text": …}` parts.
    pub content: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A request checked against the server's limits.
#[derive(Debug, Clone)]
pub struct Checked {
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub seed: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub frequency_penalty: f64,
    pub presence_penalty: f64,
    pub repetition_penalty: f64,
    /// `Some(n)`: log-probabilities with `n` alternatives.
    pub logprobs: Option<usize>,
}

/// `v` if it is finite and within `range`, else a 400 naming `param`.
fn within(param: &str, v: f64, range: std::ops::RangeInclusive<f64>) -> Result<f64, ApiError> {
    if v.is_finite() && range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            param,
            &format!(
                "{param} must be between {} and {} (got {v})",
                range.start(),
                range.end()
            ),
        ))
    }
}

impl ChatRequest {
    /// Validates the request against `[server]`'s limits.
    pub fn check(self, limits: &crate::config::ServerConfig) -> Result<Checked, ApiError> {
        let max_tokens_cap = limits.max_tokens;
        self.refuse_unsupported()?;
        let logprobs = self.logprobs()?;
        let messages = check_messages(self.messages, limits.max_messages)?;
        let temperature = within("temperature", self.temperature.unwrap_or(1.0), 0.0..=2.0)?;
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                &format!("top_p must be in (0, 1] (got {top_p})"),
            ));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => max_tokens_cap,
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    &format!("max_tokens must be at least 1 (got {n})"),
                ));
            }
            Some(n) => (n as u64).min(max_tokens_cap as u64) as usize,
        };
        let stop = self.stop.map(Stop::into_vec).unwrap_or_default();
        // Every token is checked against each stop string's prefixes: bounded.
        if stop.len() > 4
            || stop
                .iter()
                .any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
        {
            return Err(ApiError::invalid(
                "stop",
                &format!(
                    "stop takes up to 4 non-empty strings of at most {MAX_STOP_CHARS} characters"
                ),
            ));
        }
        let d = &limits.sampling;
        Ok(Checked {
            messages,
            temperature,
            top_p,
            max_tokens,
            stop,
            seed: self.seed.unwrap_or(0) as u64,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            frequency_penalty: within(
                "frequency_penalty",
                self.frequency_penalty.unwrap_or(d.frequency_penalty),
                -2.0..=2.0,
            )?,
            presence_penalty: within(
                "presence_penalty",
                self.presence_penalty.unwrap_or(d.presence_penalty),
                -2.0..=2.0,
            )?,
            repetition_penalty: within(
                "repetition_penalty",
                self.repetition_penalty.unwrap_or(d.repetition_penalty),
                0.01..=10.0,
            )?,
            logprobs,
        })
    }

    /// `logprobs` and `top_logprobs` as the number of alternatives to report.
    fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if !(0..=20).contains(&n) => Err(ApiError::invalid(
                "top_logprobs",
                &format!("top_logprobs must be between 0 and 20 (got {n})"),
            )),
            (false, Some(n)) if n > 0 => Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs `logprobs: true`",
            )),
            (true, n) => Ok(Some(n.unwrap_or(0) as usize)),
            (false, _) => Ok(None),
        }
    }
}

/// The request's messages as chat messages: roles known, contents text, at
/// most `max_messages`, the last one not the assistant's.
fn check_messages(raw: Vec<ChatMessage>, max_messages: usize) -> Result<Vec<Message>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    if raw.len() > max_messages {
        return Err(ApiError::invalid(
            "messages",
            &format!(
                "{} messages is over the {} a request may have ([server] max_messages)",
                raw.len(),
                max_messages
            ),
        ));
    }
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    &format!(
                        "unknown role {other:?}: expected system, developer, user or assistant"
                    ),
                ));
            }
        };
        let content = text_of(&m.content).ok_or_else(|| {
            ApiError::invalid(
                &format!("messages[{i}].content"),
                "content must be a string or a list of text parts",
            )
        })?;
        messages.push(Message::new(role, &content));
    }
    if messages.last().is_some_and(|m| m.role == "assistant") {
        return Err(ApiError::invalid(
            "messages",
            "the last message must be from the user (or system), not the assistant",
        ));
    }
    Ok(messages)
}

impl ChatRequest {
    /// 400 for parameters this server does not implement.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "n",
                "this server answers with one choice: `n` must be 1",
            ));
        }
        let present = |v: &Option<Value>| {
            v.as_ref()
                .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        };
        for (param, v) in [("tools", &self.tools), ("functions", &self.functions)] {
            if present(v) {
                return Err(ApiError::invalid(
                    param,
                    &format!("`{param}` (tool calling) is not supported by this server"),
                ));
            }
        }
        if let Some(f) = &self.response_format
            && !f.is_null()
            && f.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(ApiError::invalid(
                "response_format",
                "only `{\"type\": \"text\"}` is supported as response_format",
            ));
        }
        Ok(())
    }
}

/// The text of a message's content: a string, or the concatenated text parts.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Some(t.as_str()),
                    _ => None,
                },
            )
            .collect::<Option<Vec<&str>>>()
            .map(|v| v.concat()),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A whole completion (`stream: false`).
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    text: &str,
    finish: &str,
    usage: &Usage,
    logprobs: Value,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }],
        "usage": usage,
    })
}

/// One `chat.completion.chunk` of a stream.
pub fn chunk(
    id: &str,
    created: i64,
    model: &str,
    delta: Value,
    logprobs: Value,
    finish: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    })
}

/// OpenAI's `logprobs` object for `tokens` (`null` when none were asked for).
pub fn logprobs_json(
    tok: &lorastream_ml::ChatTokenizer,
    tokens: &[lorastream_ml::generation::generate::Logprob],
) -> Value {
    let entry = |id: u32, lp: f32| {
        let text = tok.decode(&[id]);
        json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    fn req(v: Value) -> Result<Checked, ApiError> {
        serde_json::from_value::<ChatRequest>(v)
            .map_err(|e| ApiError::invalid("body", &e.to_string()))?
            .check(&crate::config::ServerConfig {
                max_tokens: 256,
                max_messages: 3,
                ..Default::default()
            })
    }

    #[test]
    fn accepts_openai_shapes_and_refuses_bad_values() {
        let ok = req(json!({"model": "lorastream", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ], "stop": "\n", "max_tokens": 9999, "unknown_field": 1}))
        .unwrap();
        assert_eq!(ok.messages[1].content, "hi");
        assert_eq!(ok.max_tokens, 256, "capped at [server] max_tokens");
        assert_eq!(ok.stop, vec!["\n".to_string()]);
        for bad in [
            json!({"messages": []}),
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            json!({"messages": "hello"}),
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "x"},
                {"role": "user", "content": "x"}, {"role": "user", "content": "x"}]}),
        ] {
            let e = req(bad.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }
}
