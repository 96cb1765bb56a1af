//! The answer to a chat request as the client gets it: one `chat.completion`
//! once the worker is done, or Server-Sent Events (the role, each delta with
//! its log-probabilities if asked for, the finish reason and usage, then
//! `data: [DONE]`), with the request's timing counted in the metrics.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::serve::State;
use crate::serve::backend::jobs::{EngineError, Event, FleetError};
use crate::serve::backend::prompt::PromptError;
use crate::serve::error::ApiError;
use crate::serve::memory::{self, Speaker};
use crate::serve::openai::api::{self, Usage};
use crate::util::metrics::METRICS;
use lorastream_ml::ChatTokenizer;
use lorastream_ml::generation::generate::Logprob;

/// Time to first token and total time of one request, for the metrics.
/// Header naming the stored answer (whole answers of a remembered conversation).
pub const MESSAGE_HEADER: &str = "x-lorastream-message-id";

pub(super) struct Timing {
    started: Instant,
    first: bool,
}

impl Timing {
    pub(super) fn new(started: Instant) -> Timing {
        Timing {
            started,
            first: false,
        }
    }

    fn token(&mut self) {
        if !self.first {
            self.first = true;
            METRICS
                .chat_ttft
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn done(&self, stream: bool) {
        METRICS
            .chat_duration
            .with_label_values(&[if stream { "true" } else { "false" }])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// What every response of one request names.
pub(super) struct Reply {
    pub id: String,
    pub created: i64,
    pub label: String,
    pub prompt_tokens: usize,
    pub n_memories: usize,
    pub recall_ms: u64,
    pub timing: Timing,
    /// Spells the tokens of log-probabilities (None: a remote backend,
    /// which is not asked for them).
    pub tok: Option<Arc<ChatTokenizer>>,
    /// A stream ends with a chunk of no choices carrying the usage.
    pub include_usage: bool,
}

impl Reply {
    /// Logs and counts the finished request; its usage.
    fn finish(&self, stream: bool, completion_tokens: usize, prompt: Option<usize>) -> Usage {
        let usage = Usage::new(prompt.unwrap_or(self.prompt_tokens), completion_tokens);
        log_done(self, &usage);
        self.timing.done(stream);
        usage
    }

    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
        api::chunk(
            &self.id,
            self.created,
            &self.label,
            delta,
            serde_json::Value::Null,
            finish,
        )
    }

    /// A delta chunk; its `logprobs` when the tokens behind it carry them.
    fn delta(&self, text: &str, logprobs: &[Logprob]) -> serde_json::Value {
        let lp = match &self.tok {
            Some(tok) if !logprobs.is_empty() => api::logprobs_json(tok, logprobs),
            _ => serde_json::Value::Null,
        };
        api::chunk(
            &self.id,
            self.created,
            &self.label,
            json!({"content": text}),
            lp,
            None,
        )
    }
}

/// One `chat.completion` once the worker is done.
pub(super) async fn whole(
    mut reply: Reply,
    mut rx: mpsc::Receiver<Event>,
    mut response: actix_web::HttpResponseBuilder,
    remember: Remember,
    peer: Option<crate::serve::guard::peer::Peer>,
) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    let mut logprobs: Option<Vec<Logprob>> = None;
    loop {
        match next_event(&mut rx, peer.as_ref()).await? {
            Some(Event::Delta {
                text: d,
                logprobs: lp,
            }) => {
                reply.timing.token();
                text.push_str(&d);
                if !lp.is_empty() {
                    logprobs.get_or_insert_with(Vec::new).extend(lp);
                }
            }
            Some(Event::Done {
                finish,
                completion_tokens,
                prompt_tokens,
            }) => {
                let usage = reply.finish(false, completion_tokens, prompt_tokens);
                if let Some(id) = remember.store(text.clone()).await {
                    response.insert_header((MESSAGE_HEADER, id.to_string()));
                }
                return Ok(response.json(api::completion(
                    &reply.id,
                    reply.created,
                    &reply.label,
                    &text,
                    finish_reason(finish),
                    &usage,
                    match (logprobs, &reply.tok) {
                        (Some(l), Some(tok)) => api::logprobs_json(tok, &l),
                        _ => serde_json::Value::Null,
                    },
                )));
            }
            Some(Event::Failed(e)) => return Err(engine_error(e)),
            Some(Event::Started) => {}
            None => return Err(engine_error(EngineError::Generation("worker gone".into()))),
        }
    }
}

/// The worker's next event, watching meanwhile (every 20 ms) whether the
/// client is still there: if it hung up, an error, and the receiver is
/// dropped with the handler, which stops the generation at its next step
/// (or skips the job if it is still queued).
pub(super) async fn next_event(
    rx: &mut mpsc::Receiver<Event>,
    peer: Option<&crate::serve::guard::peer::Peer>,
) -> Result<Option<Event>, ApiError> {
    let mut watch = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        tokio::select! {
            e = rx.recv() => return Ok(e),
            _ = watch.tick() => {
                if peer.is_some_and(crate::serve::guard::peer::Peer::gone) {
                    rx.close();
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "the client went away",
                    ));
                }
            }
        }
    }
}

/// Server-Sent Events: the role first, then the deltas, then the finish
/// reason and usage, then `data: [DONE]`.
pub(super) fn streamed(
    mut reply: Reply,
    rx: mpsc::Receiver<Event>,
    mut response: actix_web::HttpResponseBuilder,
    remember: Remember,
) -> HttpResponse {
    let first = sse(&reply.chunk(json!({"role": "assistant", "content": ""}), None));
    let mut text = String::new();
    let mut remember = Some(remember);
    let stream = async_stream(rx, move |event| match event {
        Event::Delta { text: d, logprobs } => {
            reply.timing.token();
            text.push_str(&d);
            Some(vec![sse(&reply.delta(&d, &logprobs))])
        }
        Event::Done {
            finish,
            completion_tokens,
            prompt_tokens,
        } => {
            let usage = reply.finish(true, completion_tokens, prompt_tokens);
            if let Some(r) = remember.take() {
                let stored = r.store(std::mem::take(&mut text));
                actix_web::rt::spawn(async move {
                    stored.await;
                });
            }
            let mut last = reply.chunk(json!({}), Some(finish_reason(finish)));
            let mut out = Vec::with_capacity(3);
            if reply.include_usage {
                // OpenAI's shape: the usage in a chunk of its own, no choices.
                let mut u = reply.chunk(json!({}), None);
                u["choices"] = json!([]);
                u["usage"] = json!(usage);
                out.extend([sse(&last), sse(&u)]);
            } else {
                last["usage"] = json!(usage);
                out.push(sse(&last));
            }
            out.push(web::Bytes::from_static(b"data: [DONE]\n\n"));
            Some(out)
        }
        Event::Failed(e) => {
            let e = engine_error(e);
            Some(vec![
                sse(&e.body()),
                web::Bytes::from_static(b"data: [DONE]\n\n"),
            ])
        }
        Event::Started => Some(Vec::new()),
    });
    response
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(first) })
                .chain(stream),
        )
}

fn finish_reason(f: lorastream_ml::generation::generate::FinishReason) -> &'static str {
    match f {
        lorastream_ml::generation::generate::FinishReason::Length => "length",
        _ => "stop",
    }
}

fn log_done(r: &Reply, usage: &Usage) {
    tracing::info!(
        model = %r.label,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        memories = r.n_memories,
        recall_ms = r.recall_ms,
        duration_ms = r.timing.started.elapsed().as_millis() as u64,
        "chat completion"
    );
}

/// One Server-Sent Event carrying `v` as JSON.
fn sse(v: &serde_json::Value) -> web::Bytes {
    web::Bytes::from(format!("data: {v}\n\n"))
}

/// The events of `rx` mapped to body chunks by `f`, ending when the worker
/// drops its sender.
fn async_stream(
    rx: mpsc::Receiver<Event>,
    f: impl FnMut(Event) -> Option<Vec<web::Bytes>> + 'static,
) -> impl futures_util::Stream<Item = Result<web::Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold((rx, f), |(mut rx, mut f)| async move {
        let event = rx.recv().await?;
        let chunks = f(event)?;
        Some((
            futures_util::stream::iter(chunks.into_iter().map(Ok)),
            (rx, f),
        ))
    })
    .flatten()
}

/// Stores an exchange of a remembered conversation (a whole answer: before
/// responding, so the next request sees it; a stream: when it ends).
pub(super) struct Remember {
    pub state: Arc<State>,
    pub speaker: Option<Speaker>,
    pub messages: Vec<lorastream_ml::Message>,
}

impl Remember {
    /// The stored answer's message id.
    pub(super) async fn store(self, answer: String) -> Option<i64> {
        let sp = self.speaker?;
        let messages = self.messages;
        let r = self
            .state
            .with_store(move |s| memory::remember(s, &sp, &messages, &answer))
            .await;
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot store the conversation");
            None
        })
    }
}

pub(super) fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Prompt(PromptError::TooLong { .. }) => {
            ApiError::invalid("messages", &e.to_string()).with_code("context_length_exceeded")
        }
        EngineError::Prompt(PromptError::Template(_)) => {
            ApiError::invalid("messages", &e.to_string())
        }
        // Why (paths, file names) is the operator's: logged when the load failed.
        EngineError::NoModel(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no model to serve: the model could not be loaded (the operator finds why in the log)",
        )
        .retry_after(5),
        EngineError::Generation(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
        .retry_after(1),
        EngineError::Fleet(f) => fleet_error(f),
    }
}

/// A fleet failure as the client hears it: 503 while the fleet cannot be
/// reached or lacks the version (retry), 502 when it failed, 400 when it
/// refused the request itself.
fn fleet_error(f: FleetError) -> ApiError {
    let msg = f.to_string();
    match f {
        FleetError::Unreachable { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
                .with_code("fleet_unavailable")
                .retry_after(5)
        }
        FleetError::NotLoaded { .. } | FleetError::OnSnapshot(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
                .with_code("version_not_on_fleet")
                .retry_after(5)
        }
        FleetError::Refused { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", msg)
                .with_code("fleet_refused")
        }
        FleetError::Failed { .. } | FleetError::Broken(_) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "server_error", msg).with_code("fleet_error")
        }
    }
}
