//! The chat server (actix-web, inside the daemon): OpenAI's
//! `/v1/chat/completions` (with Server-Sent Events when `stream: true`) and
//! `/v1/models` on the served adapter, hot-swapped without downtime, with
//! memory of past conversations.
//!
//! # Layout
//!
//! - this file: start-up, shared state, routes, body limits, `/health`,
//!   `/ready`;
//! - [`error`]: the one error type of the handlers (OpenAI's error object);
//! - [`guard`]: what every request passes and every response carries (guard:
//!   Host, content type, identity, limits, CSP, CORS, audit), API keys and
//!   roles (auth), per-key limits, TLS, hang-up detection (peer);
//! - [`openai`]: the OpenAI surface: the wire format (api), the completion
//!   handler (chat), whole answers and streams (reply), `/v1/models`;
//! - [`backend`]: who generates: the built-in engine (its handle, jobs,
//!   worker thread, continuous batching, served weights, prompt fitting) or
//!   a vLLM fleet (gateway);
//! - [`memory`]: conversations owned by (identity, user): recall and
//!   storage, forgetting, feedback and learning from opted-in conversations;
//! - [`site`]: the status and chat page, its JSON, `/metrics`, and the
//!   status report behind `/api/status` and `lorastream status`;
//! - [`versions`]: which versions exist and which one is served.

pub mod backend;
pub mod error;
pub mod guard;
pub mod memory;
pub mod openai;
pub mod site;
pub mod versions;

pub use site::status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde_json::json;

use crate::config::Config;
use backend::Engine;
use error::ApiError;
use lorastream_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] guard::auth::KeysError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the generation worker: {0}")]
    Worker(std::io::Error),
    #[error(transparent)]
    Fleet(#[from] crate::util::http::SecretError),
    #[error(transparent)]
    NoRandomness(#[from] crate::util::ids::NoRandomness),
}

/// Who generates the answers (`[server] backend`).
pub enum Backend {
    /// The built-in engine (this process).
    Local(Engine),
    /// A vLLM fleet (gateway mode).
    Fleet(backend::gateway::Gateway),
}

/// What every request handler shares.
pub struct State {
    pub config: Arc<Config>,
    pub backend: Backend,
    pub versions: versions::Shared,
    /// The server's store connection (memory); used from blocking threads.
    pub store: Mutex<Store>,
    /// Read-only connections for memory recall.
    pub readers: memory::Readers,
    /// The API keys; replaced when a reload changes them.
    keys: std::sync::RwLock<Arc<guard::auth::Keys>>,
    pub hosts: guard::Hosts,
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

/// An internal error: logged with the request id; the client gets a generic
/// message carrying that id (nothing of the store's own words).
pub(crate) fn internal(msg: &str) -> ApiError {
    let id = guard::request_id().unwrap_or_default();
    tracing::warn!(error = msg, request_id = %id, "chat server: internal error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the server could not complete the request (request id {id}); retry, or ask the operator"),
    )
    .retry_after(1)
}

impl State {
    /// The API keys in force.
    pub fn keys(&self) -> Arc<guard::auth::Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the API keys of a reloaded config (other `[server]` settings
    /// take a restart). A key that cannot be read shuts its identity out; the
    /// others are reloaded.
    pub fn reload_keys(&self, s: &crate::config::ServerConfig) {
        let old = self.keys();
        if !old.required() && !s.has_keys() {
            return;
        }
        if old.required() != s.has_keys() {
            tracing::error!(
                "adding the first API key or removing the last takes a restart; keys unchanged"
            );
            return;
        }
        match guard::auth::Keys::reload(s, Some(&old)) {
            Ok(new) => {
                tracing::info!(identities = new.identities(), "API keys reloaded");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
            }
            Err(e) => tracing::error!(error = %e, "API keys not reloaded; the old ones stay"),
        }
    }
}

/// Binds `[server] listen` and returns the running server (to spawn and to
/// stop on shutdown) and its state (to reload keys).
pub fn start(config: Arc<Config>) -> Result<(actix_web::dev::Server, Arc<State>), ServerError> {
    let s = &config.server;
    crate::util::ids::init()?;
    let keys = guard::auth::Keys::load(s)?;
    let store = config.open_store()?;
    lorastream_ml::runtime::threads::configure(
        lorastream_ml::runtime::threads::Budget {
            alone: s.threads,
            shared: s.threads_while_learning,
        },
        config.model.threads,
    );
    let state = Arc::new(State {
        backend: match s.backend {
            crate::config::Backend::Builtin => Backend::Local(
                Engine::start(Arc::clone(&config), s.queue).map_err(ServerError::Worker)?,
            ),
            crate::config::Backend::Vllm => {
                Backend::Fleet(backend::gateway::Gateway::new(&config)?)
            }
        },
        versions: versions::watch(&config)?,
        readers: memory::Readers::new(store.path().to_owned()),
        store: Mutex::new(store),
        hosts: guard::Hosts::new(&s.allowed_hosts),
        keys: std::sync::RwLock::new(Arc::new(keys)),
        config: Arc::clone(&config),
    });
    let auth = state.keys().required();
    let data = web::Data::from(Arc::clone(&state));
    let http = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(guard::guard))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .on_connect(guard::peer::Peer::on_connect)
    .workers(2)
    .client_request_timeout(Duration::from_secs(s.header_timeout_secs))
    .client_disconnect_timeout(Duration::from_secs(1))
    .shutdown_timeout(5)
    .disable_signals();
    let bind_err = |source| ServerError::Bind {
        addr: s.listen.clone(),
        source,
    };
    let http = match guard::tls::config(s).map_err(bind_err)? {
        Some(tls) => http.bind_rustls_0_23(&s.listen, tls),
        None => http.bind(&s.listen),
    }
    .map_err(bind_err)?;
    let addrs: Vec<String> = http.addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %addrs.join(","),
        auth,
        identities = s.keys.len() + usize::from(s.api_key_file.is_some() || s.api_key_env.is_some()),
        tls = s.tls_cert_file.is_some(),
        memory = s.memory,
        "chat server listening"
    );
    Ok((http.run(), state))
}

/// Every route of the API, the page and the probes.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(site::page))
        .route("/app.js", web::get().to(site::script))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/api/status", web::get().to(site::api_status))
        .route("/metrics", web::get().to(site::metrics))
        .route("/v1/models", web::get().to(openai::models::list))
        .route("/v1/models/{id}", web::get().to(openai::models::one))
        .route(
            "/v1/chat/completions",
            web::post().to(openai::chat::completions),
        )
        .route("/v1/memory", web::delete().to(memory::forget::all))
        .route("/v1/memory/{user}", web::delete().to(memory::forget::user))
        .route("/v1/feedback", web::post().to(memory::feedback::feedback))
        .route(
            "/v1/conversations/{id}",
            web::get().to(memory::forget::conversation),
        )
        .route(
            "/v1/conversations/{id}",
            web::delete().to(memory::forget::delete_conversation),
        );
}

/// Reads a request body of at most `[server] max_request_bytes` (413 beyond)
/// within `[server] body_timeout_secs` (408 past it).
pub async fn read_body(state: &State, mut payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let limit = state.config.server.max_request_bytes;
    let secs = state.config.server.body_timeout_secs;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the {limit}-byte limit ([server] max_request_bytes)"),
        )
    };
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| match e {
                actix_web::error::PayloadError::Overflow => too_large(),
                other => {
                    ApiError::invalid("body", &format!("cannot read the request body: {other}"))
                }
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {secs} s ([server] body_timeout_secs)"
                ),
            ))
        })
}

/// A request's body parsed as `T` (400 naming what is wrong).
pub async fn json_body<T: serde::de::DeserializeOwned>(
    state: &State,
    payload: web::Payload,
    what: &str,
) -> Result<T, ApiError> {
    let body = read_body(state, payload).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", &format!("invalid {what}: {e}")))
}

/// `GET /health`: the process answers.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 once the model is loaded and the worker runs; 503
/// while it loads or when there is no model.
async fn ready(state: web::Data<State>) -> HttpResponse {
    let engine = match &state.backend {
        Backend::Local(engine) => engine,
        // Public: names neither the fleet's address nor any path.
        Backend::Fleet(_) => {
            return HttpResponse::Ok().json(json!({"status": "ready", "backend": "vllm"}));
        }
    };
    match engine.readiness() {
        backend::jobs::Readiness::Ready(m) => HttpResponse::Ok().json(json!({
            "status": "ready", "model": m.config.arch.to_string(),
            "context": m.config.max_position_embeddings,
        })),
        backend::jobs::Readiness::Loading => HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "2"))
            .json(json!({"status": "loading"})),
        // The reason (paths, file names) is in the log and `/api/status`, not
        // in this public probe.
        backend::jobs::Readiness::Failed(_) => HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "30"))
            .json(json!({"status": "no_model",
                "error": "the model could not be loaded; the operator finds why in the log"})),
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route {} {}: the API has GET /v1/models[/{{id}}], POST /v1/chat/completions, POST /v1/feedback, DELETE /v1/memory[/{{user}}], GET and DELETE /v1/conversations/{{id}}",
        req.method(),
        // The caller's own path, bounded (it is echoed back).
        req.path().chars().take(200).collect::<String>()
    )))
}
