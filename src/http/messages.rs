//! Offline messages: stored opaque, fetched exactly once.

use axum::{Json, Router, extract::State, routing::get};
use chrono::Utc;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    extract::JsonBody,
    views::{Detail, MessageOut},
};
use crate::{
    auth::AuthUser,
    domain::MessageContent,
    error::ApiError,
    metrics::{StoredVia, messages_stored},
    state::AppState,
    store::NewMessage,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/messages", get(fetch).post(send))
}

#[derive(Deserialize, ToSchema)]
pub struct SendRequest {
    recipient_username: String,
    /// Opaque text (base64 by convention); never decoded by the server.
    encrypted_content: String,
}

/// Store a message for a user to fetch later.
#[utoipa::path(post, path = "/messages/", tag = "messages", security(("bearer" = [])),
    request_body = SendRequest,
    responses((status = 200, body = MessageOut), (status = 404, body = Detail), (status = 401, body = Detail),
              (status = 413, body = Detail), (status = 422)))]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<SendRequest>,
) -> Result<Json<MessageOut>, ApiError> {
    let content = MessageContent::parse(
        body.encrypted_content,
        state.settings.max_message_bytes,
        "encrypted_content",
    )?;
    let recipient = state
        .names
        .resolve(state.store.as_ref(), &body.recipient_username)
        .await?
        .ok_or(ApiError::NotFound("Recipient not found"))?;
    let message = NewMessage {
        sender_id: user.id,
        receiver_id: recipient.id,
        content: content.into_inner(),
        sent_at: Utc::now(),
    };
    let stored = state.messages.store(message).await?;
    messages_stored(StoredVia::Http, 1);
    Ok(Json(stored.into()))
}

/// The caller's unread messages, oldest first, now marked read (at most 1000 a call).
#[utoipa::path(get, path = "/messages/", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = [MessageOut]), (status = 401, body = Detail)))]
async fn fetch(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<MessageOut>>, ApiError> {
    let taken = state.store.take_unread(user.id).await?;
    Ok(Json(taken.into_iter().map(Into::into).collect()))
}
