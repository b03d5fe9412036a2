//! The WebSocket relay at `/ws?token=<jwt>`: the upgrade here, one session per
//! connection in `session`. Frames in, frames out; every flow is the service
//! layer's.

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
    domain::Disconnect,
    extract::{Peer, QueryParams},
    service,
    state::AppState,
};

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
    // each idle connection holds both (128 KiB each by default). The write
    // buffer is bounded too: a client that never reads must not make it grow
    // (with pongs to its pings, say). A frame can hold a message whose JSON
    // escaping made it up to six times longer.
    let ws = ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 6 * limit + 1024);
    let auth = match params.token.as_deref() {
        Some(token) => state.services.authenticate(token).await,
        None => Err(service::Error::BAD_TOKEN),
    };
    let user = match auth {
        _ if state.shutdown.is_cancelled() => return refuse(ws, Disconnect::ShuttingDown),
        Ok(user) => user,
        Err(service::Error::Unauthenticated(_)) => return refuse(ws, Disconnect::InvalidToken),
        Err(_) => return refuse(ws, Disconnect::Unavailable),
    };
    match session::Session::open(state.clone(), user, peer).await {
        Ok(session) => {
            let sessions = state.sessions.clone();
            ws.on_upgrade(move |socket| sessions.track_future(session.run(socket)))
        }
        Err(service::Error::Limited(..)) => refuse(ws, Disconnect::TooManyConnections),
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not open a WebSocket session"
            );
            refuse(ws, Disconnect::Unavailable)
        }
    }
}

/// Bytes read from a socket at once, and written before a flush is forced.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;

/// The close frame that says why.
fn close_frame(why: Disconnect) -> Message {
    Message::Close(Some(CloseFrame {
        code: why.code(),
        reason: why.reason().into(),
    }))
}

/// Completes the handshake only to close, as clients expect.
fn refuse(ws: WebSocketUpgrade, why: Disconnect) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        let _ = socket.send(close_frame(why)).await;
    })
}
