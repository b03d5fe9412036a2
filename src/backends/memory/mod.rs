//! In-process presence, fan-out, rate limits and client ids: the embedded default, one
//! replica, no Redis.

pub mod bus;
pub mod client_ids;
pub mod presence;
pub mod ratelimit;

pub use bus::MemoryBus;
pub use client_ids::MemoryClientIds;
pub use presence::MemoryPresence;
pub use ratelimit::MemoryLimiter;
