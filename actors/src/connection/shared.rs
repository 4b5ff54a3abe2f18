//! [`ConnectionShared`]: the limits and services every connection of a server shares.

use crate::auth::password::{PasswordChecker, PasswordHash};
use crate::auth::throttle::LoginThrottle;
use crate::auth::user_store::UserStore;
use crate::connection::cluster_throttle::ClusterThrottle;
use crate::connection::ConnectionActor;
use crate::hub::presence::Presence;
use crate::hub::roster::Roster;
use crate::util::metrics::Metrics;
use crate::util::output_budget::OutputBudget;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::time::Duration;

/// Limits and services every connection of a server shares.
pub(crate) struct ConnectionShared {
    /// Inactivity allowed before `timeout`.
    pub idle_timeout: Duration,
    /// Longest message accepted.
    pub max_message_bytes: usize,
    /// Unsent output allowed before `io_error`.
    pub max_pending_bytes: usize,
    /// Bounds the unsent output of all connections together.
    pub output_budget: Arc<OutputBudget>,
    /// Where password hashes come from.
    pub users: Arc<dyn UserStore>,
    /// Runs bcrypt off the event loops.
    pub checker: PasswordChecker,
    /// Counts failed logins and checks in flight per client address and name.
    pub throttle: Arc<LoginThrottle>,
    /// In a cluster, the throttle's count over every node.
    pub cluster_throttle: ClusterThrottle,
    /// Checked for unknown users when the user store has no stand-in of its own, so they
    /// cost as much as a wrong password.
    pub stand_in_hash: PasswordHash,
    /// What the server counts.
    pub metrics: Metrics,
    /// Which shards hold connections of which user; each connection counts itself.
    pub presence: Arc<Presence>,
    /// The connections of each worker, told when the hub's state changes.
    pub roster: Arc<Roster<ConnectionActor>>,
    /// Per worker, how long events took from the bus to a connection's socket.
    pub delivery_seconds: Box<[Histogram]>,
}
