//! The backends a replica runs over, one per capability, as the traits the
//! flows see: `backends::connect` builds this list from the settings, and the
//! service layer takes it as it is.

use std::sync::Arc;

use crate::{
    bus::Bus, client_ids::ClientIds, presence::Presence, ratelimit::Limiter,
    refresh::RefreshTokens, revocation::Revocations, store::Store,
};

#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub revocations: Arc<dyn Revocations>,
    /// Each login's refresh tokens (durable, in the store's database).
    pub refresh_tokens: Arc<dyn RefreshTokens>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn Bus>,
    pub limiter: Arc<dyn Limiter>,
    /// Which message each sender's recent client ids name.
    pub client_ids: Arc<dyn ClientIds>,
}
