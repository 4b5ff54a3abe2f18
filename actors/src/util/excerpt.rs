//! Client input as it appears in log lines: quoted and cut short, so that one message
//! cannot put kilobytes (or a line break) into one log line.

use std::fmt;

/// How many bytes of client input a log line shows: a valid user name (at most 128 bytes)
/// is shown whole.
pub const MAX_SHOWN_BYTES: usize = 128;

/// Client bytes for a log line: their text (lossy UTF-8) quoted and escaped like `{:?}`;
/// past [`MAX_SHOWN_BYTES`], the first bytes followed by `…` and the whole length.
#[derive(Debug, Clone, Copy)]
pub struct Excerpt<'a>(pub &'a [u8]);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        if bytes.len() <= MAX_SHOWN_BYTES {
            return write!(f, "{:?}", String::from_utf8_lossy(bytes));
        }
        // Cut at a character boundary when the input is UTF-8 there.
        let mut end = MAX_SHOWN_BYTES;
        while end > 0 && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
            end -= 1;
        }
        let shown = String::from_utf8_lossy(&bytes[..end]);
        write!(f, "{shown:?}… ({} bytes)", bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_shown_whole_and_escaped() {
        assert_eq!(Excerpt(b"alice").to_string(), "\"alice\"");
        assert_eq!(Excerpt(b"a\nb").to_string(), "\"a\\nb\"");
        let name = "n".repeat(MAX_SHOWN_BYTES);
        assert_eq!(Excerpt(name.as_bytes()).to_string(), format!("{name:?}"));
    }

    #[test]
    fn long_input_is_cut_with_its_length() {
        let name = "x".repeat(65_000);
        let shown = Excerpt(name.as_bytes()).to_string();
        let expected = format!("{:?}… (65000 bytes)", "x".repeat(MAX_SHOWN_BYTES));
        assert_eq!(shown, expected);
    }

    #[test]
    fn long_input_is_cut_between_characters() {
        let name = "я".repeat(100);
        let shown = Excerpt(name.as_bytes()).to_string();
        assert_eq!(shown, format!("{:?}… (200 bytes)", "я".repeat(64)));
    }
}
