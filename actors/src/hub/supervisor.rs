//! [`HubSupervisor`]: keeps the registry shards and the bus alive. A child that stops *or
//! panics* drops its `DeathNotice`, and the supervisor starts a fresh one; a fresh
//! registry shard is refilled by the connections of its worker, which re-announce their
//! bindings when they see the shard's new generation in the [`HubState`] they watch.
//!
//! A child that fails again soon after its start is restarted after a growing delay (from
//! [`FIRST_RESTART_DELAY`] up to [`MAX_RESTART_DELAY`]), so one that fails on every start
//! costs a restart every few seconds, not a core.

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
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The delay before restarting a child that failed again within [`STABLE_RUN`] of its start,
/// the first time; it doubles with each further such failure.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest delay before a restart.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// A child that ran this long before failing is restarted at once again.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// When to restart one child after it failed: at once the first time and after a run of
/// at least [`STABLE_RUN`]; else after a delay doubling from [`FIRST_RESTART_DELAY`] up to
/// [`MAX_RESTART_DELAY`].
#[derive(Debug, Clone, Copy)]
struct RestartBackoff {
    /// When the child was last started.
    started: Instant,
    /// The delay for its next failure, should that come within [`STABLE_RUN`].
    next: Duration,
}

impl RestartBackoff {
    /// A child started at `now`.
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            next: Duration::ZERO,
        }
    }

    /// The child failed at `now`: answers how long to wait before starting it again.
    fn failed(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.started) >= STABLE_RUN {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = (delay * 2).clamp(FIRST_RESTART_DELAY, MAX_RESTART_DELAY);
        delay
    }

    /// The child was started again at `now`.
    fn restarted(&mut self, now: Instant) {
        self.started = now;
    }
}

/// How a restart after `delay` is told in the log: `at once` or `in 400ms`.
fn when(delay: Duration) -> String {
    if delay.is_zero() {
        "at once".to_owned()
    } else {
        format!("in {delay:?}")
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
    roster: Arc<dyn HubListeners>,
    /// Set during shutdown: children that end then are not restarted.
    stopping: bool,
    /// When to restart each registry shard, by shard.
    registry_backoff: Vec<RestartBackoff>,
    /// When to restart the bus.
    bus_backoff: RestartBackoff,
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
            let now = Instant::now();
            Self {
                registry_backoff: vec![RestartBackoff::new(now); workers.len()],
                bus_backoff: RestartBackoff::new(now),
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

    /// Runs `restart` now if `delay` is zero, else after `delay` unless shutdown has begun
    /// meanwhile.
    fn restart_after(
        &mut self,
        ctx: &mut Context<Self>,
        delay: Duration,
        restart: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if delay.is_zero() {
            restart(self, ctx);
        } else {
            ctx.run_later(delay, |this, ctx| {
                if !this.stopping {
                    restart(this, ctx);
                }
            });
        }
    }

    /// Starts a fresh registry shard `shard` in place of the one that failed.
    fn restart_registry(&mut self, shard: usize, ctx: &mut Context<Self>) {
        let Some(worker) = self.workers.get(shard) else {
            return;
        };
        let metrics = &self.bus_limits.metrics;
        let registry = start_registry(worker, shard, &ctx.address(), metrics);
        if let Some(backoff) = self.registry_backoff.get_mut(shard) {
            backoff.restarted(Instant::now());
        }
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
        // Counted once the fresh shard is in the state: whoever sees the count can reach it.
        self.bus_limits.metrics.restarted(HubActor::Registry);
    }

    /// Starts a fresh bus in place of the one that failed.
    fn restart_bus(&mut self, ctx: &mut Context<Self>) {
        let bus = start_bus(
            &self.hub,
            &ctx.address(),
            self.state.subscribe(),
            self.bus_limits.clone(),
        );
        self.bus_backoff.restarted(Instant::now());
        self.change_state(|state| state.bus = bus);
        // Counted once the fresh bus is in the state: whoever sees the count can reach it.
        self.bus_limits.metrics.restarted(HubActor::Bus);
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
        let now = Instant::now();
        match msg.0 {
            Child::Registry(shard) => {
                let Some(backoff) = self.registry_backoff.get_mut(shard) else {
                    return;
                };
                let delay = backoff.failed(now);
                log::error!(
                    "user registry shard {shard} stopped; starting a fresh one {}, rebuilt \
                     from the connections",
                    when(delay)
                );
                // The shard that is gone holds nothing; its successor starts empty.
                self.bus_limits.metrics.registry_bindings(shard).set(0);
                self.restart_after(ctx, delay, move |this, ctx| {
                    this.restart_registry(shard, ctx)
                });
            }
            Child::Bus => {
                let delay = self.bus_backoff.failed(now);
                log::error!("event bus stopped; starting a fresh one {}", when(delay));
                self.restart_after(ctx, delay, Self::restart_bus);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that ends in a failure right after its start.
    const QUICK: Duration = Duration::from_millis(1);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// The delays answered for failures after runs of `runs` from `start`, each restart
    /// made on time.
    fn delays(backoff: &mut RestartBackoff, start: Instant, runs: &[Duration]) -> Vec<Duration> {
        let mut now = start;
        runs.iter()
            .map(|run| {
                now += *run;
                let delay = backoff.failed(now);
                now += delay;
                backoff.restarted(now);
                delay
            })
            .collect()
    }

    #[test]
    fn quick_failures_wait_longer_each_time_up_to_the_cap() {
        let start = Instant::now();
        let mut backoff = RestartBackoff::new(start);
        let expected = [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000].map(ms);
        assert_eq!(delays(&mut backoff, start, &[QUICK; 9]), expected);
    }

    #[test]
    fn a_run_of_a_while_resets_the_delay_and_a_first_failure_restarts_at_once() {
        let start = Instant::now();
        let mut backoff = RestartBackoff::new(start);
        // A failure long after the start is a first one: at once.
        let runs = [STABLE_RUN * 3, QUICK, QUICK];
        assert_eq!(delays(&mut backoff, start, &runs), [0, 100, 200].map(ms));
        // Running a while after a delayed restart starts the count again; a little less
        // does not.
        let later = start + STABLE_RUN * 10;
        let runs = [STABLE_RUN, QUICK, STABLE_RUN - QUICK];
        assert_eq!(delays(&mut backoff, later, &runs), [0, 100, 200].map(ms));
    }

    #[test]
    fn the_log_says_when() {
        assert_eq!(when(Duration::ZERO), "at once");
        assert_eq!(when(ms(400)), "in 400ms");
        assert_eq!(when(ms(1600)), "in 1.6s");
    }
}
