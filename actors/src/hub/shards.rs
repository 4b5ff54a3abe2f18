//! [`Shards`]: the registry shards in force, the part of the hub's state the bus reads.
//!
//! The hub's state (`HubState`, published by the supervisor on a watch channel) also holds
//! the bus's own address, so the bus cannot name it without importing what sits above it.
//! It reads the shards through [`ShardsInForce`] instead, which the state's receiver
//! implements: one source for every reader of the addresses, and no copy kept up to date
//! by messages.

use crate::hub::registry::UserRegistryActor;
use actix::prelude::*;
use std::sync::Arc;

/// The registry shards in force, one per worker, with their generations.
#[derive(Clone)]
pub struct Shards {
    /// One per worker arbiter, indexed like the workers.
    pub(crate) registries: Arc<[Addr<UserRegistryActor>]>,
    /// Per shard, bumped each time a fresh registry replaces a failed one.
    pub(crate) generations: Arc<[u64]>,
}

/// Where the bus reads the shards in force (the hub state's receiver).
pub(crate) trait ShardsInForce: Send {
    /// The shards in force now.
    fn current(&mut self) -> Shards;

    /// The shards in force, if they changed since last read (one atomic load otherwise).
    fn changed(&mut self) -> Option<Shards>;
}
