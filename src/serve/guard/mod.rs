//! What every request passes before a handler sees it, and what every
//! response carries: a request id, the Host check (421: DNS rebinding), JSON
//! only for POST (415: cross-site form posts), the caller's identity (401),
//! its limits (429), browser headers (CSP `frame-ancestors 'none'`, CORS only
//! for `[server] cors_origins`), and one audit log line naming identity,
//! route, status and duration.
//!
//! Beside it: [`auth`] (API keys → identities, roles), [`limits`] (each
//! identity's requests per minute and in flight), [`tls`], and [`peer`]
//! (whether a client is still connected).
//!
//! Which routes are public is decided on the path as the router matches it
//! (percent-decoded), never on the raw request line; roles are decided by
//! the handlers themselves ([`crate::serve::guard::auth::Admin`]), so no spelling of a
//! path reaches an admin handler without an admin key.

pub mod auth;
pub mod limits;
pub mod peer;
pub mod tls;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};

use crate::serve::State;
use crate::serve::error::ApiError;
use crate::serve::guard::auth::Caller;
use crate::serve::guard::limits::{Permit, Refused};

tokio::task_local! {
    /// The id of the request being handled (in logs and error messages).
    pub static REQUEST_ID: String;
}

/// The current request's id, if inside one.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Routes anyone may fetch: the page and its script, and the probes load
/// balancers call (they hold no data).
const PUBLIC: &[&str] = &["/", "/app.js", "/health", "/ready"];

pub async fn guard(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = crate::util::ids::random_hex(8);
    let state = req
        .app_data::<web::Data<State>>()
        .cloned()
        .expect("the server's state is registered");
    let method = req.method().clone();
    let origin = allowed_origin(&state, &req);
    let mut identity = None;
    let mut res = match admit(&state, &req) {
        Err(e) => req.into_response(e.error_response()),
        Ok(None) if method == Method::OPTIONS && origin.is_some() => req.into_response(preflight()),
        Ok(admitted) => {
            let permit = admitted.map(|(caller, permit)| {
                identity = Some(caller.0.name.clone());
                req.extensions_mut().insert(caller);
                permit
            });
            let res = REQUEST_ID.scope(id.clone(), next.call(req)).await?;
            res.map_body(|_, body| {
                BoxBody::new(Held {
                    body,
                    _permit: permit,
                })
            })
        }
    };
    decorate(res.headers_mut(), &id, origin);
    // The pattern the router matched (after the handler ran): never the raw path.
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "(none)".into());
    tracing::info!(
        target: "lorastream::audit",
        request_id = %id,
        identity = identity.as_deref().unwrap_or("-"),
        method = %method,
        route = %route,
        status = res.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(res)
}

/// The caller and its permit; `None` for a public route (or a preflight).
fn admit(state: &State, req: &ServiceRequest) -> Result<Option<(Caller, Permit)>, ApiError> {
    if let Some(host) = req.headers().get(header::HOST)
        && !state.hosts.allows(host.to_str().unwrap_or(""))
    {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            "this server does not answer to that Host: add it to [server] allowed_hosts",
        ));
    }
    // The path the router will match: `/%68ealth` is `/health` to it.
    let path = req.match_info().as_str();
    if req.method() == Method::OPTIONS || (req.method() == Method::GET && PUBLIC.contains(&path)) {
        return Ok(None);
    }
    if req.method() == Method::POST && !is_json(req) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let identity = state.keys().authenticate(authorization)?;
    let permit = identity.limits.admit().map_err(refused)?;
    Ok(Some((Caller(identity), permit)))
}

fn refused(r: Refused) -> ApiError {
    let (msg, retry) = match r {
        Refused::Rate { rpm, retry_after } => (
            format!("this key may make {rpm} requests a minute; retry in {retry_after} s"),
            retry_after,
        ),
        Refused::Concurrency { max } => (
            format!("this key may have {max} requests in flight; retry when one ends"),
            1,
        ),
    };
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg)
        .with_code("rate_limit_exceeded")
        .retry_after(retry)
}

fn is_json(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The request's `Origin` when `[server] cors_origins` names it.
fn allowed_origin(state: &State, req: &ServiceRequest) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    state
        .config
        .server
        .cors_origins
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

fn preflight() -> actix_web::HttpResponse {
    actix_web::HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, DELETE"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type, x-conversation-id",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish()
}

/// Headers every response carries.
fn decorate(h: &mut header::HeaderMap, id: &str, origin: Option<HeaderValue>) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-conversation-id, x-lorastream-message-id, x-lorastream-memories, x-request-id",
            ),
        );
    }
}

/// The host names a server answers to: IP literals (which DNS rebinding
/// cannot produce), `localhost`, and `[server] allowed_hosts`.
pub struct Hosts {
    allowed: Vec<String>,
}

impl Hosts {
    pub fn new(allowed: &[String]) -> Hosts {
        Hosts {
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    pub fn allows(&self, host_header: &str) -> bool {
        let full = host_header.trim().to_ascii_lowercase();
        let name = match full.rsplit_once(':') {
            Some((n, port)) if !n.ends_with(':') && port.chars().all(|c| c.is_ascii_digit()) => n,
            _ => full.as_str(),
        };
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || bare == "localhost"
            || self.allowed.iter().any(|a| *a == full || *a == name)
    }
}

/// A response body that holds its request's [`Permit`] until it is sent or
/// dropped (a stream keeps its place among the identity's requests in flight).
struct Held {
    body: BoxBody,
    _permit: Option<Permit>,
}

impl MessageBody for Held {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed() {
        let h = Hosts::new(&["chat.example.com".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "10.0.0.5",
            "chat.example.com:443",
            "chat.example.com",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.evil",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }
}
