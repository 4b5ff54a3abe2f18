//! Logs in and prints every push until the connection closes.
//!
//! ```sh
//! echo secret | cargo run -p tether-client --example listen -- 127.0.0.1:7700 alice UTC
//! ```
//!
//! Arguments: the server's address, the user name, and the server's `events.time_zone`
//! (default `UTC`) to show event times as instants. The password is the first line of
//! standard input.

use std::time::Duration;
use tether_client::jiff::tz::TimeZone;
use tether_client::{Client, LoginOutcome, Options, Push};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        return Err("usage: listen ADDR NAME [SERVER_ZONE] < password".into());
    };
    let server_zone = match args.next() {
        Some(zone) => TimeZone::get(&zone)?,
        None => TimeZone::UTC,
    };
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);

    // A keep-alive well below the server's default 30-minute inactivity timeout.
    let options = Options::default().keep_alive(Duration::from_secs(60));
    let (client, mut pushes) = Client::connect_with(addr.as_str(), options).await?;
    if client.login(&name, password).await? == LoginOutcome::Invalid {
        return Err("login_invalid: wrong name or password".into());
    }
    println!("logged in as {name}; waiting for pushes");
    while let Some(push) = pushes.recv().await {
        match push? {
            Push::Event { time, text } => {
                println!("event at {}: {text}", time.to_timestamp(&server_zone)?);
            }
            other => println!("{other}"),
        }
    }
    println!("connection closed");
    Ok(())
}
