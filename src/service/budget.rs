//! Spending a rate-limit budget, as every flow does before its work.

use super::error::{Error, Result};
use crate::{
    metrics,
    ratelimit::{Limit, Limiter},
};

/// Spends one event of `key`'s budget under `limit`, or refuses with the
/// time until the budget allows one. Without its counters (Redis away), a
/// limit on messages lets them through (they are still bounded by the
/// connection's own frame budget and the mailbox quota, and an offline
/// message is what keeps a message when fan-out is down); the others
/// refuse with 503.
pub async fn spend(limiter: &dyn Limiter, limit: Limit, key: &str) -> Result<()> {
    let grant = match limiter.take(limit, key, 1).await {
        Ok(grant) => grant,
        Err(err) if limit.fails_open() => {
            tracing::warn!(error = %err, limit = limit.name(), "rate limiter unavailable");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    if grant.granted == 1 {
        return Ok(());
    }
    metrics::rate_limited(limit.name(), 1);
    Err(Error::Limited(refusal(limit), grant.retry_after))
}

/// What a client over `limit` is told.
fn refusal(limit: Limit) -> &'static str {
    match limit {
        Limit::LoginPerIp => "Too many login attempts; try again later",
        Limit::RegisterPerIp => "Too many registrations; try again later",
        Limit::SearchPerUser => "Too many searches; try again later",
        Limit::OfflinePerSender => "Too many offline messages; try again later",
        Limit::FramesPerUser => "Too many messages; slow down",
        Limit::InboxPerUser => "Too many inbox requests; try again later",
        Limit::ContactsPerUser => "Too many contact changes; try again later",
        Limit::HeartbeatPerUser => "Too many heartbeats; one a minute is enough",
        Limit::TurnPerUser => "Too many TURN credential requests; try again later",
        Limit::KeyChangePerUser => "Too many key changes; try again later",
        Limit::BroadcastPerUser => "Too many broadcasts for this many listeners; slow down",
        Limit::RefreshPerIp => "Too many token refreshes from this address; try again later",
    }
}
