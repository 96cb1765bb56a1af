//! Reading a streamed chat completion (Server-Sent Events) as a client:
//! shared by `chat` and `bench chat`.

use futures_util::StreamExt;
use serde_json::Value;

/// Calls `on_event` with the JSON of each `data:` event of `resp` as it
/// arrives (`[DONE]` ends the stream and is not passed on).
pub async fn each_event(
    resp: reqwest::Response,
    mut on_event: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut body = resp.bytes_stream();
    let mut pending = String::new();
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            match event.trim().strip_prefix("data: ") {
                Some("[DONE]") | None => {}
                Some(data) => on_event(serde_json::from_str(data).unwrap_or(Value::Null))?,
            }
        }
    }
    Ok(())
}
