//! The wire layer: bytes ↔ messages (`codec`), messages ↔ commands and replies
//! (`protocol`), and the PROXY protocol header before them (`proxy_header`). Imports only
//! `util`.

pub mod codec;
pub mod protocol;
pub mod proxy_header;
