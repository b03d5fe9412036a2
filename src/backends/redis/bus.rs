//! Fan-out through Redis pub/sub.
//!
//! Each replica subscribes to the broadcast channels and to the channel of
//! every user it holds connections for, on one dedicated connection that
//! reconnects (and resubscribes) by itself. A directed message is published to
//! its recipient's channel: Redis answers how many replicas received it, so
//! zero means "connected nowhere" in one round trip. Concurrent publishes go
//! out as one pipeline, and a batch's events for one channel as one message.
//!
//! On a Redis Cluster the channels are sharded (`SPUBLISH`/`SSUBSCRIBE`): each
//! lives on the shard of its slot, so fan-out spreads over the shards instead
//! of every node relaying every message, and the count a publish answers is
//! still that of the replicas subscribed.
//!
//! Redis counts a subscriber before it writes to it: a Redis that goes in
//! between has answered "delivered" for a directed message no replica got.
//! Each replica publishes its last such answers again once the subscription is
//! back, and drops a directed message that reaches it twice
//! ([`super::redelivery`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt, future::BoxFuture, stream::BoxStream};
use redis::{Msg, PushKind, aio::PubSubSink, cluster_async::ClusterConnection};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use super::{
    Keyspace, REDIS_TIMEOUT, RedisCommands, RedisConnection, Topology,
    keys::slot_tag,
    now_ms,
    redelivery::{Arrivals, FastMap, Published, RESEND_FOR, Unconfirmed},
    script::{Script, is_no_script},
    with_redis,
};
use crate::{
    batch::{BatchError, Batcher},
    bus::{Answer, Audience, Bus, BusError, Event, EventSink},
    config::BusEnvelope,
    domain::UserId,
    metrics,
};

/// What travels on a channel: the event and when it was published, for the
/// cross-replica latency histogram. Binary ([`BINARY`], then the envelope in
/// postcard: 64 bytes of content from a 5-letter name make 98 bytes, where
/// JSON takes 279), or JSON, which releases before it publish and read
/// (`BUS_ENVELOPE=json`); it begins with `{`. Every replica reads both, and
/// several binary envelopes published as one ([`SEVERAL`]).
#[derive(Serialize, Deserialize)]
struct Envelope<E> {
    published_ms: i64,
    event: E,
}

/// The first byte of a binary envelope (its version).
const BINARY: u8 = 1;

/// The first byte of several binary envelopes for one channel, published as
/// one message ([`coalesce`]): each follows without its own first byte.
const SEVERAL: u8 = 2;

/// Most bytes of envelopes published as one message: a longer run for one
/// channel is split.
const MOST_COALESCED: usize = 64 * 1024;

impl Envelope<&Event> {
    fn encode(event: &Event, form: BusEnvelope) -> anyhow::Result<Vec<u8>> {
        let envelope = Envelope {
            published_ms: now_ms(),
            event,
        };
        Ok(match form {
            BusEnvelope::Binary => postcard::to_extend(&envelope, vec![BINARY])?,
            BusEnvelope::Json => serde_json::to_vec(&envelope)?,
        })
    }
}

impl Envelope<Event> {
    fn decode(payload: &[u8]) -> anyhow::Result<Self> {
        Ok(match payload.split_first() {
            Some((&BINARY, binary)) => postcard::from_bytes(binary)?,
            _ => serde_json::from_slice(payload)?,
        })
    }

    /// Every envelope of what one channel brought, in order: one, or several
    /// published as one.
    fn decode_each(payload: &[u8], mut each: impl FnMut(Self)) -> anyhow::Result<()> {
        match payload.split_first() {
            Some((&SEVERAL, mut rest)) => {
                while !rest.is_empty() {
                    let (envelope, after) = postcard::take_from_bytes(rest)?;
                    each(envelope);
                    rest = after;
                }
            }
            _ => each(Self::decode(payload)?),
        }
        Ok(())
    }
}

/// One message as Redis gets it: a channel's events of one batch together.
struct Outgoing<'a> {
    channel: &'a str,
    payload: Cow<'a, [u8]>,
}

/// A batch's events as messages, one per channel where they are binary (a
/// burst to one recipient costs Redis one publish, and its replica one read),
/// each at the place of its channel's first event; and for each event, the
/// message that carries it. A channel's events keep their order; events of
/// different channels need none (they may come from different shards
/// anyway). JSON envelopes, published for releases that read nothing else,
/// go one by one.
fn coalesce(events: &[Publish]) -> (Vec<Outgoing<'_>>, Vec<usize>) {
    let mut outgoing: Vec<Outgoing> = Vec::with_capacity(events.len());
    let mut carried_by = Vec::with_capacity(events.len());
    let mut open: FastMap<&str, usize> = FastMap::default();
    for Publish {
        channel, payload, ..
    } in events
    {
        let binary = payload.first() == Some(&BINARY);
        let joins = open
            .get(channel.as_str())
            .copied()
            .filter(|&i| binary && outgoing[i].payload.len() + payload.len() <= MOST_COALESCED);
        match joins {
            Some(i) => {
                let joined = outgoing[i].payload.to_mut();
                joined[0] = SEVERAL;
                joined.extend_from_slice(&payload[1..]);
                carried_by.push(i);
            }
            None => {
                if binary {
                    open.insert(channel, outgoing.len());
                }
                carried_by.push(outgoing.len());
                outgoing.push(Outgoing {
                    channel,
                    payload: Cow::Borrowed(payload),
                });
            }
        }
    }
    (outgoing, carried_by)
}

/// One event to publish.
struct Publish {
    channel: String,
    payload: Vec<u8>,
    /// A directed message (stored when it reaches no one): kept until its
    /// delivery is confirmed ([`Unconfirmed`]).
    directed: bool,
}

pub struct RedisBus {
    redis: Arc<RedisCommands>,
    /// Concurrent publishes go out together (one pipeline, or one write per
    /// shard).
    publisher: Batcher<Publish, bool, anyhow::Error>,
    /// Directed messages Redis answered for lately, to publish again if it
    /// goes before passing them on.
    unconfirmed: Arc<Unconfirmed>,
    /// Directed messages received lately: one published again is not
    /// delivered twice.
    arrivals: Arrivals,
    keys: Keyspace,
    /// The form events are published in.
    envelope: BusEnvelope,
    sink: Arc<dyn EventSink>,
    /// The live subscription connection's command side; `None` while reconnecting.
    subscriber: Arc<RwLock<Option<Subscriber>>>,
    /// Subscribed to everything this replica needs: it can receive.
    receiving: AtomicBool,
}

impl RedisBus {
    /// Starts the subscriber (it runs until `shutdown`) and waits for its first
    /// connection, so that a replica is not ready before it can receive.
    pub async fn start(
        topology: &Topology,
        redis: Arc<RedisCommands>,
        keys: Keyspace,
        envelope: BusEnvelope,
        sink: Arc<dyn EventSink>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let topology = topology.clone();
        let publish_to = redis.clone();
        let unconfirmed = Arc::new(Unconfirmed::default());
        let answered = unconfirmed.clone();
        let cluster = matches!(topology, Topology::Cluster { .. });
        let publisher = Batcher::start(256, move |events: Vec<Publish>| {
            let (redis, answered) = (publish_to.clone(), answered.clone());
            async move {
                let (outgoing, carried_by) = coalesce(&events);
                let counted = with_redis(&redis, |c| publish_all(c, &outgoing)).await?;
                let receivers: Vec<i64> = carried_by.into_iter().map(|i| counted[i]).collect();
                // By node: on a cluster, each slot's answer confirms only
                // that slot's earlier one (the slot may have moved since).
                let mut delivered: FastMap<String, Vec<Published>> = FastMap::default();
                for (event, n) in events.into_iter().zip(&receivers) {
                    let node = if cluster {
                        slot_tag(&event.channel)
                    } else {
                        ""
                    };
                    if !delivered.contains_key(node) {
                        delivered.insert(node.to_owned(), Vec::new());
                    }
                    let kept = delivered.get_mut(node).expect("inserted above");
                    if event.directed && *n > 0 {
                        kept.push((event.channel, event.payload));
                    }
                }
                for (node, messages) in delivered {
                    answered.answered(&node, messages);
                }
                Ok(receivers.into_iter().map(|n| n > 0).collect())
            }
        });
        let bus = Arc::new(Self {
            publisher,
            unconfirmed,
            arrivals: Arrivals::default(),
            redis,
            keys,
            envelope,
            sink,
            subscriber: Arc::default(),
            receiving: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe_forever(bus.clone(), topology, shutdown, ready_tx));
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("the Redis subscription did not start within 10 s")?
            .context("the Redis subscriber stopped")?;
        Ok(bus)
    }

    fn channel_of(&self, event: &Event) -> String {
        match event {
            Event::Direct(m) => self.keys.user_channel(m.recipient_id),
            Event::CloseSessions { user, .. } | Event::Unread { user } => {
                self.keys.user_channel(*user)
            }
            Event::Delivered { sender, .. } => self.keys.user_channel(*sender),
            Event::Text { audience, .. } => self.keys.broadcast_channel(match audience {
                Audience::AllExcept(subject) => *subject,
                Audience::Users(users) => users.first().copied().unwrap_or_default(),
            }),
        }
    }

    async fn sink(&self) -> Option<Subscriber> {
        self.subscriber.read().await.clone()
    }

    /// Every channel this replica subscribes to: the broadcast channels and
    /// those of the users it holds connections for.
    fn channels(&self) -> Vec<String> {
        let mut channels = self.keys.broadcast_channels();
        channels.extend(
            self.sink
                .local_users()
                .into_iter()
                .map(|u| self.keys.user_channel(u)),
        );
        channels
    }

    /// Whether this replica must stay subscribed to `channel`.
    fn wants(&self, channel: &str) -> bool {
        match self.keys.user_of_channel(channel) {
            Some(user) => self.sink.holds(user),
            None => self.keys.broadcast_channels().iter().any(|c| c == channel),
        }
    }

    /// Delivers what one message on a channel brought.
    fn dispatch(&self, payload: &[u8]) {
        if let Err(err) = Envelope::decode_each(payload, |envelope| self.deliver(envelope)) {
            tracing::warn!(error = %err, "unreadable event on the bus");
        }
    }

    fn deliver(&self, envelope: Envelope<Event>) {
        let elapsed = (now_ms() - envelope.published_ms).max(0) as u64;
        metrics::bus_received(envelope.event.kind(), Some(Duration::from_millis(elapsed)));
        match envelope.event {
            Event::Direct(message) => {
                if !message.ephemeral && !self.arrivals.first(message.id) {
                    // Published again after an outage, but it came the first time.
                    return;
                }
                let kept = message.clone();
                if !self.sink.deliver(Event::Direct(message)) {
                    // The recipient left this replica after the publish counted it.
                    self.sink.undeliverable(kept);
                }
            }
            event => {
                self.sink.deliver(event);
            }
        }
    }
}

/// Keeps one subscription connection alive: connect, subscribe to the broadcast
/// channels and the channels of users held here, dispatch until the connection
/// drops, then again after a pause. Every connection opened is left through
/// [`leave`], whether it subscribed to everything or not: one that subscribed
/// only in part counts the publishes of those channels for this replica.
async fn subscribe_forever(
    bus: Arc<RedisBus>,
    topology: Topology,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match connect(&topology).await {
            Ok((subscriber, mut stream)) => {
                match subscribe(&bus, subscriber).await {
                    Ok(()) => {
                        pause = Duration::from_millis(100);
                        let first = ready.take();
                        if first.is_none() {
                            // Back after a loss: queued before the replica is
                            // ready again, so that they go out before what its
                            // clients send once it is.
                            bus.arrivals.resumed();
                            publish_again(&bus, bus.unconfirmed.resumed(), &shutdown).await;
                        }
                        bus.receiving.store(true, Ordering::Release);
                        match first {
                            Some(ready) => {
                                let _ = ready.send(());
                            }
                            // Events published while it was away never came.
                            None => bus.sink.resumed(),
                        }
                        tracing::info!("subscribed to fan-out");
                        dispatch_until_lost(&bus, &mut stream, &shutdown).await;
                        bus.receiving.store(false, Ordering::Release);
                        bus.unconfirmed.lost();
                        bus.arrivals.lost();
                        if !shutdown.is_cancelled() {
                            tracing::warn!("fan-out subscription lost; reconnecting");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "fan-out subscription failed")
                    }
                }
                leave(&bus, &mut stream).await;
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "fan-out connection failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Dispatches what the subscription brings until it is lost (or a wanted
/// channel moved) or the replica shuts down.
async fn dispatch_until_lost(
    bus: &RedisBus,
    stream: &mut BoxStream<'static, Incoming>,
    shutdown: &CancellationToken,
) {
    // Registered once: a fresh `cancelled()` per message would lock the token each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => return,
            incoming = stream.next() => match incoming {
                Some(Incoming::Message(message)) => bus.dispatch(message.get_payload_bytes()),
                // Subscribed again on a connection of its own, whose slot map
                // is fresh: this one's may name the old owner, which, turned
                // replica, would take the subscription where no publish
                // counts it.
                Some(Incoming::Unsubscribed(channel)) => {
                    if bus.wants(&channel) {
                        tracing::info!(
                            "a fan-out channel moved to another shard; subscribing again"
                        );
                        return;
                    }
                }
                Some(Incoming::Lost) | None => return,
            },
        }
    }
}

/// Leaves a subscription connection without losing what it was counted for.
/// A cluster connection may be alive but for one node (lost), or whole (a
/// slot moved, or it subscribed only in part): until its sockets close, Redis
/// still counts its subscriptions (the redis crate even subscribes them again
/// on nodes that take over), and publishes counted there are taken for
/// delivered. So it is first unsubscribed from everything, wherever it still
/// answers (a node's pushes come in order: what was published there before is
/// in `stream` by then), then dropped, and everything it brought is dispatched
/// until it is gone: a cluster connection's stream ends once the connection
/// and its sockets are (a bounded wait, should something still hold it); a
/// node's stream holds the node connection, and ends with it once drained.
async fn leave(bus: &RedisBus, stream: &mut BoxStream<'static, Incoming>) {
    let subscriber = bus.subscriber.write().await.take();
    let cluster = matches!(subscriber, Some(Subscriber::Cluster(_)));
    if let Some(mut subscriber) = subscriber {
        let _ = tokio::time::timeout(REDIS_TIMEOUT, subscriber.unsubscribe(bus.channels())).await;
    }
    let gone_by = tokio::time::Instant::now() + REDIS_TIMEOUT * 2;
    loop {
        // A node's stream goes quiet rather than ending: a quiet spell ends it.
        let until = if cluster {
            gone_by
        } else {
            tokio::time::Instant::now() + Duration::from_millis(100)
        };
        match tokio::time::timeout_at(until, stream.next()).await {
            Ok(Some(Incoming::Message(message))) => bus.dispatch(message.get_payload_bytes()),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(_) => {
                if cluster {
                    tracing::warn!("a fan-out connection outlived its leaving");
                }
                return;
            }
        }
    }
}

/// Publishes again the directed messages an outage may have swallowed
/// ([`super::redelivery`]), each until a replica counts it: its recipient's
/// replica may be subscribing again itself. One no replica counts within
/// [`RESEND_FOR`] is stored for its recipient, as one to no one connected is;
/// so is every one left when the replica shuts down (while it can still store).
/// Returns once they are queued; a task of their own awaits the answers.
async fn publish_again(bus: &Arc<RedisBus>, again: Vec<Published>, shutdown: &CancellationToken) {
    if again.is_empty() {
        return;
    }
    tracing::warn!(
        count = again.len(),
        "publishing again the directed messages the outage may have lost"
    );
    let answers = queue_again(bus, &again).await;
    tokio::spawn(until_counted(bus.clone(), again, answers, shutdown.clone()));
}

/// Queues each message for publishing again, in order; their answers.
async fn queue_again(
    bus: &RedisBus,
    messages: &[Published],
) -> Vec<BoxFuture<'static, Result<bool, BatchError<anyhow::Error>>>> {
    let mut answers = Vec::with_capacity(messages.len());
    for (channel, payload) in messages {
        let publish = Publish {
            channel: channel.clone(),
            payload: payload.clone(),
            directed: true,
        };
        answers.push(bus.publisher.queue(publish).await.boxed());
    }
    answers
}

async fn until_counted(
    bus: Arc<RedisBus>,
    mut pending: Vec<Published>,
    mut answers: Vec<BoxFuture<'static, Result<bool, BatchError<anyhow::Error>>>>,
    shutdown: CancellationToken,
) {
    let until = tokio::time::Instant::now() + RESEND_FOR;
    loop {
        // Awaited whole even at shutdown (each within the Redis timeout):
        // one counted must not be stored as well.
        let answered = futures_util::future::join_all(answers).await;
        pending = pending
            .into_iter()
            .zip(answered)
            .filter_map(|(message, answer)| (!matches!(answer, Ok(true))).then_some(message))
            .collect();
        if pending.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.cancelled() => break,
        }
        answers = queue_again(&bus, &pending).await;
    }
    for (_, payload) in pending {
        if let Ok(Envelope {
            event: Event::Direct(message),
            ..
        }) = Envelope::decode(&payload)
        {
            bus.sink.undeliverable(message);
        }
    }
}

static SPUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/spublish.lua")));

/// Publishes each payload to its channel, answering how many replicas received
/// each: to one node, as one pipeline; on a cluster, sharded, one pipeline per
/// slot (a command on its own would cost Redis a read and a write each), the
/// pipelines all at once.
async fn publish_all(
    connection: RedisConnection,
    events: &[Outgoing<'_>],
) -> redis::RedisResult<Vec<i64>> {
    match connection {
        RedisConnection::Node(mut c) => {
            let mut pipe = redis::pipe();
            for Outgoing { channel, payload } in events {
                pipe.cmd("PUBLISH").arg(*channel).arg(payload.as_ref());
            }
            pipe.query_async(&mut c).await
        }
        RedisConnection::Cluster(c) => {
            let mut by_slot: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, Outgoing { channel, .. }) in events.iter().enumerate() {
                by_slot.entry(slot_tag(channel)).or_default().push(i);
            }
            let answers = futures_util::future::try_join_all(by_slot.into_values().map(|group| {
                let mut c = c.clone();
                async move {
                    let pipeline = |by_sha: bool| {
                        let mut pipe = redis::pipe();
                        for &i in &group {
                            let Outgoing { channel, payload } = &events[i];
                            pipe.add_command(
                                SPUBLISH.key(*channel).arg(payload.as_ref()).command(by_sha),
                            );
                        }
                        pipe
                    };
                    let answers: Vec<i64> = match pipeline(true).query_async(&mut c).await {
                        // A node that never ran the script (new, or promoted)
                        // runs none of the pipeline: sent whole, then.
                        Err(err) if is_no_script(&err) => {
                            pipeline(false).query_async(&mut c).await?
                        }
                        other => other?,
                    };
                    redis::RedisResult::Ok(group.into_iter().zip(answers))
                }
            }))
            .await?;
            let mut receivers = vec![0; events.len()];
            for (i, n) in answers.into_iter().flatten() {
                receivers[i] = n;
            }
            Ok(receivers)
        }
    }
}

/// What the subscription connection brings.
enum Incoming {
    Message(Msg),
    /// Redis ended one subscription by itself: its slot moved to another shard.
    Unsubscribed(String),
    /// A connection to a shard was lost: what it carried meanwhile never came.
    Lost,
}

/// The command side of the subscription connection.
#[derive(Clone)]
enum Subscriber {
    /// To one node: the single one, or a sentinel set's master.
    Node(PubSubSink),
    /// To every master of a cluster, sharded channels on their shards.
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Self::Node(sink) => sink.subscribe(channels).await,
            // Channels of different slots cannot share one command.
            Self::Cluster(conn) => {
                futures_util::future::try_join_all(channels.into_iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(channel).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Self::Node(sink) => sink.unsubscribe(channels).await,
            // Each where its shard answers: one shard's loss leaves the rest.
            Self::Cluster(conn) => {
                let answers = futures_util::future::join_all(channels.into_iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move { conn.sunsubscribe(channel).await }
                }))
                .await;
                answers.into_iter().collect()
            }
        }
    }
}

/// A subscription connection to the master (a sentinel set's current one:
/// publishes go there), or to the masters of a cluster.
async fn connect(
    topology: &Topology,
) -> anyhow::Result<(Subscriber, BoxStream<'static, Incoming>)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        anyhow::Ok(match topology {
            Topology::Cluster { nodes } => {
                let (pushes, received) = tokio::sync::mpsc::unbounded_channel();
                let conn = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .connection_timeout(REDIS_TIMEOUT)
                    .response_timeout(REDIS_TIMEOUT)
                    .build()?
                    .get_async_connection()
                    .await?;
                let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(received)
                    .filter_map(|push| async move {
                        match push.kind {
                            PushKind::Disconnection => Some(Incoming::Lost),
                            PushKind::SUnsubscribe => {
                                let channel = push.data.first()?;
                                Some(Incoming::Unsubscribed(
                                    redis::from_redis_value_ref(channel).ok()?,
                                ))
                            }
                            _ => Msg::from_push_info(push).map(Incoming::Message),
                        }
                    })
                    .boxed();
                (Subscriber::Cluster(conn), stream)
            }
            _ => {
                let (sink, stream) = topology
                    .master_client()
                    .await?
                    .get_async_pubsub()
                    .await?
                    .split();
                (
                    Subscriber::Node(sink),
                    stream.map(Incoming::Message).boxed(),
                )
            }
        })
    })
    .await
    .context("connecting timed out")?
}

/// Subscribes `subscriber` to every channel this replica needs.
async fn subscribe(bus: &RedisBus, mut subscriber: Subscriber) -> anyhow::Result<()> {
    // Published first, so that users attaching from now on subscribe on this
    // connection; then everyone already here is subscribed.
    *bus.subscriber.write().await = Some(subscriber.clone());
    tokio::time::timeout(REDIS_TIMEOUT * 2, subscriber.subscribe(bus.channels()))
        .await
        .context("subscribing timed out")??;
    Ok(())
}

#[async_trait]
impl Bus for RedisBus {
    async fn ping(&self) -> Result<(), BusError> {
        if !self.receiving.load(Ordering::Acquire) {
            return Err(BusError(anyhow::anyhow!("no fan-out subscription")));
        }
        with_redis(&self.redis, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
        .map_err(BusError)
    }

    async fn queue(&self, event: Event) -> Answer {
        let channel = self.channel_of(&event);
        metrics::bus_published(event.kind());
        let payload = match Envelope::encode(&event, self.envelope) {
            Ok(payload) => payload,
            Err(err) => return Box::pin(std::future::ready(Err(BusError(err)))),
        };
        let directed = matches!(&event, Event::Direct(m) if !m.ephemeral);
        let answer = self
            .publisher
            .queue(Publish {
                channel,
                payload,
                directed,
            })
            .await;
        Box::pin(async move { answer.await.map_err(|e| BusError(anyhow::anyhow!("{e:#}"))) })
    }

    async fn attach(&self, user: UserId) -> Result<(), BusError> {
        // Without a connection, the reconnect subscribes every user held here.
        let Some(mut sink) = self.sink().await else {
            return Ok(());
        };
        bounded(sink.subscribe(vec![self.keys.user_channel(user)])).await
    }

    async fn detach(&self, user: UserId) -> Result<(), BusError> {
        let Some(mut sink) = self.sink().await else {
            return Ok(());
        };
        let channel = self.keys.user_channel(user);
        bounded(sink.unsubscribe(vec![channel.clone()])).await?;
        // A connection of the user may have opened (and subscribed) meanwhile;
        // it must not be left unsubscribed.
        if self.sink.holds(user) {
            bounded(sink.subscribe(vec![channel])).await?;
        }
        Ok(())
    }
}

/// A change of subscriptions, within a deadline: one held up (its shard
/// failing over) must not hold the subscription connection it went out on,
/// which, left for a new one, only closes once nothing holds it.
async fn bounded(change: impl Future<Output = redis::RedisResult<()>>) -> Result<(), BusError> {
    match tokio::time::timeout(REDIS_TIMEOUT * 2, change).await {
        Ok(done) => done.map_err(|e| BusError(e.into())),
        Err(_) => Err(BusError(anyhow::anyhow!(
            "changing a subscription timed out"
        ))),
    }
}

#[cfg(test)]
mod tests {
    //! The fan-out contract against a real Redis, each case under its own
    //! prefix, in either form; and the envelope's forms.
    use super::*;
    use crate::{
        backends::redis::testing,
        bus::contract::{self, Recorder},
        domain::DirectMessage,
    };

    async fn bus(form: BusEnvelope) -> (Arc<RedisBus>, Arc<Recorder>, CancellationToken) {
        let sink = Arc::new(Recorder::default());
        let (redis, keys) = testing::commands();
        let stop = CancellationToken::new();
        let topology = Topology::parse(&testing::url()).unwrap();
        let bus = RedisBus::start(&topology, redis, keys, form, sink.clone(), stop.clone())
            .await
            .expect("Redis reachable (set TEST_REDIS_URL)");
        (bus, sink, stop)
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        for form in [BusEnvelope::Binary, BusEnvelope::Json] {
            let (b, sink, stop) = bus(form).await;
            contract::direct_reaches_only_held_users(b.as_ref(), &sink).await;
            stop.cancel();
            let (b, sink, stop) = bus(form).await;
            contract::text_and_closes_reach_the_replica(b.as_ref(), &sink).await;
            stop.cancel();
            let (b, sink, stop) = bus(form).await;
            contract::detached_users_are_not_reached(b.as_ref(), &sink).await;
            stop.cancel();
            let (b, sink, stop) = bus(form).await;
            contract::queued_events_arrive_in_order_each_answered(b.as_ref(), &sink).await;
            stop.cancel();
        }
    }

    fn message() -> Event {
        Event::Direct(Arc::new(DirectMessage {
            id: 123_456_789,
            sender_id: 4_242,
            sender_username: "alice".into(),
            recipient_id: 4_243,
            content: "x".repeat(64),
            sent_at: chrono::DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            receipt: true,
            ephemeral: false,
        }))
    }

    #[test]
    fn every_event_comes_back_from_either_form() {
        let events = [
            message(),
            Event::Text {
                text: "{\"type\":\"broadcast\"}".into(),
                audience: Audience::Users(vec![1, 2]),
            },
            Event::CloseSessions {
                user: 7,
                sessions: crate::bus::Sessions::AllBut(Some("jti".into())),
            },
            Event::Delivered {
                sender: 7,
                ids: vec![1, 2, 3],
            },
            Event::Unread { user: 9 },
        ];
        for form in [BusEnvelope::Binary, BusEnvelope::Json] {
            for event in &events {
                let payload = Envelope::encode(event, form).unwrap();
                assert_eq!(
                    &Envelope::decode(&payload).unwrap().event,
                    event,
                    "{form:?}"
                );
            }
        }
    }

    #[test]
    fn the_binary_form_is_compact() {
        let binary = Envelope::encode(&message(), BusEnvelope::Binary).unwrap();
        let json = Envelope::encode(&message(), BusEnvelope::Json).unwrap();
        // The figures the envelope's documentation gives.
        assert_eq!((binary.len(), json.len()), (98, 279));
    }

    #[test]
    fn what_earlier_releases_publish_is_read() {
        // As a replica before binary envelopes wrote it.
        let earlier = br#"{"published_ms":1780000000123,"event":{"Direct":{"id":5,"sender_id":1,"sender_username":"alice","recipient_id":2,"content":"hi","sent_at":"2026-05-28T20:26:40.123456Z","receipt":false}}}"#;
        let Event::Direct(m) = Envelope::decode(earlier).unwrap().event else {
            panic!("a directed message");
        };
        assert_eq!((m.id, m.content.as_str(), m.ephemeral), (5, "hi", false));
        assert_eq!(m.sent_at.timestamp_micros(), 1_780_000_000_123_456);
    }

    fn publish(channel: &str, event: &Event, form: BusEnvelope) -> Publish {
        Publish {
            channel: channel.into(),
            payload: Envelope::encode(event, form).unwrap(),
            directed: true,
        }
    }

    fn numbered(n: i64) -> Event {
        let Event::Direct(m) = message() else {
            unreachable!()
        };
        Event::Direct(Arc::new(DirectMessage {
            id: n,
            ..(*m).clone()
        }))
    }

    fn decoded(payload: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        Envelope::decode_each(payload, |e| events.push(e.event)).unwrap();
        events
    }

    #[test]
    fn a_batch_goes_out_as_one_message_per_channel_in_order() {
        let b = BusEnvelope::Binary;
        let events = [
            publish("a", &numbered(1), b),
            publish("b", &numbered(2), b),
            publish("a", &numbered(3), b),
            publish("a", &numbered(4), b),
        ];
        let (outgoing, carried_by) = coalesce(&events);
        assert_eq!(carried_by, [0, 1, 0, 0]);
        let channels: Vec<&str> = outgoing.iter().map(|o| o.channel).collect();
        assert_eq!(channels, ["a", "b"]);
        assert_eq!(
            decoded(&outgoing[0].payload),
            [numbered(1), numbered(3), numbered(4)]
        );
        // One on its own is published as it was encoded (every release reads it).
        assert!(matches!(outgoing[1].payload, Cow::Borrowed(_)));
        assert_eq!(decoded(&outgoing[1].payload), [numbered(2)]);
        // Three envelopes as one message: one first byte, not three.
        let apart: usize = [1, 3, 4]
            .map(|n| Envelope::encode(&numbered(n), b).unwrap().len())
            .iter()
            .sum();
        assert_eq!(outgoing[0].payload.len(), apart - 2);
    }

    #[test]
    fn json_envelopes_and_long_runs_are_not_joined() {
        let json = [
            publish("a", &numbered(1), BusEnvelope::Json),
            publish("a", &numbered(2), BusEnvelope::Json),
        ];
        let (outgoing, carried_by) = coalesce(&json);
        assert_eq!(carried_by, [0, 1]);
        assert_eq!(decoded(&outgoing[1].payload), [numbered(2)]);

        let many: Vec<Publish> = (0..1_000)
            .map(|n| publish("a", &numbered(n), BusEnvelope::Binary))
            .collect();
        let (outgoing, carried_by) = coalesce(&many);
        assert!(outgoing.len() > 1);
        assert!(outgoing.iter().all(|o| o.payload.len() <= MOST_COALESCED));
        let all: Vec<Event> = outgoing.iter().flat_map(|o| decoded(&o.payload)).collect();
        assert_eq!(all, (0..1_000).map(numbered).collect::<Vec<_>>());
        assert!(carried_by.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for payload in [&b""[..], b"\x01", b"\x01\xff\xff\xff", b"{", b"\x02abc"] {
            assert!(Envelope::decode(payload).is_err());
        }
        for payload in [&b"\x02\xff"[..], b"\x02\x01\x02", b""] {
            assert!(Envelope::decode_each(payload, drop).is_err());
        }
    }
}
