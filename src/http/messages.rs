//! Offline messages: stored opaque, fetched exactly once, or (opted in)
//! fetched until acknowledged.

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{Detail, MessageOut};
use crate::{
    domain::AckMode,
    error::ApiError,
    extract::{JsonBody, QueryParams, Whole},
    service::authn::AuthUser,
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
        .inbox
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
    /// With `ack=manual`: only messages with a greater id (the next page
    /// after the last id of the previous one; the `Link` header names it).
    after: Option<i64>,
}

/// The caller's unread messages, oldest first, a page a call (at most 1000
/// messages, and no more once their contents reach `MESSAGE_PAGE_BYTES`):
/// marked read as they are returned, or with `?ack=manual`, left unread until
/// acknowledged. When a next page may hold more, the answer carries
/// `Link: <…>; rel="next"`; clients that ignore it get the rest on their
/// next call.
#[utoipa::path(get, path = "/messages/", tag = "messages", security(("bearer" = [])),
    params(FetchParams),
    responses((status = 200, body = [MessageOut],
               headers(("link" = String, description = "`<URL>; rel=\"next\"` when another page may follow"))),
              (status = 401, body = Detail), (status = 422),
              (status = 429, body = Detail, description = "Too many inbox requests; wait `Retry-After` seconds")))]
async fn fetch(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(params): QueryParams<FetchParams>,
) -> Result<Response, ApiError> {
    let (page, next) = match params.ack {
        None => (state.inbox.take_inbox(&user).await?, None),
        Some(AckMode::Manual) => {
            let page = state
                .inbox
                .peek_inbox(&user, params.after.unwrap_or(0))
                .await?;
            let last = page.messages.last().map(|m| m.id);
            (page, last)
        }
    };
    let link = match (page.more, next) {
        (false, _) => None,
        (true, None) => Some("</messages/>; rel=\"next\"".to_owned()),
        (true, Some(last)) => Some(format!(
            "</messages/?ack=manual&after={last}>; rel=\"next\""
        )),
    };
    let body = Json(
        page.messages
            .into_iter()
            .map(MessageOut::from)
            .collect::<Vec<_>>(),
    );
    Ok(match link {
        Some(link) => ([(header::LINK, link)], body).into_response(),
        None => body.into_response(),
    })
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
    responses((status = 200, body = AckOut), (status = 401, body = Detail), (status = 422),
              (status = 429, body = Detail, description = "Too many inbox requests; wait `Retry-After` seconds")))]
async fn ack(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<AckRequest>,
) -> Result<Json<AckOut>, ApiError> {
    let ids: Vec<i64> = body.ids.iter().map(|id| id.0).collect();
    let acked = state.inbox.ack_inbox_over_http(&user, &ids).await?;
    Ok(Json(AckOut { acked }))
}
