//! Heartbeat deadlines: a socket that sent nothing for `heartbeat_timeout_ms` is dropped, as
//! Phoenix drops a socket whose heartbeats stopped (phoenix.js sends one every 30 s; Phoenix
//! gives up after 60 s). Its channels end and its presences leave; the shell is told to close
//! it with 1001.
//!
//! Time is data: each event's `now_ms` moves the runtime's clock (never backwards), and the
//! shell sends [`Event::Tick`](super::Event::Tick) at [`Runtime::next_deadline`].
//!
//! The deadlines are a min-heap with one entry per socket, refreshed lazily: a message only
//! records its time in the socket's state (O(1)); when the socket's entry comes due, a socket
//! heard from since is pushed back at its real deadline, and a silent one is dropped. So a tick
//! costs O(log n) per entry due, never a scan of every socket, and `next_deadline` may be
//! early (a tick then only pushes entries back), never late. Entries left by sockets that went
//! away are skipped when they come due, and the heap is rebuilt from the live sockets when it
//! grows past twice their number, so it stays bounded.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::event::{ClientId, Outbound};
use super::membership::Client;
use super::runtime::Runtime;

/// Rebuilding waits for at least this many stale entries.
const MIN_STALE: usize = 64;

/// When each socket's entry comes due, earliest first.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(u64, ClientId)>>,
}

impl Deadlines {
    /// The earliest entry's time.
    pub(super) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// How many entries the heap holds, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    fn push(&mut self, at: u64, client: ClientId) {
        self.heap.push(Reverse((at, client)));
    }

    fn pop_due(&mut self, now_ms: u64) -> Option<(u64, ClientId)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now_ms => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

impl Runtime {
    /// A socket was heard from: a message, a join, a leave, a push, or its connection.
    pub(super) fn touch(&mut self, client: ClientId) {
        let now_ms = self.now_ms;
        if let Some(c) = self.clients.get_mut(&client) {
            c.last_seen_ms = now_ms;
            return;
        }
        let mut c = Client::new(now_ms);
        if let Some(timeout) = self.config.heartbeat_timeout_ms {
            c.due_ms = now_ms.saturating_add(timeout);
            self.deadlines.push(c.due_ms, client);
        }
        self.clients.insert(client, c);
        self.trim_deadlines();
    }

    /// Drops every socket silent for the timeout, earliest deadline first.
    pub(super) fn on_tick(&mut self) {
        let Some(timeout) = self.config.heartbeat_timeout_ms else {
            return;
        };
        let now_ms = self.now_ms;
        let mut silent = Vec::new();
        while let Some((at, client)) = self.deadlines.pop_due(now_ms) {
            let Some(c) = self.clients.get_mut(&client) else {
                continue; // It went away.
            };
            if c.due_ms != at {
                continue; // An entry left by an earlier socket with the same id.
            }
            let due = c.last_seen_ms.saturating_add(timeout);
            if due <= now_ms {
                c.due_ms = u64::MAX;
                silent.push((due, client));
            } else {
                c.due_ms = due;
                self.deadlines.push(due, client);
            }
        }
        silent.sort_unstable();
        for (_, client) in silent {
            self.drop_silent(client);
        }
    }

    fn drop_silent(&mut self, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        // 1001 (going away), as Phoenix closes a socket it disconnects.
        self.outbox.push(Outbound::CloseSocket {
            client_id: client,
            code: 1001,
            reason: "heartbeat timeout".into(),
        });
        for m in c.memberships {
            self.close_membership(client, m, "heartbeat timeout");
        }
    }

    /// Rebuilds the heap from the live sockets once stale entries outnumber them.
    pub(super) fn trim_deadlines(&mut self) {
        let Some(timeout) = self.config.heartbeat_timeout_ms else {
            return;
        };
        if self.deadlines.heap.len() <= 2 * self.clients.len() + MIN_STALE {
            return;
        }
        // The order entries go in does not matter: each socket has one, and the heap orders
        // them by (deadline, client), so what pops first does not depend on hash order.
        let mut heap = Vec::with_capacity(self.clients.len());
        for (id, c) in self.clients.iter_mut() {
            if c.due_ms != u64::MAX {
                c.due_ms = c.last_seen_ms.saturating_add(timeout);
                heap.push(Reverse((c.due_ms, *id)));
            }
        }
        self.deadlines.heap = BinaryHeap::from(heap);
    }
}
