//! Offline messages: stored opaque, fetched exactly once, or (opted in)
//! fetched until acknowledged.

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{Detail, MessageOut};
use crate::{
    domain::AckMode,
    error::ApiError,
    extract::{JsonBody, QueryParams, Whole},
    service::AuthUser,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/messages", get(fetch).post(send))
        .route("/messages/ack", post(ack))
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    /// `manual`: return the messages without marking them read; they stay
    /// until `POST /messages/ack` names them (at-least-once delivery).
    /// Absent: marked read as they are returned (exactly once).
    #[param(value_type = Option<String>, pattern = "^manual$")]
    ack: Option<AckMode>,
}

/// The caller's unread messages, oldest first (at most 1000 a call): marked
/// read as they are returned, or with `?ack=manual`, left unread until
/// acknowledged.
#[utoipa::path(get, path = "/messages/", tag = "messages", security(("bearer" = [])),
    params(FetchParams),
    responses((status = 200, body = [MessageOut]), (status = 401, body = Detail), (status = 422)))]
async fn fetch(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(params): QueryParams<FetchParams>,
) -> Result<Json<Vec<MessageOut>>, ApiError> {
    let messages = match params.ack {
        None => state.services.take_inbox(&user).await?,
        Some(AckMode::Manual) => state.services.peek_inbox(&user).await?,
    };
    Ok(Json(messages.into_iter().map(Into::into).collect()))
}

#[derive(Deserialize, ToSchema)]
pub struct AckRequest {
    /// Ids of messages `GET /messages/?ack=manual` returned; at most 1000.
    #[schema(max_items = 1000, value_type = Vec<i64>)]
    ids: Vec<Whole>,
}

#[derive(Serialize, ToSchema)]
pub struct AckOut {
    /// How many of the ids were the caller's unread messages, now read.
    acked: u64,
}

/// Acknowledge messages: those of the ids that are the caller's unread
/// messages are marked read (deleted). Idempotent; ids that are not the
/// caller's unread messages are ignored.
#[utoipa::path(post, path = "/messages/ack", tag = "messages", security(("bearer" = [])),
    request_body = AckRequest,
    responses((status = 200, body = AckOut), (status = 401, body = Detail), (status = 422)))]
async fn ack(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<AckRequest>,
) -> Result<Json<AckOut>, ApiError> {
    let ids: Vec<i64> = body.ids.iter().map(|id| id.0).collect();
    let acked = state.services.ack_inbox(&user, &ids).await?;
    Ok(Json(AckOut { acked }))
}
