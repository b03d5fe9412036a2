//! In-process presence, fan-out and rate limits: the embedded default, one
//! replica, no Redis.

pub mod bus;
pub mod presence;
pub mod ratelimit;

pub use bus::MemoryBus;
pub use presence::MemoryPresence;
pub use ratelimit::MemoryLimiter;
