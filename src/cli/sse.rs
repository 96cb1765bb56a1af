//! Reading a streamed chat completion (Server-Sent Events) as a client:
//! shared by `chat` and `bench chat`.

use serde_json::Value;

/// Calls `on_event` with the JSON of each `data:` event of `resp` as it
/// arrives (`[DONE]` ends the stream and is not passed on). Events are split
/// on bytes, so a character cut between two chunks arrives whole.
pub async fn each_event(
    mut resp: reqwest::Response,
    mut on_event: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            match String::from_utf8_lossy(&event)
                .trim()
                .strip_prefix("data: ")
            {
                Some("[DONE]") | None => {}
                Some(data) => on_event(serde_json::from_str(data).unwrap_or(Value::Null))?,
            }
        }
    }
    Ok(())
}
