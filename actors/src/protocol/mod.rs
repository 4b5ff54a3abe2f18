//! The protocol layer: bytes ↔ messages (`codec`), messages ↔ commands and replies
//! (`command`), and the PROXY protocol header before them (`proxy_header`). Imports only
//! `util`. The framing and the reply words are the `tether-wire` crate's, shared with the
//! client; this layer re-exports them and adds the server's side (commands, PROXY).

pub mod codec;
pub mod command;
pub mod proxy_header;
