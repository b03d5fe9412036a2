//! The WebSocket relay at `/ws?token=<jwt>`.

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    response::Response,
    routing::get,
};
use serde::Deserialize;

use crate::{
    auth::authenticate,
    error::ApiError,
    http::{extract::QueryParams, peer::Peer},
    state::AppState,
};

pub mod hub;
mod relay;

pub use relay::store_undelivered;
mod session;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

#[derive(Deserialize)]
struct WsParams {
    token: Option<String>,
}

/// Upgrades, then runs the session; a missing, invalid, expired or revoked token
/// gets the socket closed with 1008 and a reason.
async fn upgrade(
    State(state): State<AppState>,
    Peer(peer): Peer,
    QueryParams(params): QueryParams<WsParams>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = state.settings.max_message_bytes;
    let ws = ws.max_message_size(limit).max_frame_size(limit);
    let auth = match params.token.as_deref() {
        Some(token) => authenticate(&state, token).await,
        None => Err(ApiError::Unauthorized("Not authenticated")),
    };
    ws.on_upgrade(move |socket| async move {
        match auth {
            _ if state.shutdown.is_cancelled() => {
                refuse(socket, hub::close::GOING_AWAY, "server shutting down").await
            }
            Ok(user) => {
                let sessions = state.sessions.clone();
                sessions
                    .track_future(session::run(socket, state, user, peer))
                    .await
            }
            Err(ApiError::Unauthorized(_)) => {
                refuse(socket, hub::close::POLICY, "invalid or expired token").await
            }
            Err(_) => refuse(socket, 1011, "service temporarily unavailable").await,
        }
    })
}

async fn refuse(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}
