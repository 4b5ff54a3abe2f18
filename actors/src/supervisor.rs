//! [`HubSupervisor`]: keeps the registry and the bus alive. A child that stops *or panics*
//! drops its [`DeathNotice`], and the supervisor starts a fresh one; a fresh registry is
//! refilled by the connections, which re-announce their bindings when they see the new
//! registry generation in the [`HubState`] they watch.

use crate::bus::{BusLimits, EventBusActor, UseRegistry};
use crate::metrics::Metrics;
use crate::registry::UserRegistryActor;
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::sync::watch;

/// What every connection and handle needs to know about the hub, published on a watch
/// channel so a change reaches all of them.
#[derive(Clone)]
pub struct HubState {
    /// The registry in force.
    pub(crate) registry: Addr<UserRegistryActor>,
    /// Bumped each time a fresh registry replaces a failed one.
    pub(crate) registry_generation: u64,
    /// The bus in force.
    pub(crate) bus: Addr<EventBusActor>,
    /// Set once the server is stopping: every connection says `shutdown` and closes.
    pub(crate) shutting_down: bool,
}

/// The supervised children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    Registry,
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

/// Starts and restarts the registry and the bus on the hub arbiter.
pub struct HubSupervisor {
    /// The thread the children run on.
    arbiter: ArbiterHandle,
    /// Given to every bus it starts.
    bus_limits: BusLimits,
    /// Publishes the children's addresses and the shutdown flag.
    state: watch::Sender<HubState>,
    /// Set during shutdown: children that end then are not restarted.
    stopping: bool,
}

impl HubSupervisor {
    /// Starts the supervisor here and its children on `arbiter`; returns its address and a
    /// receiver of the hub's state.
    pub(crate) fn launch(
        arbiter: ArbiterHandle,
        bus_limits: BusLimits,
    ) -> (Addr<Self>, watch::Receiver<HubState>) {
        let mut receiver = None;
        let supervisor = Self::create(|ctx| {
            let me = ctx.address();
            let registry = start_registry(&arbiter, &me, &bus_limits.metrics);
            let bus = start_bus(&arbiter, &me, registry.clone(), bus_limits.clone());
            let (state, watcher) = watch::channel(HubState {
                registry,
                registry_generation: 0,
                bus,
                shutting_down: false,
            });
            receiver = Some(watcher);
            Self {
                arbiter,
                bus_limits,
                state,
                stopping: false,
            }
        });
        let receiver = receiver.unwrap_or_else(|| unreachable!("Actor::create runs its closure"));
        (supervisor, receiver)
    }
}

fn start_registry(
    arbiter: &ArbiterHandle,
    me: &Addr<HubSupervisor>,
    metrics: &Metrics,
) -> Addr<UserRegistryActor> {
    let supervisor = me.clone();
    let metrics = metrics.clone();
    UserRegistryActor::start_in_arbiter(arbiter, move |_| {
        UserRegistryActor::new(
            metrics,
            DeathNotice {
                supervisor,
                child: Child::Registry,
            },
        )
    })
}

fn start_bus(
    arbiter: &ArbiterHandle,
    me: &Addr<HubSupervisor>,
    registry: Addr<UserRegistryActor>,
    limits: BusLimits,
) -> Addr<EventBusActor> {
    let supervisor = me.clone();
    EventBusActor::start_in_arbiter(arbiter, move |_| {
        EventBusActor::new(
            registry,
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
            Child::Registry => {
                log::error!(
                    "user registry stopped; starting a fresh one, rebuilt from the connections"
                );
                let registry = start_registry(&self.arbiter, &me, &self.bus_limits.metrics);
                self.state.send_modify(|state| {
                    state.registry = registry.clone();
                    state.registry_generation += 1;
                    state.bus.do_send(UseRegistry(registry));
                });
            }
            Child::Bus => {
                log::error!("event bus stopped; starting a fresh one");
                let registry = self.state.borrow().registry.clone();
                let bus = start_bus(&self.arbiter, &me, registry, self.bus_limits.clone());
                self.state.send_modify(|state| state.bus = bus);
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
        self.state.send_modify(|state| state.shutting_down = true);
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
    /// The user registry.
    Registry,
    /// The event bus.
    Bus,
}
