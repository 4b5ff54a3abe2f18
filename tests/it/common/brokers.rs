//! Redis set-ups without a single point of failure, for the brokers tests (SPEC §8):
//! [`SentinelSet`] (a master, a replica and three sentinels, `redis-server --sentinel`) and
//! [`RedisCluster`] (three masters and three replicas made one cluster with
//! `redis-cli --cluster create`), every server a [`Redis`] on a free loopback port.

use super::redis::Redis;
use super::wait_until;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a set-up may take to agree (replication, sentinels, cluster state).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A master, one replica of it, and three sentinels watching it as `mymaster`.
pub struct SentinelSet {
    /// The sentinels, dropped first.
    pub sentinels: Vec<Redis>,
    /// The master at the start.
    pub master: Redis,
    /// Its replica at the start.
    pub replica: Redis,
}

/// The master's name the sentinels know.
pub const MASTER_NAME: &str = "mymaster";

impl SentinelSet {
    /// Starts it and waits until every sentinel knows the master and its replica; `None`
    /// when Redis is not installed (outside CI).
    pub fn start() -> Option<Self> {
        Self::start_with_password(None)
    }

    /// Like [`SentinelSet::start`]; with a `password`, the master, the replica and the
    /// sentinels all want it (`requirepass`, `masterauth`, `sentinel auth-pass`).
    pub fn start_with_password(password: Option<&str>) -> Option<Self> {
        let auth: Vec<String> = password
            .map(|password| {
                vec![
                    "--requirepass".into(),
                    password.into(),
                    "--masterauth".into(),
                    password.into(),
                ]
            })
            .unwrap_or_default();
        let mut master = Redis::start_with(&auth)?;
        master.cli_password = password.map(str::to_owned);
        let mut replica_args = auth.clone();
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.addr().port().to_string(),
        ]);
        let mut replica = Redis::start_with(&replica_args)?;
        replica.cli_password = password.map(str::to_owned);
        let synced = wait_until(SETUP_TIMEOUT, || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        assert!(synced, "the replica did not sync:\n{}", replica.log());
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let mut sentinel = start_sentinel(master.addr().port(), password)?;
            sentinel.cli_password = password.map(str::to_owned);
            sentinels.push(sentinel);
        }
        let known = wait_until(SETUP_TIMEOUT, || {
            sentinels.iter().all(|sentinel| {
                let text = sentinel.cli(&["SENTINEL", "REPLICAS", MASTER_NAME]);
                text.contains(&replica.addr().port().to_string())
                    && sentinel
                        .cli(&["SENTINEL", "SENTINELS", MASTER_NAME])
                        .matches("runid")
                        .count()
                        == 2
            })
        });
        assert!(
            known,
            "the sentinels did not learn the replica and each other"
        );
        Some(Self {
            sentinels,
            master,
            replica,
        })
    }

    /// The `cluster.redis` URL listing the three sentinels, with `userinfo@` if given.
    pub fn url_with(&self, userinfo: &str) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| sentinel.addr().to_string())
            .collect();
        format!(
            "redis+sentinel://{userinfo}{}/{MASTER_NAME}",
            hosts.join(",")
        )
    }

    /// The `cluster.redis` URL listing the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| sentinel.addr().to_string())
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// Whether `redis` says it is a master (`ROLE`); `false` while it does not answer
    /// (a promotion closes the clients' connections).
    pub fn is_master(redis: &Redis) -> bool {
        redis
            .try_cli(&["ROLE"])
            .is_ok_and(|role| role.lines().next() == Some("master"))
    }
}

/// A sentinel (`redis-server sentinel.conf --sentinel`) watching the master on
/// `master_port`, quorum 2, declaring it down after 1 s; with a `password`, it gives it to
/// the data nodes and wants it from its clients.
fn start_sentinel(master_port: u16, password: Option<&str>) -> Option<Redis> {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n{}",
            password.map_or_else(String::new, |password| format!(
                "sentinel auth-pass {MASTER_NAME} {password}\nrequirepass {password}\n"
            ))
        ),
    )
    .expect("write sentinel.conf");
    // The configuration file must come first; the sentinel rewrites it (its folder is
    // kept alive by leaking the guard into the file's lifetime: the OS cleans /tmp).
    let conf = conf.display().to_string();
    std::mem::forget(dir);
    Redis::start_sentinel(&conf)
}

/// Makes `servers` (started with `--cluster-enabled yes`) one Redis Cluster with
/// `redis-cli --cluster create`, `replicas` per master, through their plain ports; waits
/// until every one says `cluster_state:ok`.
pub fn create_cluster(servers: &[Redis], replicas: u32) {
    let addresses: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let output = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        output.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ok = wait_until(SETUP_TIMEOUT, || {
        servers.iter().all(|server| {
            server
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        })
    });
    assert!(ok, "the Redis Cluster did not become ok");
}

/// Three masters and three replicas, one Redis Cluster.
pub struct RedisCluster {
    /// Every server, the masters first (as created).
    pub servers: Vec<Redis>,
}

impl RedisCluster {
    /// Starts six servers and makes them a cluster (one replica per master); `None` when
    /// Redis is not installed (outside CI).
    pub fn start() -> Option<Self> {
        let mut servers = Vec::new();
        for _ in 0..6 {
            servers.push(Redis::start_with(&[
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "{dir}/nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "1000".into(),
                // A replica syncs at once, not 5 s later: one not yet synced refuses to
                // take over ("disconnected from master for longer than allowed").
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ])?);
        }
        create_cluster(&servers, 1);
        let cluster = Self { servers };
        let ok = wait_until(SETUP_TIMEOUT, || cluster.masters().len() == 3);
        assert!(ok, "the Redis Cluster does not have three masters");
        let synced = wait_until(SETUP_TIMEOUT, || {
            cluster.servers.iter().all(|server| {
                let info = server.cli(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "the replicas did not sync with their masters");
        Some(cluster)
    }

    /// The `cluster.redis` URL listing the first three servers.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.servers[..3]
            .iter()
            .map(|server| server.addr().to_string())
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The servers that are masters now and serve slots (running ones only).
    pub fn masters(&self) -> Vec<&Redis> {
        self.servers
            .iter()
            .filter(|server| server.running() && SentinelSet::is_master(server))
            .collect()
    }

    /// A server's cluster node id.
    pub fn node_id(server: &Redis) -> String {
        server.cli(&["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// Moves `slots` slots from `from` to `to` with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: &Redis, to: &Redis, slots: u32) {
        let output = Command::new("redis-cli")
            .args(["--cluster", "reshard", &from.addr().to_string()])
            .args(["--cluster-from", &Self::node_id(from)])
            .args(["--cluster-to", &Self::node_id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
