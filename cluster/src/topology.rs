//! What `cluster.redis` names: one Redis, a master found through Sentinel, or a Redis
//! Cluster — read from the URL once, at start-up.
//!
//! - `redis://[user:pass@]host:port/db`, `rediss://…`: one Redis.
//! - `redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER[/db]`, `rediss+sentinel://…`: the
//!   sentinels at `h1:p1`, `h2:p2`… are asked for `MASTER`'s address; the user and password
//!   are the data nodes' (and the sentinels', when one asks for them); `rediss+` is TLS to
//!   the data nodes, the sentinels are asked in plain text.
//! - `redis+cluster://[user:pass@]h1:p1,h2:p2`, `rediss+cluster://…`: some nodes of a
//!   Redis Cluster; the rest is learnt from them.

use crate::sentinel::{MultiHost, Sentinels};
use std::sync::Arc;
use tokio::sync::watch;

/// Where the broker's Redis is.
#[derive(Debug)]
pub(crate) enum Topology {
    /// One Redis.
    Single {
        /// Its client.
        client: redis::Client,
        /// `host:port`, for logs, `/healthz` and metrics.
        address: String,
    },
    /// The master that sentinels name.
    Sentinel(Sentinels),
    /// A Redis Cluster: the data node URLs (`redis://[user:pass@]host:port`) to start from.
    Cluster {
        /// One URL per seed node.
        seeds: Vec<String>,
        /// The CA certificates (PEM) trusted for TLS, if given.
        ca: Option<Vec<u8>>,
    },
}

/// Where the worker of one Redis (not a Redis Cluster) connects.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Always the same Redis.
    Single {
        /// Its client.
        client: Box<redis::Client>,
        /// `host:port`.
        address: String,
    },
    /// The master the sentinels name.
    Sentinel {
        /// The sentinels.
        sentinels: Arc<Sentinels>,
        /// Changes when a sentinel announces a new master.
        switched: watch::Receiver<u64>,
    },
}

impl Source {
    /// The client and address of the Redis to connect to now.
    pub(crate) async fn locate(&self) -> Result<(redis::Client, String), String> {
        match self {
            Self::Single { client, address } => Ok((client.as_ref().clone(), address.clone())),
            Self::Sentinel { sentinels, .. } => {
                let address = sentinels.ask().await?;
                let client = sentinels
                    .client_for(&address)
                    .map_err(|err| format!("{address}: {err}"))?;
                Ok((client, address))
            }
        }
    }

    /// The master's name, with Sentinel.
    pub(crate) fn master_name(&self) -> Option<&str> {
        match self {
            Self::Single { .. } => None,
            Self::Sentinel { sentinels, .. } => Some(sentinels.master_name()),
        }
    }

    /// Resolves when a sentinel announced a new master (never with one Redis).
    pub(crate) async fn switched(&mut self) {
        if let Self::Sentinel { switched, .. } = self {
            if switched.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }

    /// After an announcement: `Err` when the sentinels now name another master than
    /// `current` (the connection is then given up, to move to the new one).
    pub(crate) async fn check_master(&self, current: &str) -> Result<(), String> {
        let Self::Sentinel { sentinels, .. } = self else {
            return Ok(());
        };
        match sentinels.ask().await {
            Ok(address) if address != current => Err(format!(
                "the sentinels promoted {address} to master in place of {current}"
            )),
            _ => Ok(()),
        }
    }
}

impl Topology {
    /// Reads `url`; `ca` is the PEM bundle trusted for TLS (`rediss…` only).
    pub(crate) fn parse(url: &str, ca: Option<&[u8]>) -> Result<Self, String> {
        if let Some(rest) = strip(url, "redis+sentinel://", "rediss+sentinel://") {
            let (tls, rest) = rest;
            let hosts = MultiHost::parse(tls, rest)?;
            let mut path = hosts.path.splitn(2, '/');
            let master = path.next().unwrap_or_default().to_owned();
            let db = path.next().unwrap_or("0").to_owned();
            if master.is_empty() {
                return Err("names no master: redis+sentinel://h1:p1,h2:p2/MASTER".into());
            }
            if db.parse::<u32>().is_err() {
                return Err(format!("{db:?} is not a database number"));
            }
            let sentinels = Sentinels::new(hosts, master, db, ca.map(<[u8]>::to_vec))?;
            return Ok(Self::Sentinel(sentinels));
        }
        if let Some((tls, rest)) = strip(url, "redis+cluster://", "rediss+cluster://") {
            let hosts = MultiHost::parse(tls, rest)?;
            if !hosts.path.is_empty() && hosts.path != "0" {
                return Err("a Redis Cluster has only database 0".into());
            }
            let seeds: Vec<String> = hosts
                .hosts
                .iter()
                .map(|host| hosts.node_url(host, "0"))
                .collect();
            for seed in &seeds {
                crate::client(seed, ca).map_err(|err| err.to_string())?;
            }
            return Ok(Self::Cluster {
                seeds,
                ca: ca.map(<[u8]>::to_vec),
            });
        }
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(
                "must be redis://, rediss://, redis+sentinel://, rediss+sentinel://, \
                 redis+cluster:// or rediss+cluster://"
                    .into(),
            );
        }
        let client = crate::client(url, ca).map_err(|err| err.to_string())?;
        let address = address_of(client.get_connection_info());
        Ok(Self::Single { client, address })
    }

    /// Whether the data nodes are reached over TLS.
    pub(crate) fn is_tls_url(url: &str) -> bool {
        url.starts_with("rediss://")
            || url.starts_with("rediss+sentinel://")
            || url.starts_with("rediss+cluster://")
    }
}

/// `(tls, rest)` when `url` starts with `plain` or `tls`.
fn strip<'a>(url: &'a str, plain: &str, tls: &str) -> Option<(bool, &'a str)> {
    url.strip_prefix(plain)
        .map(|rest| (false, rest))
        .or_else(|| url.strip_prefix(tls).map(|rest| (true, rest)))
}

/// `host:port` of a connection.
pub(crate) fn address_of(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_are_read_and_bad_ones_refused() {
        let hosts = MultiHost::parse(false, "u:p%40w@a:1, b:2/mymaster/3").unwrap();
        assert_eq!(hosts.userinfo.as_deref(), Some("u:p%40w"));
        assert_eq!(hosts.hosts, ["a:1", "b:2"]);
        assert_eq!(hosts.path, "mymaster/3");
        assert_eq!(hosts.node_url("c:3", "3"), "redis://u:p%40w@c:3/3");
        for bad in ["", "/m", "a/m", "a:x/m", "a:1,,b/m", "a:99999/m"] {
            assert!(MultiHost::parse(false, bad).is_err(), "{bad:?}");
        }
        assert!(Topology::parse("redis+sentinel://a:1,b:2/", None).is_err());
        assert!(Topology::parse("redis+sentinel://a:1/m/x", None).is_err());
        assert!(Topology::parse("redis+cluster://a:1/4", None).is_err());
        assert!(Topology::parse("nats://a:1", None).is_err());
        assert!(matches!(
            Topology::parse("redis+sentinel://a:1,b:2/m", None),
            Ok(Topology::Sentinel(_))
        ));
        assert!(matches!(
            Topology::parse("redis+cluster://a:1,b:2", None),
            Ok(Topology::Cluster { .. })
        ));
        assert!(matches!(
            Topology::parse("redis://a:1/0", None),
            Ok(Topology::Single { .. })
        ));
    }
}
