//! `POST /v1/feedback`: a caller rates an answer in one of its identity's
//! conversations (an admin may name another identity). A helpful answer
//! (rating > 0) in a conversation that opted in (`"learn": true`, once is
//! enough) becomes a raw item of the `conversations` source when
//! `[server] learn_from_conversations` is on and the operator lets the
//! identity be learned from (`learn = true` on its key), and reaches the
//! weights through the normal path (preprocessing, streams, training, the
//! feedback loop).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::serve::error::ApiError;
use crate::serve::guard::auth::Caller;
use crate::serve::memory::check_conversation;
use crate::serve::{State, json_body};

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
    /// Admins only: the identity whose conversation it is.
    #[serde(default)]
    identity: Option<String>,
}

pub async fn feedback(
    state: web::Data<State>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let f: FeedbackRequest = json_body(&state, payload, "feedback").await?;
    let conversation = check_conversation(Some(&f.conversation_id))?
        .ok_or_else(|| ApiError::invalid("conversation_id", "name the conversation"))?;
    let identity = caller.acting_as(f.identity.clone(), &state.keys())?;
    // Consent to learning is the conversation's own identity's to give: an
    // admin rating for another identity cannot opt it in.
    if f.learn && identity != caller.0.name {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "invalid_request_error",
            "only the conversation's own identity may opt it into learning (\"learn\": true)",
        )
        .with_code("forbidden"));
    }
    let state = state.into_inner();
    let enabled = state.config.server.learn_from_conversations;
    // The operator decides whose conversations may be learned: the caller's
    // key when it acts for itself.
    let allowed = caller.0.learn && identity == caller.0.name;
    let (c, id) = (conversation.clone(), identity.clone());
    let (message_id, rating, learn) = (f.message_id, f.rating, f.learn);
    let (rated, learned) = state
        .with_store(move |store| {
            let rated = store.rate_message(&id, &c, message_id, rating, learn)?;
            let learned = match (
                &rated.question,
                enabled && allowed && rated.learn && rating > 0,
            ) {
                (Some(q), true) => store
                    .learn_exchange(&c, &rated.owner, q, &rated.answer)?
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
    } else if !allowed {
        "not learned: this key's identity is not one the operator lets the daemon learn from"
    } else if !rated.learn {
        "not learned: the conversation did not opt in (send \"learn\": true)"
    } else if f.rating <= 0 {
        "not learned: only helpful answers (rating > 0) are"
    } else {
        "not learned: already queued, or no user message before it"
    };
    tracing::info!(
        identity = identity.as_str(),
        conversation = conversation.as_str(),
        rating = f.rating,
        learned,
        "chat feedback"
    );
    Ok(HttpResponse::Ok()
        .json(json!({"conversation_id": conversation, "learned": learned, "detail": why})))
}
