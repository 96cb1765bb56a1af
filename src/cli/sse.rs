//! Reading a streamed chat completion (Server-Sent Events) as a client:
//! shared by `chat` and `bench chat`.

use serde_json::Value;

/// Calls `on_event` with the JSON of each `data` event of `resp` as it
/// arrives (`[DONE]` ends the stream and is not passed on), read by the
/// daemon's one SSE decoder.
pub async fn each_event(
    mut resp: reqwest::Response,
    mut on_event: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut sse = lorastream::util::http::sse::SseDecoder::default();
    while let Some(chunk) = resp.chunk().await? {
        sse.push(&chunk);
        while let Some(data) = sse.next_data() {
            match data.trim() {
                "[DONE]" => return Ok(()),
                d => on_event(serde_json::from_str(d).unwrap_or(Value::Null))?,
            }
        }
    }
    Ok(())
}
