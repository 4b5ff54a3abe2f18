//! The one place that chooses the cluster's broker from `[cluster]` (SPEC §8).
//!
//! Every broker is a [`Broker`] behind this function: its metrics are registered and its
//! state reported through the trait, so the rest of the server names no broker type. A new
//! broker (NATS, say) is a new crate or module and one arm of the `match` in [`start`].

use crate::config::ClusterConfig;
use std::sync::Arc;
use std::time::Duration;
use tether_actors::hub::broker::Broker;

/// How long start-up waits for the broker's first attempt to join the cluster.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Starts the broker `cluster.redis` names: a single Redis (`redis://`, `rediss://`), Redis
/// with Sentinel (`redis+sentinel://`, `rediss+sentinel://`) or a Redis Cluster
/// (`redis+cluster://`, `rediss+cluster://`). `redis_ca` is `cluster.redis_ca_file`'s
/// contents, checked; `bound_port`, the port the clients' listener got, names the node
/// when `cluster.node` is left to its default (the host's name and that port). Waits
/// (at most 5 s) for the first attempt to join: a name another live node holds
/// refuses the start (SPEC §8). Answers why it cannot start otherwise.
pub fn start(
    cluster: &ClusterConfig,
    bound_port: Option<u16>,
    redis_ca: Option<Vec<u8>>,
) -> Result<Arc<dyn Broker>, String> {
    let node = match bound_port.filter(|_| cluster.node_is_default) {
        Some(port) => format!("{}:{port}", tether_cluster::host_name()),
        None => cluster.node.clone(),
    };
    let settings = tether_cluster::ClusterSettings {
        redis: cluster.redis.clone(),
        node: node.clone(),
        prefix: cluster.prefix.clone(),
        redis_ca,
    };
    let broker = tether_cluster::start(settings).map_err(|err| err.to_string())?;
    broker.wait_joined(JOIN_WAIT)?;
    log::info!(
        "cluster: node {:?}, prefix {:?}, Redis at {}",
        node,
        cluster.prefix,
        crate::config::mask_password(&cluster.redis)
    );
    Ok(broker)
}
