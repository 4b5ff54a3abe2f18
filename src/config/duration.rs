//! Durations as `server.toml` writes them: `"30m"`, `"250ms"`, `"1m30s"`, `"7d"` — read by
//! [`parse_duration`], written back by [`format_duration`].

use std::time::Duration;

/// A duration the way `server.toml` writes it: `"1h1m1s1ms"`, `"30m"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut text = String::new();
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    for (unit, unit_ms) in units {
        let amount = ms / unit_ms;
        ms %= unit_ms;
        if amount > 0 {
            text.push_str(&format!("{amount}{unit}"));
        }
    }
    text
}

/// Reads a duration: one or more `<decimal integer><unit>` with units `ms`, `s`, `m`, `h`,
/// `d` and no spaces, such as `"30m"`, `"250ms"`, `"1m30s"` or `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "units are ms, s, m, h and d";
    if text.is_empty() {
        return Err(
            "the duration is empty (write it like \"30m\", \"5s\", \"250ms\" or \"1m30s\")"
                .to_string(),
        );
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(format!("expected a number at {rest:?} in {text:?}"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("missing unit after {digits} in {text:?} ({UNITS})")),
            other => return Err(format!("unknown unit {other:?} in {text:?} ({UNITS})")),
        };
        let too_long = || format!("the duration {text:?} is too long");
        let amount: u64 = digits.parse().map_err(|_| too_long())?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_back_in_their_largest_units() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(
            format_duration(Duration::from_millis(3_661_001)),
            "1h1m1s1ms"
        );
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
    }

    #[test]
    fn durations_in_every_unit_and_combined_are_read() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h1m1s1ms"),
            Ok(Duration::from_millis(3_661_001))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn empty_duration_is_rejected() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }

    #[test]
    fn duration_without_unit_is_rejected() {
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("missing unit after 30"));
        assert!(parse_duration("1m30")
            .unwrap_err()
            .contains("missing unit after 30"));
    }

    #[test]
    fn duration_with_unknown_unit_is_rejected() {
        for text in ["5x", "5sec", "5S", "5 s", "5s "] {
            assert!(
                parse_duration(text).unwrap_err().contains("unknown unit"),
                "{text}"
            );
        }
    }

    #[test]
    fn duration_without_number_is_rejected() {
        for text in ["s", "ms", "-5s", "+5s", " 5s", "1.5s", "1m s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn duration_that_overflows_is_rejected() {
        assert!(parse_duration("99999999999999999999ms")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("5124095576030432h")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("5124095576030431h5124095576030431h")
            .unwrap_err()
            .contains("too long"));
    }
}
