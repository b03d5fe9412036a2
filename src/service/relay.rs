//! The relay's flows: directed messages (delivered, or stored offline, or
//! handed back by a connection that could not write them), broadcasts,
//! connections opening and closing with their presence notices, and the inbox
//! of offline messages.

use std::{sync::Arc, time::Duration};

use super::{AuthUser, Error, Result, Services};
use crate::{
    bus::{Audience, Event},
    client_ids::CLIENT_ID_MAX_CHARS,
    config::{Switch, Visibility},
    connection::{Delivery, Outbox},
    domain::{
        ClientFrame, DirectMessage, Endpoint, MessageContent, ServerFrame, UserId, is_broadcastable,
    },
    metrics::{self, StoredVia, messages_stored},
    ratelimit::{Limit, LocalBudget},
    store::{Acked, Admission, InboxMessage, MailboxQuota, Message, NewMessage, Page},
};
use chrono::Utc;

const TOO_MANY: Error = Error::Limited("Too many connections", Duration::from_secs(1));

/// Most message ids one acknowledgement names: a fetch returns no more.
const ACK_MAX_IDS: usize = crate::store::INBOX_PAGE as usize;

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

/// What became of a directed message the server accepted.
enum Outcome {
    /// Handed to a replica holding a connection of the recipient.
    Relayed,
    /// Stored offline; the seed's status frame for the sender.
    Stored(String),
    /// Not accepted after all: the error frame for the sender.
    Refused(String),
}

/// The frame budgets of one connection: its own, kept here, and its user's,
/// shared by all of the user's connections on every replica. Frames are
/// taken from the user's budget a few at a time (a lease, spent by this
/// connection only): one shared check, a Redis round trip in a cluster, serves
/// several frames. Credits not spent within a period lapse, so that no
/// connection can save up a burst; a lease never lets the user exceed its
/// budget, and at most makes it a little stricter.
pub struct FrameBudget {
    connection: Option<LocalBudget>,
    user_key: String,
    /// Frames taken from the user's budget at once: 1/16 of its count, 1 to 64.
    lease: u32,
    /// How long leased credits last.
    period: Duration,
    credits: u32,
    credits_until: std::time::Instant,
}

impl Services {
    /// The budgets of a new connection of `user`'s.
    pub fn frame_budget(&self, user: &AuthUser) -> FrameBudget {
        let connection = (self.settings.rate_limits == Switch::On)
            .then(|| LocalBudget::new(self.settings.ws_frame_rate_per_connection));
        let per_user = self.settings.ws_frame_rate_per_user;
        FrameBudget {
            connection,
            user_key: user.id.to_string(),
            lease: (per_user.count.get() / 16).clamp(1, 64),
            period: per_user.period,
            credits: 0,
            credits_until: std::time::Instant::now(),
        }
    }

    /// Admits one relay frame under both budgets, or says how long until
    /// they allow one.
    pub async fn admit_frame(&self, budget: &mut FrameBudget) -> std::result::Result<(), Duration> {
        if let Some(local) = &budget.connection {
            let grant = local.take(1);
            if grant.granted == 0 {
                metrics::rate_limited("ws_frames_per_connection", 1);
                return Err(grant.retry_after);
            }
        }
        let now = std::time::Instant::now();
        if budget.credits == 0 || now >= budget.credits_until {
            let (limit, key, lease) =
                (Limit::FramesPerUser, budget.user_key.as_str(), budget.lease);
            let grant = match self.limiter.take_now(limit, key, lease) {
                Some(grant) => Ok(grant),
                None => self.limiter.take(limit, key, lease).await,
            };
            budget.credits = match grant {
                Ok(grant) if grant.granted == 0 => {
                    metrics::rate_limited(limit.name(), 1);
                    return Err(grant.retry_after);
                }
                Ok(grant) => grant.granted,
                // The relay keeps working while the shared counters are away
                // (`Limit::fails_open`); the connection's own budget holds.
                Err(err) => {
                    tracing::warn!(error = %err, "frame limiter unavailable");
                    lease
                }
            };
            budget.credits_until = now + budget.period;
        }
        budget.credits -= 1;
        Ok(())
    }

    /// Handles one text frame of `sender`'s, on its connection `connection`
    /// (which takes its messages as `delivery` says); returns the replies for
    /// the sender, in order. An `auth` frame renews `sender` in place.
    pub async fn on_text(
        &self,
        sender: &mut AuthUser,
        connection: u64,
        delivery: &Delivery,
        text: &str,
    ) -> Vec<String> {
        let (recipient_username, content, client_id) = match ClientFrame::parse(text) {
            ClientFrame::Auth { token } => {
                return vec![
                    match self.renew_connection(sender, connection, &token).await {
                        Ok(renewed) => {
                            *sender = renewed;
                            ServerFrame::Authenticated {
                                expires_at: sender.expires_at,
                            }
                            .to_text()
                        }
                        Err(Error::Unauthenticated(why)) => ServerFrame::Error(&format!(
                            "{why}; the connection keeps its current token"
                        ))
                        .to_text(),
                        Err(err) => {
                            tracing::warn!(error = format!("{err:#}"), "renewal failed");
                            ServerFrame::Error("the token could not be checked; try again")
                                .to_text()
                        }
                    },
                ];
            }
            ClientFrame::Ack { ids } => {
                return match self.ack_inbox(sender, &ids).await {
                    Ok(_) => {
                        delivery.acknowledged(&ids);
                        Vec::new()
                    }
                    Err(Error::Invalid(_)) => vec![
                        ServerFrame::Error(&format!("an ack names at most {ACK_MAX_IDS} ids"))
                            .to_text(),
                    ],
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "acknowledgement failed");
                        vec![
                            ServerFrame::Error("the acknowledgement failed; send it again")
                                .to_text(),
                        ]
                    }
                };
            }
            // One line per sender of what it says: a line break, an escape
            // or a bidi override would let it write a line that looks like
            // someone else's, or like the server's own notices.
            ClientFrame::Broadcast(text) if !text.chars().all(is_broadcastable) => {
                return vec![ServerFrame::Error(
                    "a broadcast must be one line of printable text: line breaks, control and format characters are not relayed",
                ).to_text()];
            }
            ClientFrame::Broadcast(text) => {
                return match self.spend_fanout(sender, text.len()).await {
                    Ok(()) => {
                        self.broadcast(sender, text).await;
                        Vec::new()
                    }
                    Err(Error::Limited(refusal, wait)) => vec![
                        ServerFrame::Error(&format!(
                            "{refusal}: not relayed; retry in {} s",
                            wait.as_secs_f64().ceil().max(1.0)
                        ))
                        .to_text(),
                    ],
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "broadcast limiter failed");
                        vec![ServerFrame::Error("broadcast not relayed; try again").to_text()]
                    }
                };
            }
            ClientFrame::Malformed => {
                return vec![
                    ServerFrame::Error(
                        "a JSON frame needs string fields \"recipient_username\" and \"content\"",
                    )
                    .to_text(),
                ];
            }
            ClientFrame::Direct {
                recipient_username,
                content,
                client_id,
            } => (recipient_username, content, client_id),
        };
        if let Some(client_id) = &client_id {
            let chars = client_id.chars().count();
            if chars == 0 || chars > CLIENT_ID_MAX_CHARS {
                return vec![
                    ServerFrame::Error(&format!(
                        "client_id must be 1 to {CLIENT_ID_MAX_CHARS} characters"
                    ))
                    .to_text(),
                ];
            }
            delivery.want_receipts();
        }
        match self
            .send_direct(
                sender,
                &recipient_username,
                content.into_owned(),
                client_id.as_deref(),
            )
            .await
        {
            Ok(replies) => replies,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "directed message failed");
                vec![ServerFrame::Error("message could not be delivered; try again").to_text()]
            }
        }
    }

    /// Delivers to the recipient's connections on any replica, or stores the
    /// message offline when it has none (or fan-out is down). With a
    /// `client_id`, the sender is told the message's id once the server has
    /// taken responsibility for it, and a repeat within the window is
    /// answered the same way without being delivered again.
    async fn send_direct(
        &self,
        sender: &AuthUser,
        recipient_username: &str,
        content: String,
        client_id: Option<&str>,
    ) -> Result<Vec<String>> {
        let content =
            match MessageContent::parse(content, self.settings.max_message_bytes, "content") {
                Ok(content) => content.into_inner(),
                Err(invalid) => {
                    return Ok(vec![
                        ServerFrame::Error(&format!("content {}", invalid.message)).to_text(),
                    ]);
                }
            };
        let recipient = self
            .names
            .resolve(self.store.as_ref(), recipient_username)
            .await?;
        // The client's input is not echoed back: a reply stays small whatever
        // the frame held.
        let Some(recipient) = recipient else {
            return Ok(vec![ServerFrame::Error("recipient not found").to_text()]);
        };
        // Under `contacts` visibility, a sender the recipient has not accepted
        // learns nothing of its presence from the answer: its messages are
        // always stored (and fetched at once by the recipient's open
        // connections), answered alike, and earn no delivery receipt.
        let stranger = self.settings.address_visibility == Visibility::Contacts
            && recipient.id != sender.id
            && !self
                .consents
                .accepts(self.store.as_ref(), recipient.id, sender.id)
                .await?;
        let id = match self.store.next_message_id_now() {
            Some(id) => id,
            None => self.store.next_message_id().await?,
        };
        // A client id names one message to one recipient: the same id sent to
        // another recipient is another message.
        let client_key = client_id.map(|client_id| format!("{}/{client_id}", recipient.id));
        if let (Some(client_id), Some(key)) = (client_id, &client_key) {
            match self.client_ids.remember(sender.id, key, id).await {
                Ok(Some(first)) => {
                    return Ok(vec![
                        ServerFrame::Sent {
                            client_id,
                            id: first,
                        }
                        .to_text(),
                    ]);
                }
                Ok(None) => {}
                // Delivered, possibly twice, rather than refused.
                Err(err) => tracing::warn!(error = %err, "client ids unavailable"),
            }
        }
        let message = Arc::new(DirectMessage {
            id,
            sender_id: sender.id,
            sender_username: sender.username.clone(),
            recipient_id: recipient.id,
            content,
            sent_at: Utc::now(),
            receipt: client_id.is_some() && !stranger,
        });
        let outcome = self
            .relay_or_store(sender, message, &recipient.username, !stranger)
            .await;
        let forget = || async {
            if let Some(key) = &client_key
                && let Err(err) = self.client_ids.forget(sender.id, key, id).await
            {
                tracing::warn!(error = %err, "client ids unavailable");
            }
        };
        let mut replies = Vec::new();
        match outcome {
            Ok(Outcome::Relayed) => {}
            Ok(Outcome::Stored(status)) => replies.push(status),
            Ok(Outcome::Refused(error)) => {
                forget().await;
                return Ok(vec![error]);
            }
            Err(err) => {
                forget().await;
                return Err(err);
            }
        }
        replies.extend(client_id.map(|client_id| ServerFrame::Sent { client_id, id }.to_text()));
        Ok(replies)
    }

    /// Relays the message live when `live` and the recipient is connected
    /// somewhere; stores it otherwise.
    async fn relay_or_store(
        &self,
        sender: &AuthUser,
        message: Arc<DirectMessage>,
        recipient_username: &str,
        live: bool,
    ) -> Result<Outcome> {
        let delivered = live
            && match self.bus.publish(Event::Direct(message.clone())).await {
                Ok(delivered) => delivered,
                Err(err) => {
                    // Fan-out is down: keep the message rather than lose it.
                    tracing::warn!(error = %err, "fan-out unavailable; storing the message");
                    false
                }
            };
        if delivered {
            return Ok(Outcome::Relayed);
        }
        match self
            .spend(Limit::OfflinePerSender, &sender.id.to_string())
            .await
        {
            Ok(()) => {}
            Err(Error::Limited(refusal, wait)) => {
                return Ok(Outcome::Refused(
                    ServerFrame::Error(&format!(
                        "{refusal} (in {} s); the message was not stored",
                        wait.as_secs_f64().ceil().max(1.0)
                    ))
                    .to_text(),
                ));
            }
            Err(other) => return Err(other),
        }
        // Batched with the other offline messages being stored, like `POST
        // /messages/`.
        match self.writer.store(NewMessage::from(&*message)).await? {
            Admission::Stored(_) => {}
            Admission::MailboxFull => {
                return Ok(Outcome::Refused(
                    ServerFrame::Error("recipient's mailbox is full; the message was not stored")
                        .to_text(),
                ));
            }
            Admission::NoRecipient => {
                return Ok(Outcome::Refused(
                    ServerFrame::Error("recipient not found").to_text(),
                ));
            }
        }
        messages_stored(StoredVia::Offline, 1);
        // The recipient may have connected since the publish found none: its
        // connections fetch the message (before any later one is relayed).
        self.announce_unread(&[message.recipient_id]).await;
        Ok(Outcome::Stored(
            ServerFrame::StoredOffline { recipient_username }.to_text(),
        ))
    }

    /// Tells the connections of these users, on any replica, that stored
    /// messages wait for them.
    async fn announce_unread(&self, users: &[UserId]) {
        // Not published: they are fetched on the next connection (or `GET /messages/`).
        self.publish_all(
            users.iter().map(|&user| Event::Unread { user }),
            "unread notice",
        )
        .await;
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

    /// Spends a broadcast's fan-out from the sender's budget: a unit per
    /// user it reaches (those connected here, or online anywhere, whichever
    /// is more) for every KiB of text, at most a whole budget. What a
    /// refused broadcast was granted stays spent.
    async fn spend_fanout(&self, sender: &AuthUser, bytes: usize) -> Result<()> {
        let online = self.online_count.load(std::sync::atomic::Ordering::Relaxed);
        let audience = (self.hub.users_here() as u64).max(online).max(2) - 1;
        let kib = (bytes as u64).div_ceil(1024).max(1);
        let budget = self.settings.broadcast_fanout_per_user.count.get();
        let cost = u32::try_from(audience.saturating_mul(kib)).map_or(budget, |c| c.min(budget));
        let limit = Limit::BroadcastPerUser;
        let grant = match self.limiter.take(limit, &sender.id.to_string(), cost).await {
            Ok(grant) => grant,
            // Like every relay budget (`Limit::fails_open`): the frame
            // budgets still hold.
            Err(err) => {
                tracing::warn!(error = %err, "broadcast limiter unavailable");
                return Ok(());
            }
        };
        if grant.granted == cost {
            return Ok(());
        }
        metrics::rate_limited(limit.name(), 1);
        Err(Error::Limited(
            "Too many broadcasts for this many listeners; slow down",
            grant.retry_after,
        ))
    }

    async fn broadcast(&self, sender: &AuthUser, text: &str) {
        let event = Event::Text {
            text: ServerFrame::Broadcast {
                sender_username: &sender.username,
                text,
            }
            .to_text(),
            audience: Audience::AllExcept(sender.id),
        };
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(error = %err, "broadcast failed");
        }
    }

    /// Registers a WebSocket of `user` connected from `peer` in the hub,
    /// subscribes this replica to the user, counts the connection in presence
    /// and, if it is the user's first anywhere, tells others. Returns the
    /// connection's id in the hub; on failure nothing stays registered.
    pub async fn open_connection(
        &self,
        user: &AuthUser,
        peer: Endpoint,
        outbox: Outbox,
        delivery: Arc<Delivery>,
    ) -> Result<u64> {
        let registration = self
            .hub
            .register(
                user.id,
                &user.jti,
                peer,
                outbox,
                delivery,
                self.settings.max_ws_per_ip,
            )
            .ok_or(TOO_MANY)?;
        let opened = self
            .connection_opened(user, peer, registration.first_here)
            .await;
        match opened {
            Ok(connections) if connections > self.settings.max_ws_per_user => {
                // Undone in full; the user holds other connections, so nobody
                // is told it left.
                self.close_connection(user, registration.id).await;
                Err(TOO_MANY)
            }
            Ok(_) => Ok(registration.id),
            Err(err) => {
                if self.hub.unregister(user.id, registration.id) {
                    let _ = self.bus.detach(user.id).await;
                }
                Err(err)
            }
        }
    }

    async fn connection_opened(
        &self,
        user: &AuthUser,
        peer: Endpoint,
        first_here: bool,
    ) -> Result<u32> {
        if first_here {
            self.bus.attach(user.id).await?;
        }
        let now = Utc::now();
        let connections = self
            .presence
            .connection_opened(user.id, &user.jti, peer, now)
            .await?;
        self.record_seen(user, now).await;
        if connections == 1 {
            self.notify(user, true).await;
        }
        Ok(connections)
    }

    /// Renews a connection's authentication in-band with `token`, which must
    /// name the same user: the connection now lasts as long as that token (and
    /// the grace after it), and closes when it is revoked. The connection is
    /// counted under the new token before it leaves the old one, so the user
    /// never appears to go offline.
    pub async fn renew_connection(
        &self,
        user: &AuthUser,
        connection: u64,
        token: &str,
    ) -> Result<AuthUser> {
        let renewed = self.authenticate(token).await?;
        if renewed.id != user.id {
            return Err(Error::Unauthenticated("The token names another user"));
        }
        if renewed.jti == user.jti {
            return Ok(renewed);
        }
        let (now, peer) = (Utc::now(), self.hub.endpoint(user.id, connection));
        if let Some(peer) = peer {
            self.presence
                .connection_opened(user.id, &renewed.jti, peer, now)
                .await?;
            self.hub.rebind(user.id, connection, &renewed.jti);
            self.presence
                .connection_closed(user.id, &user.jti, now)
                .await?;
        }
        Ok(renewed)
    }

    /// The reverse of [`Services::open_connection`]: lets the connection go,
    /// and tells others if it was the user's last anywhere.
    pub async fn close_connection(&self, user: &AuthUser, connection: u64) {
        if self.hub.unregister(user.id, connection)
            && let Err(err) = self.bus.detach(user.id).await
        {
            tracing::warn!(error = %err, "fan-out detach failed");
        }
        let now = Utc::now();
        match self
            .presence
            .connection_closed(user.id, &user.jti, now)
            .await
        {
            Ok(0) => self.notify(user, false).await,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "presence update failed"),
        }
        self.record_seen(user, now).await;
    }

    /// The store's `last_seen`, at the instant presence recorded: a connection
    /// opening or closing is a sign of life.
    async fn record_seen(&self, user: &AuthUser, now: chrono::DateTime<Utc>) {
        if let Err(err) = self.store.touch_last_seen(user.id, now).await {
            tracing::warn!(error = %err, "last-seen update failed");
        }
    }

    /// The user's presence notice (whether it is now `online`) to those who
    /// may see its presence: everyone under `open` visibility, the users it
    /// has accepted under `contacts`.
    async fn notify(&self, user: &AuthUser, online: bool) {
        let audience = match self.settings.address_visibility {
            Visibility::Open => Ok(Audience::AllExcept(user.id)),
            Visibility::Contacts => self.store.consented(user.id).await.map(Audience::Users),
        };
        let text = ServerFrame::Presence {
            username: &user.username,
            online,
        }
        .to_text();
        let result = match audience {
            Ok(audience) => self
                .bus
                .publish(Event::Text { text, audience })
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = result {
            tracing::warn!(error = format!("{err:#}"), "presence notice failed");
        }
    }

    /// Stores directed messages that no connection managed to write, retrying
    /// a store that is briefly away.
    pub async fn store_undelivered(&self, messages: Vec<Arc<DirectMessage>>) {
        let count = messages.len();
        let rows: Vec<NewMessage> = messages.iter().map(|m| NewMessage::from(&**m)).collect();
        for attempt in 1..=5u32 {
            // Accepted already (the sender was not told otherwise): stored
            // whatever the mailbox holds.
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
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                        .await;
                }
            }
        }
        tracing::error!(count, "undelivered messages dropped after retries");
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
            self.settings.max_message_bytes,
            "encrypted_content",
        )?;
        let recipient = self
            .names
            .resolve(self.store.as_ref(), recipient_username)
            .await?
            .ok_or(Error::NotFound("Recipient not found"))?;
        self.spend(Limit::OfflinePerSender, &sender.id.to_string())
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
        Ok(stored)
    }

    /// `GET /messages/`: a page of the caller's unread messages, oldest
    /// first, now read.
    pub async fn take_inbox(&self, user: &AuthUser) -> Result<InboxPage> {
        self.spend(Limit::InboxPerUser, &user.id.to_string())
            .await?;
        let page = Page::first(self.settings.message_page_bytes);
        let messages = self.store.take_unread(user.id, page).await?;
        Ok(InboxPage::of(page, messages))
    }

    /// `GET /messages/?ack=manual`: a page of the caller's unread messages
    /// after the id `after`, oldest first, left unread until acknowledged.
    pub async fn peek_inbox(&self, user: &AuthUser, after: i64) -> Result<InboxPage> {
        self.spend(Limit::InboxPerUser, &user.id.to_string())
            .await?;
        let page = Page {
            after,
            max_bytes: self.settings.message_page_bytes,
        };
        let messages = self.store.peek_unread(user.id, page).await?;
        Ok(InboxPage::of(page, messages))
    }

    /// `POST /messages/ack`: [`Services::ack_inbox`] under the caller's
    /// inbox budget (the `ack` frame spends the frame budget instead).
    pub async fn ack_inbox_over_http(&self, user: &AuthUser, ids: &[i64]) -> Result<u64> {
        self.spend(Limit::InboxPerUser, &user.id.to_string())
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
    /// names: until [`Services::settle_push`] (or, for a connection that
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
    pub async fn expire_messages(&self) -> Result<u64> {
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
}
