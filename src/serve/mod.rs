//! The chat server (actix-web, inside the daemon): OpenAI's
//! `/v1/chat/completions` (with Server-Sent Events when `stream: true`) and
//! `/v1/models` on the served adapter, hot-swapped without downtime, with
//! memory of past conversations.
//!
//! # Layout
//!
//! - this file: start-up, shared state, routes, API keys, body limit;
//! - [`api`]: the wire format, request checks and OpenAI error objects;
//! - [`chat`]: the completion handler (whole answers and streams);
//! - [`engine`]: the generation worker thread and its bounded queue;
//! - [`versions`]: which versions exist and which one is served;
//! - [`memory`]: recall and storage of a user's conversations;
//! - [`feedback`]: ratings, and learning from conversations users opted in;
//! - [`site`]: the status and chat page, its JSON, and `/metrics`;
//! - [`status`]: the report behind `/api/status`, the page and `lorastream status`.

pub mod api;
pub mod chat;
pub mod engine;
pub mod feedback;
pub mod memory;
pub mod site;
pub mod status;
pub mod versions;

use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde_json::json;

use crate::config::Config;
use api::ApiError;
use engine::Engine;
use lorastream_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] crate::util::http::SecretError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the generation worker: {0}")]
    Worker(std::io::Error),
}

/// What every request handler shares.
pub struct State {
    pub config: Arc<Config>,
    pub engine: Engine,
    pub versions: versions::Shared,
    /// The server's store connection (memory); used from blocking threads.
    pub store: Mutex<Store>,
    api_key: Option<String>,
}

impl State {
    /// Runs `f` on the store from a blocking thread; a row not found is a 404,
    /// any other store error a 503.
    pub async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let me = Arc::clone(self);
        web::block(move || f(&me.store.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| internal(&e.to_string()))?
            .map_err(|e| match e {
                StoreError::NotFound { what, id } => {
                    ApiError::not_found(format!("{what} {id} not found"))
                }
                other => internal(&other.to_string()),
            })
    }
}

pub(crate) fn internal(msg: &str) -> ApiError {
    tracing::warn!(error = msg, "chat server: store error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the store is unavailable: {msg}"),
    )
    .retry_after(1)
}

/// Binds `[server] listen` and returns the running server (to spawn and to
/// stop on shutdown).
pub fn start(config: Arc<Config>) -> Result<actix_web::dev::Server, ServerError> {
    let s = &config.server;
    let api_key = crate::util::http::read_secret(
        "[server] API key",
        s.api_key_file.as_deref(),
        s.api_key_env.as_deref(),
    )?;
    let state = Arc::new(State {
        engine: Engine::start(Arc::clone(&config), s.queue).map_err(ServerError::Worker)?,
        versions: versions::watch(&config)?,
        store: Mutex::new(config.open_store()?),
        api_key,
        config: Arc::clone(&config),
    });
    let data = web::Data::from(state);
    let http = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/", web::get().to(site::page))
            .route("/app.js", web::get().to(site::script))
            .route("/api/status", web::get().to(site::status))
            .route("/metrics", web::get().to(site::metrics))
            .route("/v1/models", web::get().to(models))
            .route("/v1/models/{id}", web::get().to(model))
            .route("/v1/chat/completions", web::post().to(chat::completions))
            .route("/v1/memory/{user}", web::delete().to(forget))
            .route("/v1/feedback", web::post().to(feedback::feedback))
            .default_service(web::to(not_found))
    })
    .workers(2)
    .shutdown_timeout(5)
    .disable_signals()
    .bind(&s.listen)
    .map_err(|source| ServerError::Bind {
        addr: s.listen.clone(),
        source,
    })?;
    let addrs: Vec<String> = http.addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %addrs.join(","),
        auth = s.api_key_file.is_some() || s.api_key_env.is_some(),
        memory = s.memory,
        "chat server listening"
    );
    Ok(http.run())
}

/// Checks `Authorization: Bearer <key>` when a key is configured (constant time).
pub fn authorize(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// Reads a request body of at most `[server] max_request_bytes` (413 beyond).
pub async fn read_body(state: &State, mut payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let limit = state.config.server.max_request_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the {limit}-byte limit ([server] max_request_bytes)"),
        )
    };
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            other => ApiError::invalid("body", &format!("cannot read the request body: {other}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An authorized request's body parsed as `T` (400 naming what is wrong).
pub async fn json_body<T: serde::de::DeserializeOwned>(
    state: &State,
    req: &HttpRequest,
    payload: web::Payload,
    what: &str,
) -> Result<T, ApiError> {
    authorize(state, req)?;
    let body = read_body(state, payload).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", &format!("invalid {what}: {e}")))
}

async fn models(state: web::Data<State>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let v = versions::current(&state.versions);
    let name = &state.config.server.model_name;
    let data: Vec<_> = v
        .ids(name)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": v.created(&id, name), "owned_by": "lorastream"}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

async fn model(
    state: web::Data<State>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let v = versions::current(&state.versions);
    let name = &state.config.server.model_name;
    // 404 for an id that names no version.
    v.resolve(Some(&id), name)?;
    Ok(HttpResponse::Ok().json(
        json!({"id": *id, "object": "model", "created": v.created(&id, name), "owned_by": "lorastream"}),
    ))
}

/// `DELETE /v1/memory/{user}`: forgets every conversation of the user.
async fn forget(
    state: web::Data<State>,
    req: HttpRequest,
    user: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let state = state.into_inner();
    let who = user.into_inner();
    let name = who.clone();
    let deleted = state.with_store(move |s| s.forget_user(&name)).await?;
    tracing::info!(user = %who, messages = deleted, "memory forgotten");
    Ok(HttpResponse::Ok().json(json!({"user": who, "deleted_messages": deleted})))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route {} {}: the API has GET /v1/models, POST /v1/chat/completions, POST /v1/feedback, DELETE /v1/memory/{{user}}",
        req.method(),
        req.path()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}
