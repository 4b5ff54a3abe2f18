//! A host program that runs tether inside its own actix System, publishes events from one
//! of its own actors, and changes a password through the typed messages of the bus.
//!
//! ```text
//! cargo run -p tether-actors --example embedded -- [ADDRESS] [TICKS]
//! printf 'login\x1fdemo\x1fdemo\x1e' | nc 127.0.0.1 7800      # in another terminal
//! ```
//! ADDRESS defaults to 127.0.0.1:7800; with TICKS the program stops after that many
//! events, otherwise at Ctrl-C. At tick 10 the host changes demo's password to `demo2`:
//! demo's connections get `invalidated`.

use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tether_actors::auth::user_store::{PasswordHash, UserSet, UserTable};
use tether_actors::hub::bus::{Invalidate, InvalidationCause};
use tether_actors::{Settings, Tether, TetherHandle};

/// The tick at which the host changes demo's password.
const PASSWORD_CHANGE_AT: u64 = 10;

/// The host's own actor: publishes a tick for user `demo` every second.
struct Ticker {
    tether: TetherHandle,
    users: Arc<UserTable>,
    sent: u64,
    limit: Option<u64>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Actor for Ticker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |ticker, ctx| {
            ticker.sent += 1;
            if ticker.sent == PASSWORD_CHANGE_AT {
                ticker.change_password(ctx);
            }
            let text = format!("tick {}", ticker.sent);
            let tether = ticker.tether.clone();
            ctx.spawn(
                async move { tether.publish("demo", text).await }
                    .into_actor(ticker)
                    .map(|receipt, ticker, _| {
                        match receipt {
                            Ok(receipt) => println!(
                                "tick {} at {} handed to {} connection(s)",
                                ticker.sent, receipt.time, receipt.connections
                            ),
                            Err(err) => eprintln!("publish failed: {err}"),
                        }
                        if ticker.limit.is_some_and(|limit| ticker.sent >= limit) {
                            if let Some(done) = ticker.done.take() {
                                let _ = done.send(());
                            }
                        }
                    }),
            );
        });
    }
}

impl Ticker {
    /// Puts a new user set in force, then tells the bus, by its typed message, to
    /// invalidate every user whose hash changed.
    fn change_password(&mut self, ctx: &mut Context<Self>) {
        // A host program makes its own hashes; at cost 4 this takes about a millisecond.
        #[allow(clippy::disallowed_methods)]
        let hash = match bcrypt::hash("demo2", 4) {
            Ok(hash) => PasswordHash::from(hash),
            Err(err) => return eprintln!("cannot hash: {err}"),
        };
        let changed = self
            .users
            .replace(UserSet::from([("demo".to_string(), hash)]));
        let bus = self.tether.bus();
        for user in changed {
            println!("password of {user:?} changed to demo2");
            let invalidate = Invalidate {
                user,
                except: None,
                cause: InvalidationCause::PasswordChanged,
            };
            ctx.spawn(bus.send(invalidate).into_actor(self).map(|answer, _, _| {
                if let Ok(Ok(count)) = answer {
                    println!("{count} connection(s) invalidated");
                }
            }));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:7800".to_string());
    let limit = args.next().map(|ticks| ticks.parse::<u64>()).transpose()?;

    let mut users = UserSet::new();
    // Before the server starts: no event loop to block yet.
    #[allow(clippy::disallowed_methods)]
    users.insert(
        "demo".to_string(),
        PasswordHash::from(bcrypt::hash("demo", 4)?),
    );
    let settings = Settings {
        idle_timeout: Duration::from_secs(30 * 60),
        max_message_bytes: 65536,
        max_pending_bytes: 1 << 20,
        max_pending_total: 256 << 20,
        max_connections: 1000,
        shutdown_grace: Duration::from_secs(5),
        workers: 1,
        password_threads: 1,
        login_failures_per_minute: 10,
        bcrypt_cost: 4,
        time_zone: jiff::tz::TimeZone::UTC,
        verifiers: None,
    };
    let listener = std::net::TcpListener::bind(&address)?;

    let system = System::new();
    system.block_on(async move {
        let users = Arc::new(UserTable::new(users));
        let tether = Tether::start(listener, settings, Arc::clone(&users) as _)?;
        println!(
            "embedded tether on {0}; try: printf 'login\\x1fdemo\\x1fdemo\\x1e' | nc {1} {2}",
            tether.local_addr(),
            tether.local_addr().ip(),
            tether.local_addr().port()
        );
        let (done, finished) = tokio::sync::oneshot::channel();
        Ticker {
            tether: tether.handle(),
            users,
            sent: 0,
            limit,
            done: Some(done),
        }
        .start();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = finished => {}
        }
        tether.shutdown().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
