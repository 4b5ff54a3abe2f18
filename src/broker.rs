//! The one place that chooses the cluster's broker from `[cluster]` (SPEC §8).
//!
//! Every broker is a [`Broker`] behind this function: its metrics are registered and its
//! state reported through the trait, so the rest of the server names no broker type. A new
//! broker (NATS, say) is a new crate or module and one arm of the `match` in [`start`].

use crate::config::ClusterConfig;
use std::sync::Arc;
use tether_actors::hub::broker::Broker;

/// Starts the broker `cluster.redis` names: a single Redis (`redis://`, `rediss://`), Redis
/// with Sentinel (`redis+sentinel://`, `rediss+sentinel://`) or a Redis Cluster
/// (`redis+cluster://`, `rediss+cluster://`). `redis_ca` is `cluster.redis_ca_file`'s
/// contents, checked. Answers why it cannot start otherwise.
pub fn start(
    cluster: &ClusterConfig,
    redis_ca: Option<Vec<u8>>,
) -> Result<Arc<dyn Broker>, String> {
    let settings = tether_cluster::ClusterSettings {
        redis: cluster.redis.clone(),
        node: cluster.node.clone(),
        prefix: cluster.prefix.clone(),
        redis_ca,
    };
    let broker = tether_cluster::start(settings).map_err(|err| err.to_string())?;
    log::info!(
        "cluster: node {:?}, prefix {:?}, Redis at {}",
        cluster.node,
        cluster.prefix,
        crate::config::mask_password(&cluster.redis)
    );
    Ok(broker)
}
