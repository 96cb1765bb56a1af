//! The remote kinds, over HTTP: [`vllm`] (load/unload on every server of a
//! fleet) and [`hub`] (a commit per version on the Hugging Face Hub,
//! tagged); and the HTTP they share: a request sent with its failure
//! named (what was being done, the URL without credentials, the cause), a
//! non-2xx answer as an error carrying the start of its body.

pub mod hub;
pub mod vllm;

use crate::publish::RemoteError;

/// Sends `req`; the body of a 2xx answer, else an error.
pub(super) async fn send(
    req: reqwest::RequestBuilder,
    what: &'static str,
    url: &str,
) -> Result<String, RemoteError> {
    let resp = req.send().await.map_err(|e| RemoteError::Unreachable {
        what,
        url: shown(url),
        reason: crate::util::http::describe(e),
    })?;
    checked(resp, what, url).await
}

pub(super) fn authed(req: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => req.bearer_auth(k),
        None => req,
    }
}

/// The body of a 2xx answer; any other status is an error carrying the
/// start of the body (what the server said).
pub(super) async fn checked(
    resp: reqwest::Response,
    what: &'static str,
    url: &str,
) -> Result<String, RemoteError> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    Err(RemoteError::Status {
        what,
        url: shown(url),
        status: status.as_u16(),
        body: crate::util::http::excerpt(body.as_bytes(), 300),
    })
}

/// `url` without credentials or query secrets, for errors and logs.
pub use crate::util::http::shown;
