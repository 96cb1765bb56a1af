//! Gateway mode (`[server] backend = "vllm"`): generation goes to a vLLM
//! fleet; everything else — identities, memory, feedback, model names —
//! stays here. A request becomes one streamed `POST /v1/chat/completions`
//! to `backend_url` under the published name of the version that answers
//! (`lorastream-vN`, loaded by a `vllm` publish target; the base under
//! `backend_base_model`), with the recalled memories in its messages. The
//! fleet's chunks come back as the engine's [`Event`]s, so whole answers,
//! streams, usage and remembered conversations work as with the built-in
//! engine. A client that leaves drops the channel, which closes the fleet
//! request (vLLM aborts the generation).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::Sender;

use crate::config::Config;
use crate::publish::{plan, published_name};
use crate::serve::backend::jobs::{EngineError, Event, FleetError, VersionRef};
use crate::util::http::shown;
use crate::util::http::sse::SseDecoder;
use lorastream_ml::Message;
use lorastream_ml::generation::generate::{FinishReason, SamplingParams};

/// The fleet and how to reach it.
pub struct Gateway {
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    base_model: String,
    /// Requests accepted (in flight to the fleet or waiting): `max_batch +
    /// queue`, as the built-in engine; beyond it, 429.
    admitted: Arc<Semaphore>,
    /// Requests in flight to the fleet at once: `max_batch`.
    running: Arc<Semaphore>,
    /// `max_batch + queue`, for the 429's words.
    capacity: usize,
    /// A client that has not taken an event for this long is dropped (its
    /// fleet request closes): `send_timeout_secs`.
    send_timeout: Duration,
}

/// The gateway has `max_batch + queue` requests already.
#[derive(Debug, thiserror::Error)]
#[error("{capacity} requests are in flight to the fleet or queued already")]
pub struct Busy {
    pub capacity: usize,
}

impl Gateway {
    /// The gateway of `config`'s `[server]` (which must name a backend URL).
    pub fn new(config: &Config) -> Result<Gateway, crate::util::http::SecretError> {
        let s = &config.server;
        let key = crate::util::http::read_secret(
            "vLLM fleet API key",
            s.backend_key_file.as_deref(),
            s.backend_key_env.as_deref(),
        )?;
        let wait = Some(Duration::from_secs(s.backend_timeout_secs));
        let client = crate::util::http::client(crate::util::http::Timeouts {
            connect: wait,
            read: wait,
            total: None,
        });
        Ok(Gateway {
            client,
            url: s.backend_url.clone().unwrap_or_default(),
            key,
            base_model: s
                .backend_base_model
                .clone()
                .unwrap_or_else(|| plan::base_model(config, None)),
            admitted: Arc::new(Semaphore::new(s.max_batch.max(1) + s.queue)),
            capacity: s.max_batch.max(1) + s.queue,
            running: Arc::new(Semaphore::new(s.max_batch.max(1))),
            send_timeout: Duration::from_secs(s.send_timeout_secs),
        })
    }

    /// The fleet's name of `version`.
    pub fn model_name(&self, version: &VersionRef) -> Result<String, FleetError> {
        if version.base.is_some() {
            return Err(FleetError::OnSnapshot(version.label.clone()));
        }
        Ok(version
            .adapter
            .as_ref()
            .map_or_else(|| self.base_model.clone(), |a| published_name(a.id)))
    }

    /// Sends the request to the fleet once one of `max_batch` places is free;
    /// its answer arrives on `events` as `Started`, `Delta`s, then `Done` (or
    /// `Failed`). [`Busy`] when `max_batch + queue` are admitted already.
    /// Special-token spellings in the messages are neutralized first: the
    /// fleet renders the template to text and reads such spellings as tokens.
    pub fn submit(
        &self,
        model: String,
        messages: Vec<Message>,
        c: &SamplingParams,
        events: Sender<Event>,
    ) -> Result<(), Busy> {
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Busy {
                capacity: self.capacity,
            })?;
        let messages: Vec<Message> = messages
            .into_iter()
            .map(|m| {
                Message::new(
                    &m.role,
                    &crate::serve::backend::prompt::neutralize_markers(&m.content),
                )
            })
            .collect();
        let mut body = json!({
            "model": model, "messages": messages, "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": c.max_new_tokens, "temperature": c.temperature, "top_p": c.top_p,
            "seed": c.seed, "frequency_penalty": c.frequency_penalty,
            "presence_penalty": c.presence_penalty,
            // vLLM's extra sampling parameters.
            "repetition_penalty": c.repetition_penalty, "ignore_eos": c.ignore_eos,
        });
        if !c.stop.is_empty() {
            body["stop"] = json!(c.stop);
        }
        let url = format!("{}/v1/chat/completions", self.url.trim_end_matches('/'));
        let mut req = self.client.post(&url).json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let (running, timeout) = (Arc::clone(&self.running), self.send_timeout);
        actix_web::rt::spawn(async move {
            let _admitted = admitted;
            // Closed only if the gateway is gone: then there is no one to answer.
            let Ok(_running) = running.acquire_owned().await else {
                return;
            };
            if events.is_closed() {
                return;
            }
            let out = Outbox { events, timeout };
            if let Err(e) = forward(req, &url, &model, &out).await {
                tracing::warn!(error = %e, model = %model, "fleet request failed");
                let _ = out.send(Event::Failed(EngineError::Fleet(e))).await;
            }
        });
        Ok(())
    }
}

/// Where a fleet request's events go: the client's channel, given up on
/// when the client has not taken one for `timeout` (a stuck reader must not
/// hold a fleet stream open).
struct Outbox {
    events: Sender<Event>,
    timeout: Duration,
}

impl Outbox {
    /// `false` when the client is gone or stuck: stop forwarding.
    async fn send(&self, event: Event) -> bool {
        match tokio::time::timeout(self.timeout, self.events.send(event)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::info!(
                    timeout_secs = self.timeout.as_secs(),
                    "fleet stream closed: the client did not read for [server] send_timeout_secs"
                );
                false
            }
        }
    }
}

/// Sends `req`, then turns the fleet's Server-Sent Events into `Event`s
/// until `[DONE]`; stops when the client has gone (`events` closed).
async fn forward(
    req: reqwest::RequestBuilder,
    url: &str,
    model: &str,
    events: &Outbox,
) -> Result<(), FleetError> {
    let unreachable = |e: reqwest::Error| {
        let reason = crate::util::http::describe(e);
        tracing::warn!(fleet = %shown(url), error = %reason, "the vLLM fleet cannot be reached");
        FleetError::Unreachable { reason }
    };
    let mut resp = req.send().await.map_err(unreachable)?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| crate::util::http::excerpt(text.as_bytes(), 300));
        return Err(match status {
            404 => FleetError::NotLoaded {
                model: model.into(),
            },
            400..=499 => FleetError::Refused { status, message },
            _ => FleetError::Failed { status, message },
        });
    }
    if !events.send(Event::Started).await {
        return Ok(());
    }
    let mut chunks = Chunks::default();
    while let Some(bytes) = resp
        .chunk()
        .await
        .map_err(|e| FleetError::Broken(crate::util::http::describe(e)))?
    {
        chunks.sse.push(&bytes);
        while let Some(event) = chunks.next_event() {
            let done = matches!(event, Event::Done { .. });
            if !events.send(event).await || done {
                return Ok(());
            }
        }
    }
    Err(FleetError::Broken("the stream ended before [DONE]".into()))
}

/// The fleet's SSE body as it arrives, and what its chunks said so far.
#[derive(Default)]
struct Chunks {
    sse: SseDecoder,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    prompt_tokens: Option<usize>,
}

impl Chunks {
    /// The next `Event` its complete lines give, if any.
    fn next_event(&mut self) -> Option<Event> {
        loop {
            let data = self.sse.next_data()?;
            let data = data.trim();
            if data == "[DONE]" {
                return Some(Event::Done {
                    finish: self.finish.unwrap_or(FinishReason::Stop),
                    completion_tokens: self.completion_tokens,
                    prompt_tokens: self.prompt_tokens,
                });
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                self.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                self.prompt_tokens = u["prompt_tokens"].as_u64().map(|n| n as usize);
            }
            let choice = &v["choices"][0];
            match choice["finish_reason"].as_str() {
                Some("length") => self.finish = Some(FinishReason::Length),
                Some(_) => self.finish = Some(FinishReason::Stop),
                None => {}
            }
            if let Some(text) = choice["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                return Some(Event::Delta {
                    text: text.to_string(),
                    logprobs: Vec::new(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_events() {
        let mut c = Chunks::default();
        c.sse.push(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel");
        assert!(c.next_event().is_none());
        c.sse.push(
            b"lo\"}}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        );
        c.sse.push(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert!(matches!(c.next_event(), Some(Event::Delta { text, .. }) if text == "Hello"));
        match c.next_event() {
            Some(Event::Done {
                finish,
                completion_tokens,
                prompt_tokens,
            }) => {
                assert_eq!(finish, FinishReason::Length);
                assert_eq!((completion_tokens, prompt_tokens), (2, Some(7)));
            }
            other => panic!("{other:?}"),
        }
    }
}
