//! [`HubSupervisor`]: keeps the registry shards and the bus alive. A child that stops *or
//! panics* drops its `DeathNotice`, and the supervisor starts a fresh one; a fresh
//! registry shard is refilled by the connections of its worker, which re-announce their
//! bindings when they see the shard's new generation in the [`HubState`] they watch.

use crate::hub::bus::{BusLimits, EventBusActor};
use crate::hub::messages::{Child, ChildGone, DeathNotice};
#[cfg(feature = "fault-injection")]
pub use crate::hub::messages::{FaultTarget, InjectPanic};
use crate::hub::registry::UserRegistryActor;
use crate::hub::roster::HubListeners;
use crate::hub::shards::Shards;
use crate::hub::state::HubState;
use crate::util::metrics::{HubActor, Metrics};
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use std::sync::Arc;
use tokio::sync::watch;

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
    roster: Arc<dyn HubListeners>,
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
        roster: Arc<dyn HubListeners>,
    ) -> (Addr<Self>, watch::Receiver<HubState>) {
        let mut receiver = None;
        let supervisor = Self::create(|ctx| {
            let me = ctx.address();
            let registries: Vec<_> = workers
                .iter()
                .enumerate()
                .map(|(shard, worker)| start_registry(worker, shard, &me, &bus_limits.metrics))
                .collect();
            // The bus reads the shards from this state, which holds its own address too: it
            // is started once the state exists, and the state then gets its address.
            let (state, watcher) = watch::channel(HubState {
                shards: Shards {
                    generations: vec![0; registries.len()].into(),
                    registries: registries.into(),
                },
                bus: Addr::new(actix::dev::channel::channel(0).0),
                shutting_down: false,
            });
            let bus = start_bus(&hub, &me, watcher.clone(), bus_limits.clone());
            state.send_modify(|state| state.bus = bus);
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
    let supervisor = me.clone().recipient();
    let metrics = metrics.clone();
    let bindings = metrics.registry_bindings(shard);
    UserRegistryActor::start_in_arbiter(worker, move |_| {
        UserRegistryActor::new(
            metrics,
            bindings,
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
    state: watch::Receiver<HubState>,
    limits: BusLimits,
) -> Addr<EventBusActor> {
    let supervisor = me.clone().recipient();
    EventBusActor::start_in_arbiter(hub, move |_| {
        EventBusActor::new(
            Box::new(state),
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

impl Handler<ChildGone> for HubSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildGone, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let me = ctx.address();
        let metrics = &self.bus_limits.metrics;
        match msg.0 {
            Child::Registry(shard) => {
                log::error!(
                    "user registry shard {shard} stopped; starting a fresh one, rebuilt from \
                     the connections"
                );
                let Some(worker) = self.workers.get(shard) else {
                    return;
                };
                // The shard that is gone holds nothing; its successor starts empty.
                metrics.registry_bindings(shard).set(0);
                metrics.restarted(HubActor::Registry);
                let registry = start_registry(worker, shard, &me, metrics);
                // The bus reads the new shard from the state, as the connections do.
                self.change_state(|state| {
                    let mut registries = state.shards.registries.to_vec();
                    registries[shard] = registry;
                    let mut generations = state.shards.generations.to_vec();
                    generations[shard] += 1;
                    state.shards = Shards {
                        registries: registries.into(),
                        generations: generations.into(),
                    };
                });
            }
            Child::Bus => {
                log::error!("event bus stopped; starting a fresh one");
                metrics.restarted(HubActor::Bus);
                let bus = start_bus(
                    &self.hub,
                    &me,
                    self.state.subscribe(),
                    self.bus_limits.clone(),
                );
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
