//! Offline messages: stored opaque, fetched exactly once.

use axum::{Json, Router, extract::State, routing::get};
use serde::Deserialize;
use utoipa::ToSchema;

use super::views::{Detail, MessageOut};
use crate::{error::ApiError, extract::JsonBody, service::AuthUser, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/messages", get(fetch).post(send))
}

#[derive(Deserialize, ToSchema)]
pub struct SendRequest {
    #[schema(example = "bob")]
    recipient_username: String,
    /// Opaque text (base64 by convention), 1 byte up to `MAX_MESSAGE_BYTES`
    /// (64 KiB) without NUL; never decoded by the server.
    #[schema(min_length = 1, pattern = "^[^\\u0000]*$")]
    encrypted_content: String,
}

/// Store a message for a user to fetch later.
#[utoipa::path(post, path = "/messages/", tag = "messages", security(("bearer" = [])),
    request_body = SendRequest,
    responses((status = 200, body = MessageOut), (status = 404, body = Detail), (status = 401, body = Detail),
              (status = 409, body = Detail, description = "The recipient's mailbox is full"),
              (status = 413, body = Detail), (status = 422),
              (status = 429, body = Detail, description = "Too many offline messages from this sender; wait `Retry-After` seconds")))]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<SendRequest>,
) -> Result<Json<MessageOut>, ApiError> {
    let stored = state
        .services
        .send_offline(&user, &body.recipient_username, body.encrypted_content)
        .await?;
    Ok(Json(stored.into()))
}

/// The caller's unread messages, oldest first, now marked read (at most 1000 a call).
#[utoipa::path(get, path = "/messages/", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = [MessageOut]), (status = 401, body = Detail)))]
async fn fetch(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<MessageOut>>, ApiError> {
    let taken = state.services.take_inbox(&user).await?;
    Ok(Json(taken.into_iter().map(Into::into).collect()))
}
