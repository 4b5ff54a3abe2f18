//! The wire format of SPEC §1 — messages of parts, parts separated by US (0x1F), messages
//! terminated by RS (0x1E) — from the `tether-wire` crate, which the client shares; the
//! server's `MessageCodec` is its `MessageDecoder`. Nothing else of this crate knows the
//! separator bytes.

pub use tether_wire::{
    encode_message, encoded_length, encoded_message, ends_at_boundary, is_valid_part, parts,
    DecodeError, Frame, MessageDecoder as MessageCodec, RS, US,
};
