//! `POST /v1/chat/completions`: checks the request, recalls memories, queues
//! the job on the generation worker (429 when the queue is full), and answers
//! with one `chat.completion`, or with a stream of `chat.completion.chunk`
//! events ending `data: [DONE]`. A client that disconnects mid-stream drops
//! the channel, which stops its generation at the next token.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::api::{self, ApiError, ChatRequest, Usage};
use super::auth::Caller;
use super::engine::{EngineError, Event, Job};
use super::memory::{self, Speaker};
use super::prompt::PromptError;
use super::{State, json_body, versions};
use crate::util::metrics::METRICS;
use lorastream_ml::generate::SamplingParams;

/// Header naming the conversation a request continues.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";
/// Header naming the stored answer (whole answers of a remembered conversation).
pub const MESSAGE_HEADER: &str = "x-lorastream-message-id";
/// Header saying how many memories went into the prompt.
pub const MEMORIES_HEADER: &str = "x-lorastream-memories";

/// `POST /v1/chat/completions`, counted by status.
pub async fn completions(
    state: web::Data<State>,
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = answer(state, req, caller, payload).await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => actix_web::ResponseError::status_code(e),
    };
    METRICS
        .chat_requests
        .with_label_values(&[status.as_str()])
        .inc();
    result
}

/// Time to first token and total time of one request, for the metrics.
struct Timing {
    started: Instant,
    first: bool,
}

impl Timing {
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

async fn answer(
    state: web::Data<State>,
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: ChatRequest = json_body(&state, payload, "request").await?;
    let requested_model = request.model.clone();
    let user = memory::check_user(request.user.as_deref())?;
    let header = req
        .headers()
        .get(CONVERSATION_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let conversation = memory::check_conversation(header)?;
    let checked = request.check(&state.config.server)?;
    let name = state.config.server.model_name.clone();
    let version = versions::current(&state.versions).resolve(requested_model.as_deref(), &name)?;
    let state = state.into_inner();
    let speaker = speaker(&state, &caller, user, conversation.clone()).await?;
    let started = Instant::now();
    let memories = recall(&state, speaker.as_ref(), &checked.messages).await;
    let recall_ms = started.elapsed().as_millis() as u64;
    let n_memories = memories.len();
    let (tx, mut rx) = mpsc::channel(64);
    let job = Job {
        version,
        messages: memory::with_memories(checked.messages.clone(), &memories),
        params: SamplingParams {
            max_new_tokens: checked.max_tokens,
            temperature: checked.temperature,
            top_p: checked.top_p,
            seed: checked.seed,
            stop: checked.stop.clone(),
            ignore_eos: checked.ignore_eos,
            ..SamplingParams::default()
        },
        overflow: state.config.server.overflow,
        events: tx,
    };
    let label = job.version.label.clone();
    submit(&state, job)?;
    let peer = super::peer::Peer::of(&req);
    let prompt_tokens = match next_event(&mut rx, peer.as_ref()).await? {
        Some(Event::Started { prompt_tokens, .. }) => prompt_tokens,
        Some(Event::Failed(e)) => return Err(engine_error(e)),
        _ => return Err(engine_error(EngineError::Generation("no answer".into()))),
    };
    let reply = Reply {
        id: format!("chatcmpl-{}", crate::util::ids::random_hex(12)),
        created: lorastream_store::now_ms() / 1000,
        label,
        prompt_tokens,
        n_memories,
        recall_ms,
        timing: Timing {
            started,
            first: false,
        },
    };
    let mut response = HttpResponse::Ok();
    response.insert_header((MEMORIES_HEADER, n_memories.to_string()));
    match (&speaker, &conversation) {
        (Some(sp), _) => response.insert_header((CONVERSATION_HEADER, sp.conversation.clone())),
        (None, Some(c)) => response.insert_header((CONVERSATION_HEADER, c.clone())),
        (None, None) => &mut response,
    };
    let remember = Remember {
        state,
        speaker,
        messages: checked.messages,
    };
    if checked.stream {
        Ok(streamed(reply, rx, response, remember))
    } else {
        whole(reply, rx, response, remember, peer).await
    }
}

/// Who speaks, with `[server] memory` on: a conversation of the caller's
/// (404 for any other id), or a new one for `user`.
async fn speaker(
    state: &Arc<State>,
    caller: &Caller,
    user: Option<String>,
    conversation: Option<String>,
) -> Result<Option<Speaker>, ApiError> {
    if !state.config.server.memory {
        return Ok(None);
    }
    let identity = caller.0.name.clone();
    state
        .with_store(move |s| {
            memory::speaker(s, &identity, user.as_deref(), conversation.as_deref())
        })
        .await
}

/// The memories of `speaker`'s earlier conversations that match `messages`
/// (none without a speaker). Recall is best effort: a failure or a spent time
/// budget is logged and the answer goes without memories.
async fn recall(
    state: &Arc<State>,
    speaker: Option<&Speaker>,
    messages: &[lorastream_ml::Message],
) -> Vec<lorastream_store::MessageRow> {
    let Some(sp) = speaker else {
        return Vec::new();
    };
    let (owner, msgs) = (sp.owner.clone(), messages.to_vec());
    let s = &state.config.server;
    let limits = memory::RecallLimits {
        results: s.memory_results,
        tokens: s.memory_tokens,
        terms: s.memory_query_terms,
        budget: std::time::Duration::from_millis(s.memory_recall_ms),
    };
    let me = Arc::clone(state);
    let found = web::block(move || {
        me.readers
            .with(|store| memory::recall(store, &owner, &msgs, limits))
    })
    .await;
    match found {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, request_id = super::guard::request_id().unwrap_or_default(), "memory recall skipped");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "memory recall failed");
            Vec::new()
        }
    }
}

/// Queues `job` on the generation worker; 429 when its queue is full.
fn submit(state: &State, job: Job) -> Result<(), ApiError> {
    state.engine.submit(job).map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "{} requests are queued already; retry shortly",
                state.engine.capacity()
            ),
        )
        .with_code("queue_full")
        .retry_after(1)
    })
}

/// What every response of one request names.
struct Reply {
    id: String,
    created: i64,
    label: String,
    prompt_tokens: usize,
    n_memories: usize,
    recall_ms: u64,
    timing: Timing,
}

impl Reply {
    /// Logs and counts the finished request; its usage.
    fn finish(&self, stream: bool, completion_tokens: usize) -> Usage {
        let usage = Usage::new(self.prompt_tokens, completion_tokens);
        log_done(self, &usage);
        self.timing.done(stream);
        usage
    }

    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
        api::chunk(&self.id, self.created, &self.label, delta, finish)
    }
}

/// Stores an exchange of a remembered conversation (a whole answer: before
/// responding, so the next request sees it; a stream: when it ends).
struct Remember {
    state: Arc<State>,
    speaker: Option<Speaker>,
    messages: Vec<lorastream_ml::Message>,
}

impl Remember {
    /// The stored answer's message id.
    async fn store(self, answer: String) -> Option<i64> {
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

/// One `chat.completion` once the worker is done.
async fn whole(
    mut reply: Reply,
    mut rx: mpsc::Receiver<Event>,
    mut response: actix_web::HttpResponseBuilder,
    remember: Remember,
    peer: Option<super::peer::Peer>,
) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    loop {
        match next_event(&mut rx, peer.as_ref()).await? {
            Some(Event::Delta(d)) => {
                reply.timing.token();
                text.push_str(&d)
            }
            Some(Event::Done {
                finish,
                completion_tokens,
            }) => {
                let usage = reply.finish(false, completion_tokens);
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
                )));
            }
            Some(Event::Failed(e)) => return Err(engine_error(e)),
            Some(Event::Started { .. }) => {}
            None => return Err(engine_error(EngineError::Generation("worker gone".into()))),
        }
    }
}

/// The worker's next event, watching meanwhile (every 20 ms) whether the
/// client is still there: if it hung up, an error, and the receiver is
/// dropped with the handler, which stops the generation at its next step
/// (or skips the job if it is still queued).
async fn next_event(
    rx: &mut mpsc::Receiver<Event>,
    peer: Option<&super::peer::Peer>,
) -> Result<Option<Event>, ApiError> {
    let mut watch = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        tokio::select! {
            e = rx.recv() => return Ok(e),
            _ = watch.tick() => {
                if peer.is_some_and(super::peer::Peer::gone) {
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
fn streamed(
    mut reply: Reply,
    rx: mpsc::Receiver<Event>,
    mut response: actix_web::HttpResponseBuilder,
    remember: Remember,
) -> HttpResponse {
    let first = sse(&reply.chunk(json!({"role": "assistant", "content": ""}), None));
    let mut text = String::new();
    let mut remember = Some(remember);
    let stream = async_stream(rx, move |event| match event {
        Event::Delta(d) => {
            reply.timing.token();
            text.push_str(&d);
            Some(vec![sse(&reply.chunk(json!({"content": d}), None))])
        }
        Event::Done {
            finish,
            completion_tokens,
        } => {
            let usage = reply.finish(true, completion_tokens);
            if let Some(r) = remember.take() {
                let stored = r.store(std::mem::take(&mut text));
                actix_web::rt::spawn(async move {
                    stored.await;
                });
            }
            let mut last = reply.chunk(json!({}), Some(finish_reason(finish)));
            last["usage"] = json!(usage);
            Some(vec![
                sse(&last),
                web::Bytes::from_static(b"data: [DONE]\n\n"),
            ])
        }
        Event::Failed(e) => {
            let e = engine_error(e);
            Some(vec![
                sse(&e.body()),
                web::Bytes::from_static(b"data: [DONE]\n\n"),
            ])
        }
        Event::Started { .. } => Some(Vec::new()),
    });
    response
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(first) })
                .chain(stream),
        )
}

fn finish_reason(f: lorastream_ml::generate::FinishReason) -> &'static str {
    match f {
        lorastream_ml::generate::FinishReason::Length => "length",
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

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Prompt(PromptError::TooLong { .. }) => {
            ApiError::invalid("messages", &e.to_string()).with_code("context_length_exceeded")
        }
        EngineError::Prompt(PromptError::Template(_)) => {
            ApiError::invalid("messages", &e.to_string())
        }
        EngineError::NoModel(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
        .retry_after(5),
        EngineError::Generation(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
        .retry_after(1),
    }
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
