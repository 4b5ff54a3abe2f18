//! The `tether-client` crate against a real server (in-process, over real TCP): typed
//! results of every command, pipelining, pushes, event times and keep-alive.

use crate::common::in_process::{test_settings, InProcessServer};
use std::future::Future;
use std::time::Duration;
use tether_client::jiff::tz::TimeZone;
use tether_client::jiff::Timestamp;
use tether_client::{Client, ClientError, LoginOutcome, Options, Push, Pushes, Reply};

/// How long a test waits for anything to arrive.
const WAIT: Duration = Duration::from_secs(5);

/// Runs `test` on a fresh runtime; the server is created and dropped outside it.
fn run<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds")
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), test)
                .await
                .expect("test finished within 30 s")
        });
}

/// The next push, within [`WAIT`].
async fn next_push(pushes: &mut Pushes) -> Push {
    tokio::time::timeout(WAIT, pushes.recv())
        .await
        .expect("a push within the wait")
        .expect("the connection is open")
        .expect("no error")
}

#[test]
fn every_command_returns_its_typed_result() {
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let addr = server.addr();
    run(async move {
        let (client, _pushes) = Client::connect(addr).await.expect("connects");
        assert_eq!(
            client.login("alice", "wrong").await.expect("answered"),
            LoginOutcome::Invalid
        );
        assert_eq!(
            client.login("alice", "secret").await.expect("answered"),
            LoginOutcome::Valid
        );
        client.prolongate().await.expect("prolongate_ack");
        client.invalidate().await.expect("invalidate_ack");
        client.logout().await.expect("logout_ack");
        assert_eq!(
            client.command(&[b"hello"]).await.expect("answered"),
            Reply::UnknownCommand
        );
        assert_eq!(
            client.command(&[b"logout", b"x"]).await.expect("answered"),
            Reply::InvalidArgsCount
        );
        client.disconnect().await.expect("disconnect_ack");
        assert!(matches!(
            client.prolongate().await,
            Err(ClientError::Closed)
        ));
    });
}

#[test]
fn pipelined_commands_from_clones_each_get_their_own_reply() {
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let addr = server.addr();
    run(async move {
        let (client, _pushes) = Client::connect(addr).await.expect("connects");
        // A login's slow password check holds up the commands pipelined behind it; the
        // replies still reach the right callers.
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    match n % 3 {
                        0 => client.login("alice", "secret").await.map(|outcome| {
                            assert_eq!(outcome, LoginOutcome::Valid);
                        }),
                        1 => client.prolongate().await,
                        _ => client
                            .command(&[b"nonsense"])
                            .await
                            .map(|reply| assert_eq!(reply, Reply::UnknownCommand)),
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task ran").expect("its own reply");
        }
    });
}

#[test]
fn events_and_invalidations_arrive_as_pushes_with_the_event_instant() {
    let mut settings = test_settings();
    let moscow = TimeZone::get("Europe/Moscow").expect("zone known");
    settings.time_zone = moscow.clone();
    let server = InProcessServer::start(settings, &[("alice", "secret")]);
    let addr = server.addr();
    let handle = server.handle().clone();
    run(async move {
        let (first, mut first_pushes) = Client::connect(addr).await.expect("connects");
        let (second, mut second_pushes) = Client::connect(addr).await.expect("connects");
        for client in [&first, &second] {
            assert_eq!(
                client.login("alice", "secret").await.expect("answered"),
                LoginOutcome::Valid
            );
        }
        let before = Timestamp::now();
        let receipt = handle.publish("alice", "hello ü").await.expect("published");
        let after = Timestamp::now();
        let Push::Event { time, text } = next_push(&mut first_pushes).await else {
            panic!("an event first");
        };
        assert_eq!(text, "hello ü");
        assert_eq!(time.local_millis(), receipt.time);
        let instant = time.to_timestamp(&moscow).expect("in range");
        let millis = |t: Timestamp| t.as_millisecond();
        assert!(
            millis(before) <= millis(instant) && millis(instant) <= millis(after),
            "{before} <= {instant} <= {after}"
        );
        assert!(matches!(
            next_push(&mut second_pushes).await,
            Push::Event { .. }
        ));

        second.invalidate().await.expect("invalidate_ack");
        assert_eq!(next_push(&mut first_pushes).await, Push::Invalidated);
        assert!(second_pushes.try_recv().is_none(), "not the sender");
    });
}

#[test]
fn shutdown_is_pushed_and_then_the_pushes_end() {
    let mut server = InProcessServer::start(test_settings(), &[]);
    let addr = server.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds");
    let (client, mut pushes) = runtime.block_on(Client::connect(addr)).expect("connects");
    runtime
        .block_on(client.prolongate())
        .expect("connected before the shutdown");
    server.begin_shutdown();
    runtime.block_on(async {
        assert_eq!(next_push(&mut pushes).await, Push::Shutdown);
        let end = tokio::time::timeout(WAIT, pushes.recv())
            .await
            .expect("the connection closes");
        assert!(end.is_none(), "{end:?}");
        assert!(matches!(
            client.prolongate().await,
            Err(ClientError::Closed)
        ));
    });
}

#[test]
fn keep_alive_holds_a_quiet_connection_past_the_idle_timeout() {
    let mut settings = test_settings();
    settings.idle_timeout = Duration::from_millis(1000);
    let server = InProcessServer::start(settings, &[]);
    let addr = server.addr();
    run(async move {
        let options = Options::default().keep_alive(Duration::from_millis(200));
        let (kept, mut kept_pushes) = Client::connect_with(addr, options).await.expect("connects");
        let (_quiet, mut quiet_pushes) = Client::connect(addr).await.expect("connects");
        // The connection without keep-alive times out: the timeout is real.
        assert_eq!(next_push(&mut quiet_pushes).await, Push::Timeout);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            kept_pushes.try_recv().is_none(),
            "no timeout with keep-alive"
        );
        kept.prolongate()
            .await
            .expect("still open, replies still matched");
    });
}
