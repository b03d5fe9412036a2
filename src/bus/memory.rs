//! In-process fan-out for the embedded default: the only replica is this one.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Bus, BusError, Event, EventSink};
use crate::{metrics, store::UserId};

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

    async fn publish(&self, event: Event) -> Result<bool, BusError> {
        let kind = metrics::event_kind(&event);
        metrics::bus_published(kind);
        // Received at once: no cross-replica latency to measure in process.
        metrics::bus_received(kind, None);
        Ok(self.sink.deliver(event))
    }

    async fn attach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    async fn detach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}
