//! Which Redis a replica talks to, as `REDIS_URL` says: one node
//! (`redis://host:6379/0`); the master that Redis Sentinel names
//! (`redis+sentinel://host:26379,host:26380/<master-name>`), followed through
//! failovers by asking the sentinels again whenever a connection is made; or a
//! Redis Cluster (`redis+cluster://host1:7000,host2:7001`, any of its nodes),
//! whose slot map the redis crate's cluster client follows.

use anyhow::{Context, bail};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

const SENTINEL_SCHEME: &str = "redis+sentinel://";
const CLUSTER_SCHEME: &str = "redis+cluster://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node, by its `redis://` (or `rediss://`, `unix://`) URL.
    Single(String),
    /// The master named `master`, as the sentinels at `sentinels` (each a
    /// `redis://host:port` URL) report it.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    /// A Redis Cluster, found through any of `nodes` (`redis://host:port`).
    Cluster { nodes: Vec<String> },
}

impl Topology {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            let hosts = rest.strip_suffix('/').unwrap_or(rest);
            if hosts.contains(['/', '?', '#']) {
                bail!(
                    "REDIS_URL: redis+cluster://host:port,host:port takes no path or options \
                     (a Redis Cluster has no database numbers)"
                );
            }
            return Ok(Self::Cluster {
                nodes: node_urls(hosts)?,
            });
        }
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            redis::Client::open(url).context("REDIS_URL is not a valid redis:// URL")?;
            return Ok(Self::Single(url.to_owned()));
        };
        let (hosts, master) = rest.split_once('/').context(
            "REDIS_URL: redis+sentinel://host:port,host:port/<master-name> names no master",
        )?;
        let master = master.trim_end_matches('/');
        if master.is_empty() || master.contains(['/', '?', '#']) {
            bail!("REDIS_URL: the sentinel master name must be one path segment, not {master:?}");
        }
        Ok(Self::Sentinel {
            sentinels: node_urls(hosts)?,
            master: master.to_owned(),
        })
    }

    /// A client for the node that takes writes now: for a sentinel set, the
    /// master the sentinels name at this moment. A cluster has no one such node.
    pub async fn master_client(&self) -> anyhow::Result<redis::Client> {
        match self {
            Self::Single(url) => Ok(redis::Client::open(url.as_str())?),
            Self::Sentinel { .. } => Ok(self.sentinel_client()?.async_get_client().await?),
            Self::Cluster { .. } => bail!("a Redis Cluster has no single master"),
        }
    }

    pub fn sentinel_client(&self) -> anyhow::Result<SentinelClient> {
        let Self::Sentinel { sentinels, master } = self else {
            bail!("not a sentinel topology");
        };
        Ok(SentinelClient::build(
            sentinels.clone(),
            master.clone(),
            Some(SentinelNodeConnectionInfo::default()),
            SentinelServerType::Master,
        )?)
    }
}

/// `host:port,host:port` as `redis://host:port` URLs, each checked.
fn node_urls(hosts: &str) -> anyhow::Result<Vec<String>> {
    hosts
        .split(',')
        .map(|host| {
            let host = host.trim();
            if host.is_empty() {
                bail!("REDIS_URL: {host:?} is not a host:port");
            }
            let url = format!("redis://{host}");
            redis::Client::open(url.as_str())
                .with_context(|| format!("REDIS_URL: {host} is not a host:port"))?;
            Ok(url)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_topology() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/2").unwrap(),
            Topology::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            Topology::parse("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster").unwrap(),
            Topology::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26380".into()
                ],
                master: "mymaster".into(),
            }
        );
        assert_eq!(
            Topology::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            Topology::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000".into(),
                    "redis://10.0.0.2:7001".into()
                ],
            }
        );
        for bad in [
            "redis+cluster://10.0.0.1:7000/0",
            "redis+cluster://10.0.0.1:7000,",
            "redis+cluster://",
            "redis+cluster://h:1?protocol=3",
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel://10.0.0.1:26379/",
            "redis+sentinel://10.0.0.1:26379,/m",
            "redis+sentinel:///m",
            "redis+sentinel://h:1/a/b",
            "http://nope",
        ] {
            assert!(Topology::parse(bad).is_err(), "{bad}");
        }
    }
}
