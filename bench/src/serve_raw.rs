//! `serve-raw`: the anchor for "the stack's limit on this machine". A single-thread tokio
//! server that answers every `␞`-terminated message with `prolongate_ack␞` — no actors, no
//! parsing beyond counting terminators, no sessions. One task and one 4 KiB read buffer per
//! connection; replies to everything read in one wake-up go out in one write.

use crate::net::check_loopback;
use crate::proto::RS;
use crate::Fallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Arguments of `serve-raw`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (loopback only).
    addr: SocketAddr,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 4 * 3600)]
    lifetime_secs: u64,
}

const REPLY: &[u8] = tether_client::framing::OnePart::ProlongateAck.message();
const READ_BUFFER: usize = 4096;

/// Serves until the lifetime ends (or the process is killed).
pub fn run(args: &Args) -> Fallible<()> {
    let addr = check_loopback(args.addr)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
        eprintln!("serve-raw: listening on {addr}");
        let lifetime = tokio::time::sleep(Duration::from_secs(args.lifetime_secs));
        tokio::pin!(lifetime);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream));
                    }
                    Err(err) => {
                        eprintln!("serve-raw: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                () = &mut lifetime => {
                    eprintln!("serve-raw: lifetime over, stopping");
                    return Ok(());
                }
            }
        }
    })
}

/// Answers one connection until it closes or fails.
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input = vec![0u8; READ_BUFFER];
    let mut output = Vec::new();
    loop {
        let read = match stream.read(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let messages = memchr::memchr_iter(RS, &input[..read]).count();
        if messages == 0 {
            continue;
        }
        output.clear();
        for _ in 0..messages {
            output.extend_from_slice(REPLY);
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
    }
}
