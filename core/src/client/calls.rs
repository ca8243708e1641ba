//! Calls waiting for replies, each with a deadline.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub(crate) struct Calls {
    by_id: BTreeMap<u64, u64>,
    by_deadline: BTreeSet<(u64, u64)>,
}

impl Calls {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub(crate) fn insert(&mut self, id: u64, deadline_ms: u64) {
        self.by_id.insert(id, deadline_ms);
        self.by_deadline.insert((deadline_ms, id));
    }

    /// Removes call `id`; whether it was waiting.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.by_id.remove(&id) {
            Some(deadline) => self.by_deadline.remove(&(deadline, id)),
            None => false,
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    /// Removes and returns the calls whose deadline is `now_ms` or earlier, earliest first.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now_ms {
                break;
            }
            self.by_deadline.pop_first();
            self.by_id.remove(&id);
            expired.push(id);
        }
        expired
    }

    /// Removes every call, in id order.
    pub(crate) fn drain(&mut self) -> Vec<u64> {
        self.by_deadline.clear();
        std::mem::take(&mut self.by_id).into_keys().collect()
    }
}
