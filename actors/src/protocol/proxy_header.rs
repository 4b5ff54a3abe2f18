//! The PROXY protocol (v1 text, v2 binary; SPEC §10): the header a trusted load balancer
//! puts before a client's bytes, carrying the client's address. Read byte-exact from the
//! socket (nothing past the header is consumed, so a TLS handshake or the protocol starts
//! right after it) and checked with the `ppp` crate.

use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 header's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, its `\r\n` included (the specification's bound).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: the fixed 16 bytes and up to 1 KiB of addresses and
/// TLVs (load balancers send far less); a longer one is refused, so a header's memory is
/// bounded.
const V2_MAX: usize = 16 + 1024;

/// Addresses whose connections begin with a PROXY protocol header.
#[derive(Debug, Clone, Default)]
pub struct ProxyTrust {
    /// The networks trusted to send the header.
    from: Vec<ipnet::IpNet>,
}

impl ProxyTrust {
    /// Trusts the networks in `from`; none means no header is ever read.
    pub fn new(from: Vec<ipnet::IpNet>) -> Self {
        Self { from }
    }

    /// Whether any address is trusted (so some connections begin with a header).
    pub fn trusts_any(&self) -> bool {
        !self.from.is_empty()
    }

    /// Whether a connection from `peer` must begin with a header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.iter().any(|net| net.contains(&peer))
    }
}

/// Reads the header at the start of `stream`: the client address it carries, or `None`
/// when it carries none (v2 `LOCAL`, a load balancer's health check; v1 `UNKNOWN`), in
/// which case the connection's own address stands. An error when the bytes are not a
/// valid header, or are longer than the bounds allow.
pub async fn read(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut header = vec![0u8; V2_SIGNATURE.len()];
    stream.read_exact(&mut header).await?;
    if header == V2_SIGNATURE {
        header.resize(16, 0);
        stream.read_exact(&mut header[12..]).await?;
        let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + rest > V2_MAX {
            return Err(invalid(format!("a v2 header of {} bytes", 16 + rest)));
        }
        header.resize(16 + rest, 0);
        stream.read_exact(&mut header[16..]).await?;
        let parsed =
            ppp::v2::Header::try_from(&header[..]).map_err(|err| invalid(err.to_string()))?;
        if parsed.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return match parsed.addresses {
            ppp::v2::Addresses::IPv4(ip) => Ok(Some((ip.source_address, ip.source_port).into())),
            ppp::v2::Addresses::IPv6(ip) => Ok(Some((ip.source_address, ip.source_port).into())),
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => Ok(None),
        };
    }
    if !header.starts_with(b"PROXY ") {
        return Err(invalid("no PROXY header".into()));
    }
    // Byte by byte up to the `\n`, so nothing after the header is taken from the socket.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(invalid("a v1 header without its end".into()));
        }
        header.push(stream.read_u8().await?);
    }
    let parsed = ppp::v1::Header::try_from(&header[..]).map_err(|err| invalid(err.to_string()))?;
    match parsed.addresses {
        ppp::v1::Addresses::Tcp4(ip) => Ok(Some((ip.source_address, ip.source_port).into())),
        ppp::v1::Addresses::Tcp6(ip) => Ok(Some((ip.source_address, ip.source_port).into())),
        ppp::v1::Addresses::Unknown => Ok(None),
    }
}

/// An `InvalidData` error saying `what` was wrong.
fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
