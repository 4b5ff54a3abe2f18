//! The hub layer: the actors behind the connections. In order, each module importing only
//! those before it (and the layers below): `messages` (every typed message between the
//! actors and the connections), `broker` (the seam to other nodes), `presence`, `recent_ids` (idempotent publishing alone), `registry`
//! (the sharded user → connections map), `shards` (the registry shards in force, as the bus
//! reads them), `bus` (where events and invalidations enter), `state` (the addresses in
//! force), `roster` (the connections told of a change of state) and `supervisor`.

pub mod broker;
pub mod bus;
pub mod messages;
pub(crate) mod presence;
pub mod recent_ids;
pub mod registry;
pub(crate) mod roster;
pub(crate) mod shards;
pub mod state;
pub mod supervisor;
