//! The runtime's side of cluster mode ([`crate::cluster`]): local presence changes and
//! broadcasts go out as bus messages; what other nodes say comes back as presence diffs and
//! broadcasts for local subscribers. On a single node every function here does nothing.

use super::event::Outbound;
use super::runtime::Runtime;
use crate::cluster::state::Effects;
use crate::presence::Diff;

impl Runtime {
    /// The dot a presence change made now will have (0 on a single node, where dots name
    /// nothing).
    pub(super) fn next_dot(&self) -> u64 {
        self.cluster.as_ref().map_or(0, |c| c.next_dot())
    }

    /// A local presence was tracked under `dot`: `diff` holds its meta.
    pub(super) fn tracked(&mut self, topic: &str, key: &str, diff: &Diff, dot: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let meta = diff.joins.iter().find(|e| e.key == key);
        if let Some(meta) = meta.and_then(|e| e.metas.last()) {
            c.record_add(dot, topic, key, meta);
        }
    }

    /// The local presence of `dot` went away.
    pub(super) fn untracked(&mut self, dot: Option<u64>) {
        if let (Some(c), Some(dot)) = (self.cluster.as_mut(), dot) {
            c.record_remove(dot);
        }
    }

    /// A message from the bus.
    pub(super) fn on_cluster_receive(&mut self, data: &str) {
        let Some(c) = self.cluster.as_mut() else {
            return self.system("cluster message on a single node dropped".into());
        };
        let mut fx = Effects::default();
        c.receive(self.now_ms, data, &mut self.presence, &mut fx);
        self.apply_effects(fx);
    }

    /// The shell's link to the bus is (back) up.
    pub(super) fn on_cluster_up(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.link_up();
        }
    }

    /// This node is shutting down: its peers hear it now, not after `down_after_ms`.
    pub(super) fn on_shutdown(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.goodbye();
        }
    }

    /// Heartbeats, and peers gone silent.
    pub(super) fn cluster_tick(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if self.now_ms < c.next_deadline() {
            return;
        }
        let mut fx = Effects::default();
        c.tick(self.now_ms, &mut self.presence, &mut fx);
        self.apply_effects(fx);
    }

    /// The earliest instant the cluster wants a tick.
    pub(super) fn cluster_deadline(&self) -> Option<u64> {
        self.cluster.as_ref().map(|c| c.next_deadline())
    }

    /// Publishes what this event made, after everything it delivered.
    pub(super) fn flush_cluster(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.flush();
        for data in c.take_publish() {
            self.outbox.push(Outbound::ClusterPublish { data });
        }
    }

    fn apply_effects(&mut self, fx: Effects) {
        for notice in fx.notices {
            self.system(notice);
        }
        for (topic, diff) in fx.diffs {
            self.presence_diff(&topic, diff);
        }
        for (topic, event, payload) in fx.broadcasts {
            self.deliver_broadcast(&topic, &event, &payload, None);
        }
    }
}
