//! `POST /v1/feedback`: a user rates an answer. A helpful answer (rating > 0)
//! in a conversation whose user opted in (`"learn": true`, once is enough)
//! becomes a raw item of the `conversations` source when
//! `[server] learn_from_conversations` is on, and reaches the weights through
//! the normal path (preprocessing, streams, training, the feedback loop).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::api::ApiError;
use super::{State, json_body};

#[derive(Debug, Deserialize)]
struct FeedbackRequest {
    conversation_id: String,
    /// The assistant message rated; unset: the conversation's last answer.
    #[serde(default)]
    message_id: Option<i64>,
    /// > 0 helpful, < 0 not.
    rating: i64,
    /// The user agrees that this conversation may be learned from.
    #[serde(default)]
    learn: bool,
}

pub async fn feedback(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let f: FeedbackRequest = json_body(&state, &req, payload, "feedback").await?;
    let state = state.into_inner();
    let enabled = state.config.server.learn_from_conversations;
    let conversation = f.conversation_id.clone();
    let c = conversation.clone();
    let (message_id, rating, learn) = (f.message_id, f.rating, f.learn);
    let (rated, learned) = state
        .with_store(move |store| {
            let rated = store.rate_message(&c, message_id, rating, learn)?;
            let learned = match (&rated.question, enabled && rated.learn && rating > 0) {
                (Some(q), true) => store
                    .learn_exchange(&c, rated.user.as_deref(), q, &rated.answer)?
                    .is_new(),
                _ => false,
            };
            Ok((rated, learned))
        })
        .await?;
    let why = if learned {
        "queued for training (source `conversations`)"
    } else if !enabled {
        "not learned: [server] learn_from_conversations is off"
    } else if !rated.learn {
        "not learned: the conversation did not opt in (send \"learn\": true)"
    } else if f.rating <= 0 {
        "not learned: only helpful answers (rating > 0) are"
    } else {
        "not learned: already queued, or no user message before it"
    };
    tracing::info!(conversation = %conversation, rating = f.rating, learned, "chat feedback");
    Ok(HttpResponse::Ok()
        .json(json!({"conversation_id": conversation, "learned": learned, "detail": why})))
}
