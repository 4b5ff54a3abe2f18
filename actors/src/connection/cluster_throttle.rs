//! The login throttle's cluster half (SPEC §8, "one throttle for the cluster"): in a
//! cluster, every failed login is also counted by the broker across all nodes, per client
//! address and name, and a pair the cluster throttles is refused here unchecked, like one
//! the local [`LoginThrottle`](crate::auth::throttle::LoginThrottle) throttles. The local
//! count still applies: it is what holds while the broker is unreachable (the broker then
//! counts nothing, and says so in its log).

use crate::hub::broker::Broker;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The broker's view of the throttle, when there is a broker and a limit.
pub(crate) struct ClusterThrottle {
    /// The broker, `None` alone or when throttling is off.
    broker: Option<Arc<dyn Broker>>,
    /// Failures allowed per pair and minute (not 0).
    limit: u32,
}

impl ClusterThrottle {
    /// The cluster half for `broker` and `limit` failures a minute (0 = off).
    pub(crate) fn new(broker: Option<Arc<dyn Broker>>, limit: u32) -> Self {
        Self {
            broker: broker.filter(|_| limit > 0),
            limit,
        }
    }

    /// Whether the cluster throttles this pair now (ten failures through any node).
    pub(crate) fn throttled(&self, client: IpAddr, name: &[u8]) -> bool {
        self.broker
            .as_ref()
            .is_some_and(|broker| broker.login_throttled(client, name))
    }

    /// A checked login of this pair failed: answers what resolves once the cluster has
    /// counted it (and told every node when it reached the limit), to hold the
    /// `login_invalid` until then; `None` when there is nothing to wait for.
    pub(crate) fn failed(&self, client: IpAddr, name: &[u8]) -> Option<oneshot::Receiver<()>> {
        let broker = self.broker.as_ref()?;
        broker.login_failed(client, name, self.limit)
    }

    /// A checked login of this pair succeeded: answers what resolves with whether the
    /// cluster admits it (`false`: the cluster throttles the pair, which this node had not
    /// heard yet; a dropped sender admits), the cluster then forgetting its failures;
    /// `None` admits at once.
    pub(crate) fn succeeded(&self, client: IpAddr, name: &[u8]) -> Option<oneshot::Receiver<bool>> {
        let broker = self.broker.as_ref()?;
        broker.login_succeeded(client, name, self.limit)
    }
}
