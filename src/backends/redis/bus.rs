//! Fan-out through Redis pub/sub.
//!
//! Each replica subscribes to the broadcast channel and to the channel of every
//! user it holds connections for, on one dedicated connection that reconnects
//! (and resubscribes) by itself. A directed message is published to its
//! recipient's channel: Redis answers how many replicas received it, so zero
//! means "connected nowhere" in one round trip.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use super::{Keyspace, RedisCommands, Topology, now_ms, with_redis};
use crate::{
    batch::Batcher,
    bus::{Bus, BusError, Event, EventSink},
    domain::UserId,
    metrics,
};

/// What travels on a channel: the event and when it was published, for the
/// cross-replica latency histogram.
#[derive(Serialize, Deserialize)]
struct Envelope {
    published_ms: i64,
    event: Event,
}

pub struct RedisBus {
    redis: Arc<RedisCommands>,
    /// Concurrent publishes go out as one pipeline.
    publisher: Batcher<(String, Vec<u8>), bool, anyhow::Error>,
    keys: Keyspace,
    sink: Arc<dyn EventSink>,
    /// The live subscription connection's command side; `None` while reconnecting.
    subscriber: Arc<RwLock<Option<PubSubSink>>>,
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
        sink: Arc<dyn EventSink>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let topology = topology.clone();
        let pipeline_to = redis.clone();
        let publisher = Batcher::start(256, move |events: Vec<(String, Vec<u8>)>| {
            let redis = pipeline_to.clone();
            async move {
                let mut pipe = redis::pipe();
                for (channel, payload) in &events {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload);
                }
                let receivers: Vec<i64> =
                    with_redis(
                        &redis,
                        |mut c| async move { pipe.query_async(&mut c).await },
                    )
                    .await?;
                Ok(receivers.into_iter().map(|n| n > 0).collect())
            }
        });
        let bus = Arc::new(Self {
            publisher,
            redis,
            keys,
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
            Event::Text { .. } => self.keys.broadcast_channel(),
        }
    }

    async fn sink(&self) -> Option<PubSubSink> {
        self.subscriber.read().await.clone()
    }

    fn dispatch(&self, payload: &[u8]) {
        let envelope = serde_json::from_slice::<Envelope>(payload);
        if let Ok(envelope) = &envelope {
            let elapsed = (now_ms() - envelope.published_ms).max(0) as u64;
            metrics::bus_received(envelope.event.kind(), Some(Duration::from_millis(elapsed)));
        }
        match envelope.map(|e| e.event) {
            Ok(Event::Direct(message)) => {
                let kept = message.clone();
                if !self.sink.deliver(Event::Direct(message)) {
                    // The recipient left this replica after the publish counted it.
                    self.sink.undeliverable(kept);
                }
            }
            Ok(event) => {
                self.sink.deliver(event);
            }
            Err(err) => tracing::warn!(error = %err, "unreadable event on the bus"),
        }
    }
}

/// Keeps one subscription connection alive: connect, subscribe to the broadcast
/// channel and the channels of users held here, dispatch until the connection
/// drops, then again after a pause.
async fn subscribe_forever(
    bus: Arc<RedisBus>,
    topology: Topology,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match connect(&bus, &topology).await {
            Ok(mut stream) => {
                bus.receiving.store(true, Ordering::Release);
                pause = Duration::from_millis(100);
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(());
                    }
                    // Events published while it was away never came.
                    None => bus.sink.resumed(),
                }
                tracing::info!("subscribed to fan-out");
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        message = stream.next() => match message {
                            Some(message) => bus.dispatch(message.get_payload_bytes()),
                            None => break,
                        },
                    }
                }
                bus.receiving.store(false, Ordering::Release);
                *bus.subscriber.write().await = None;
                if !shutdown.is_cancelled() {
                    tracing::warn!("fan-out subscription lost; reconnecting");
                }
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "fan-out subscription failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Subscribes on the master (a sentinel set's current one: publishes go there).
async fn connect(bus: &RedisBus, topology: &Topology) -> anyhow::Result<redis::aio::PubSubStream> {
    let pubsub = tokio::time::timeout(Duration::from_secs(5), async {
        anyhow::Ok(topology.master_client().await?.get_async_pubsub().await?)
    })
    .await
    .context("connecting timed out")??;
    let (mut sink, stream) = pubsub.split();
    // Published first, so that users attaching from now on subscribe on this
    // connection; then everyone already here is subscribed.
    *bus.subscriber.write().await = Some(sink.clone());
    let mut channels = vec![bus.keys.broadcast_channel()];
    channels.extend(
        bus.sink
            .local_users()
            .into_iter()
            .map(|u| bus.keys.user_channel(u)),
    );
    sink.subscribe(channels).await?;
    Ok(stream)
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

    async fn publish(&self, event: Event) -> Result<bool, BusError> {
        let channel = self.channel_of(&event);
        metrics::bus_published(event.kind());
        let envelope = Envelope {
            published_ms: now_ms(),
            event,
        };
        let payload = serde_json::to_vec(&envelope).map_err(|e| BusError(e.into()))?;
        self.publisher
            .submit((channel, payload))
            .await
            .map_err(|e| BusError(anyhow::anyhow!("{e:#}")))
    }

    async fn attach(&self, user: UserId) -> Result<(), BusError> {
        // Without a connection, the reconnect subscribes every user held here.
        let Some(mut sink) = self.sink().await else {
            return Ok(());
        };
        sink.subscribe(self.keys.user_channel(user))
            .await
            .map_err(|e| BusError(e.into()))
    }

    async fn detach(&self, user: UserId) -> Result<(), BusError> {
        let Some(mut sink) = self.sink().await else {
            return Ok(());
        };
        let channel = self.keys.user_channel(user);
        sink.unsubscribe(&channel)
            .await
            .map_err(|e| BusError(e.into()))?;
        // A connection of the user may have opened (and subscribed) meanwhile;
        // it must not be left unsubscribed.
        if self.sink.holds(user) {
            sink.subscribe(&channel)
                .await
                .map_err(|e| BusError(e.into()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The fan-out contract against a real Redis, each case under its own prefix.
    use super::*;
    use crate::{
        backends::redis::testing,
        bus::contract::{self, Recorder},
    };

    async fn bus() -> (Arc<RedisBus>, Arc<Recorder>, CancellationToken) {
        let sink = Arc::new(Recorder::default());
        let (redis, keys) = testing::commands();
        let stop = CancellationToken::new();
        let topology = Topology::parse(&testing::url()).unwrap();
        let bus = RedisBus::start(&topology, redis, keys, sink.clone(), stop.clone())
            .await
            .expect("Redis reachable (set TEST_REDIS_URL)");
        (bus, sink, stop)
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        let (b, sink, stop) = bus().await;
        contract::direct_reaches_only_held_users(b.as_ref(), &sink).await;
        stop.cancel();
        let (b, sink, stop) = bus().await;
        contract::text_and_closes_reach_the_replica(b.as_ref(), &sink).await;
        stop.cancel();
        let (b, sink, stop) = bus().await;
        contract::detached_users_are_not_reached(b.as_ref(), &sink).await;
        stop.cancel();
    }
}
