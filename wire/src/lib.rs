//! The wire format of tether's session protocol (SPEC §1–§3), shared by the server
//! (`tether-actors`) and the client (`tether-client`): messages of parts, parts separated
//! by US (0x1F), messages terminated by RS (0x1E), and the one-part messages the server
//! sends ([`Reply`]), and the commands a client sends ([`Verb`]).
//!
//! The only place that knows the separator bytes and the protocol's words. It
//! depends on `bytes` and `memchr` only, so the client pulls in no actor framework, and it
//! knows nothing of sockets: [`MessageDecoder`] splits whatever bytes a transport read.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

mod frame;
mod reply;
mod verb;

pub use frame::{
    encode_message, encoded_length, encoded_message, ends_at_boundary, is_valid_part, parts,
    DecodeError, Frame, MessageDecoder, RS, US,
};
pub use reply::{Reply, EVENT};
pub use verb::Verb;
