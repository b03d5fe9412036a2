//! In-process fan-out for the embedded default: the only replica is this one.

use std::{sync::Arc, time::Instant};

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
        let started = Instant::now();
        let delivered = self.sink.deliver(event);
        metrics::bus_received(kind, started.elapsed());
        Ok(delivered)
    }

    async fn attach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    async fn detach(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}
