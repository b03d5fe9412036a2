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
    // Small buffers: tungstenite zero-fills its read buffer on every read, and
    // each idle connection holds both (128 KiB each by default).
    let ws = ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let auth = match params.token.as_deref() {
        Some(token) => authenticate(&state, token).await,
        None => Err(ApiError::Unauthorized("Not authenticated")),
    };
    let user = match auth {
        _ if state.shutdown.is_cancelled() => {
            return refuse_with(ws, hub::close::GOING_AWAY, "server shutting down");
        }
        Ok(user) => user,
        Err(ApiError::Unauthorized(_)) => {
            return refuse_with(ws, hub::close::POLICY, "invalid or expired token");
        }
        Err(_) => return refuse_with(ws, UNAVAILABLE, "service temporarily unavailable"),
    };
    match session::Session::open(state.clone(), user, peer).await {
        Ok(session) => {
            let sessions = state.sessions.clone();
            ws.on_upgrade(move |socket| sessions.track_future(session.run(socket)))
        }
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not open a WebSocket session"
            );
            refuse_with(ws, UNAVAILABLE, "service temporarily unavailable")
        }
    }
}

/// Bytes read from a socket at once, and written before a flush is forced.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;

/// Close code for "the server cannot serve you right now".
const UNAVAILABLE: u16 = 1011;

/// Completes the handshake only to close with `code`, as clients expect.
fn refuse_with(ws: WebSocketUpgrade, code: u16, reason: &'static str) -> Response {
    ws.on_upgrade(move |socket| refuse(socket, code, reason))
}

async fn refuse(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}
