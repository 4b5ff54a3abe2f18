//! An async client for [tether](https://crates.io/crates/tether)'s session protocol, on
//! tokio.
//!
//! [`Client::connect`] opens a connection and returns two things: a [`Client`], whose
//! methods send the protocol's commands and return their typed results, and [`Pushes`],
//! the channel of what the server sends on its own — [`Push::Event`]s for the user the
//! connection is logged in as, [`Push::Invalidated`], [`Push::Timeout`],
//! [`Push::IoError`] and [`Push::Shutdown`].
//!
//! ```no_run
//! use tether_client::{Client, LoginOutcome, Push};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut pushes) = Client::connect("127.0.0.1:7700").await?;
//! if client.login("alice", "secret").await? == LoginOutcome::Invalid {
//!     return Err("wrong name or password".into());
//! }
//! while let Some(push) = pushes.recv().await {
//!     match push? {
//!         Push::Event { time, text } => println!("{} {text}", time.local_datetime()?),
//!         other => println!("{other}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/listen.rs` is the same as a program: `cargo run -p tether-client --example
//! listen -- 127.0.0.1:7700 alice` (the password is read from standard input).
//!
//! - **Pipelining.** Commands may be sent without waiting for earlier replies, from any
//!   number of clones of a [`Client`]; the server answers in order and each caller gets
//!   its own reply. Replies are never mixed up with pushes.
//! - **Keep-alive.** [`Options::keep_alive`] sends `prolongate` whenever the connection
//!   has been quiet for an interval, so the server's inactivity timeout does not close it.
//! - **Errors.** Every call returns a [`ClientError`]: the transport failed, the
//!   connection closed, the server broke the protocol ([`ProtocolError`], which also ends
//!   the connection), or a reply did not fit its command. Messages from the server are
//!   bounded by [`Options::max_message_bytes`].
//! - **Transports.** [`Client::from_stream`] speaks the protocol over any tokio stream,
//!   such as a TLS stream.
//! - **Event times.** The server writes an event's time as milliseconds of the wall clock
//!   in its own configured zone; [`EventTime::to_timestamp`] turns it into an instant
//!   given that zone, and [`EventTime::local_datetime`] gives the wall-clock reading.

#![forbid(unsafe_code)]

mod connection;
mod error;
pub mod framing;
mod incoming;
mod message;

pub use connection::{Client, LoginOutcome, Options, Pushes};
pub use error::{ClientError, ProtocolError};
/// The time-zone crate event times are converted with, re-exported so that callers use
/// the same version.
pub use jiff;
pub use message::{EventTime, Push, Reply};
