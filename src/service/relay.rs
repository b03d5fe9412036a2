//! The relay: directed messages (delivered live, or handed to the inbox to
//! store), broadcasts, in-band token renewal, connections opening and closing
//! with their presence notices, and the presence leases of the users
//! connected here.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    authn::{AuthUser, Authenticator},
    consent::ConsentCache,
    error::{Error, Result},
    hub::Hub,
    inbox::{ACK_MAX_IDS, Inbox},
    names::NameCache,
};
use crate::{
    bus::{Answer, Audience, Bus, Event},
    client_ids::{self, CLIENT_ID_MAX_CHARS, ClientIds},
    config::{Settings, Switch, Visibility},
    connection::{Delivery, Outbox},
    domain::{
        ClientFrame, DirectMessage, Endpoint, MessageContent, Rate, ServerFrame, UserId,
        is_broadcastable,
    },
    metrics,
    presence::Presence,
    ratelimit::{Limit, Limiter, LocalBudget},
    store::{Admission, Store},
};

const TOO_MANY: Error = Error::Limited("Too many connections", Duration::from_secs(1));

/// The relay flow of one replica, over its hub.
pub struct Relay {
    /// Message ids, consents, and `last_seen` when connections open and close.
    pub(super) store: Arc<dyn Store>,
    /// Connections counted per user and token, and the online count.
    pub(super) presence: Arc<dyn Presence>,
    /// Directed messages, broadcasts and presence notices to every replica.
    pub(super) bus: Arc<dyn Bus>,
    /// Frame and broadcast budgets.
    pub(super) limiter: Arc<dyn Limiter>,
    /// Which message each sender's recent client ids name.
    pub(super) client_ids: Arc<dyn ClientIds>,
    /// This replica's WebSocket connections.
    pub(super) hub: Arc<Hub>,
    pub(super) authn: Arc<Authenticator>,
    pub(super) names: Arc<NameCache>,
    /// Which recipients accepted which senders.
    pub(super) consents: Arc<ConsentCache>,
    /// Where what is not relayed live is stored, and acknowledgements go.
    pub(super) inbox: Arc<Inbox>,
    /// Users online on every replica, as presence last counted them: the
    /// audience of a broadcast.
    pub(super) online_count: AtomicU64,
    pub(super) settings: Arc<Settings>,
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

/// The replies to one frame of a connection's.
pub enum Replies<'a> {
    Now(Vec<String>),
    /// A directed message's, once what became of it is known; meanwhile
    /// the connection may read its next frames.
    Later(BoxFuture<'a, Vec<String>>),
}

impl From<Vec<String>> for Replies<'_> {
    fn from(replies: Vec<String>) -> Self {
        Self::Now(replies)
    }
}

/// The reply to a directed message that failed for a reason of the
/// server's (logged).
fn not_delivered(err: &Error, client_id: Option<&str>) -> Vec<String> {
    tracing::warn!(error = format!("{err:#}"), "directed message failed");
    let error = "message could not be delivered; try again";
    vec![ServerFrame::Error { error, client_id }.to_text()]
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
    /// Frames taken from the user's budget at the next call. At first
    /// [`Self::first_lease`]; doubled (up to [`Self::most_lease`]) when a
    /// lease is spent within its period, and after one lapsed, what of it was
    /// spent (at least the first size). A busy connection under a large
    /// budget asks about once a period instead of every 64 frames, and one
    /// that sends little keeps the first size.
    lease: u32,
    /// The user's budget, all connections together.
    per_user: Rate,
    /// The credits the last lease brought, and those left of them.
    leased: u32,
    credits: u32,
    credits_until: std::time::Instant,
}

impl FrameBudget {
    fn new(connection: Option<LocalBudget>, user_key: String, per_user: Rate) -> Self {
        let mut budget = Self {
            connection,
            user_key,
            lease: 0,
            per_user,
            leased: 0,
            credits: 0,
            credits_until: std::time::Instant::now(),
        };
        budget.lease = budget.first_lease();
        budget
    }

    /// 1/16 of the user's count, 1 to 64.
    fn first_lease(&self) -> u32 {
        (self.per_user.count.get() / 16).clamp(1, 64)
    }

    /// 1/16 of the user's count: however many connections the user has,
    /// each holds at most this much of its budget unspent.
    fn most_lease(&self) -> u32 {
        (self.per_user.count.get() / 16).max(1)
    }

    /// The size of the lease to take at `now`, the credits being spent or
    /// lapsed.
    fn next_lease(&self, now: std::time::Instant) -> u32 {
        if now < self.credits_until {
            self.lease.saturating_mul(2).min(self.most_lease())
        } else {
            (self.leased - self.credits).max(self.first_lease())
        }
    }
}

impl Relay {
    /// The budgets of a new connection of `user`'s.
    pub fn frame_budget(&self, user: &AuthUser) -> FrameBudget {
        let connection = (self.settings.rates.rate_limits == Switch::On)
            .then(|| LocalBudget::new(self.settings.rates.ws_frame_rate_per_connection));
        FrameBudget::new(
            connection,
            user.id.to_string(),
            self.settings.rates.ws_frame_rate_per_user,
        )
    }

    /// Admits one relay frame under both budgets, or says how long until
    /// they allow one.
    pub async fn admit_frame(&self, budget: &mut FrameBudget) -> std::result::Result<(), Duration> {
        if let Some(local) = &budget.connection {
            let grant = local.take(1);
            if grant.granted == 0 {
                metrics::rate_limited(metrics::WS_FRAMES_PER_CONNECTION, 1);
                return Err(grant.retry_after);
            }
        }
        let now = std::time::Instant::now();
        if budget.credits == 0 || now >= budget.credits_until {
            budget.lease = budget.next_lease(now);
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
            budget.leased = budget.credits;
            budget.credits_until = now + budget.per_user.period;
        }
        budget.credits -= 1;
        Ok(())
    }

    /// Handles one text frame of `sender`'s, on its connection `connection`
    /// (which takes its messages as `delivery` says); returns the replies for
    /// the sender, in order, or (a directed message) what waits for them.
    /// An `auth` frame renews `sender` in place.
    pub async fn on_text<'a>(
        &'a self,
        sender: &mut AuthUser,
        connection: u64,
        delivery: &Delivery,
        text: &str,
    ) -> Replies<'a> {
        let (recipient_username, content, client_id, ephemeral) = match ClientFrame::parse(text) {
            ClientFrame::Auth { token } => {
                return vec![
                    match self.renew_connection(sender, connection, &token).await {
                        Ok(renewed) => {
                            *sender = renewed;
                            ServerFrame::Authenticated {
                                expires_at: sender.expires_at,
                                turn: self.settings.turn.enabled(),
                            }
                            .to_text()
                        }
                        Err(Error::Unauthenticated(why)) => ServerFrame::error(&format!(
                            "{why}; the connection keeps its current token"
                        ))
                        .to_text(),
                        Err(err) => {
                            tracing::warn!(error = format!("{err:#}"), "renewal failed");
                            ServerFrame::error("the token could not be checked; try again")
                                .to_text()
                        }
                    },
                ]
                .into();
            }
            ClientFrame::Ack { ids } => {
                return match self.inbox.ack_frame(sender, &ids).await {
                    Ok(true) => {
                        delivery.acknowledged(&ids);
                        Vec::new()
                    }
                    Ok(false) => {
                        delivery.acknowledged_unstored(&ids);
                        Vec::new()
                    }
                    Err(Error::Invalid(_)) => vec![
                        ServerFrame::error(&format!("an ack names at most {ACK_MAX_IDS} ids"))
                            .to_text(),
                    ],
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "acknowledgement failed");
                        vec![
                            ServerFrame::error("the acknowledgement failed; send it again")
                                .to_text(),
                        ]
                    }
                }
                .into();
            }
            // One line per sender of what it says: a line break, an escape
            // or a bidi override would let it write a line that looks like
            // someone else's, or like the server's own notices.
            ClientFrame::Broadcast(text) if !text.chars().all(is_broadcastable) => {
                return vec![ServerFrame::error(
                    "a broadcast must be one line of printable text: line breaks, control and format characters are not relayed",
                ).to_text()].into();
            }
            ClientFrame::Broadcast(text) => {
                return match self.spend_fanout(sender, text.len()).await {
                    Ok(()) => {
                        metrics::accepted(metrics::Accepted::WsBroadcast);
                        self.broadcast(sender, text).await;
                        Vec::new()
                    }
                    Err(Error::Limited(refusal, wait)) => vec![
                        ServerFrame::error(&format!(
                            "{refusal}: not relayed; retry in {} s",
                            wait.as_secs_f64().ceil().max(1.0)
                        ))
                        .to_text(),
                    ],
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "broadcast limiter failed");
                        vec![ServerFrame::error("broadcast not relayed; try again").to_text()]
                    }
                }
                .into();
            }
            ClientFrame::Malformed { client_id } => {
                let error =
                    "a JSON frame needs string fields \"recipient_username\" and \"content\"";
                let client_id = client_id.as_deref().filter(|id| client_ids::is_valid(id));
                return vec![ServerFrame::Error { error, client_id }.to_text()].into();
            }
            ClientFrame::Direct {
                recipient_username,
                content,
                client_id,
                ephemeral,
            } => (recipient_username, content, client_id, ephemeral),
        };
        if let Some(client_id) = &client_id {
            if !client_ids::is_valid(client_id) {
                return vec![
                    ServerFrame::error(&format!(
                        "client_id must be 1 to {CLIENT_ID_MAX_CHARS} characters"
                    ))
                    .to_text(),
                ]
                .into();
            }
            delivery.want_receipts();
        }
        match self
            .send_direct(
                sender,
                &recipient_username,
                content.into_owned(),
                client_id.as_deref(),
                ephemeral,
            )
            .await
        {
            Ok(replies) => replies,
            Err(err) => not_delivered(&err, client_id.as_deref()).into(),
        }
    }

    /// Delivers to the recipient's connections on any replica, or stores the
    /// message offline when it has none (or fan-out is down). With a
    /// `client_id`, the sender is told the message's id once the server has
    /// taken responsibility for it, and a repeat within the window is
    /// answered the same way without being delivered again. Every error
    /// frame carries the `client_id`. An ephemeral message goes another way
    /// ([`Relay::send_ephemeral`]).
    ///
    /// The message is queued for fan-out before this returns (so that the
    /// connection's next message follows it, in the same round trip when
    /// they come together); what became of it, and the replies, come later.
    async fn send_direct<'a>(
        &'a self,
        sender: &AuthUser,
        recipient_username: &str,
        content: String,
        client_id: Option<&str>,
        ephemeral: bool,
    ) -> Result<Replies<'a>> {
        let refuse = |error: &str| ServerFrame::Error { error, client_id }.to_text();
        let content = match MessageContent::parse(
            content,
            self.settings.delivery.max_message_bytes,
            "content",
        ) {
            Ok(content) => content.into_inner(),
            Err(invalid) => {
                return Ok(vec![refuse(&format!("content {}", invalid.message))].into());
            }
        };
        let recipient = self
            .names
            .resolve(self.store.as_ref(), recipient_username)
            .await?;
        // The client's input is not echoed back: a reply stays small whatever
        // the frame held.
        let Some(recipient) = recipient else {
            return Ok(vec![refuse("recipient not found")].into());
        };
        if ephemeral {
            return self
                .send_ephemeral(sender, recipient.id, content, client_id)
                .await
                .map(Replies::from);
        }
        // Under `contacts` visibility, a sender the recipient has not accepted
        // learns nothing of its presence from the answer: its messages are
        // always stored (and fetched at once by the recipient's open
        // connections), answered alike, and earn no delivery receipt.
        let stranger = self.settings.presence.address_visibility == Visibility::Contacts
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
                    ]
                    .into());
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
            ephemeral: false,
        });
        metrics::accepted(metrics::Accepted::WsDirect);
        // Queued now, answered later: the stranger's message is stored.
        let answer = if stranger {
            None
        } else {
            Some(self.bus.queue(Event::Direct(message.clone())).await)
        };
        let (sender_id, recipient_username) = (sender.id, recipient.username);
        let client_id = client_id.map(str::to_owned);
        Ok(Replies::Later(Box::pin(async move {
            let client_id = client_id.as_deref();
            let outcome = self
                .relay_or_store(message, answer, &recipient_username, client_id)
                .await;
            let forget = || async {
                if let Some(key) = &client_key
                    && let Err(err) = self.client_ids.forget(sender_id, key, id).await
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
                    return vec![error];
                }
                Err(err) => {
                    forget().await;
                    return not_delivered(&err, client_id);
                }
            }
            replies
                .extend(client_id.map(|client_id| ServerFrame::Sent { client_id, id }.to_text()));
            replies
        })))
    }

    /// Relays the message live when it was queued for fan-out (`published`)
    /// and the recipient is connected somewhere; stores it otherwise.
    async fn relay_or_store(
        &self,
        message: Arc<DirectMessage>,
        published: Option<Answer>,
        recipient_username: &str,
        client_id: Option<&str>,
    ) -> Result<Outcome> {
        let refuse = |error: &str| ServerFrame::Error { error, client_id }.to_text();
        let delivered = match published {
            Some(answer) => match answer.await {
                Ok(delivered) => delivered,
                Err(err) => {
                    // Fan-out is down: keep the message rather than lose it.
                    tracing::warn!(error = %err, "fan-out unavailable; storing the message");
                    false
                }
            },
            None => false,
        };
        if delivered {
            return Ok(Outcome::Relayed);
        }
        Ok(match self.inbox.store_relayed(&message).await {
            Ok(Admission::Stored(_)) => {
                Outcome::Stored(ServerFrame::StoredOffline { recipient_username }.to_text())
            }
            Ok(Admission::MailboxFull) => Outcome::Refused(refuse(
                "recipient's mailbox is full; the message was not stored",
            )),
            Ok(Admission::NoRecipient) => Outcome::Refused(refuse("recipient not found")),
            Err(Error::Limited(refusal, wait)) => Outcome::Refused(refuse(&format!(
                "{refusal} (in {} s); the message was not stored",
                wait.as_secs_f64().ceil().max(1.0)
            ))),
            Err(other) => return Err(other),
        })
    }

    /// An ephemeral message (a typing indicator, P2P signalling): only
    /// between mutual contacts (to anyone else the answer for an unknown
    /// name), written to the recipient's open connections on any replica and
    /// forgotten; `not_delivered` when it has none. Never stored, so it takes
    /// no message id and earns no `sent`.
    async fn send_ephemeral(
        &self,
        sender: &AuthUser,
        recipient: UserId,
        content: String,
        client_id: Option<&str>,
    ) -> Result<Vec<String>> {
        let store = self.store.as_ref();
        let mutual = recipient != sender.id
            && self.consents.accepts(store, recipient, sender.id).await?
            && self.consents.accepts(store, sender.id, recipient).await?;
        if !mutual {
            let error = "recipient not found";
            return Ok(vec![ServerFrame::Error { error, client_id }.to_text()]);
        }
        let message = Arc::new(DirectMessage {
            id: 0,
            sender_id: sender.id,
            sender_username: sender.username.clone(),
            recipient_id: recipient,
            content,
            sent_at: Utc::now(),
            receipt: false,
            ephemeral: true,
        });
        let delivered = match self.bus.publish(Event::Direct(message)).await {
            Ok(delivered) => delivered,
            Err(err) => {
                tracing::warn!(error = %err, "fan-out unavailable; ephemeral message dropped");
                false
            }
        };
        Ok(if delivered {
            Vec::new()
        } else {
            vec![ServerFrame::NotDelivered { client_id }.to_text()]
        })
    }

    /// Spends a broadcast's fan-out from the sender's budget: a unit per
    /// user it reaches (those connected here, or online anywhere, whichever
    /// is more) for every KiB of text, at most a whole budget. What a
    /// refused broadcast was granted stays spent.
    async fn spend_fanout(&self, sender: &AuthUser, bytes: usize) -> Result<()> {
        let online = self.online_count.load(Ordering::Relaxed);
        let audience = (self.hub.users_here() as u64).max(online).max(2) - 1;
        let kib = (bytes as u64).div_ceil(1024).max(1);
        let budget = self.settings.rates.broadcast_fanout_per_user.count.get();
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
                self.settings.listen.max_ws_per_ip,
            )
            .ok_or(TOO_MANY)?;
        let opened = self
            .connection_opened(user, peer, registration.first_here)
            .await;
        match opened {
            Ok(connections) if connections > self.settings.listen.max_ws_per_user => {
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
        let renewed = self.authn.authenticate(token).await?;
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

    /// The reverse of [`Relay::open_connection`]: lets the connection go,
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
        let audience = match self.settings.presence.address_visibility {
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

    /// Renews the presence leases of the users connected here, and refreshes
    /// the online-users gauge (and the count a broadcast's cost is taken from).
    async fn renew_presence(&self) {
        if let Err(err) = self.presence.renew(&self.hub.held()).await {
            tracing::warn!(error = %err, "presence renewal failed");
        }
        if let Ok(online) = self.presence.count_online().await {
            metrics::online_users(online);
            self.online_count.store(online, Ordering::Relaxed);
        }
    }

    /// Renews presence every third of a lease until shutdown.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let relay = self.clone();
        tokio::spawn(async move {
            let mut renew = tokio::time::interval(relay.settings.presence_lease() / 3);
            loop {
                tokio::select! {
                    _ = renew.tick() => relay.renew_presence().await,
                    _ = shutdown.cancelled() => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn budget(count: u32) -> FrameBudget {
        let per_user = Rate::new(count, Duration::from_secs(1)).unwrap();
        FrameBudget::new(None, "1".into(), per_user)
    }

    /// Takes a lease at `now` as `admit_frame` does (granted whole) and
    /// spends `spent` of it; returns the lease taken.
    fn lease_and_spend(b: &mut FrameBudget, now: Instant, spent: u32) -> u32 {
        b.lease = b.next_lease(now);
        (b.leased, b.credits) = (b.lease, b.lease - spent.min(b.lease));
        b.credits_until = now + b.per_user.period;
        b.lease
    }

    #[test]
    fn a_lease_grows_while_spent_within_its_period_up_to_a_sixteenth() {
        let (mut b, mut now) = (budget(1_000_000), Instant::now());
        let mut sizes = Vec::new();
        for _ in 0..12 {
            sizes.push(lease_and_spend(&mut b, now, u32::MAX));
            now += Duration::from_millis(10);
        }
        assert_eq!(&sizes[..4], [64, 128, 256, 512]);
        assert_eq!(sizes[11], 62_500, "1/16 of the count, not more");

        // At the default rate the first size is already the most.
        let mut b = budget(200);
        for _ in 0..5 {
            assert_eq!(lease_and_spend(&mut b, now, u32::MAX), 12);
            now += Duration::from_millis(10);
        }
    }

    #[test]
    fn after_a_lapse_a_lease_is_what_was_spent_of_the_last() {
        let (mut b, mut now) = (budget(1_000_000), Instant::now());
        for _ in 0..8 {
            lease_and_spend(&mut b, now, u32::MAX);
            now += Duration::from_millis(10);
        }
        assert_eq!(b.lease, 8_192);
        lease_and_spend(&mut b, now, 500);
        now += Duration::from_secs(2);
        assert_eq!(lease_and_spend(&mut b, now, 3), 500);
        now += Duration::from_secs(2);
        assert_eq!(lease_and_spend(&mut b, now, 0), 64, "never below the first");
    }
}
