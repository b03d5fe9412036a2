//! Every Redis key and channel name, under one prefix, so that deployments (and
//! tests) can share one Redis without seeing each other.

use crate::domain::UserId;

#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash `user -> "{ip} {port} {seen ms} {lease end ms}"` of online users.
    pub fn sightings(&self) -> String {
        format!("{}:sightings", self.prefix)
    }

    /// Hash `user -> version` of contact lists, changed with every change of one.
    pub fn contact_versions(&self) -> String {
        format!("{}:contact-versions", self.prefix)
    }

    /// Hash `"{replica}|{jti}" -> open WebSockets` of a user.
    pub fn connections(&self, user: UserId) -> String {
        format!("{}:conns:{user}", self.prefix)
    }

    /// Sorted set of live replicas, scored by when their liveness lapses (ms).
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// Sorted set of online users scored by when their lease lapses (ms), so
    /// that the gauge counts them and lapsed sightings are swept without a scan.
    pub fn online(&self) -> String {
        format!("{}:online", self.prefix)
    }

    /// A rate-limit budget: `limit`'s for `key` (a GCRA arrival time).
    pub fn rate_budget(&self, limit: &str, key: &str) -> String {
        format!("{}:rate:{limit}:{key}", self.prefix)
    }

    /// An account's run of failed logins.
    pub fn login_failures(&self, account: &str) -> String {
        format!("{}:login-failures:{account}", self.prefix)
    }

    pub fn revoked(&self, jti: &str) -> String {
        format!("{}{jti}", self.revoked_prefix())
    }

    /// What every revoked-token key starts with.
    pub fn revoked_prefix(&self) -> String {
        format!("{}:revoked:", self.prefix)
    }

    /// The unexpired tokens issued to one user, by expiry.
    pub fn tokens(&self, user: UserId) -> String {
        format!("{}:tokens:{user}", self.prefix)
    }

    /// The message id a sender's client id names, for the de-duplication
    /// window. The client id is the key's last part, whatever it holds.
    pub fn client_id(&self, sender: UserId, client_id: &str) -> String {
        format!("{}:client-id:{sender}:{client_id}", self.prefix)
    }

    /// Events for one user's connections: directed messages, session closes.
    pub fn user_channel(&self, user: UserId) -> String {
        format!("{}:user:{user}", self.prefix)
    }

    /// Events for many users: broadcasts and presence notices.
    pub fn broadcast_channel(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }
}
