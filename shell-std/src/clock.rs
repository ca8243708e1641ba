//! The shells' clock: milliseconds since a server or client started, from a monotonic source.
//! Shared by both shells.
//!
//! The core only sees `now_ms` numbers, so a recorded run replays without a clock; this is the
//! one place that turns them back into instants to sleep until.

use std::time::{Duration, Instant};

/// A monotonic clock counting milliseconds from its creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the clock started: the `now_ms` of every event.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The clock's reading at `instant`, read elsewhere: a shell that reads the time once for
    /// a batch of wake-ups hands each the same instant. Zero for an instant before the start.
    pub fn ms_at(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.start);
        // In u64, not through `as_millis`'s u128: the multiply and divide of the wide one were
        // most of the 76 instructions this took (callgrind), once a message in spool-smol.
        since
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(since.subsec_millis()))
    }

    /// The instant of `deadline_ms`, for timers that take an `Instant`; a deadline too far
    /// away to represent becomes a year from the start.
    pub fn instant(&self, deadline_ms: u64) -> Instant {
        self.start
            .checked_add(Duration::from_millis(deadline_ms))
            .unwrap_or_else(|| self.start + Duration::from_secs(365 * 24 * 3600))
    }

    /// How long from now until `deadline_ms`; zero when it has passed.
    ///
    /// Computed from the exact instant, not from `now_ms`, so that a wake-up lands on or after
    /// the millisecond the core asked for and its `Tick` is not ignored as early.
    pub fn until(&self, deadline_ms: u64) -> Duration {
        let at = self.start.checked_add(Duration::from_millis(deadline_ms));
        at.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_at_an_instant_counts_from_the_start_and_never_goes_below_zero() {
        let clock = Clock::new();
        assert_eq!(
            clock.ms_at(clock.start + Duration::from_millis(1_500)),
            1_500
        );
        assert_eq!(clock.ms_at(clock.start + Duration::from_micros(999)), 0);
        // An instant read before the clock started, as a batch's time can be.
        let before = clock.start.checked_sub(Duration::from_millis(5));
        if let Some(before) = before {
            assert_eq!(clock.ms_at(before), 0);
        }
        assert_eq!(clock.ms_at(clock.instant(42)), 42);
        assert_eq!(
            clock.ms_at(
                clock.start + Duration::from_secs(86_400 * 400) + Duration::from_nanos(7_999_999)
            ),
            86_400 * 400 * 1000 + 7
        );
    }
}
