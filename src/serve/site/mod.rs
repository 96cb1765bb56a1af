//! The web page (`GET /`, `GET /app.js`: one page, no external assets, no build
//! step), the JSON it refreshes from (`GET /api/status`), and `GET /metrics`
//! (Prometheus text format).
//!
//! The page writes everything with `textContent` (never `innerHTML`), so text
//! from crawled data stays text; the content security policy allows only the
//! page's own script as a second line of defence.

pub mod status;

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::serve::State;
use crate::serve::error::ApiError;
use crate::serve::guard::auth::Admin;
use crate::util::metrics::{METRICS, set_finite};
use lorastream_store::Store;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(PAGE)
}

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("x-content-type-options", "nosniff"))
        .body(SCRIPT)
}

/// Questions of the newest examples, for the page.
fn recent(store: &Store) -> Result<Vec<serde_json::Value>, lorastream_store::StoreError> {
    Ok(store
        .recent_examples(8)?
        .into_iter()
        .map(|e| {
            let question = e.messages.as_array().and_then(|m| {
                m.iter()
                    .find(|x| x["role"] == "user")
                    .and_then(|x| x["content"].as_str())
                    .map(String::from)
            });
            json!({"id": e.id, "question": question, "state": e.state, "stream_id": e.stream_id})
        })
        .collect())
}

/// `GET /api/status`: the store's view (as `lorastream status --json`), the
/// perplexity matrix and the newest examples.
pub async fn api_status(state: web::Data<State>, _: Admin) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let config = Arc::clone(&state.config);
    let (report, matrix, recent) = state
        .with_store(move |s| {
            Ok((
                crate::serve::site::status::report(&config, Some(s))?,
                crate::learn::matrix::fill::stored_matrix(s)?,
                recent(s)?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": report,
        "matrix": matrix,
        "recent_examples": recent,
        "model": {
            "source": state.config.model.source.to_string(),
            "name": state.config.server.model_name,
        },
        "queue_depth": METRICS.queue_depth.get(),
    })))
}

/// `GET /metrics`: refreshes the figures read from the store, then renders all.
pub async fn metrics(state: web::Data<State>, _: Admin) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    state
        .with_store(|s| {
            let m = &METRICS;
            m.stream_examples.reset();
            for st in s.streams()? {
                let id = st.id.to_string();
                m.stream_examples
                    .with_label_values(&[id.as_str(), "train"])
                    .set(st.n_train as f64);
                m.stream_examples
                    .with_label_values(&[id.as_str(), "eval"])
                    .set(st.n_eval as f64);
            }
            m.served_perplexity.reset();
            let served = s.served_adapter()?.map_or(0, |a| a.id);
            for e in s.evals()?.iter().filter(|e| e.adapter_id == served) {
                let id = e.stream_id.to_string();
                set_finite(
                    &m.served_perplexity.with_label_values(&[id.as_str()]),
                    e.perplexity,
                );
            }
            m.publish_up.reset();
            for t in s.publish_targets()? {
                let up = if t.ok { 1.0 } else { 0.0 };
                m.publish_up
                    .with_label_values(&[t.name.as_str(), t.kind.as_str()])
                    .set(up);
                let v = t.version.unwrap_or(0) as f64;
                m.publish_version
                    .with_label_values(&[t.name.as_str()])
                    .set(v);
                let f = t.failures as f64;
                m.publish_failures
                    .with_label_values(&[t.name.as_str()])
                    .set(f);
            }
            Ok(())
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(METRICS.render()))
}
