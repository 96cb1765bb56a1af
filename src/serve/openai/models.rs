//! `GET /v1/models` and `GET /v1/models/{id}`: the names requests may ask
//! for (see [`crate::serve::versions`]).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::serve::error::ApiError;
use crate::serve::{State, versions};

/// `GET /v1/models`: the served name, the base and every promoted version.
pub async fn list(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let v = versions::current(&state.versions);
    let name = &state.config.server.model_name;
    let data: Vec<_> = v
        .ids(name)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": v.created(&id, name), "owned_by": "lorastream"}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`: one of them (404 for an id that names no version).
pub async fn one(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let v = versions::current(&state.versions);
    let name = &state.config.server.model_name;
    // 404 for an id that names no version.
    v.resolve(Some(&id), name)?;
    Ok(HttpResponse::Ok().json(
        json!({"id": *id, "object": "model", "created": v.created(&id, name), "owned_by": "lorastream"}),
    ))
}
