//! One WebSocket connection: a reader (this task) and a writer task joined by a
//! bounded outbox, so that a slow client never holds up anyone else.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;

use super::close_frame;
use crate::{
    domain::{Disconnect, Endpoint},
    metrics::WsConnectionGauge,
    service::{
        self, AuthUser,
        hub::{self, Closer, Inbox, Outbox, Outgoing, Receipt},
        message_frame,
    },
    state::AppState,
};

/// Frames written before one flush; bounds the latency a burst adds.
const WRITE_BATCH: usize = 64;

/// How long one write to a client may take. A client that takes nothing for
/// this long is let go, although its queue was not full yet.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a closing connection may take to write its last frames and the
/// close frame. A client cut off for reading too slowly learns why if it
/// reads again within this time; after it, the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A connection set up before the handshake completes: registered in the hub,
/// subscribed, counted in presence and announced. So a client that sees the
/// handshake succeed is online and reachable. Dropped without running (the
/// upgrade failed), it undoes all that.
pub struct Session {
    state: AppState,
    user: AuthUser,
    connection: u64,
    /// Also holds the connection's closer.
    outbox: Outbox,
    inbox: Option<Inbox>,
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
        self.state
            .services
            .close_connection(&self.user, self.connection)
            .await;
    }
}

impl Session {
    pub async fn open(state: AppState, user: AuthUser, peer: Endpoint) -> service::Result<Self> {
        let (outbox, inbox) = hub::outbox(
            state.settings.ws_queue_len,
            state.settings.ws_queue_bytes,
            Closer::child_of(&state.shutdown),
        );
        let connection = state
            .services
            .open_connection(&user, peer, outbox.clone())
            .await?;
        let teardown = Teardown {
            state: state.clone(),
            user: user.clone(),
            connection,
        };
        Ok(Self {
            state,
            user,
            connection,
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
        let (state, user, closer) = (&self.state, &self.user, self.outbox.closer());
        if let Err(err) = push_offline(state, user, &mut sink, closer).await {
            tracing::debug!(error = %err, "offline push stopped");
            closer.close(Disconnect::WriteFailed);
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
        let mut user = user.clone();
        let connection = self.connection;
        read_loop(
            state,
            &mut user,
            connection,
            &mut stream,
            &self.outbox,
            closer,
            &heard,
        )
        .await;
        closer.finish();
        // The user leaves the hub and presence now, not once the writer is
        // done: a client that stopped reading may keep it for a while.
        if let Some(mut teardown) = self.teardown.take() {
            // Under the token it last renewed with.
            teardown.user = user;
            teardown.run().await;
        }
        // The writer bounds its own closing; this only guards against a bug.
        let writer_done = async {
            if tokio::time::timeout(2 * CLOSE_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        };
        tokio::join!(writer_done, drain_until_closed(&mut stream));
        tracing::info!(code = closer.reason().code(), "websocket closed");
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

/// Writes the user's unread offline messages, oldest first: claimed first, so
/// that no `GET /messages/` (nor another connection) hands them out too, then
/// deleted once written; those not written are released. Each write has
/// [`WRITE_DEADLINE`], and closing the connection stops the push.
async fn push_offline(
    state: &AppState,
    user: &AuthUser,
    sink: &mut SplitSink<WebSocket, Message>,
    closer: &Closer,
) -> anyhow::Result<()> {
    let claimed = state.services.claim_inbox(user).await?;
    let mut written = Vec::with_capacity(claimed.len());
    let mut unwritten = Vec::new();
    let mut result = Ok(());
    for item in claimed {
        let m = item.message;
        if result.is_err() {
            unwritten.push(m.id);
            continue;
        }
        let frame = message_frame(
            "offline_message",
            &item.sender_username,
            &m.content,
            m.sent_at,
        );
        let send = tokio::time::timeout(WRITE_DEADLINE, sink.send(Message::Text(frame.into())));
        let sent = tokio::select! {
            _ = closer.token().cancelled() => Err(anyhow::anyhow!("the connection is closing")),
            sent = send => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(anyhow::anyhow!("writing an offline message: {err}")),
                Err(_) => Err(anyhow::anyhow!("no offline message taken for {WRITE_DEADLINE:?}")),
            },
        };
        match sent {
            Ok(()) => written.push(m.id),
            Err(err) => {
                result = Err(err);
                unwritten.push(m.id);
            }
        }
    }
    state
        .services
        .settle_push(user, &written, &unwritten)
        .await?;
    result
}

/// When a connection authenticated by `user`'s token must end: the grace
/// after the token expires.
fn session_deadline(user: &AuthUser, grace: Duration) -> tokio::time::Instant {
    let left = (user.expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::Instant::now() + left.saturating_add(grace)
}

async fn read_loop(
    state: &AppState,
    user: &mut AuthUser,
    connection: u64,
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
    closer: &Closer,
    heard: &AtomicBool,
) {
    let mut budget = state.services.frame_budget(user);
    let mut refused_in_a_row = 0;
    // Registered once: a fresh `cancelled()` per frame would lock the token each time.
    let cancelled = closer.token().cancelled();
    tokio::pin!(cancelled);
    let grace = state.settings.ws_token_grace();
    let expiry = tokio::time::sleep_until(session_deadline(user, grace));
    tokio::pin!(expiry);
    loop {
        let frame = tokio::select! {
            _ = &mut cancelled => return,
            _ = &mut expiry => {
                closer.close(Disconnect::TokenExpired);
                return;
            }
            frame = stream.next() => frame,
        };
        heard.store(true, Ordering::Relaxed);
        let reply = match frame {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(err)) => {
                if is_too_big(err) {
                    closer.close(Disconnect::TooBig);
                }
                return;
            }
            Some(Ok(Message::Text(text))) => match state.services.admit_frame(&mut budget).await {
                Ok(()) => {
                    refused_in_a_row = 0;
                    let jti = user.jti.clone();
                    let reply = state
                        .services
                        .on_text(user, connection, text.as_str())
                        .await;
                    if user.jti != jti {
                        expiry.as_mut().reset(session_deadline(user, grace));
                    }
                    reply
                }
                Err(wait) => {
                    refused_in_a_row += 1;
                    if refused_in_a_row > state.settings.ws_refusals_before_close {
                        closer.close(Disconnect::RateLimited);
                        return;
                    }
                    Some(service::error_frame(&format!(
                        "too many messages: not relayed; slow down and retry in {} s",
                        wait.as_secs_f64().ceil().max(1.0)
                    )))
                }
            },
            Some(Ok(Message::Binary(_))) => Some(service::error_frame(
                "binary frames are not supported; send text",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
        };
        // A client that sends faster than its replies are written waits; one
        // that reads none of them for a whole deadline is let go.
        if let Some(reply) = reply {
            let queued = tokio::select! {
                _ = &mut cancelled => return,
                queued = tokio::time::timeout(
                    WRITE_DEADLINE,
                    outbox.send(Outgoing::Text(Utf8Bytes::from(reply))),
                ) => queued,
            };
            match queued {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    closer.close(Disconnect::TooSlow);
                    return;
                }
            }
        }
    }
}

/// Reads, and drops, what a client still sends until it answers the close
/// frame (or [`CLOSE_GRACE`] passes): a socket closed with unread data is
/// reset, and the reset can destroy the close frame before the client reads
/// it, so a client that kept sending would never learn why it was closed.
async fn drain_until_closed(stream: &mut SplitStream<WebSocket>) {
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, stream.next()).await {
        if matches!(frame, Message::Close(_)) {
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

/// Writes what the outbox brings, in batches with one flush each, and pings
/// an idle client. Once the connection is to close, what is still queued is
/// dropped (its directed messages go back to be stored offline through their
/// receipts), and the frames already handed to the socket are followed by the
/// close frame, within [`CLOSE_GRACE`].
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut inbox: Inbox,
    closer: Closer,
    heard: Arc<AtomicBool>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut silent_intervals = 0;
    // Receipts of frames handed to the socket but not yet flushed.
    let mut unflushed = Vec::new();
    let cancelled: WaitForCancellationFuture = closer.token().cancelled();
    tokio::pin!(cancelled);
    loop {
        // Every write races the closer: a client that stopped reading must not
        // keep the connection (and its outbox) open.
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            item = inbox.recv() => {
                let Some(item) = item else { break }; // every sender is gone
                let batch = write_batch(&mut sink, item, &mut inbox, &mut unflushed);
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    written = tokio::time::timeout(WRITE_DEADLINE, batch) => match written {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            // Written to nobody for a whole deadline: let the client go.
                            closer.close(Disconnect::TooSlow);
                            break;
                        }
                    }
                }
                unflushed.drain(..).for_each(|r: Arc<Receipt>| r.mark_written());
            }
            _ = ping.tick() => {
                if heard.swap(false, Ordering::Relaxed) {
                    silent_intervals = 0;
                } else {
                    silent_intervals += 1;
                    if silent_intervals >= 2 {
                        closer.close(Disconnect::PingTimeout);
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    sent = sink.send(Message::Ping(Default::default())) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
    drop(inbox);
    // Sending the close frame first flushes what was handed to the socket.
    let closed = tokio::time::timeout(CLOSE_GRACE, sink.send(close_frame(closer.reason()))).await;
    if let Ok(Ok(())) = closed {
        unflushed.drain(..).for_each(|r| r.mark_written());
    }
}

/// Hands `first` and whatever else is queued (up to a batch) to the socket,
/// then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outgoing,
    inbox: &mut Inbox,
    unflushed: &mut Vec<Arc<Receipt>>,
) -> Result<(), axum::Error> {
    let mut next = Some(first);
    let mut batched = 0;
    while let Some(item) = next.take() {
        let frame = match item {
            Outgoing::Text(frame) => frame,
            Outgoing::Direct(frame, receipt) => {
                unflushed.push(receipt);
                frame
            }
        };
        sink.feed(Message::Text(frame)).await?;
        batched += 1;
        if batched < WRITE_BATCH {
            next = inbox.try_recv();
        }
    }
    inbox.settle();
    sink.flush().await
}
