//! One WebSocket connection: a reader (this task) and a writer task joined by a
//! bounded outbox, so that a slow client never holds up anyone else.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{
    hub::{Closer, Outgoing, close, message_frame},
    relay,
};
use crate::{auth::AuthUser, metrics::WsConnectionGauge, presence::Endpoint, state::AppState};

/// Frames written before one flush; bounds the latency a burst adds.
const WRITE_BATCH: usize = 64;

/// How long a closing connection may take to write its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection set up before the handshake completes: registered in the hub,
/// subscribed, counted in presence and announced. So a client that sees the
/// handshake succeed is online and reachable. Dropped without running (the
/// upgrade failed), it undoes all that.
pub struct Session {
    state: AppState,
    user: AuthUser,
    connection: u64,
    closer: Closer,
    outbox: mpsc::Sender<Outgoing>,
    inbox: Option<mpsc::Receiver<Outgoing>>,
    /// Undoes `open`; taken when the session closes, run from `Drop` otherwise.
    teardown: Option<Teardown>,
    /// The upgrade request's span (with its request id), parent of the session's.
    request_span: tracing::Span,
}

/// What closing a connection must do, whoever ends it.
struct Teardown {
    state: AppState,
    user: AuthUser,
    connection: u64,
}

impl Teardown {
    async fn run(self) {
        let last_here = self.state.hub.unregister(self.user.id, self.connection);
        relay::connection_closed(&self.state, &self.user, last_here).await;
    }
}

impl Session {
    pub async fn open(state: AppState, user: AuthUser, peer: Endpoint) -> anyhow::Result<Self> {
        let closer = Closer::child_of(&state.shutdown);
        let (outbox, inbox) = mpsc::channel(state.settings.ws_queue_len.max(1));
        let registration =
            state
                .hub
                .register(user.id, &user.jti, peer, outbox.clone(), closer.clone());
        if let Err(err) =
            relay::connection_opened(&state, &user, peer, registration.first_here).await
        {
            if state.hub.unregister(user.id, registration.id) {
                let _ = state.bus.detach(user.id).await;
            }
            return Err(err);
        }
        let teardown = Teardown {
            state: state.clone(),
            user: user.clone(),
            connection: registration.id,
        };
        Ok(Self {
            state,
            user,
            connection: registration.id,
            closer,
            outbox,
            inbox: Some(inbox),
            teardown: Some(teardown),
            request_span: tracing::Span::current(),
        })
    }

    pub async fn run(mut self, socket: WebSocket) {
        let span = tracing::info_span!(
            parent: &self.request_span,
            "ws",
            user_id = self.user.id,
            conn = self.connection
        );
        self.serve(socket).instrument(span).await
    }

    async fn serve(&mut self, socket: WebSocket) {
        let _gauge = WsConnectionGauge::open();
        tracing::info!("websocket open");
        let (mut sink, mut stream) = socket.split();
        let (state, user, closer) = (&self.state, &self.user, &self.closer);
        if let Err(err) = push_offline(state, user, &mut sink).await {
            tracing::debug!(error = %err, "offline push stopped");
            closer.close(close::GOING_AWAY, "write failed");
        }
        let inbox = self.inbox.take().expect("a session is served once");
        let heard = Arc::new(AtomicBool::new(true));
        let ping_every = state.settings.ws_ping_interval();
        // Not instrumented: the writer logs nothing, and entering the span on
        // every poll costs more than a frame's bookkeeping.
        let mut writer = tokio::spawn(write_loop(
            sink,
            inbox,
            closer.clone(),
            heard.clone(),
            ping_every,
        ));
        read_loop(state, user, &mut stream, &self.outbox, closer, &heard).await;
        closer.finish();
        // The writer ends by sending the close frame, which a client that
        // stopped reading would hold up for ever: its frames are not waited for.
        if tokio::time::timeout(CLOSE_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        if let Some(teardown) = self.teardown.take() {
            teardown.run().await;
        }
        tracing::info!(code = self.closer.reason().0, "websocket closed");
    }
}

impl Drop for Session {
    /// The upgrade failed after `open`: undo it in the background.
    fn drop(&mut self) {
        if let Some(teardown) = self.teardown.take() {
            self.state.sessions.spawn(teardown.run());
        }
    }
}

/// Writes the user's unread offline messages, oldest first, and marks read the
/// ones that were written.
async fn push_offline(
    state: &AppState,
    user: &AuthUser,
    sink: &mut SplitSink<WebSocket, Message>,
) -> anyhow::Result<()> {
    let unread = state.store.peek_unread(user.id).await?;
    let mut written = Vec::with_capacity(unread.len());
    let mut result = Ok(());
    for item in unread {
        let m = item.message;
        let frame = message_frame(
            "offline_message",
            &item.sender_username,
            &m.encrypted_content,
            m.sent_at,
        );
        if let Err(err) = sink.send(Message::Text(frame.into())).await {
            result = Err(anyhow::anyhow!("writing an offline message: {err}"));
            break;
        }
        written.push(m.id);
    }
    state.store.mark_read(user.id, &written).await?;
    result
}

async fn read_loop(
    state: &AppState,
    user: &AuthUser,
    stream: &mut SplitStream<WebSocket>,
    outbox: &mpsc::Sender<Outgoing>,
    closer: &Closer,
    heard: &AtomicBool,
) {
    // Registered once: a fresh `cancelled()` per frame would lock the token each time.
    let cancelled = closer.token().cancelled();
    tokio::pin!(cancelled);
    loop {
        let frame = tokio::select! {
            _ = &mut cancelled => return,
            frame = stream.next() => frame,
        };
        heard.store(true, Ordering::Relaxed);
        let reply = match frame {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(err)) => {
                if is_too_big(err) {
                    closer.close(close::TOO_BIG, "message too big");
                }
                return;
            }
            Some(Ok(Message::Text(text))) => relay::on_text(state, user, text.as_str()).await,
            Some(Ok(Message::Binary(_))) => Some(relay::error_frame(
                "binary frames are not supported; send text",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
        };
        if let Some(reply) = reply
            && outbox
                .send(Outgoing::Text(Utf8Bytes::from(reply)))
                .await
                .is_err()
        {
            return;
        }
    }
}

fn is_too_big(err: axum::Error) -> bool {
    matches!(
        err.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut inbox: mpsc::Receiver<Outgoing>,
    closer: Closer,
    heard: Arc<AtomicBool>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut silent_intervals = 0;
    let mut receipts = Vec::new();
    let cancelled = closer.token().cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            item = inbox.recv() => {
                let mut next = item;
                let mut batched = 0;
                // Write what is queued, then flush once.
                while let Some(item) = next.take() {
                    let frame = match item {
                        Outgoing::Text(frame) => frame,
                        Outgoing::Direct(frame, receipt) => {
                            receipts.push(receipt);
                            frame
                        }
                    };
                    if sink.feed(Message::Text(frame)).await.is_err() {
                        return;
                    }
                    batched += 1;
                    if batched < WRITE_BATCH {
                        next = inbox.try_recv().ok();
                    }
                }
                if batched == 0 {
                    break; // every sender is gone
                }
                if sink.flush().await.is_err() {
                    return;
                }
                receipts.drain(..).for_each(|r| r.mark_written());
            }
            _ = ping.tick() => {
                if heard.swap(false, Ordering::Relaxed) {
                    silent_intervals = 0;
                } else {
                    silent_intervals += 1;
                    if silent_intervals >= 2 {
                        closer.close(close::GOING_AWAY, "ping timeout");
                        break;
                    }
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    let (code, reason) = closer.reason();
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}
