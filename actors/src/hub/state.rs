//! [`HubState`]: the addresses of the hub's actors in force, and `HubChanged`, the
//! message that tells a connection they changed. The supervisor is the only writer; handles
//! read it from a watch channel, connections from their `HubChanged` messages.

use crate::hub::bus::EventBusActor;
use crate::hub::shards::{Shards, ShardsInForce};
use actix::prelude::*;
use tokio::sync::watch;

/// What every connection and handle needs to know about the hub, published on a watch
/// channel so a change reaches all of them.
#[derive(Clone)]
pub struct HubState {
    /// The registry shards in force and their generations.
    pub(crate) shards: Shards,
    /// The bus in force.
    pub(crate) bus: Addr<EventBusActor>,
    /// Set once the server is stopping: every connection says `shutdown` and closes.
    pub(crate) shutting_down: bool,
}

/// The hub's state changed: sent to every connection by the [`Roster`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HubChanged(pub HubState);

impl ShardsInForce for watch::Receiver<HubState> {
    fn current(&mut self) -> Shards {
        self.borrow_and_update().shards.clone()
    }

    fn changed(&mut self) -> Option<Shards> {
        // A closed channel (the supervisor gone) changes nothing any more.
        self.has_changed().unwrap_or(false).then(|| self.current())
    }
}
