//! The daemon's outbound HTTP: every client is made here ([`client`]); the
//! fetching client of the sources and the OpenAI summarizer ([`Http`]):
//! timeouts, retries with exponential backoff and full jitter (on connect
//! errors, timeouts, 429 and 5xx, honouring `Retry-After`), a per-host rate
//! limit shared by all sources of a process, a cap on response size, and
//! errors that never contain a secret.
//!
//! Beside it: [`redact`] (URLs as shown: no credentials, no secret query
//! values; same-origin checks), [`secret`] (tokens and keys from a file or
//! the environment), [`sse`] (the one Server-Sent Events decoder).

pub mod redact;
pub mod secret;
pub mod sse;

pub use redact::{redact, same_origin, shown};
pub use secret::{SecretError, read_secret};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, RETRY_AFTER};
use url::Url;

/// A server asking for longer than this is not waited for: the run fails and
/// the source is retried on its next schedule.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: HTTP {status}{}", body_hint(.body))]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: no response within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: cannot connect: {msg}")]
    Connect { url: String, msg: String },
    #[error("{url}: response larger than the {limit}-byte cap (max_response_bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: reading the response failed: {msg}")]
    Body { url: String, msg: String },
    #[error("{url}: server asks to retry after {secs} s, longer than we wait; next run")]
    RetryAfterTooLong { url: String, secs: u64 },
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<HttpError> },
}

fn body_hint(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl HttpError {
    /// Worth another attempt: the server or the network may recover.
    fn retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => *status == 429 || *status >= 500,
            HttpError::Timeout { .. } | HttpError::Connect { .. } => true,
            // A connection cut mid-body is a network fault too.
            HttpError::Body { .. } => true,
            _ => false,
        }
    }
}

/// The per-request rules of one caller (a source, the summarizer).
#[derive(Debug, Clone)]
pub struct Policy {
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub rate_per_sec: f64,
    pub max_bytes: u64,
}

/// One client for all sources: connection pool and per-host request slots.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    next_slot: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

/// A reqwest client builder with rustls on the `ring` provider, installed as
/// the process's default once (reqwest is built without a provider of its own:
/// `ring` is already in the tree through the Hub client, and a second one,
/// aws-lc, is minutes of C to compile). The daemon's clients are made by
/// [`client`]; the CLI's own (chat, bench, demo) start from this builder.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err: another provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// How long a daemon client waits: to connect, between two reads of a
/// response (a stream may be long, its pauses not), and for a whole request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub total: Option<Duration>,
}

/// The daemon's outbound HTTP client (sources, summarizer, publishers, the
/// gateway): its user agent, rustls, `timeouts`. The one place a client of
/// the daemon is made.
pub fn client(timeouts: Timeouts) -> reqwest::Client {
    let mut b = client_builder().user_agent(concat!("lorastream/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = timeouts.connect {
        b = b.connect_timeout(t);
    }
    if let Some(t) = timeouts.read {
        b = b.read_timeout(t);
    }
    if let Some(t) = timeouts.total {
        b = b.timeout(t);
    }
    // Building fails only when the TLS back end cannot start; a default
    // client (same provider) then fails its requests with that reason.
    b.build().unwrap_or_default()
}

impl Http {
    pub fn new() -> Http {
        let client = client(Timeouts {
            connect: Some(Duration::from_secs(10)),
            ..Timeouts::default()
        });
        Http {
            client,
            next_slot: Arc::default(),
        }
    }

    /// GET `url` under `policy`: the body, once a 2xx arrived whole.
    pub async fn get(&self, url: &Url, policy: &Policy) -> Result<Vec<u8>, HttpError> {
        self.request(url, policy, None).await
    }

    /// POST a JSON body (used by the summarizer's OpenAI-compatible backend).
    pub async fn post_json(
        &self,
        url: &Url,
        policy: &Policy,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> Result<Vec<u8>, HttpError> {
        self.request(url, policy, Some((body, bearer))).await
    }

    async fn request(
        &self,
        url: &Url,
        policy: &Policy,
        post: Option<(&serde_json::Value, Option<&str>)>,
    ) -> Result<Vec<u8>, HttpError> {
        let shown = redact(url);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.wait_for_slot(url, policy.rate_per_sec).await;
            let mut req = match post {
                None => self.client.get(url.clone()),
                Some((body, bearer)) => {
                    let r = self.client.post(url.clone()).json(body);
                    match bearer {
                        Some(key) => r.bearer_auth(key),
                        None => r,
                    }
                }
            };
            req = req.timeout(policy.timeout);
            let (err, retry_after) = match self.once(req, &shown, policy).await {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if !err.retryable() {
                return Err(err);
            }
            if attempt > policy.max_retries {
                return Err(if attempt == 1 {
                    err
                } else {
                    HttpError::GaveUp {
                        attempts: attempt,
                        last: Box::new(err),
                    }
                });
            }
            let wait = match retry_after {
                Some(d) if d > MAX_RETRY_AFTER => {
                    return Err(HttpError::RetryAfterTooLong {
                        url: shown,
                        secs: d.as_secs(),
                    });
                }
                Some(d) => d,
                None => backoff(policy, attempt),
            };
            tracing::warn!(url = %shown, attempt, error = %err, wait_ms = wait.as_millis() as u64, "request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt; on failure also the server's Retry-After, if it sent one.
    async fn once(
        &self,
        req: reqwest::RequestBuilder,
        shown: &str,
        policy: &Policy,
    ) -> Result<Vec<u8>, (HttpError, Option<Duration>)> {
        let secs = policy.timeout.as_secs();
        let net = |e: reqwest::Error| {
            let (timeout, connect) = (e.is_timeout(), e.is_connect() || e.is_request());
            let msg = e.without_url().to_string();
            if timeout {
                HttpError::Timeout {
                    url: shown.into(),
                    secs,
                }
            } else if connect {
                HttpError::Connect {
                    url: shown.into(),
                    msg,
                }
            } else {
                HttpError::Body {
                    url: shown.into(),
                    msg,
                }
            }
        };
        let mut resp = req.send().await.map_err(|e| (net(e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || HttpError::TooLarge {
            url: shown.into(),
            limit: policy.max_bytes,
        };
        if declared.is_some_and(|n| n > policy.max_bytes) {
            return Err((too_large(), None));
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > policy.max_bytes {
                        return Err((too_large(), None));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err((net(e), retry_after)),
            }
        }
        if !status.is_success() {
            return Err((
                HttpError::Status {
                    url: shown.into(),
                    status: status.as_u16(),
                    body: excerpt(&body, 200),
                },
                retry_after.filter(|_| retryable_status(status)),
            ));
        }
        Ok(body)
    }

    /// Waits for this host's next request slot (`1 / rate` seconds apart).
    async fn wait_for_slot(&self, url: &Url, rate: f64) {
        if rate <= 0.0 || !rate.is_finite() {
            return;
        }
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let gap = Duration::from_secs_f64(1.0 / rate);
        let wait = {
            let mut slots = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = slots.get(&host).copied().unwrap_or(now).max(now);
            slots.insert(host, slot + gap);
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// The wait before retry `attempt` (see [`crate::util::retry::Backoff::jittered`]).
fn backoff(p: &Policy, attempt: u32) -> Duration {
    crate::util::retry::Backoff::new(p.backoff_initial, p.backoff_max).jittered(attempt)
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The start of a response body for an error message (bodies can be huge or
/// binary): at most `max` characters of it, whitespace runs as one space,
/// `…` when cut. The one excerpt of every client error in the daemon.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max * 4)]);
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect();
        out.push('…');
    }
    out
}

/// A request error in words, its causes included ("error sending request:
/// … Connection refused"), without the URL (the caller names it, redacted).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A response body that is not the JSON it should be.
#[derive(Debug, thiserror::Error)]
#[error("{what}: response is not valid JSON ({source}; {bytes} bytes)")]
pub struct NotJson {
    pub what: String,
    pub bytes: usize,
    pub source: serde_json::Error,
}

/// Parses a JSON response body; invalid UTF-8 is replaced (and counted in the
/// log) rather than losing the whole page.
pub fn parse_json(body: &[u8], what: &str) -> Result<serde_json::Value, NotJson> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => {
            let fixed = String::from_utf8_lossy(body);
            let bad = fixed.matches('\u{FFFD}').count();
            tracing::warn!(
                what,
                replaced = bad,
                "response is not valid UTF-8; bad bytes replaced with U+FFFD"
            );
            fixed
        }
    };
    serde_json::from_str(&text).map_err(|source| NotJson {
        what: what.into(),
        bytes: body.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = Policy {
            timeout: Duration::from_secs(1),
            max_retries: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            rate_per_sec: 0.0,
            max_bytes: 1,
        };
        for _ in 0..50 {
            let b1 = backoff(&p, 1);
            assert!(b1 >= Duration::from_millis(10) && b1 <= Duration::from_millis(100));
            let b9 = backoff(&p, 9);
            assert!(b9 >= Duration::from_millis(100) && b9 <= Duration::from_millis(1000));
        }
    }
}
