//! [`Backoff`]: exponential delays between connection attempts, with jitter.

use serde::{Deserialize, Serialize};

use crate::rand::Rng;
use crate::ws::ConfigError;

/// The delay before attempt `n + 1` after `n` failed ones in a row: `initial_ms * factor^n`,
/// capped at `max_ms`, less a random part of up to `jitter_percent` of it (so clients that lost
/// the same server spread out rather than return together). The count restarts when a
/// connection opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// The delay after the first failure, before jitter. Default 100 ms.
    pub initial_ms: u64,
    /// The cap on any delay. Default 5,000 ms: phoenix.js's longest reconnect delay.
    pub max_ms: u64,
    /// How much each failure multiplies the delay. Default 2.
    pub factor: u32,
    /// The most a delay is shortened by jitter, in percent of it. Default 20.
    pub jitter_percent: u8,
    /// Give up after this many attempts in a row fail. Default: never.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 100,
            max_ms: 5_000,
            factor: 2,
            jitter_percent: 20,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before jitter after `failures` failed attempts in a row (at least 1).
    pub fn base_ms(&self, failures: u32) -> u64 {
        let mut delay = self.initial_ms.min(self.max_ms);
        for _ in 1..failures {
            if delay >= self.max_ms {
                break;
            }
            delay = delay
                .saturating_mul(u64::from(self.factor))
                .min(self.max_ms);
        }
        delay
    }

    /// The delay after `failures` failed attempts in a row, jitter drawn from `rng`: within
    /// `[base * (100 - jitter_percent) / 100, base]`.
    pub fn delay_ms(&self, failures: u32, rng: &mut Rng) -> u64 {
        let base = self.base_ms(failures);
        let spread = base / 100 * u64::from(self.jitter_percent)
            + base % 100 * u64::from(self.jitter_percent) / 100;
        (base - rng.next_u64() % (spread + 1)).max(1)
    }

    /// Whether another attempt is allowed after `failures` failed ones in a row.
    pub fn allows(&self, failures: u32) -> bool {
        self.max_attempts.is_none_or(|max| failures < max)
    }

    /// Checks that the values make sense together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_ms == 0 {
            return Err(ConfigError::new(
                "backoff.initial_ms",
                "must be positive: a zero delay is a tight loop",
            ));
        }
        if self.max_ms < self.initial_ms {
            return Err(ConfigError::new(
                "backoff.max_ms",
                "must be at least initial_ms",
            ));
        }
        if self.factor == 0 {
            return Err(ConfigError::new("backoff.factor", "must be at least 1"));
        }
        if self.jitter_percent > 100 {
            return Err(ConfigError::new(
                "backoff.jitter_percent",
                "must be at most 100",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::new(
                "backoff.max_attempts",
                "must be at least 1, or None for no limit",
            ));
        }
        Ok(())
    }
}
