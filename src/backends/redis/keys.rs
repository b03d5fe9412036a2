//! Every Redis key and channel name, under one prefix, so that deployments (and
//! tests) can share one Redis without seeing each other.
//!
//! On a Redis Cluster a multi-key script must find all its keys in one slot:
//! the presence keys (which its scripts update together) share a hash tag
//! there, `{prefix}`, and so live on one shard; every other key and channel is
//! placed by its own name, spreading over the shards. On one node the names
//! are as they always were, so that a rolling upgrade keeps reading them.

use crate::domain::UserId;

use super::Topology;

/// How many broadcast channels a cluster spreads broadcasts over.
const BROADCAST_SHARDS: u32 = 16;

/// How many slots a cluster spreads users' channels over: few enough that a
/// batch of publishes groups into pipelines of several (a command on its own
/// costs Redis a read and a write), enough to spread over many shards.
pub const USER_CHANNEL_SLOTS: i64 = 64;

#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    /// The prefix of the presence keys: `{prefix}` on a cluster.
    presence: String,
    /// Broadcast channels: one on a node, [`BROADCAST_SHARDS`] on a cluster.
    broadcast_shards: u32,
    clustered: bool,
}

impl Keyspace {
    pub fn new(prefix: &str, topology: &Topology) -> Self {
        let clustered = matches!(topology, Topology::Cluster { .. });
        Self {
            prefix: prefix.to_owned(),
            presence: if clustered {
                format!("{{{prefix}}}")
            } else {
                prefix.to_owned()
            },
            broadcast_shards: if clustered { BROADCAST_SHARDS } else { 1 },
            clustered,
        }
    }

    /// Hash `user -> "{ip} {port} {seen ms} {lease end ms}"` of online users.
    pub fn sightings(&self) -> String {
        format!("{}:sightings", self.presence)
    }

    /// Hash `user -> version` of contact lists, changed with every change of one.
    pub fn contact_versions(&self) -> String {
        format!("{}:contact-versions", self.presence)
    }

    /// Hash `"{replica}|{jti}" -> open WebSockets` of a user.
    pub fn connections(&self, user: UserId) -> String {
        format!("{}:conns:{user}", self.presence)
    }

    /// Sorted set of live replicas, scored by when their liveness lapses (ms).
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.presence)
    }

    /// Sorted set of online users scored by when their lease lapses (ms), so
    /// that the gauge counts them and lapsed sightings are swept without a scan.
    pub fn online(&self) -> String {
        format!("{}:online", self.presence)
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
        format!("{}:revoked:{jti}", self.prefix)
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
    /// On a cluster, under one of [`USER_CHANNEL_SLOTS`] hash tags.
    pub fn user_channel(&self, user: UserId) -> String {
        if self.clustered {
            let slot = user.rem_euclid(USER_CHANNEL_SLOTS);
            format!("{{{}:{slot}}}:user:{user}", self.prefix)
        } else {
            format!("{}:user:{user}", self.prefix)
        }
    }

    /// Whose [`user_channel`](Self::user_channel) `channel` is, if it is one.
    pub fn user_of_channel(&self, channel: &str) -> Option<UserId> {
        let user = channel.rsplit_once(":user:")?.1.parse().ok()?;
        (self.user_channel(user) == channel).then_some(user)
    }

    /// Events for many users (broadcasts and presence notices) about `subject`
    /// (their sender, or whom a notice is about): one channel on a node; on a
    /// cluster one of several, by subject, so that no one shard carries every
    /// broadcast while those about one subject keep their order.
    pub fn broadcast_channel(&self, subject: UserId) -> String {
        match subject.rem_euclid(i64::from(self.broadcast_shards)) {
            0 if self.broadcast_shards == 1 => format!("{}:broadcast", self.prefix),
            shard => format!("{}:broadcast:{shard}", self.prefix),
        }
    }

    /// Every broadcast channel, each replica's to subscribe to.
    pub fn broadcast_channels(&self) -> Vec<String> {
        (0..self.broadcast_shards)
            .map(|shard| self.broadcast_channel(i64::from(shard)))
            .collect()
    }
}

/// The part of a key or channel name that Redis Cluster hashes to find its
/// slot: a non-empty `{tag}`, the first one, or else the whole name.
pub fn slot_tag(name: &str) -> &str {
    name.find('{')
        .and_then(|open| {
            let close = open + 1 + name[open + 1..].find('}')?;
            (close > open + 1).then(|| &name[open + 1..close])
        })
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_tags_presence_keys_and_spreads_broadcasts() {
        let node = Keyspace::new("s", &Topology::Single("redis://h".into()));
        assert_eq!(node.sightings(), "s:sightings");
        assert_eq!(node.connections(7), "s:conns:7");
        assert_eq!(node.broadcast_channels(), ["s:broadcast"]);
        assert_eq!(node.broadcast_channel(12345), "s:broadcast");
        assert_eq!(node.user_of_channel(&node.user_channel(42)), Some(42));
        assert_eq!(node.user_of_channel("s:broadcast"), None);
        assert_eq!(node.user_of_channel("t:user:42"), None);

        let cluster = Keyspace::new("s", &Topology::Cluster { nodes: vec![] });
        assert_eq!(cluster.sightings(), "{s}:sightings");
        assert_eq!(cluster.connections(7), "{s}:conns:7");
        assert_eq!(cluster.online(), "{s}:online");
        assert_eq!(cluster.rate_budget("l", "k"), "s:rate:l:k");
        assert_eq!(cluster.user_channel(70), "{s:6}:user:70");
        assert_eq!(cluster.user_of_channel("{s:6}:user:70"), Some(70));
        assert_eq!(cluster.user_of_channel("{s:7}:user:70"), None);
        assert_eq!(slot_tag("{s:6}:user:70"), "s:6");
        assert_eq!(slot_tag("s:broadcast:3"), "s:broadcast:3");
        assert_eq!(slot_tag("a{}b{c}"), "a{}b{c}");
        assert_eq!(slot_tag("a{b"), "a{b");
        let channels = cluster.broadcast_channels();
        assert_eq!(channels.len(), BROADCAST_SHARDS as usize);
        assert!(channels.contains(&cluster.broadcast_channel(12345)));
        assert_eq!(cluster.broadcast_channel(3), cluster.broadcast_channel(19));
    }
}
