//! Which dots of one replica a node has seen: every clock up to `max`, and a bounded set of
//! clocks past it (deltas that arrived out of order). Compact once the gaps fill.

use std::collections::BTreeSet;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Context {
    /// Every clock in `1..=max` has been seen.
    max: u64,
    /// Clocks above `max + 1` seen, waiting for the gap below them to fill.
    cloud: BTreeSet<u64>,
}

impl Context {
    pub(crate) fn contains(&self, clock: u64) -> bool {
        clock <= self.max || self.cloud.contains(&clock)
    }

    /// Whether every clock up to `clock` has been seen.
    pub(crate) fn covers(&self, clock: u64) -> bool {
        clock <= self.max
    }

    /// How many clocks past the contiguous prefix are held.
    pub(crate) fn out_of_order(&self) -> usize {
        self.cloud.len()
    }

    /// Records `clock` as seen.
    pub(crate) fn insert(&mut self, clock: u64) {
        if clock <= self.max {
            return;
        }
        if clock == self.max + 1 {
            self.max = clock;
            self.compact();
        } else {
            self.cloud.insert(clock);
        }
    }

    /// Records every clock up to `clock` as seen (a state transfer made at that clock).
    pub(crate) fn insert_through(&mut self, clock: u64) {
        if clock <= self.max {
            return;
        }
        self.max = clock;
        self.cloud = self.cloud.split_off(&(clock + 1));
        self.compact();
    }

    fn compact(&mut self) {
        while self.cloud.first() == Some(&(self.max + 1)) {
            self.cloud.pop_first();
            self.max += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Context;

    #[test]
    fn gaps_fill_and_compact() {
        let mut c = Context::default();
        c.insert(1);
        c.insert(3);
        c.insert(4);
        assert!(c.contains(3) && !c.contains(2) && c.covers(1) && !c.covers(3));
        assert_eq!(c.out_of_order(), 2);
        c.insert(2);
        assert!(c.covers(4));
        assert_eq!(c.out_of_order(), 0);
        c.insert(9);
        c.insert_through(7);
        assert!(c.covers(7) && c.contains(9) && !c.contains(8));
        c.insert(8);
        assert!(c.covers(9));
    }
}
