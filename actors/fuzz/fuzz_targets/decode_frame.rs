//! Fuzzes `MessageCodec::decode_frame`: arbitrary bytes, cut into arbitrary reads, under an
//! arbitrary limit. Checks what must hold for every input: no panic, a decoder waiting for
//! more holds at most `max_message_bytes`, every frame fits the limit and holds no
//! terminator, and the messages do not depend on where the reads were cut.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_actors::protocol::codec::MessageCodec;

/// Decodes `stream` fed in pieces whose lengths come from `cuts` (cycled); returns the
/// frames' bytes and whether decoding stopped on an over-long message.
fn decode(stream: &[u8], cuts: &[u8], limit: usize) -> (Vec<Vec<u8>>, bool) {
    let mut codec = MessageCodec::new(limit);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut step = cuts.iter().cycle();
    while !rest.is_empty() {
        let take = step
            .next()
            .map_or(rest.len(), |&n| usize::from(n).max(1))
            .min(rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let bytes = frame.as_bytes();
                    assert!(bytes.len() <= limit, "frame over the limit");
                    assert!(!bytes.contains(&0x1E), "frame holds a terminator");
                    assert_eq!(
                        frame.parts().count(),
                        bytes.iter().filter(|&&b| b == 0x1F).count() + 1
                    );
                    frames.push(bytes.to_vec());
                }
                Ok(None) => {
                    assert!(buf.len() <= limit, "decoder waits on more than the limit");
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    // Layout: limit (2 bytes), number of cut bytes (1 byte), the cuts, then the stream.
    if data.len() < 3 {
        return;
    }
    let limit = usize::from(u16::from_le_bytes([data[0], data[1]]) % 2048);
    let cut_count = usize::from(data[2]).min(data.len() - 3);
    let cuts = &data[3..3 + cut_count];
    let stream = &data[3 + cut_count..];
    let chunked = decode(stream, cuts, limit);
    let whole = decode(stream, &[], limit);
    assert_eq!(chunked, whole, "decoding depends on how the input was cut");
});
