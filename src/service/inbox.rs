//! The inbox: offline messages stored and fetched (over HTTP, or pushed to
//! connections under claims), acknowledged, held for connections that
//! acknowledge, stored when no connection wrote them, and expired.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    authn::AuthUser,
    budget::spend,
    error::{Error, Result},
    names::NameCache,
    writer::{MessageWriter, ReadMarker},
};
use crate::{
    bus::{Bus, Event},
    config::Settings,
    connection::Delivery,
    domain::{DirectMessage, MessageContent, UserId},
    metrics::{self, StoredVia, messages_stored},
    ratelimit::{Limit, Limiter},
    store::{Acked, Admission, InboxMessage, MailboxQuota, Message, NewMessage, Page, Store},
};

/// Most message ids one acknowledgement names: a fetch returns no more.
pub const ACK_MAX_IDS: usize = crate::store::INBOX_PAGE as usize;

/// How long a connection's claim on the stored messages it writes lasts: if
/// its replica dies, they are handed out again after this. A connection that
/// acknowledges renews the claims on those it holds while it lives.
pub const PUSH_CLAIM: Duration = Duration::from_secs(5 * 60);

/// One page of an inbox fetch.
pub struct InboxPage {
    pub messages: Vec<Message>,
    /// Whether a next page may hold more.
    pub more: bool,
}

impl InboxPage {
    fn of(page: Page, messages: Vec<Message>) -> Self {
        let more = page.is_full(messages.iter().map(|m| m.content.as_str()));
        Self { messages, more }
    }
}

/// The inbox flow.
pub struct Inbox {
    /// The messages, their claims, and their ids.
    pub(super) store: Arc<dyn Store>,
    /// Unread notices and delivery receipts, to every replica.
    pub(super) bus: Arc<dyn Bus>,
    /// Offline-message and inbox budgets.
    pub(super) limiter: Arc<dyn Limiter>,
    pub(super) names: Arc<NameCache>,
    /// Offline messages, and messages held for connections that acknowledge,
    /// stored in batches under the mailbox quota.
    pub(super) writer: MessageWriter,
    /// Read and acknowledged messages, deleted in batches.
    pub(super) reads: ReadMarker,
    pub(super) settings: Arc<Settings>,
    /// Users whose unread notice could not be published (Redis failing
    /// over): published again until it goes out, so that a connection that
    /// stays open still learns of what was stored for it.
    pub(super) unannounced: std::sync::Mutex<std::collections::HashSet<UserId>>,
    /// Messages acknowledged on a connection while the store was down:
    /// deleted again until it answers, so that they are not delivered twice.
    pub(super) undeleted: std::sync::Mutex<std::collections::HashMap<UserId, Vec<i64>>>,
}

impl Inbox {
    /// Tells the connections of these users, on any replica, that stored
    /// messages wait for them.
    async fn announce_unread(&self, users: &[UserId]) {
        let published = futures_util::future::join_all(
            users
                .iter()
                .map(|&user| self.bus.publish(Event::Unread { user })),
        )
        .await;
        let mut unannounced = self.unannounced.lock().unwrap_or_else(|p| p.into_inner());
        for (user, result) in users.iter().zip(published) {
            if let Err(err) = result {
                tracing::warn!(error = %err, user_id = user, "unread notice not published; retrying");
                unannounced.insert(*user);
            }
        }
    }

    /// Publishes the unread notices that failed and deletes the
    /// acknowledged messages that were not, every half second while some
    /// wait, until shutdown.
    async fn retry_until(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            let waiting: Vec<UserId> = self
                .unannounced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            if !waiting.is_empty() {
                self.announce_unread(&waiting).await;
            }
            let undeleted: Vec<(UserId, Vec<i64>)> = self
                .undeleted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (user, ids) in undeleted {
                self.delete_acknowledged(user, ids).await;
            }
        }
    }

    /// Deletes messages a connection acknowledged, and tells the senders
    /// that asked; what the store does not take is kept to try again.
    async fn delete_acknowledged(&self, user: UserId, ids: Vec<i64>) {
        match self.reads.delete(user, &ids).await {
            Ok(acked) => self.tell_senders(&acked).await,
            Err(err) => self.delete_later(user, &ids, &err),
        }
    }

    fn delete_later(&self, user: UserId, ids: &[i64], err: &dyn std::fmt::Display) {
        tracing::warn!(error = %err, user_id = user, "acknowledged messages not deleted; retrying");
        let mut undeleted = self.undeleted.lock().unwrap_or_else(|p| p.into_inner());
        undeleted.entry(user).or_default().extend(ids);
    }

    /// Publishes events at once (in a cluster, one pipelined round trip for
    /// all), logging those that fail: best-effort notices.
    async fn publish_all(&self, events: impl IntoIterator<Item = Event>, what: &'static str) {
        let published =
            futures_util::future::join_all(events.into_iter().map(|e| self.bus.publish(e))).await;
        for err in published.into_iter().filter_map(Result::err) {
            tracing::warn!(error = %err, what, "event not published");
        }
    }

    /// Stores directed messages that no connection managed to write, trying
    /// again until the store takes them or `give_up` completes.
    async fn store_undelivered(
        &self,
        messages: Vec<Arc<DirectMessage>>,
        give_up: impl std::future::Future<Output = ()>,
    ) {
        let count = messages.len();
        let rows: Vec<NewMessage> = messages.iter().map(|m| NewMessage::from(&**m)).collect();
        let mut give_up = std::pin::pin!(give_up);
        for attempt in 1u64.. {
            // Accepted already (the sender was not told otherwise): stored
            // whatever the mailbox holds, however long the store is down.
            match self.store.store_messages(&rows, MailboxQuota::NONE).await {
                Ok(_) => {
                    messages_stored(StoredVia::Undelivered, count);
                    let mut recipients: Vec<UserId> = rows.iter().map(|m| m.recipient_id).collect();
                    recipients.sort_unstable();
                    recipients.dedup();
                    // Another connection of theirs may be open (or open now).
                    self.announce_unread(&recipients).await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "storing undelivered messages failed");
                    let pause = Duration::from_millis(200 * attempt).min(Duration::from_secs(5));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut give_up => break,
                    }
                }
            }
        }
        tracing::error!(
            count,
            "undelivered messages dropped: the store did not take them before shutdown"
        );
    }

    /// `POST /messages/`: stores a message for `recipient_username` to fetch
    /// later, batched with whatever else is being stored.
    pub async fn send_offline(
        &self,
        sender: &AuthUser,
        recipient_username: &str,
        content: String,
    ) -> Result<Message> {
        let content = MessageContent::parse(
            content,
            self.settings.delivery.max_message_bytes,
            "encrypted_content",
        )?;
        let recipient = self
            .names
            .resolve(self.store.as_ref(), recipient_username)
            .await?
            .ok_or(Error::NotFound("Recipient not found"))?;
        spend(
            self.limiter.as_ref(),
            Limit::OfflinePerSender,
            &sender.id.to_string(),
        )
        .await?;
        let admission = self
            .writer
            .store(NewMessage {
                id: self.store.next_message_id().await?,
                sender_id: sender.id,
                recipient_id: recipient.id,
                content: content.into_inner(),
                sent_at: Utc::now(),
                receipt: false,
                claimed_until: None,
            })
            .await?;
        let stored = match admission {
            Admission::Stored(stored) => stored,
            Admission::MailboxFull => return Err(Error::MAILBOX_FULL),
            Admission::NoRecipient => return Err(Error::NotFound("Recipient not found")),
        };
        messages_stored(StoredVia::Http, 1);
        crate::metrics::accepted(crate::metrics::Accepted::Http);
        Ok(stored)
    }

    /// `GET /messages/`: a page of the caller's unread messages, oldest
    /// first, now read.
    pub async fn take_inbox(&self, user: &AuthUser) -> Result<InboxPage> {
        spend(
            self.limiter.as_ref(),
            Limit::InboxPerUser,
            &user.id.to_string(),
        )
        .await?;
        let page = Page::first(self.settings.delivery.message_page_bytes);
        let messages = self.store.take_unread(user.id, page).await?;
        let page = InboxPage::of(page, messages);
        if page.more {
            // A push on one of the user's connections may have passed this
            // page by while the take held it, and stopped short: it looks again.
            self.announce_unread(&[user.id]).await;
        }
        Ok(page)
    }

    /// `GET /messages/?ack=manual`: a page of the caller's unread messages
    /// after the id `after`, oldest first, left unread until acknowledged.
    pub async fn peek_inbox(&self, user: &AuthUser, after: i64) -> Result<InboxPage> {
        spend(
            self.limiter.as_ref(),
            Limit::InboxPerUser,
            &user.id.to_string(),
        )
        .await?;
        let page = Page {
            after,
            max_bytes: self.settings.delivery.message_page_bytes,
        };
        let messages = self.store.peek_unread(user.id, page).await?;
        Ok(InboxPage::of(page, messages))
    }

    /// `POST /messages/ack`: [`Inbox::ack_inbox`] under the caller's
    /// inbox budget (the `ack` frame spends the frame budget instead).
    pub async fn ack_inbox_over_http(&self, user: &AuthUser, ids: &[i64]) -> Result<u64> {
        spend(
            self.limiter.as_ref(),
            Limit::InboxPerUser,
            &user.id.to_string(),
        )
        .await?;
        self.ack_inbox(user, ids).await
    }

    /// `POST /messages/ack` and the `ack` frame: these of the caller's unread
    /// messages were received; they are deleted, and senders that asked are
    /// told. Returns how many there were.
    pub async fn ack_inbox(&self, user: &AuthUser, ids: &[i64]) -> Result<u64> {
        if ids.len() > ACK_MAX_IDS {
            return Err(Error::Invalid(vec![crate::domain::Invalid::new(
                "ids",
                format!("at most {ACK_MAX_IDS} ids at once"),
            )]));
        }
        let acked = self.reads.delete(user.id, ids).await?;
        self.tell_senders(&acked).await;
        Ok(acked.len() as u64)
    }

    /// The `ack` frame: like [`Inbox::ack_inbox`], but a store that is down
    /// is no reason to deliver the messages again (nor to make the client
    /// find out which acknowledgement failed): they are deleted once it
    /// answers. Returns whether the deletion is stored already.
    pub async fn ack_frame(&self, user: &AuthUser, ids: &[i64]) -> Result<bool> {
        match self.ack_inbox(user, ids).await {
            Ok(_) => Ok(true),
            Err(Error::Unavailable(err)) => {
                self.delete_later(user.id, ids, &format!("{err:#}"));
                Ok(false)
            }
            Err(other) => Err(other),
        }
    }

    /// `{"type": "delivered", "id"}` to the senders that asked, on whatever
    /// replica they are connected.
    async fn tell_senders(&self, acked: &[Acked]) {
        let mut receipts: Vec<(UserId, i64)> = acked
            .iter()
            .filter(|a| a.receipt)
            .map(|a| (a.sender_id, a.id))
            .collect();
        receipts.sort_unstable();
        let events = receipts
            .chunk_by(|a, b| a.0 == b.0)
            .map(|chunk| Event::Delivered {
                sender: chunk[0].0,
                ids: chunk.iter().map(|(_, id)| *id).collect(),
            });
        self.publish_all(events, "delivery receipts").await;
    }

    /// Claims the unread messages a connection fetches, with their senders'
    /// names: until [`Inbox::settle_push`] (or, for a connection that
    /// acknowledges, until acknowledged or released), no `GET /messages/`
    /// and no other plain connection gets them.
    pub async fn claim_inbox(
        &self,
        user: &AuthUser,
        delivery: &Delivery,
        page: Page,
    ) -> Result<Vec<InboxMessage>> {
        // A connection that acknowledges takes over what another of the
        // user's held (one that dropped without closing, say): it gets every
        // unacknowledged message at once, and in order.
        Ok(self
            .store
            .claim_unread(user.id, PUSH_CLAIM, delivery.manual_ack, page)
            .await?)
    }

    /// After a plain connection's fetch: the messages written are deleted,
    /// ciphertext and all; the claims on the others are released for the
    /// next fetch or push.
    pub async fn settle_push(
        &self,
        user: &AuthUser,
        written: &[i64],
        unwritten: &[i64],
    ) -> Result<()> {
        let (deleted, released) = tokio::join!(
            self.reads.delete(user.id, written),
            self.store.release_claims(user.id, unwritten)
        );
        deleted?;
        Ok(released?)
    }

    /// Stores directed messages for a connection that acknowledges, claimed
    /// for it, before it writes them (a copy stored already is kept): so
    /// what it has not acknowledged when it goes is delivered again. They
    /// count against the recipient's mailbox like offline messages, so that
    /// no sender grows a mailbox past its quota through a client that never
    /// acknowledges: returns the ids of those that did not fit, which the
    /// connection writes all the same but holds for nobody.
    pub async fn hold_for(&self, messages: &[Arc<DirectMessage>]) -> Result<Vec<i64>> {
        let until = crate::domain::time::after(Utc::now(), PUSH_CLAIM);
        // With those of other connections: one transaction for many.
        let held = futures_util::future::join_all(messages.iter().map(|m| {
            self.writer.store(NewMessage {
                claimed_until: Some(until),
                ..NewMessage::from(&**m)
            })
        }))
        .await;
        let mut unheld = Vec::new();
        for (message, admission) in messages.iter().zip(held) {
            match admission? {
                Admission::Stored(_) => {}
                Admission::MailboxFull | Admission::NoRecipient => unheld.push(message.id),
            }
        }
        if !unheld.is_empty() {
            metrics::held_over_quota(unheld.len());
        }
        Ok(unheld)
    }

    /// The connection holding these messages unacknowledged is alive: its
    /// claims last another [`PUSH_CLAIM`].
    pub async fn renew_holds(&self, user: &AuthUser, ids: &[i64]) -> Result<()> {
        let until = crate::domain::time::after(Utc::now(), PUSH_CLAIM);
        Ok(self.store.renew_claims(user.id, ids, until).await?)
    }

    /// The connection holding these messages unacknowledged is gone: they
    /// wait for the next connection, in their order.
    pub async fn release_holds(&self, user: &AuthUser, ids: &[i64]) -> Result<()> {
        Ok(self.store.release_claims(user.id, ids).await?)
    }

    /// Deletes the unread messages older than the time to live, a batch at a
    /// time so that no statement holds the store for long; returns how many.
    async fn expire_messages(&self) -> Result<u64> {
        const BATCH: i64 = 1000;
        let before = crate::domain::time::before(Utc::now(), self.settings.message_ttl());
        let mut expired = 0;
        loop {
            let deleted = self.store.expire_messages(before, BATCH).await?;
            expired += deleted;
            if deleted < BATCH as u64 {
                return Ok(expired);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Stores a directed message that was not relayed live, under its
    /// sender's offline budget and its recipient's mailbox quota (batched
    /// like `POST /messages/`); the recipient's connections, which may have
    /// opened since, fetch it.
    pub async fn store_relayed(&self, message: &DirectMessage) -> Result<Admission> {
        let sender = message.sender_id.to_string();
        spend(self.limiter.as_ref(), Limit::OfflinePerSender, &sender).await?;
        let admission = self.writer.store(NewMessage::from(message)).await?;
        if let Admission::Stored(_) = admission {
            messages_stored(StoredVia::Offline, 1);
            self.announce_unread(&[message.recipient_id]).await;
        }
        Ok(admission)
    }

    /// Starts the inbox's background work: storing the directed messages
    /// that no connection wrote (they come back through their receipts on
    /// `undelivered`), the expiry sweep, and unread notices published and acknowledged
    /// messages deleted again. Both end once shutdown began,
    /// the first having stored everything the closing `sessions` handed back.
    pub fn spawn(
        self: &Arc<Self>,
        undelivered: mpsc::UnboundedReceiver<Arc<DirectMessage>>,
        shutdown: CancellationToken,
        sessions: TaskTracker,
    ) -> JoinHandle<()> {
        let storing = tokio::spawn(self.clone().store_undelivered_until(
            undelivered,
            shutdown.clone(),
            sessions,
        ));
        let expiring = tokio::spawn(self.clone().expire_until(shutdown.clone()));
        let retrying = tokio::spawn(self.clone().retry_until(shutdown));
        tokio::spawn(async move {
            let _ = tokio::join!(storing, expiring, retrying);
        })
    }

    async fn store_undelivered_until(
        self: Arc<Self>,
        mut undelivered: mpsc::UnboundedReceiver<Arc<DirectMessage>>,
        shutdown: CancellationToken,
        sessions: TaskTracker,
    ) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = undelivered.recv_many(&mut batch, 512) => {
                    if n == 0 {
                        break;
                    }
                    // Until shutdown, and its grace after.
                    let give_up = async {
                        shutdown.cancelled().await;
                        tokio::time::sleep(self.settings.shutdown_grace()).await;
                    };
                    self.store_undelivered(std::mem::take(&mut batch), give_up).await;
                }
                _ = shutdown.cancelled() => {
                    // Sessions closing now hand back what they could not write.
                    let grace = self.settings.shutdown_grace();
                    let _ = tokio::time::timeout(grace, sessions.wait()).await;
                    break;
                }
            }
        }
        while let Ok(message) = undelivered.try_recv() {
            batch.push(message);
        }
        if !batch.is_empty() {
            let give_up = tokio::time::sleep(self.settings.shutdown_grace());
            self.store_undelivered(batch, give_up).await;
        }
    }

    /// Deletes unread messages past their time to live, on a task of its own
    /// so that a long sweep delays nothing else.
    async fn expire_until(self: Arc<Self>, shutdown: CancellationToken) {
        // Often enough that a message outlives its time to live by little.
        let every = (self.settings.message_ttl() / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => match self.expire_messages().await {
                    Ok(0) => {}
                    Ok(expired) => tracing::info!(expired, "unread messages expired"),
                    Err(err) => tracing::warn!(error = %err, "expiring messages failed"),
                },
            }
        }
    }
}
