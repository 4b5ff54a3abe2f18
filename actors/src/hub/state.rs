//! [`HubState`]: the addresses of the hub's actors in force, and `HubChanged`, the
//! message that tells a connection they changed. The supervisor is the only writer; handles
//! read it from a watch channel, connections from their `HubChanged` messages.

use crate::hub::bus::EventBusActor;
use crate::hub::registry::UserRegistryActor;
use actix::prelude::*;
use std::sync::Arc;

/// What every connection and handle needs to know about the hub, published on a watch
/// channel so a change reaches all of them.
#[derive(Clone)]
pub struct HubState {
    /// The registry shards in force, one per worker arbiter, indexed like the workers.
    pub(crate) registries: Arc<[Addr<UserRegistryActor>]>,
    /// Per shard, bumped each time a fresh registry replaces a failed one.
    pub(crate) registry_generations: Arc<[u64]>,
    /// The bus in force.
    pub(crate) bus: Addr<EventBusActor>,
    /// Set once the server is stopping: every connection says `shutdown` and closes.
    pub(crate) shutting_down: bool,
}

/// The hub's state changed: sent to every connection by the [`Roster`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HubChanged(pub HubState);
