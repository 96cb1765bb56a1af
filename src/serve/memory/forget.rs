//! `DELETE /v1/memory/{user}` and `DELETE /v1/memory`: forget one end user's
//! memory, or every user's, within the caller's identity (an admin may name
//! another configured identity with `?identity=NAME`); `GET` and `DELETE
//! /v1/conversations/{id}`: read or forget one conversation the caller's
//! identity owns. Conversations, messages, their index rows and the examples
//! derived from them that are not yet learned go; examples already in a
//! stream are listed with the versions trained on them, so an operator can
//! roll back.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::serve::State;
use crate::serve::error::ApiError;
use crate::serve::guard::auth::Caller;
use crate::serve::memory::check_user;

#[derive(Debug, Deserialize)]
pub struct Target {
    identity: Option<String>,
}

/// `DELETE /v1/memory/{user}`
pub async fn user(
    state: web::Data<State>,
    caller: Caller,
    user: web::Path<String>,
    target: web::Query<Target>,
) -> Result<HttpResponse, ApiError> {
    let user = check_user(Some(&user))?
        .ok_or_else(|| ApiError::invalid("user", "name the user to forget"))?;
    forget(state, caller, target.into_inner(), Some(user)).await
}

/// `DELETE /v1/memory`: every user of the identity.
pub async fn all(
    state: web::Data<State>,
    caller: Caller,
    target: web::Query<Target>,
) -> Result<HttpResponse, ApiError> {
    forget(state, caller, target.into_inner(), None).await
}

async fn forget(
    state: web::Data<State>,
    caller: Caller,
    target: Target,
    user: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let identity = caller.acting_as(target.identity, &state.keys())?;
    let (who, id) = (user.clone(), identity.clone());
    let gone = state
        .into_inner()
        .with_store(move |s| s.forget(&id, who.as_deref().map(Some)))
        .await?;
    tracing::info!(
        identity = %identity,
        user = user.as_deref().unwrap_or("(all)"),
        conversations = gone.conversations,
        messages = gone.messages,
        learned = gone.learned.len(),
        "memory forgotten"
    );
    Ok(HttpResponse::Ok().json(json!({
        "identity": identity,
        "user": user,
        "deleted_conversations": gone.conversations,
        "deleted_messages": gone.messages,
        "dropped_examples": gone.examples + gone.raw_items,
        "already_learned": gone.learned,
    })))
}

/// The conversation a path names, checked.
fn path_conversation(id: &str) -> Result<String, ApiError> {
    crate::serve::memory::check_conversation(Some(id))?
        .ok_or_else(|| ApiError::invalid("id", "name the conversation"))
}

/// `GET /v1/conversations/{id}`: the messages of a conversation the caller's
/// identity owns (404 otherwise, as for an unknown id).
pub async fn conversation(
    state: web::Data<State>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_conversation(&id)?;
    let (c, identity) = (id.clone(), caller.0.name.clone());
    let (owner, messages) = state
        .into_inner()
        .with_store(move |s| Ok((s.owned_conversation(&c, &identity)?, s.messages(&c)?)))
        .await?;
    let messages: Vec<_> = messages
        .iter()
        .map(|m| json!({"id": m.id, "role": m.role.as_str(), "content": m.content, "created": m.created_at / 1000}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"id": id, "user": owner.user, "messages": messages})))
}

/// `DELETE /v1/conversations/{id}`: forgets one conversation of the caller's identity.
pub async fn delete_conversation(
    state: web::Data<State>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_conversation(&id)?;
    let (c, identity) = (id.clone(), caller.0.name.clone());
    let gone = state
        .into_inner()
        .with_store(move |s| s.forget_conversation(&c, &identity))
        .await?;
    tracing::info!(identity = %caller.0.name, conversation = %id, messages = gone.messages, "conversation forgotten");
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "deleted_messages": gone.messages,
        "dropped_examples": gone.examples + gone.raw_items,
        "already_learned": gone.learned,
    })))
}
