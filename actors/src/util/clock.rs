//! The time written into events (SPEC §3): the moment of registration as milliseconds of
//! local wall-clock time in the configured zone, read as if it were UTC.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Turns instants into event times for one time zone.
#[derive(Debug, Clone)]
pub struct EventClock {
    /// The zone whose wall clock event times show.
    zone: TimeZone,
}

impl EventClock {
    /// A clock showing the wall-clock time of `zone`.
    pub fn new(zone: TimeZone) -> Self {
        Self { zone }
    }

    /// The event time of the present moment.
    pub fn now(&self) -> i64 {
        self.event_time(Timestamp::now())
    }

    /// The event time of `instant`: UTC milliseconds plus the zone's offset at that instant.
    pub fn event_time(&self, instant: Timestamp) -> i64 {
        let offset = self.zone.to_offset(instant);
        instant.as_millisecond() + i64::from(offset.seconds()) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant() -> Timestamp {
        "2026-11-26T22:33:06.123Z".parse().expect("valid timestamp")
    }

    #[test]
    fn moscow_time_is_utc_plus_three_hours() {
        let zone = TimeZone::get("Europe/Moscow").expect("zone known");
        assert_eq!(
            EventClock::new(zone).event_time(instant()),
            1_795_743_186_123
        );
    }

    #[test]
    fn utc_time_is_plain_unix_milliseconds() {
        assert_eq!(
            EventClock::new(TimeZone::UTC).event_time(instant()),
            1_795_732_386_123
        );
    }

    #[test]
    fn daylight_saving_offsets_follow_the_instant() {
        let zone = TimeZone::get("Europe/Berlin").expect("zone known");
        let clock = EventClock::new(zone);
        let winter: Timestamp = "2026-01-15T12:00:00Z".parse().expect("valid");
        let summer: Timestamp = "2026-07-15T12:00:00Z".parse().expect("valid");
        assert_eq!(
            clock.event_time(winter) - winter.as_millisecond(),
            3_600_000
        );
        assert_eq!(
            clock.event_time(summer) - summer.as_millisecond(),
            7_200_000
        );
    }
}
