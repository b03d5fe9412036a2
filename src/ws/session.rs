//! One WebSocket connection: a reader (this task) and a writer task joined by a
//! bounded outbox, so that a slow client never holds up anyone else.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{
    SinkExt, StreamExt,
    future::BoxFuture,
    stream::{FuturesOrdered, SplitSink, SplitStream},
};
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;

use super::close_frame;
use crate::{
    client_ids,
    connection::{self, Closer, Delivery, Outbox, OutboxReader, Outgoing, Receipt},
    domain::{Arrival, ClientFrame, DirectMessage, Disconnect, Endpoint, ServerFrame},
    metrics::WsConnectionGauge,
    service::{self, authn::AuthUser, inbox::PUSH_CLAIM, relay::Replies},
    state::AppState,
    store::Page,
};

/// Frames written before one flush; bounds the latency a burst adds.
const WRITE_BATCH: usize = 64;

/// How long one write to a client may take. A client that takes nothing for
/// this long is let go, although its queue was not full yet.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// The pauses before fetching stored messages again after a fetch failed
/// (the store away): the first, and the longest as they double.
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(1);
const FETCH_RETRY_LONGEST: Duration = Duration::from_secs(30);

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
    delivery: Arc<Delivery>,
    /// Also holds the connection's closer.
    outbox: Outbox,
    inbox: Option<OutboxReader>,
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
            .relay
            .close_connection(&self.user, self.connection)
            .await;
    }
}

impl Session {
    /// `manual_ack`: the client acknowledges its messages (`?ack=manual`).
    pub async fn open(
        state: AppState,
        user: AuthUser,
        peer: Endpoint,
        manual_ack: bool,
    ) -> service::error::Result<Box<Self>> {
        let (outbox, inbox) = connection::outbox(
            state.settings.listen.ws_queue_len,
            state.settings.listen.ws_queue_bytes,
            Closer::child_of(&state.shutdown),
        );
        let delivery = Arc::new(Delivery::new(manual_ack));
        let connection = state
            .relay
            .open_connection(&user, peer, outbox.clone(), delivery.clone())
            .await?;
        let teardown = Teardown {
            state: state.clone(),
            user: user.clone(),
            connection,
        };
        // Boxed: the upgrade's callback and then the session's task hold it,
        // for as long as the connection lasts, as one pointer each.
        Ok(Box::new(Self {
            state,
            user,
            connection,
            delivery,
            outbox,
            inbox: Some(inbox),
            teardown: Some(teardown),
            request_span: tracing::Span::current(),
        }))
    }

    /// The session's task. The socket is split before the task's future is
    /// made, so that the future (kept for as long as the connection lasts)
    /// holds the halves and not also a spent copy of the socket.
    pub fn run(
        mut self: Box<Self>,
        socket: WebSocket,
    ) -> impl Future<Output = ()> + Send + 'static {
        let span = tracing::info_span!(
            parent: &self.request_span,
            "ws",
            user_id = self.user.id,
            conn = self.connection
        );
        let halves = socket.split();
        async move { self.serve(halves).await }.instrument(span)
    }

    async fn serve(
        &mut self,
        (sink, mut stream): (SplitSink<WebSocket, Message>, SplitStream<WebSocket>),
    ) {
        let _gauge = WsConnectionGauge::open();
        tracing::info!("websocket open");
        let (state, user, closer) = (&self.state, &self.user, self.outbox.closer());
        let inbox = self.inbox.take().expect("a session is served once");
        let heard = Arc::new(AtomicBool::new(true));
        // Not instrumented: the writer logs little, and entering the span on
        // every poll costs more than a frame's bookkeeping.
        let writer = Writer {
            sink,
            closer: closer.clone(),
            heard: heard.clone(),
            state: state.clone(),
            user: user.clone(),
            delivery: self.delivery.clone(),
            unflushed: Vec::new(),
            batch: Vec::new(),
            fetch_again: None,
            fetch_pause: FETCH_RETRY_FIRST,
        };
        let mut writer = tokio::spawn(writer.run(inbox, state.settings.ws_ping_interval()));
        let mut user = user.clone();
        let connection = self.connection;
        let mut waiting = Waiting::new();
        read_loop(
            state,
            &mut user,
            connection,
            &self.delivery,
            &mut stream,
            &self.outbox,
            closer,
            &heard,
            &mut waiting,
        )
        .await;
        closer.finish();
        // Whatever ended the connection, each message it accepted is still
        // delivered or stored; their replies have no one to go to.
        while waiting.next().await.is_some() {}
        // The user leaves the hub and presence now, not once the writer is
        // done: a client that stopped reading may keep it for a while.
        if let Some(mut teardown) = self.teardown.take() {
            // Under the token it last renewed with.
            teardown.user = user.clone();
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
        // What it held unacknowledged waits for the next connection.
        let held = self.delivery.unacked();
        if let Err(err) = state.inbox.release_holds(&user, &held).await {
            // The claims run out by themselves.
            tracing::warn!(error = format!("{err:#}"), "releasing held messages failed");
        }
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

/// When a connection authenticated by `user`'s token must end: the grace
/// after the token expires.
fn session_deadline(user: &AuthUser, grace: Duration) -> tokio::time::Instant {
    let left = (user.expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::Instant::now() + left.saturating_add(grace)
}

/// A connection's frames read past directed messages whose fan-out has not
/// answered yet: enough for a client's burst to share a round trip, few
/// enough that one that sends faster than it is answered waits.
const FRAMES_AHEAD: usize = 32;

/// Replies not known yet, in the order of the frames they answer.
type Waiting<'s> = FuturesOrdered<BoxFuture<'s, Vec<String>>>;

#[allow(clippy::too_many_arguments)]
async fn read_loop<'s>(
    state: &'s AppState,
    user: &mut AuthUser,
    connection: u64,
    delivery: &Delivery,
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
    closer: &Closer,
    heard: &AtomicBool,
    waiting: &mut Waiting<'s>,
) {
    let mut budget = state.relay.frame_budget(user);
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
            Some(replies) = waiting.next(), if !waiting.is_empty() => {
                if !queue_replies(replies, outbox, closer, &mut cancelled).await {
                    return;
                }
                continue;
            }
            frame = stream.next(), if waiting.len() < FRAMES_AHEAD => frame,
        };
        heard.store(true, Ordering::Relaxed);
        let replies = match frame {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(err)) => {
                if is_too_big(err) {
                    closer.close(Disconnect::TooBig);
                }
                return;
            }
            Some(Ok(Message::Text(text))) => match state.relay.admit_frame(&mut budget).await {
                Ok(()) => {
                    refused_in_a_row = 0;
                    let jti = user.jti.clone();
                    // Boxed (as are the replies, in `queue_replies`): the
                    // loop's future, which every idle connection keeps, is
                    // not as large as the largest frame's handling.
                    let replies = Box::pin(state.relay.on_text(
                        user,
                        connection,
                        delivery,
                        text.as_str(),
                    ))
                    .await;
                    if user.jti != jti {
                        expiry.as_mut().reset(session_deadline(user, grace));
                    }
                    replies
                }
                Err(wait) => {
                    refused_in_a_row += 1;
                    if refused_in_a_row > state.settings.rates.ws_refusals_before_close {
                        closer.close(Disconnect::RateLimited);
                        return;
                    }
                    let error = format!(
                        "too many messages: not relayed; slow down and retry in {} s",
                        wait.as_secs_f64().ceil().max(1.0)
                    );
                    // Read only to name the refused message (by a name the
                    // server would take): a client that waits for its
                    // `sent` learns it must send it again.
                    let frame = ClientFrame::parse(text.as_str());
                    let client_id = frame.client_id().filter(|id| client_ids::is_valid(id));
                    vec![
                        ServerFrame::Error {
                            error: &error,
                            client_id,
                        }
                        .to_text(),
                    ]
                    .into()
                }
            },
            Some(Ok(Message::Binary(_))) => {
                vec![ServerFrame::error("binary frames are not supported; send text").to_text()]
                    .into()
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Replies::Now(Vec::new()),
        };
        match replies {
            // Nothing before them still waits: written at once.
            Replies::Now(replies) if waiting.is_empty() || replies.is_empty() => {
                if !queue_replies(replies, outbox, closer, &mut cancelled).await {
                    return;
                }
            }
            Replies::Now(replies) => waiting.push_back(Box::pin(std::future::ready(replies))),
            Replies::Later(replies) => waiting.push_back(replies),
        }
    }
}

/// Hands replies to the writer; false when the connection must end. A
/// client that sends faster than its replies are written waits; one that
/// reads none of them for a whole deadline is let go.
///
/// Boxed, like a frame's handling: the read loop's future, which every idle
/// connection keeps, is not as large as this one.
fn queue_replies<'a>(
    replies: Vec<String>,
    outbox: &'a Outbox,
    closer: &'a Closer,
    cancelled: &'a mut Pin<&mut WaitForCancellationFuture<'_>>,
) -> BoxFuture<'a, bool> {
    Box::pin(queue_replies_now(replies, outbox, closer, cancelled))
}

async fn queue_replies_now(
    replies: Vec<String>,
    outbox: &Outbox,
    closer: &Closer,
    cancelled: &mut Pin<&mut WaitForCancellationFuture<'_>>,
) -> bool {
    for reply in replies {
        let queued = tokio::select! {
            _ = &mut *cancelled => return false,
            queued = tokio::time::timeout(
                WRITE_DEADLINE,
                outbox.send(Outgoing::text(Utf8Bytes::from(reply))),
            ) => queued,
        };
        match queued {
            Ok(true) => {}
            Ok(false) => return false,
            Err(_) => {
                closer.close(Disconnect::TooSlow);
                return false;
            }
        }
    }
    true
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

/// The writing half of a connection: writes what the outbox brings, in
/// batches with one flush each, fetches stored messages when told, holds the
/// messages of a connection that acknowledges, and pings an idle client.
struct Writer {
    sink: SplitSink<WebSocket, Message>,
    closer: Closer,
    heard: Arc<AtomicBool>,
    state: AppState,
    user: AuthUser,
    delivery: Arc<Delivery>,
    /// Receipts of frames handed to the socket but not yet flushed.
    unflushed: Vec<Arc<Receipt>>,
    /// The batch being written, kept to reuse its allocation (made at the
    /// first write: an idle connection holds none).
    batch: Vec<Outgoing>,
    /// When to fetch stored messages again, a fetch having failed: nothing
    /// else may come to trigger one (no new message, no reconnect).
    fetch_again: Option<tokio::time::Instant>,
    /// The pause before fetching again after the next failure (doubled by
    /// each, back to the first once a fetch succeeds).
    fetch_pause: Duration,
}

/// Why the writer stops.
enum Stop {
    /// Write the close frame (the connection is closing, or should).
    Close,
    /// The socket failed: nothing more can be written.
    Broken,
}

impl Writer {
    /// Runs until the connection closes. The stored messages waiting for the
    /// user come first. Once the connection is to close, what is still queued
    /// is dropped (its directed messages go back to be stored offline through
    /// their receipts), and the frames already handed to the socket are
    /// followed by the close frame, within [`CLOSE_GRACE`].
    ///
    /// Not an `async fn`: one of those keeps its arguments twice for as long
    /// as it runs (as passed, and as bound), and this runs for as long as
    /// the connection lasts.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future is larger by the arguments' second copy"
    )]
    fn run(
        mut self,
        mut inbox: OutboxReader,
        ping_every: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let stop = self.serve(&mut inbox, ping_every).await;
            drop(inbox);
            if let Stop::Close = stop {
                // Sending the close frame first flushes what was handed to the socket.
                let closing = self.sink.send(close_frame(self.closer.reason()));
                if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, closing).await {
                    self.unflushed.drain(..).for_each(|r| r.settle());
                }
            }
        }
    }

    async fn serve(&mut self, inbox: &mut OutboxReader, ping_every: Duration) -> Stop {
        // Registered once: a fresh `cancelled()` per step would lock the token each time.
        let token = self.closer.token().clone();
        let cancelled: WaitForCancellationFuture = token.cancelled();
        tokio::pin!(cancelled);
        if let Err(stop) = self.fetch(&mut cancelled).await {
            return stop;
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut silent_intervals = 0;
        let mut renewed = tokio::time::Instant::now();
        loop {
            let fetch_again = self.fetch_again;
            // Every write races the closer: a client that stopped reading must
            // not keep the connection (and its outbox) open.
            let step = tokio::select! {
                biased;
                _ = &mut cancelled => return Stop::Close,
                _ = sleep_until(fetch_again), if fetch_again.is_some() => {
                    self.fetch(&mut cancelled).await
                }
                item = inbox.recv() => match item {
                    None => return Stop::Close, // every sender is gone
                    Some(Outgoing::Fetch) => self.fetch(&mut cancelled).await,
                    Some(first) => {
                        let mut batch = std::mem::take(&mut self.batch);
                        let fetch_next = take_batch(first, inbox, &mut batch);
                        let written = tokio::select! {
                            biased;
                            _ = &mut cancelled => Err(Stop::Close),
                            // Boxed: a writer waits far longer between
                            // batches than it writes one, and waits with a
                            // smaller future for it.
                            written = Box::pin(self.write(&mut batch)) => written,
                        };
                        batch.clear();
                        self.batch = batch;
                        match written {
                            Ok(()) if fetch_next => self.fetch(&mut cancelled).await,
                            other => other,
                        }
                    }
                },
                _ = ping.tick() => {
                    if self.heard.swap(false, Ordering::Relaxed) {
                        silent_intervals = 0;
                    } else {
                        silent_intervals += 1;
                        if silent_intervals >= 2 {
                            self.closer.close(Disconnect::PingTimeout);
                            return Stop::Close;
                        }
                    }
                    // Under the deadline like every write: a client that
                    // stopped reading (its socket full of pongs, say) is let go.
                    let ping = self.sink.send(Message::Ping(Default::default()));
                    let pinged = tokio::select! {
                        biased;
                        _ = &mut cancelled => return Stop::Close,
                        sent = tokio::time::timeout(WRITE_DEADLINE, ping) => sent,
                    };
                    match pinged {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Stop::Broken,
                        Err(_) => {
                            self.closer.close(Disconnect::TooSlow);
                            return Stop::Close;
                        }
                    }
                    if renewed.elapsed() >= PUSH_CLAIM / 3 {
                        renewed = tokio::time::Instant::now();
                        self.renew_holds().await;
                    }
                    Ok(())
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Writes a batch of frames with one flush. A connection that
    /// acknowledges first stores the directed messages among them, held for
    /// it, so that they are delivered again if it goes without acknowledging.
    async fn write(&mut self, batch: &mut Vec<Outgoing>) -> Result<(), Stop> {
        let manual = self.delivery.manual_ack;
        let tracked: Vec<Arc<DirectMessage>> = batch
            .iter()
            .filter_map(|item| match item {
                Outgoing::Frame(_, Some(receipt)) if manual => Some(receipt.message().clone()),
                _ => None,
            })
            .collect();
        if !tracked.is_empty() {
            // Boxed: only a connection that acknowledges gets here, and the
            // store's future would make every writer's future larger.
            Box::pin(self.hold_tracked(&tracked, batch)).await?;
        }
        let written = tokio::time::timeout(WRITE_DEADLINE, self.write_frames(batch)).await;
        match written {
            Ok(Ok(())) => {
                self.unflushed.drain(..).for_each(|r| r.settle());
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Broken),
            Err(_) => {
                // Written to nobody for a whole deadline: let the client go.
                self.closer.close(Disconnect::TooSlow);
                Err(Stop::Close)
            }
        }
    }

    /// Stores the directed messages of a batch held for this connection
    /// before they are written. Should the store fail, they are taken out of
    /// the batch (they go back through their receipts).
    async fn hold_tracked(
        &mut self,
        tracked: &[Arc<DirectMessage>],
        batch: &mut Vec<Outgoing>,
    ) -> Result<(), Stop> {
        // Recorded first: if storing is cut short after all, they are
        // released when the connection goes, not left claimed.
        self.hold(tracked.iter().map(|m| m.id))?;
        let held = tokio::time::timeout(WRITE_DEADLINE, self.state.inbox.hold_for(tracked));
        let failure = match held.await {
            // Over the mailbox quota: written, but held by nobody.
            Ok(Ok(unheld)) => {
                self.delivery.acknowledged(&unheld);
                None
            }
            Ok(Err(err)) => Some(format!("{err:#}")),
            Err(_) => Some("no answer within the write deadline".to_owned()),
        };
        if let Some(error) = failure {
            // The store is down. Written unheld, a message would be lost
            // if this connection went before acknowledging it; so they
            // are not written, and go back through their receipts, to be
            // stored once the store answers (then fetched here). The
            // connection stays: everything else still reaches it.
            tracing::warn!(error, "holding messages failed; they wait for the store");
            let ids: Vec<i64> = tracked.iter().map(|m| m.id).collect();
            self.delivery.unhold(&ids);
            batch.retain(|item| !matches!(item, Outgoing::Frame(_, Some(_))));
        }
        Ok(())
    }

    async fn write_frames(&mut self, batch: &mut Vec<Outgoing>) -> Result<(), axum::Error> {
        for item in batch.drain(..) {
            let Outgoing::Frame(frame, mut receipt) = item else {
                unreachable!("a batch holds frames only");
            };
            if self.delivery.manual_ack
                && let Some(receipt) = receipt.take()
            {
                // Stored for this connection: safe whatever the socket does.
                receipt.settle();
            }
            self.sink.feed(Message::Text(frame)).await?;
            // Only once the socket took it: a write cut short before that
            // drops the receipt unsettled, and the message is stored.
            self.unflushed.extend(receipt);
        }
        self.sink.flush().await
    }

    /// Records messages held for this connection; one that holds too many
    /// unacknowledged is closed.
    fn hold(&self, ids: impl IntoIterator<Item = i64>) -> Result<(), Stop> {
        if self.delivery.hold(ids) {
            return Ok(());
        }
        self.closer.close(Disconnect::TooManyUnacknowledged);
        Err(Stop::Close)
    }

    /// Writes the user's stored unread messages, oldest first: claimed first,
    /// so that no `GET /messages/` (nor another connection) hands them out
    /// too. A plain connection deletes those written and releases the rest; a
    /// connection that acknowledges holds them until it does. Each write has
    /// [`WRITE_DEADLINE`].
    /// Boxed: fetching is rare next to writing, and the writer's future,
    /// which every idle connection keeps, would otherwise be as large as it.
    fn fetch<'a>(
        &'a mut self,
        cancelled: &'a mut Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> BoxFuture<'a, Result<(), Stop>> {
        Box::pin(self.fetch_pages(cancelled))
    }

    async fn fetch_pages(
        &mut self,
        cancelled: &mut Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Result<(), Stop> {
        self.delivery.fetch_taken();
        self.fetch_again = None;
        // A page at a time, so that a full mailbox is never in memory at once.
        let mut page = Page::first(self.state.settings.delivery.message_page_bytes);
        while let Some(last) = self.fetch_page(cancelled, page).await? {
            page.after = last;
        }
        if self.fetch_again.is_none() {
            self.fetch_pause = FETCH_RETRY_FIRST;
        }
        Ok(())
    }

    /// Writes one page of stored messages (see [`Writer::fetch`]); the last
    /// id of a full page, after which more may wait.
    async fn fetch_page(
        &mut self,
        cancelled: &mut std::pin::Pin<&mut WaitForCancellationFuture<'_>>,
        page: Page,
    ) -> Result<Option<i64>, Stop> {
        let inbox = self.state.inbox.clone();
        let claimed = match inbox.claim_inbox(&self.user, &self.delivery, page).await {
            Ok(claimed) => claimed,
            Err(err) => {
                // Fetched again after a pause (or at the next trigger, an
                // unread notice or a new connection, whichever comes first).
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry_in_s = self.fetch_pause.as_secs(),
                    "fetching stored messages failed"
                );
                self.fetch_again = Some(tokio::time::Instant::now() + self.fetch_pause);
                self.fetch_pause = (self.fetch_pause * 2).min(FETCH_RETRY_LONGEST);
                return Ok(None);
            }
        };
        let next = claimed
            .last()
            .map(|item| item.message.id)
            .filter(|_| page.is_full(claimed.iter().map(|item| item.message.content.as_str())));
        let manual = self.delivery.manual_ack;
        let already = if manual {
            self.delivery.passed()
        } else {
            Default::default()
        };
        if manual {
            self.hold(
                claimed
                    .iter()
                    .map(|item| item.message.id)
                    .filter(|id| !already.contains(id)),
            )?;
        }
        let mut written = Vec::with_capacity(claimed.len());
        let mut unwritten = Vec::new();
        let mut failed = None;
        for item in claimed {
            let m = item.message;
            if failed.is_some() || already.contains(&m.id) {
                unwritten.push(m.id);
                continue;
            }
            let frame = ServerFrame::Message {
                arrival: Arrival::Stored,
                id: manual.then_some(m.id),
                sender_username: &item.sender_username,
                content: &m.content,
                sent_at: m.sent_at,
                ephemeral: false,
            }
            .to_text();
            let send =
                tokio::time::timeout(WRITE_DEADLINE, self.sink.send(Message::Text(frame.into())));
            let sent = tokio::select! {
                biased;
                _ = cancelled.as_mut() => Err(Stop::Close),
                sent = send => match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Stop::Broken),
                    Err(_) => {
                        self.closer.close(Disconnect::TooSlow);
                        Err(Stop::Close)
                    }
                },
            };
            match sent {
                Ok(()) => written.push(m.id),
                Err(stop) => {
                    failed = Some(stop);
                    unwritten.push(m.id);
                }
            }
        }
        if !manual && let Err(err) = inbox.settle_push(&self.user, &written, &unwritten).await {
            // Unsettled claims run out, and the messages are handed out again.
            tracing::warn!(error = format!("{err:#}"), "settling a fetch failed");
        }
        failed.map_or(Ok(next), Err)
    }

    /// Keeps the claims on the messages held for this connection alive.
    async fn renew_holds(&self) {
        let held = self.delivery.unacked();
        if held.is_empty() {
            return;
        }
        if let Err(err) = self.state.inbox.renew_holds(&self.user, &held).await {
            tracing::warn!(error = format!("{err:#}"), "renewing held messages failed");
        }
    }
}

/// Sleeps until `at` (only polled when it is set).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// `first` and whatever frames are queued behind it, up to a batch, into
/// `batch`; true when a fetch came next (it follows the batch). The bytes
/// taken go back to the outbox's bound.
fn take_batch(first: Outgoing, inbox: &mut OutboxReader, batch: &mut Vec<Outgoing>) -> bool {
    batch.push(first);
    let mut fetch_next = false;
    while batch.len() < WRITE_BATCH {
        match inbox.try_recv() {
            Some(Outgoing::Fetch) => {
                fetch_next = true;
                break;
            }
            Some(item) => batch.push(item),
            None => break,
        }
    }
    inbox.settle();
    fetch_next
}
