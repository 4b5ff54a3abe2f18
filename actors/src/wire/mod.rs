//! The wire layer: bytes ↔ messages (`codec`) and messages ↔ commands and replies
//! (`protocol`). Imports only `util`.

pub mod codec;
pub mod protocol;
