//! [`HubSupervisor`]: keeps the registry shards and the bus alive. A child that stops *or
//! panics* drops its [`DeathNotice`], and the supervisor starts a fresh one; a fresh
//! registry shard is refilled by the connections of its worker, which re-announce their
//! bindings when they see the shard's new generation in the [`HubState`] they watch.

use crate::bus::{BusLimits, EventBusActor, UseRegistry};
use crate::metrics::Metrics;
use crate::registry::UserRegistryActor;
use crate::roster::Roster;
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use std::sync::Arc;
use tokio::sync::watch;

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

/// The supervised children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// The registry shard of the worker with this index.
    Registry(usize),
    Bus,
}

/// Held by a supervised actor; dropping it (on stop, or while a panic unwinds) tells the
/// supervisor that the actor is gone.
pub(crate) struct DeathNotice {
    /// Who to tell.
    supervisor: Addr<HubSupervisor>,
    /// Which child this is.
    child: Child,
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        self.supervisor.do_send(ChildGone(self.child));
    }
}

/// Starts and restarts the registry shards (each on its worker arbiter) and the bus (on the
/// hub arbiter).
pub struct HubSupervisor {
    /// The thread the bus runs on.
    hub: ArbiterHandle,
    /// The worker threads; registry shard `i` runs on worker `i`, beside its connections.
    workers: Vec<ArbiterHandle>,
    /// Given to every bus it starts.
    bus_limits: BusLimits,
    /// Publishes the children's addresses and the shutdown flag, for handles.
    state: watch::Sender<HubState>,
    /// Every connection, told of each change of `state`.
    roster: Arc<Roster>,
    /// Set during shutdown: children that end then are not restarted.
    stopping: bool,
}

impl HubSupervisor {
    /// Starts the supervisor here, one registry shard on each of `workers` and the bus on
    /// `hub`; returns its address and a receiver of the hub's state. Changes of the state
    /// are also told to the connections in `roster`.
    pub(crate) fn launch(
        hub: ArbiterHandle,
        workers: Vec<ArbiterHandle>,
        bus_limits: BusLimits,
        roster: Arc<Roster>,
    ) -> (Addr<Self>, watch::Receiver<HubState>) {
        let mut receiver = None;
        let supervisor = Self::create(|ctx| {
            let me = ctx.address();
            let registries: Vec<_> = workers
                .iter()
                .enumerate()
                .map(|(shard, worker)| start_registry(worker, shard, &me, &bus_limits.metrics))
                .collect();
            let bus = start_bus(&hub, &me, registries.clone(), bus_limits.clone());
            let (state, watcher) = watch::channel(HubState {
                registry_generations: vec![0; registries.len()].into(),
                registries: registries.into(),
                bus,
                shutting_down: false,
            });
            receiver = Some(watcher);
            Self {
                hub,
                workers,
                bus_limits,
                state,
                roster,
                stopping: false,
            }
        });
        let receiver = receiver.unwrap_or_else(|| unreachable!("Actor::create runs its closure"));
        (supervisor, receiver)
    }
}

impl HubSupervisor {
    /// Changes the hub's state, then tells every connection (in that order: a connection
    /// that joins the roster after the telling reads the changed state).
    fn change_state(&self, change: impl FnOnce(&mut HubState)) {
        self.state.send_modify(change);
        self.roster.tell(&self.state.borrow());
    }
}

fn start_registry(
    worker: &ArbiterHandle,
    shard: usize,
    me: &Addr<HubSupervisor>,
    metrics: &Metrics,
) -> Addr<UserRegistryActor> {
    let supervisor = me.clone();
    let metrics = metrics.clone();
    UserRegistryActor::start_in_arbiter(worker, move |_| {
        UserRegistryActor::new(
            metrics,
            DeathNotice {
                supervisor,
                child: Child::Registry(shard),
            },
        )
    })
}

fn start_bus(
    hub: &ArbiterHandle,
    me: &Addr<HubSupervisor>,
    registries: Vec<Addr<UserRegistryActor>>,
    limits: BusLimits,
) -> Addr<EventBusActor> {
    let supervisor = me.clone();
    EventBusActor::start_in_arbiter(hub, move |_| {
        EventBusActor::new(
            registries,
            limits,
            DeathNotice {
                supervisor,
                child: Child::Bus,
            },
        )
    })
}

impl Actor for HubSupervisor {
    type Context = Context<Self>;
}

/// A child stopped or panicked.
#[derive(Message)]
#[rtype(result = "()")]
struct ChildGone(Child);

impl Handler<ChildGone> for HubSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildGone, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let me = ctx.address();
        match msg.0 {
            Child::Registry(shard) => {
                log::error!(
                    "user registry shard {shard} stopped; starting a fresh one, rebuilt from \
                     the connections"
                );
                let Some(worker) = self.workers.get(shard) else {
                    return;
                };
                let registry = start_registry(worker, shard, &me, &self.bus_limits.metrics);
                self.change_state(|state| {
                    let mut registries = state.registries.to_vec();
                    registries[shard] = registry.clone();
                    state.registries = registries.into();
                    let mut generations = state.registry_generations.to_vec();
                    generations[shard] += 1;
                    state.registry_generations = generations.into();
                    state.bus.do_send(UseRegistry { shard, registry });
                });
            }
            Child::Bus => {
                log::error!("event bus stopped; starting a fresh one");
                let registries = self.state.borrow().registries.to_vec();
                let bus = start_bus(&self.hub, &me, registries, self.bus_limits.clone());
                self.change_state(|state| state.bus = bus);
            }
        }
    }
}

/// Tells every connection to say `shutdown` and close; children are no longer restarted.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BeginShutdown;

impl Handler<BeginShutdown> for HubSupervisor {
    type Result = ();

    fn handle(&mut self, _: BeginShutdown, _: &mut Context<Self>) {
        self.stopping = true;
        self.change_state(|state| state.shutting_down = true);
    }
}

/// Makes the receiving registry or bus panic, to test supervision.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Which child [`InjectPanic`] goes to.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    /// Every shard of the user registry.
    Registry,
    /// The event bus.
    Bus,
}
