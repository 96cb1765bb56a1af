//! The OpenAI-compatible surface: [`api`] (the wire format and its checks),
//! [`chat`] (`POST /v1/chat/completions`), [`reply`] (whole answers and
//! Server-Sent Events), [`models`] (`GET /v1/models[/{id}]`).

pub mod api;
pub mod chat;
pub mod models;
pub mod reply;
