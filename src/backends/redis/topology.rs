//! Which Redis a replica talks to, as `REDIS_URL` says: one node
//! (`redis://host:6379/0`); the master that Redis Sentinel names
//! (`redis+sentinel://host:26379,host:26380/<master-name>`), followed through
//! failovers by asking the sentinels again whenever a connection is made; or a
//! Redis Cluster (`redis+cluster://host1:7000,host2:7001`, any of its nodes),
//! whose slot map the redis crate's cluster client follows. Credentials go
//! before the hosts (`redis+cluster://user:password@host:7000,host:7001`,
//! `redis+sentinel://:password@host:26379/<master-name>`), percent-encoded as
//! in any URL: a cluster's for every node; a sentinel set's for the master
//! and its replicas, the sentinels being asked without (as redis-py's
//! `Sentinel` does unless told otherwise).

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
        credentials: Credentials,
    },
    /// A Redis Cluster, found through any of `nodes` (`redis://host:port`).
    Cluster { nodes: Vec<String> },
}

/// A user name and password for Redis's `AUTH`, from a URL's user information.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
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
            let (userinfo, hosts) = split_userinfo(hosts);
            return Ok(Self::Cluster {
                nodes: node_urls(userinfo, hosts)?,
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
        let (userinfo, hosts) = split_userinfo(hosts);
        let sentinels = node_urls(None, hosts)?;
        let credentials = match userinfo {
            None => Credentials::default(),
            Some(userinfo) => {
                // Decoded as the redis crate decodes any URL's.
                let url = format!(
                    "redis://{userinfo}@{}",
                    hosts.split(',').next().unwrap_or("")
                );
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .context("REDIS_URL: the credentials are not valid URL user information")?;
                Credentials {
                    username: info.redis_settings().username().map(str::to_owned),
                    password: info.redis_settings().password().map(str::to_owned),
                }
            }
        };
        Ok(Self::Sentinel {
            sentinels,
            master: master.to_owned(),
            credentials,
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
        let Self::Sentinel {
            sentinels,
            master,
            credentials,
        } = self
        else {
            bail!("not a sentinel topology");
        };
        let mut node = redis::RedisConnectionInfo::default();
        if let Some(username) = &credentials.username {
            node = node.set_username(username);
        }
        if let Some(password) = &credentials.password {
            node = node.set_password(password);
        }
        Ok(SentinelClient::build(
            sentinels.clone(),
            master.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
            SentinelServerType::Master,
        )?)
    }
}

/// `user:password@hosts` as its two parts (the user information, if any).
fn split_userinfo(hosts: &str) -> (Option<&str>, &str) {
    match hosts.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, hosts),
    }
}

/// `host:port,host:port` as `redis://[userinfo@]host:port` URLs, each checked.
fn node_urls(userinfo: Option<&str>, hosts: &str) -> anyhow::Result<Vec<String>> {
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    hosts
        .split(',')
        .map(|host| {
            let host = host.trim();
            if host.is_empty() || host.contains('@') {
                bail!("REDIS_URL: {host:?} is not a host:port");
            }
            let url = format!("redis://{auth}{host}");
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
                credentials: Credentials::default(),
            }
        );
        // Credentials: the master's (the sentinels are asked without).
        assert_eq!(
            Topology::parse("redis+sentinel://app:p%40ss%3Aw@10.0.0.1:26379,10.0.0.2:26380/m")
                .unwrap(),
            Topology::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26380".into()
                ],
                master: "m".into(),
                credentials: Credentials {
                    username: Some("app".into()),
                    password: Some("p@ss:w".into()),
                },
            }
        );
        assert_eq!(
            Topology::parse("redis+sentinel://:secret@10.0.0.1:26379/m")
                .unwrap()
                .sentinel_client()
                .map(drop)
                .ok(),
            Some(())
        );
        // Every node's, in a cluster.
        assert_eq!(
            Topology::parse("redis+cluster://:s%23cret@10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            Topology::Cluster {
                nodes: vec![
                    "redis://:s%23cret@10.0.0.1:7000".into(),
                    "redis://:s%23cret@10.0.0.2:7001".into()
                ],
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
            "redis+cluster://:pw@",
            "http://nope",
        ] {
            assert!(Topology::parse(bad).is_err(), "{bad}");
        }
    }
}
