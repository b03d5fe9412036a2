//! In-process fan-out for the embedded default: the only replica is this one.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    bus::{Answer, Bus, BusError, Event, EventSink},
    domain::UserId,
    metrics,
};

pub struct MemoryBus {
    sink: Arc<dyn EventSink>,
}

impl MemoryBus {
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { sink }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn queue(&self, event: Event) -> Answer {
        let kind = event.kind();
        metrics::bus_published(kind);
        // Received at once: no cross-replica latency to measure in process.
        metrics::bus_received(kind, None);
        let delivered = self.sink.deliver(event);
        Box::pin(std::future::ready(Ok(delivered)))
    }

    async fn attach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    async fn detach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::contract::{self, Recorder};

    fn bus() -> (MemoryBus, Arc<Recorder>) {
        let sink = Arc::new(Recorder::default());
        (MemoryBus::new(sink.clone()), sink)
    }

    #[tokio::test]
    async fn contract_holds() {
        let (b, sink) = bus();
        contract::direct_reaches_only_held_users(&b, &sink).await;
        let (b, sink) = bus();
        contract::text_and_closes_reach_the_replica(&b, &sink).await;
        let (b, sink) = bus();
        contract::detached_users_are_not_reached(&b, &sink).await;
        let (b, sink) = bus();
        contract::queued_events_arrive_in_order_each_answered(&b, &sink).await;
    }
}
