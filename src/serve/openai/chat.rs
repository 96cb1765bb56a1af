//! `POST /v1/chat/completions`: checks the request, recalls memories, queues
//! the job on the generation worker (429 when the queue is full) or sends it
//! to the vLLM fleet in gateway mode ([`crate::serve::backend::gateway`]), and answers
//! with one `chat.completion`, or with a stream of `chat.completion.chunk`
//! events ending `data: [DONE]`. A client that disconnects mid-stream drops
//! the channel, which stops its generation at the next token.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::mpsc;

use crate::serve::backend::jobs::{EngineError, Event, Job};
use crate::serve::error::ApiError;
use crate::serve::guard::auth::Caller;
use crate::serve::memory::{self, Speaker};
use crate::serve::openai::api::{self, ChatRequest};
pub use crate::serve::openai::reply::MESSAGE_HEADER;
use crate::serve::openai::reply::{
    Remember, Reply, Timing, engine_error, next_event, streamed, whole,
};
use crate::serve::{Backend, State, json_body, versions};
use crate::util::metrics::METRICS;
use lorastream_ml::generation::generate::SamplingParams;

/// Header naming the conversation a request continues.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";
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
    let label = version.label.clone();
    let (prompt_tokens, tok) = generate(&state, version, &checked, &memories, tx).await?;
    let peer = crate::serve::guard::peer::Peer::of(&req);
    match next_event(&mut rx, peer.as_ref()).await? {
        Some(Event::Started) => {}
        Some(Event::Failed(e)) => return Err(engine_error(e)),
        _ => return Err(engine_error(EngineError::Generation("no answer".into()))),
    }
    let reply = Reply {
        id: format!("chatcmpl-{}", crate::util::ids::random_hex(12)),
        created: lorastream_store::now_ms() / 1000,
        label,
        prompt_tokens,
        n_memories,
        recall_ms,
        timing: Timing::new(started),
        tok,
        include_usage: checked.include_usage,
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

/// Starts generating the answer to `checked` on the backend, events on
/// `tx`: the prompt's length (0 when the fleet counts it) and the tokenizer
/// that spells log-probabilities (None for the fleet).
async fn generate(
    state: &Arc<State>,
    version: crate::serve::backend::jobs::VersionRef,
    checked: &api::Checked,
    memories: &[lorastream_store::MessageRow],
    tx: mpsc::Sender<Event>,
) -> Result<(usize, Option<Arc<lorastream_ml::ChatTokenizer>>), ApiError> {
    match &state.backend {
        Backend::Fleet(gw) => {
            if checked.logprobs.is_some() {
                return Err(ApiError::invalid(
                    "logprobs",
                    "logprobs are not passed through in gateway mode ([server] backend = \"vllm\")",
                ));
            }
            let model = gw
                .model_name(&version)
                .map_err(|e| engine_error(e.into()))?;
            let messages = memory::with_memories(checked.messages.clone(), memories);
            gw.submit(model, messages, &params(checked), tx)
                .map_err(|e| queue_full(e.capacity))?;
            Ok((0, None))
        }
        Backend::Local(engine) => {
            let info = engine.model(MODEL_WAIT).await.map_err(engine_error)?;
            let prompt = fit_prompt(state, &info, checked, memories).await?;
            let prompt_tokens = prompt.len();
            let job = Job {
                version,
                prompt,
                params: params(checked),
                events: tx,
            };
            submit(engine, job)?;
            Ok((prompt_tokens, Some(Arc::clone(&info.tok))))
        }
    }
}

/// How long a request waits for the model to finish loading.
const MODEL_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The sampling a checked request asks for.
fn params(c: &api::Checked) -> SamplingParams {
    SamplingParams {
        max_new_tokens: c.max_tokens,
        temperature: c.temperature,
        top_p: c.top_p,
        seed: c.seed,
        stop: c.stop.clone(),
        ignore_eos: c.ignore_eos,
        frequency_penalty: c.frequency_penalty,
        presence_penalty: c.presence_penalty,
        repetition_penalty: c.repetition_penalty,
        logprobs: c.logprobs,
        ..SamplingParams::default()
    }
}

/// The prompt's token ids: the messages (with memories) through the chat
/// template, fitted to the context window less `max_tokens` (on a blocking
/// thread: the worker never tokenizes).
async fn fit_prompt(
    state: &Arc<State>,
    info: &Arc<crate::serve::backend::jobs::ModelInfo>,
    checked: &api::Checked,
    memories: &[lorastream_store::MessageRow],
) -> Result<Vec<u32>, ApiError> {
    let messages = memory::with_memories(checked.messages.clone(), memories);
    let context = info.config.max_position_embeddings;
    let reserve = checked.max_tokens.clamp(1, (context / 2).max(1));
    let overflow = state.config.server.overflow;
    let info = Arc::clone(info);
    let fitted = web::block(move || {
        crate::serve::backend::prompt::fit(&info.tok, &messages, context - reserve, overflow)
    })
    .await
    .map_err(|e| engine_error(EngineError::Generation(e.to_string())))?;
    let (prompt, dropped) = fitted.map_err(|e| engine_error(EngineError::Prompt(e)))?;
    if dropped > 0 {
        tracing::info!(
            dropped_turns = dropped,
            "oldest turns dropped to fit the context window"
        );
    }
    Ok(prompt)
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
    let (sp, msgs) = (sp.clone(), messages.to_vec());
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
            .with(|store| memory::recall(store, &sp, &msgs, limits))
    })
    .await;
    match found {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, request_id = crate::serve::guard::request_id().unwrap_or_default(), "memory recall skipped");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "memory recall failed");
            Vec::new()
        }
    }
}

/// Queues `job` on the generation worker; 429 when its queue is full.
fn submit(engine: &crate::serve::backend::Engine, job: Job) -> Result<(), ApiError> {
    engine
        .submit(job)
        .map_err(|_| queue_full(engine.capacity()))
}

/// 429: the backend has `capacity` requests queued already.
fn queue_full(capacity: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!("{capacity} requests are queued already; retry shortly"),
    )
    .with_code("queue_full")
    .retry_after(1)
}
