//! In-process presence and fan-out: the embedded default, one replica, no Redis.

pub mod bus;
pub mod presence;

pub use bus::MemoryBus;
pub use presence::MemoryPresence;
