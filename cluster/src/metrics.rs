//! [`ClusterMetrics`]: what the Redis broker counts, for `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The broker's counters and gauges; cheap to clone (every clone counts into the same).
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// 1 while connected to Redis, else 0.
    pub(crate) connected: Gauge,
    /// Connections to Redis made again after one was lost.
    pub(crate) reconnects: Counter,
    /// Events by direction: `sent` (published through Redis), `received` (from others).
    events: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Events from other nodes not delivered here, by cause.
    dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Client invalidations not kept for later because too many were waiting.
    pub(crate) invalidations_dropped: Counter,
    /// Users whose channel this node is subscribed to.
    pub(crate) subscribed_users: Gauge,
    /// 1 for each Redis master this node is connected to now, by address.
    masters: Family<Vec<(&'static str, String)>, Gauge>,
}

impl ClusterMetrics {
    /// Every count at zero, with the labelled children created, so they show from the start.
    pub fn new() -> Self {
        let metrics = Self::default();
        metrics.sent();
        metrics.received();
        metrics.dropped_slow_node();
        metrics
    }

    /// Events published through Redis.
    pub(crate) fn sent(&self) -> Counter {
        self.events
            .get_or_create(&vec![("direction", "sent")])
            .clone()
    }

    /// Events received from other nodes.
    pub(crate) fn received(&self) -> Counter {
        self.events
            .get_or_create(&vec![("direction", "received")])
            .clone()
    }

    /// Events from other nodes dropped because this node did not take them in time.
    pub(crate) fn dropped_slow_node(&self) -> Counter {
        self.dropped
            .get_or_create(&vec![("cause", "slow_node")])
            .clone()
    }

    /// The Redis masters this node is connected to now (none while unreachable).
    pub(crate) fn set_masters(&self, addresses: &[String]) {
        self.masters.clear();
        for address in addresses {
            self.masters
                .get_or_create(&vec![("address", address.clone())])
                .set(1);
        }
    }

    /// Adds every metric to `registry` (give it a `tether` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_connected",
            "1 while this node is connected to the cluster's Redis, else 0",
            self.connected.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Connections to Redis made again after one was lost",
            self.reconnects.clone(),
        );
        registry.register(
            "cluster_events",
            "Events through Redis: sent (published here), received (from other nodes)",
            self.events.clone(),
        );
        registry.register(
            "cluster_events_dropped",
            "Events from other nodes not delivered here, by cause",
            self.dropped.clone(),
        );
        registry.register(
            "cluster_invalidations_dropped",
            "Client invalidations not kept for later while Redis was unreachable (too many waiting)",
            self.invalidations_dropped.clone(),
        );
        registry.register(
            "cluster_subscribed_users",
            "Users whose Redis channel this node is subscribed to",
            self.subscribed_users.clone(),
        );
        registry.register(
            "cluster_redis_master",
            "1 for each Redis master this node is connected to now, labelled by its address",
            self.masters.clone(),
        );
    }
}
