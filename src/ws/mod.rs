//! The WebSocket relay at `/ws`: the upgrade here, one session per
//! connection in `session`. Frames in, frames out; every flow is the service
//! layer's. The token comes as `?token=`, as an `Authorization: Bearer`
//! header, or as the first frame (`{"type": "auth", "token"}`), so that it
//! need not appear in a URL that proxies log.

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::HeaderMap,
    response::Response,
    routing::get,
};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::{
    domain::{AckMode, ClientFrame, Disconnect, Endpoint, ServerFrame},
    extract::{Peer, QueryParams, bearer_token},
    service::{self, authn::AuthUser},
    state::AppState,
};

mod session;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

#[derive(Deserialize)]
struct WsParams {
    token: Option<String>,
    /// `manual`: the client acknowledges its messages (at-least-once).
    ack: Option<AckMode>,
}

/// Upgrades, then runs the session; a missing, invalid, expired or revoked token
/// gets the socket closed with 1008 and a reason.
async fn upgrade(
    State(state): State<AppState>,
    Peer(peer): Peer,
    QueryParams(params): QueryParams<WsParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = state.settings.delivery.max_message_bytes;
    // Small buffers: tungstenite zero-fills its read buffer on every read, and
    // each idle connection holds its read buffer from the start (128 KiB by
    // default; the write buffer grows only as frames are written). The write
    // buffer is bounded too: a client that never reads must not make it grow
    // (with pongs to its pings, say). A frame can hold a message whose JSON
    // escaping made it up to six times longer.
    let ws = ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 6 * limit + 1024);
    if state.shutdown.is_cancelled() {
        return refuse(ws, Disconnect::ShuttingDown);
    }
    let manual_ack = params.ack == Some(AckMode::Manual);
    let token = params.token.as_deref().or_else(|| bearer_token(&headers));
    let Some(token) = token else {
        // The token comes in the first frame.
        return ws.on_upgrade(move |socket| authenticate_in_band(state, peer, manual_ack, socket));
    };
    let user = match authenticated(&state, token).await {
        Ok(user) => user,
        Err(why) => return refuse(ws, why),
    };
    match session::Session::open(state.clone(), user, peer, manual_ack).await {
        Ok(session) => {
            let sessions = state.sessions.clone();
            ws.on_upgrade(move |socket| sessions.track_future(session.run(socket)))
        }
        Err(err) => refuse(ws, not_opened(err)),
    }
}

/// The user a token names, or why the connection is refused.
async fn authenticated(state: &AppState, token: &str) -> Result<AuthUser, Disconnect> {
    match state.accounts.authenticate(token).await {
        _ if state.shutdown.is_cancelled() => Err(Disconnect::ShuttingDown),
        Ok(user) => Ok(user),
        Err(service::error::Error::Unauthenticated(_)) => Err(Disconnect::InvalidToken),
        Err(_) => Err(Disconnect::Unavailable),
    }
}

/// Why a session could not open.
fn not_opened(err: service::error::Error) -> Disconnect {
    match err {
        service::error::Error::Limited(..) => Disconnect::TooManyConnections,
        err => {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not open a WebSocket session"
            );
            Disconnect::Unavailable
        }
    }
}

/// A connection upgraded without a token: its first frame must be
/// `{"type": "auth", "token": "<jwt>"}`, within `WS_AUTH_TIMEOUT_SECS`; a late,
/// different or bad first frame closes it with 1008. The session then opens
/// as if the token had come with the upgrade.
async fn authenticate_in_band(
    state: AppState,
    peer: Endpoint,
    manual_ack: bool,
    mut socket: WebSocket,
) {
    let deadline = state.settings.ws_auth_timeout();
    let first = tokio::select! {
        first = tokio::time::timeout(deadline, socket.next()) => first,
        _ = state.shutdown.cancelled() => {
            let _ = socket.send(close_frame(Disconnect::ShuttingDown)).await;
            return;
        }
    };
    let token = match first {
        Ok(Some(Ok(Message::Text(text)))) => match ClientFrame::parse(text.as_str()) {
            ClientFrame::Auth { token } => token.into_owned(),
            _ => return close(socket, Disconnect::AuthExpected).await,
        },
        Ok(Some(Ok(_))) => return close(socket, Disconnect::AuthExpected).await,
        Ok(_) => return, // the client left
        Err(_) => return close(socket, Disconnect::AuthTimeout).await,
    };
    let user = match authenticated(&state, &token).await {
        Ok(user) => user,
        Err(why) => return close(socket, why).await,
    };
    let accepted = Message::Text(
        ServerFrame::Authenticated {
            expires_at: user.expires_at,
            turn: state.settings.turn.enabled(),
        }
        .to_text()
        .into(),
    );
    match session::Session::open(state.clone(), user, peer, manual_ack).await {
        Ok(session) => {
            if socket.send(accepted).await.is_ok() {
                state.sessions.track_future(session.run(socket)).await;
            }
        }
        Err(err) => close(socket, not_opened(err)).await,
    }
}

async fn close(mut socket: WebSocket, why: Disconnect) {
    let _ = socket.send(close_frame(why)).await;
}

/// Bytes read from a socket at once, and written before a flush is forced.
/// A kibibyte holds several chat frames (a longer one is read into a buffer
/// of its own size); every idle connection keeps this much.
const READ_BUFFER: usize = 1024;
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
    ws.on_upgrade(move |socket: WebSocket| close(socket, why))
}
