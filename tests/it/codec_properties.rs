//! Properties of the wire codec (SPEC §1) over generated input: however a byte stream is
//! cut into reads it decodes to the same messages, encoding then decoding gives the parts
//! back, nothing panics, and what the decoder leaves buffered never exceeds
//! `max_message_bytes`. The `cargo fuzz` target in `actors/fuzz/` drives the same decoder
//! with unguided input for longer (see SECURITY.md).

use bytes::BytesMut;
use proptest::prelude::*;
use tether_actors::protocol::codec::{encode_message, is_valid_part, DecodeError, MessageCodec};

/// Terminates a message.
const RS: u8 = 0x1E;
/// Separates parts.
const US: u8 = 0x1F;

/// What decoding a whole stream gives: the messages (as their parts) and whether it stopped
/// on an over-long message.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    messages: Vec<Vec<Vec<u8>>>,
    too_long: bool,
}

/// The reference: split the stream on RS by hand; the first message (complete or not)
/// longer than `limit` ends decoding with an error.
fn reference_decode(stream: &[u8], limit: usize) -> Decoded {
    let mut messages = Vec::new();
    let mut rest = stream;
    loop {
        match rest.iter().position(|&b| b == RS) {
            Some(end) if end <= limit => {
                messages.push(
                    rest[..end]
                        .split(|&b| b == US)
                        .map(<[u8]>::to_vec)
                        .collect(),
                );
                rest = &rest[end + 1..];
            }
            Some(_) => {
                return Decoded {
                    messages,
                    too_long: true,
                }
            }
            None => {
                return Decoded {
                    messages,
                    too_long: rest.len() > limit,
                }
            }
        }
    }
}

/// Feeds `stream` to the codec in pieces ending at `cuts` (sorted offsets), decoding after
/// each piece as the connection does, and checks the buffer bound after every call.
fn chunked_decode(stream: &[u8], cuts: &[usize], limit: usize) -> Decoded {
    let mut codec = MessageCodec::new(limit);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        let end = end.clamp(start, stream.len());
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    messages.push(frame.parts().map(<[u8]>::to_vec).collect());
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= limit,
                        "decoder waits on {} buffered bytes, limit {limit}",
                        buf.len()
                    );
                    break;
                }
                Err(DecodeError::MessageTooLong { limit: reported }) => {
                    assert_eq!(reported, limit);
                    return Decoded {
                        messages,
                        too_long: true,
                    };
                }
            }
        }
    }
    Decoded {
        messages,
        too_long: false,
    }
}

/// Byte streams rich in separators, so that messages and parts of every length occur.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => Just(RS),
        3 => Just(US),
        6 => b'a'..=b'z',
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..600)
}

/// Cut points anywhere in (and past) a stream of up to 600 bytes.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..700, 0..40).prop_map(|mut cuts| {
        cuts.sort_unstable();
        cuts
    })
}

/// A valid part: any bytes but the separators, UTF-8 or not.
fn part() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no separator", |b| *b != RS && *b != US),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_cutting_of_a_stream_decodes_to_the_same_messages(
        stream in stream(),
        cuts in cuts(),
        limit in 1usize..64,
    ) {
        prop_assert_eq!(chunked_decode(&stream, &cuts, limit), reference_decode(&stream, limit));
    }

    #[test]
    fn byte_by_byte_and_all_at_once_agree(stream in stream(), limit in 1usize..64) {
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(
            chunked_decode(&stream, &every_byte, limit),
            chunked_decode(&stream, &[], limit)
        );
    }

    #[test]
    fn encode_then_decode_is_the_identity_for_valid_parts(
        messages in prop::collection::vec(prop::collection::vec(part(), 1..6), 0..12),
        cuts in cuts(),
    ) {
        let mut wire = BytesMut::new();
        for parts in &messages {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert!(parts.iter().all(|part| is_valid_part(part)));
            encode_message(&parts, &mut wire);
        }
        let decoded = chunked_decode(&wire, &cuts, 6 * 41);
        prop_assert!(!decoded.too_long);
        prop_assert_eq!(decoded.messages, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_within_the_limit(
        stream in prop::collection::vec(any::<u8>(), 0..3000),
        chunk in 1usize..700,
        limit in 0usize..300,
    ) {
        // Feeds reads of `chunk` bytes as the connection does (it reads 4 KiB at a time):
        // the buffer never holds more than a partial message plus one read.
        let mut codec = MessageCodec::new(limit);
        let mut buf = BytesMut::new();
        'reads: for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            prop_assert!(buf.len() <= limit + chunk);
            loop {
                match codec.decode_frame(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.as_bytes().len() <= limit),
                    Ok(None) => break,
                    Err(_) => break 'reads,
                }
            }
        }
    }
}

#[test]
fn an_over_long_message_is_refused_as_soon_as_it_passes_the_limit() {
    let limit = 100;
    let mut codec = MessageCodec::new(limit);
    let mut buf = BytesMut::new();
    for fed in 1..=limit + 1 {
        buf.extend_from_slice(b"x");
        match codec.decode_frame(&mut buf) {
            Ok(None) => assert!(fed <= limit, "{fed} bytes accepted without a terminator"),
            Err(DecodeError::MessageTooLong { .. }) => assert_eq!(fed, limit + 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}
