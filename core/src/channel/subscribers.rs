//! A topic's subscribers: in join order for broadcasts, with O(1) join and leave.
//!
//! The list is a `Vec` in join order where a leave leaves a hole (a tombstone) instead of
//! shifting the later subscribers down; a map from client to slot finds the hole to punch.
//! When the holes outnumber the subscribers, one pass closes them all and renumbers the slots:
//! that pass costs what the leaves since the last one saved, so a leave is amortised O(1), and
//! the list never holds more than about twice its subscribers.
//!
//! Why not a linked list (a slab with prev/next indices), which is O(1) without amortising:
//! broadcasts are the hot path and leaves are not. A broadcast copies this list front to back
//! from contiguous memory (with one `memcpy` while it has no holes); a linked list would make
//! every broadcast chase an index per subscriber, and cost two more indices per subscriber.

use super::event::ClientId;
use crate::hash::{HashMap, new_map};

/// Compaction waits for at least this many holes, so that small topics never compact.
const MIN_HOLES: usize = 32;

/// The subscribers of one topic.
#[derive(Debug)]
pub(super) struct Subscribers {
    /// In join order, with the clients that left still in place until the next compaction.
    slots: Vec<ClientId>,
    /// Whether each slot's client is still subscribed there.
    live: Vec<bool>,
    /// Where each subscriber's slot is.
    position: HashMap<ClientId, usize>,
    /// Slots renumbered by compactions so far: the work leaves cost, which tests bound.
    #[cfg(test)]
    renumbered: usize,
}

impl Subscribers {
    /// No subscribers; `seed` keys the map of positions.
    pub(super) fn new(seed: u64) -> Subscribers {
        Subscribers {
            slots: Vec::new(),
            live: Vec::new(),
            position: new_map(seed),
            #[cfg(test)]
            renumbered: 0,
        }
    }

    /// How many subscribe.
    pub(super) fn len(&self) -> usize {
        self.position.len()
    }

    /// Whether nobody subscribes.
    pub(super) fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    /// Subscribes `client` at the end, unless it subscribes already. O(1).
    pub(super) fn insert(&mut self, client: ClientId) {
        if self.position.contains_key(&client) {
            return;
        }
        self.position.insert(client, self.slots.len());
        self.slots.push(client);
        self.live.push(true);
    }

    /// Unsubscribes `client`, if it subscribes. Amortised O(1).
    pub(super) fn remove(&mut self, client: ClientId) {
        let Some(i) = self.position.remove(&client) else {
            return;
        };
        if let Some(live) = self.live.get_mut(i) {
            *live = false;
        }
        let holes = self.holes();
        if self.position.is_empty() {
            self.slots.clear();
            self.live.clear();
        } else if holes >= MIN_HOLES && holes > self.position.len() {
            self.compact();
        }
    }

    /// The subscribers, in join order.
    pub(super) fn iter(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.slots
            .iter()
            .zip(&self.live)
            .filter(|(_, live)| **live)
            .map(|(c, _)| *c)
    }

    /// The subscribers but `except`, in join order: what a broadcast goes to.
    pub(super) fn recipients(&self, except: Option<ClientId>) -> Vec<ClientId> {
        if self.holes() == 0 && except.is_none() {
            return self.slots.clone();
        }
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.iter().filter(|c| Some(*c) != except));
        out
    }

    fn holes(&self) -> usize {
        self.slots.len() - self.position.len()
    }

    /// Closes every hole and renumbers the slots: O(slots), once per as many leaves.
    fn compact(&mut self) {
        let mut live = self.live.iter();
        self.slots.retain(|_| live.next().copied().unwrap_or(false));
        for (i, client) in self.slots.iter().enumerate() {
            self.position.insert(*client, i);
        }
        #[cfg(test)]
        {
            self.renumbered += self.slots.len();
        }
        self.live.clear();
        self.live.resize(self.slots.len(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaving costs O(1) amortised: removing all n subscribers one by one, in join order (the
    /// worst order for a list that shifts or renumbers later entries, n²/2 moves), renumbers
    /// fewer than n slots in all, whatever n is.
    #[test]
    fn leaving_in_join_order_renumbers_fewer_slots_than_subscribers() {
        for n in [1_000u64, 100_000] {
            let mut s = Subscribers::new(1);
            for c in 0..n {
                s.insert(ClientId(c));
            }
            for c in 0..n {
                s.remove(ClientId(c));
            }
            assert!(s.is_empty());
            assert!(
                (s.renumbered as u64) < n,
                "{} slots renumbered to remove {n} subscribers",
                s.renumbered
            );
        }
    }

    fn ids(s: &Subscribers) -> Vec<u64> {
        s.iter().map(|c| c.0).collect()
    }

    #[test]
    fn keeps_join_order_through_leaves_and_compactions() {
        let mut s = Subscribers::new(1);
        for c in 0..200 {
            s.insert(ClientId(c));
        }
        s.insert(ClientId(5));
        assert_eq!(
            s.len(),
            200,
            "a second join of the same client is one subscriber"
        );
        // Every even client leaves (compacting on the way), then some join again at the end.
        for c in (0..200).step_by(2) {
            s.remove(ClientId(c));
        }
        s.remove(ClientId(0));
        assert!(
            s.slots.len() < 2 * s.len() + MIN_HOLES,
            "{} slots",
            s.slots.len()
        );
        for c in [4, 0] {
            s.insert(ClientId(c));
        }
        let mut want: Vec<u64> = (1..200).step_by(2).collect();
        want.extend([4, 0]);
        assert_eq!(ids(&s), want);
        for c in want.clone() {
            s.remove(ClientId(c));
        }
        assert!(s.is_empty() && s.slots.is_empty());
    }
}
