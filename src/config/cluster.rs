//! The `[cluster]` table: several nodes as one service over Redis (SPEC §8) — the Redis URL,
//! this node's name and the prefix of every key and channel.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml_edit::{value, Table};

use crate::config::check::Check;
use crate::config::error::ConfigError;
use crate::config::format::{self, mask_password};
use crate::config::server::ServerConfig;

/// The `[cluster]` table when `redis` is set.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis URL (`redis://` or `rediss://`; `redis+sentinel://`, `redis+cluster://`).
    pub redis: String,
    /// This node's name in logs, metrics and Redis.
    pub node: String,
    /// Whether `node` is the default (the host's name and the listen port): with port 0,
    /// the port the listener got replaces it at start.
    pub node_is_default: bool,
    /// The prefix of every Redis key and channel.
    pub prefix: String,
    /// With `rediss://`: the CA certificates (PEM) that alone are trusted for Redis's
    /// certificate; `None` trusts the system's roots.
    pub redis_ca_file: Option<PathBuf>,
}

/// `cluster.prefix` unless set.
const DEFAULT_PREFIX: &str = "tether";

/// `[cluster]` as written; every key optional, `redis = ""` (a node alone) by default.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [cluster] table")]
pub(super) struct RawCluster {
    redis: String,
    redis_ca_file: String,
    node: String,
    prefix: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            redis: String::new(),
            redis_ca_file: String::new(),
            node: String::new(),
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

/// Whether `url` is a Redis URL the broker can use.
fn redis_url_check(url: &str) -> Result<(), String> {
    tether_cluster::ClusterSettings::check_url(url)
}

impl Check<'_> {
    /// `[cluster]`: `None` when `redis` is empty. `node` defaults to the host's name and
    /// the port of `server.listen` (else of `server.tls.listen`).
    pub(super) fn cluster(
        &self,
        raw: RawCluster,
        server: &ServerConfig,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        if raw.redis.is_empty() {
            if !raw.redis_ca_file.is_empty() {
                return Err(self.error(
                    "cluster.redis_ca_file",
                    "is only used with a rediss:// cluster.redis".into(),
                ));
            }
            return Ok(None);
        }
        if ![
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|scheme| raw.redis.starts_with(scheme))
        {
            return Err(self.error(
                "cluster.redis",
                "must be a redis:// or rediss:// (TLS) URL, redis+sentinel://h1:p1,h2:p2/MASTER, \
                 redis+cluster://h1:p1,h2:p2 (rediss+… for TLS), or \"\" for a node alone"
                    .into(),
            ));
        }
        if !raw.redis_ca_file.is_empty() && !tether_cluster::ClusterSettings::is_tls(&raw.redis) {
            return Err(self.error(
                "cluster.redis_ca_file",
                "is only used with a rediss:// (TLS) cluster.redis".into(),
            ));
        }
        if let Err(err) = redis_url_check(&raw.redis) {
            return Err(self.error("cluster.redis", format!("invalid URL: {err}")));
        }
        let is_plain_text = |text: &str| !text.chars().any(char::is_control);
        let node = match raw.node.as_str() {
            // The host's name and the port (SPEC §4): the listen address alone would be
            // `0.0.0.0:7700` on every host.
            "" => server
                .listen
                .or(server.tls.as_ref().and_then(|tls| tls.listen))
                .or(server.websocket.as_ref().map(|ws| ws.listen))
                .map_or_else(String::new, |address| {
                    format!("{}:{}", tether_cluster::host_name(), address.port())
                }),
            node => node.to_string(),
        };
        if node.is_empty() || node.len() > 128 || !is_plain_text(&node) {
            return Err(self.error(
                "cluster.node",
                "must be 1 to 128 bytes without control characters".into(),
            ));
        }
        if raw.prefix.is_empty() || raw.prefix.len() > 128 || !is_plain_text(&raw.prefix) {
            return Err(self.error(
                "cluster.prefix",
                "must be 1 to 128 bytes without control characters".into(),
            ));
        }
        if let Err(err) = tether_cluster::ClusterSettings::check_prefix(&raw.redis, &raw.prefix) {
            return Err(self.error("cluster.prefix", err));
        }
        Ok(Some(ClusterConfig {
            node_is_default: raw.node.is_empty(),
            redis: raw.redis,
            node,
            prefix: raw.prefix,
            redis_ca_file: self.optional_path(&raw.redis_ca_file),
        }))
    }
}

/// `[cluster]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows
/// it: the defaults when off, the Redis password masked.
pub(super) fn effective(cluster: Option<&ClusterConfig>) -> Table {
    let mut table = Table::new();
    table.insert(
        "redis",
        value(cluster.map_or_else(String::new, |c| mask_password(&c.redis))),
    );
    table.insert(
        "redis_ca_file",
        format::path(cluster.and_then(|c| c.redis_ca_file.as_deref())),
    );
    table.insert(
        "node",
        value(cluster.map_or_else(String::new, |c| c.node.clone())),
    );
    table.insert(
        "prefix",
        value(cluster.map_or_else(|| DEFAULT_PREFIX.to_string(), |c| c.prefix.clone())),
    );
    table
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{assert_refused, config};
    use crate::config::Config;

    #[test]
    fn cluster_keys_are_checked_and_the_node_defaults_to_the_host_name_and_port() {
        assert!(config("").unwrap().cluster.is_none(), "alone by default");
        assert!(config("[cluster]\nnode = \"n1\"")
            .unwrap()
            .cluster
            .is_none());
        let clustered = config(
            "[server]\nlisten = \"127.0.0.1:9000\"\n\
             [cluster]\nredis = \"redis://:pw@127.0.0.1:6390/2\"",
        )
        .unwrap();
        let cluster = clustered.cluster.as_ref().expect("clustered");
        let default_node = format!("{}:9000", tether_cluster::host_name());
        assert_eq!(
            (cluster.node.as_str(), cluster.prefix.as_str()),
            (default_node.as_str(), "tether")
        );
        let effective = clustered.effective_toml();
        assert!(effective.contains("redis = \"redis://:****@127.0.0.1:6390/2\""));
        assert!(effective.contains(&format!("node = \"{default_node}\"")));
        let tls = Config::from_toml(
            "[cluster]\nredis = \"rediss://h:6379\"\nredis_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .unwrap();
        let cluster = tls.cluster.as_ref().expect("clustered over TLS");
        assert_eq!(
            cluster.redis_ca_file.as_deref(),
            Some(Path::new("/etc/tether/ca.pem"))
        );
        assert!(tls
            .effective_toml()
            .contains("redis_ca_file = \"/etc/tether/ca.pem\""));
        assert!(config("[cluster]\nredis = \"rediss://h:6379\"")
            .unwrap()
            .cluster
            .is_some_and(|cluster| cluster.redis_ca_file.is_none()));
        assert_refused(
            "[cluster]\nredis = \"redis://h:6379\"\nredis_ca_file = \"ca.pem\"",
            "cluster.redis_ca_file",
            "rediss://",
        );
        assert_refused(
            "[cluster]\nredis = \"http://h\"",
            "cluster.redis",
            "redis://",
        );
        assert_refused(
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\\u001fb\"",
            "cluster.node",
            "control",
        );
        assert_refused(
            "[cluster]\nredis = \"redis://h\"\nprefix = \"\"",
            "cluster.prefix",
            "1 to 128",
        );
    }

    #[test]
    fn sentinel_and_redis_cluster_urls_are_checked() {
        let sentinel = config(
            "[cluster]\nredis = \"redis+sentinel://u:pw@h1:26379,h2:26379/mymaster\"\nnode = \"n\"",
        )
        .unwrap();
        assert!(sentinel
            .effective_toml()
            .contains("redis = \"redis+sentinel://u:****@h1:26379,h2:26379/mymaster\""));
        assert!(
            config("[cluster]\nredis = \"redis+cluster://h1:7000,h2:7001\"\nnode = \"n\"")
                .unwrap()
                .cluster
                .is_some()
        );
        assert!(Config::from_toml(
            "[cluster]\nredis = \"rediss+cluster://h1:7000\"\nnode = \"n\"\nredis_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .is_ok());
        for (url, why) in [
            ("redis+sentinel://h1:26379,h2:26379/", "master"),
            ("redis+sentinel://h1:x/m", "host:port"),
            ("redis+cluster://h1:7000/3", "database 0"),
            ("redis+cluster://", "no host"),
            ("nats://h:4222", "redis+sentinel://"),
        ] {
            assert_refused(
                &format!("[cluster]\nredis = \"{url}\"\nnode = \"n\""),
                "cluster.redis",
                why,
            );
        }
        assert_refused(
            "[cluster]\nredis = \"redis+cluster://h:7000\"\nnode = \"n\"\nprefix = \"t{x}\"",
            "cluster.prefix",
            "hash tags",
        );
        assert_refused(
            "[cluster]\nredis = \"redis+sentinel://h:1/m\"\nnode = \"n\"\nredis_ca_file = \"ca.pem\"",
            "cluster.redis_ca_file",
            "rediss://",
        );
    }
}
