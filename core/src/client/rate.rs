//! A token bucket, in thousandths of a token so that refilling needs no fractions.

use super::config::RateLimit;

/// Thousandths of a token per token.
const MILLI: u64 = 1_000;

#[derive(Debug)]
pub(crate) struct Bucket {
    limit: Option<RateLimit>,
    milli_tokens: u64,
    updated_ms: u64,
}

impl Bucket {
    pub(crate) fn new(limit: Option<RateLimit>) -> Bucket {
        Bucket {
            limit,
            milli_tokens: limit.map_or(0, |l| u64::from(l.burst) * MILLI),
            updated_ms: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let Some(limit) = self.limit else { return };
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        self.updated_ms = self.updated_ms.max(now_ms);
        // `per_second` tokens a second is `per_second` thousandths a millisecond.
        let added = elapsed.saturating_mul(u64::from(limit.per_second));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(added)
            .min(u64::from(limit.burst) * MILLI);
    }

    /// Takes a token if one is there.
    pub(crate) fn take(&mut self, now_ms: u64) -> bool {
        if self.limit.is_none() {
            return true;
        }
        self.refill(now_ms);
        if self.milli_tokens >= MILLI {
            self.milli_tokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// When the next token will be there, if there is a limit and none is now.
    pub(crate) fn next_token_ms(&self) -> Option<u64> {
        let limit = self.limit?;
        if self.milli_tokens >= MILLI {
            return None;
        }
        let missing = MILLI - self.milli_tokens;
        let per_ms = u64::from(limit.per_second);
        Some(self.updated_ms + missing.div_ceil(per_ms))
    }
}
