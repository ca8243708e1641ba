//! The shells' clock: milliseconds since a server or client started, from a monotonic source.
//! Shared by both shells.
//!
//! The core only sees `now_ms` numbers, so a recorded run replays without a clock; this is the
//! one place that turns them back into instants to sleep until.

use std::time::{Duration, Instant};

/// A monotonic clock counting milliseconds from its creation.
#[derive(Clone, Copy, Debug)]
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
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
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
