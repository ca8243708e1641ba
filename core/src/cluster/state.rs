//! What a node knows of its cluster: its own presences and clock, every other replica's
//! presences and the dots it has seen of them, and when each was last heard from.
//!
//! [`Cluster`] is driven by the channel runtime (`channel/clustering.rs`), which owns the
//! presence [`Tracker`]: remote presences are kept here (so that a replica that went down and
//! comes back can be restored) and mirrored into the tracker while their replica is up, so that
//! `presence_state` and the topic counts see every node's presences. What changes for local
//! clients is collected in [`Effects`]; what to publish, as encoded messages, in `publish`.

use std::collections::{BTreeMap, BTreeSet};

use super::context::Context;
use super::wire::{self, Body, Change, Entry, Message, Op};
use super::{Options, Replica};
use crate::channel::Payload;
use crate::presence::{Diff, Meta, Tracker};
use crate::ws::Text;

/// What a cluster event changes on this node.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Presence changes per topic, for `presence_diff`s to local subscribers.
    pub(crate) diffs: BTreeMap<String, Diff>,
    /// Broadcasts from other nodes, to deliver to local subscribers, in order.
    pub(crate) broadcasts: Vec<(String, String, Payload)>,
    /// Notices for the logs.
    pub(crate) notices: Vec<String>,
}

impl Effects {
    fn diff(&mut self, topic: &str, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        match self.diffs.get_mut(topic) {
            Some(d) => d.extend(diff),
            None => {
                self.diffs.insert(topic.to_string(), diff);
            }
        }
    }
}

/// A presence, as its owner tracked it.
#[derive(Clone, Debug)]
struct Presence {
    topic: String,
    key: String,
    meta: Meta,
}

/// Another replica, as this node knows it.
#[derive(Debug)]
struct Remote {
    replica: Replica,
    /// The dots of its changes seen here.
    context: Context,
    /// Its live presences, by dot.
    entries: BTreeMap<u64, Presence>,
    last_heard_ms: u64,
    /// The sequence number of its latest message taken.
    last_seq: u64,
    /// Whether its presences are in the tracker (false: down).
    up: bool,
    /// When its state was last asked for.
    asked_ms: Option<u64>,
}

/// This node's part in the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) options: Options,
    /// Messages published.
    seq: u64,
    /// Changes made: the dot of the latest.
    clock: u64,
    /// This node's live presences, by dot, for state transfers.
    own: BTreeMap<u64, Presence>,
    /// Changes not yet published.
    delta: Vec<Op>,
    /// A state transfer was asked for.
    state_due: bool,
    next_heartbeat_ms: u64,
    /// Other replicas, by the index the tracker knows them by.
    remotes: BTreeMap<u64, Remote>,
    by_replica: BTreeMap<Replica, u64>,
    next_index: u64,
    /// Encoded messages to publish, in order.
    publish: Vec<Text>,
}

impl Cluster {
    pub(crate) fn new(options: Options) -> Cluster {
        Cluster {
            options,
            seq: 0,
            clock: 0,
            own: BTreeMap::new(),
            delta: Vec::new(),
            state_due: false,
            next_heartbeat_ms: 0,
            remotes: BTreeMap::new(),
            by_replica: BTreeMap::new(),
            next_index: 0,
            publish: Vec::new(),
        }
    }

    /// The dot the next change will have.
    pub(crate) fn next_dot(&self) -> u64 {
        self.clock + 1
    }

    /// Replicas known, and how many are up.
    pub(crate) fn replicas(&self) -> (usize, usize) {
        let up = self.remotes.values().filter(|r| r.up).count();
        (self.remotes.len(), up)
    }

    // ---- this node's changes ----

    /// A local socket tracked a presence under `dot` (from [`Cluster::next_dot`]).
    pub(crate) fn record_add(&mut self, dot: u64, topic: &str, key: &str, meta: &Meta) {
        self.clock = self.clock.max(dot);
        let p = Presence {
            topic: topic.into(),
            key: key.into(),
            meta: meta.clone(),
        };
        self.delta.push(Op {
            dot,
            change: Change::Add {
                topic: p.topic.clone(),
                key: p.key.clone(),
                meta: p.meta.clone(),
            },
        });
        self.own.insert(dot, p);
    }

    /// A local presence tracked under `dot` went away: a change under a new dot.
    pub(crate) fn record_remove(&mut self, dot: u64) {
        if self.own.remove(&dot).is_none() {
            return;
        }
        self.clock += 1;
        self.delta.push(Op {
            dot: self.clock,
            change: Change::Remove(dot),
        });
    }

    /// Publishes a broadcast, after the changes made before it.
    pub(crate) fn broadcast(&mut self, topic: &str, event: &str, payload: &Payload) {
        self.flush_delta();
        self.send(Body::Broadcast {
            topic: topic.into(),
            event: event.into(),
            payload: payload.clone(),
        });
    }

    /// The link to the bus is (back) up: tell everyone everything, and ask the same of them,
    /// since whatever was said while it was down is lost.
    pub(crate) fn link_up(&mut self) {
        self.state_due = true;
        self.send(Body::StateRequest { to: None });
    }

    /// This node is shutting down cleanly.
    pub(crate) fn goodbye(&mut self) {
        self.flush_delta();
        self.send(Body::Goodbye);
    }

    /// Publishes what waits: the delta, and a state transfer if one was asked for.
    pub(crate) fn flush(&mut self) {
        self.flush_delta();
        if std::mem::take(&mut self.state_due) {
            let entries = (self.own.iter())
                .map(|(dot, p)| Entry {
                    dot: *dot,
                    topic: p.topic.clone(),
                    key: p.key.clone(),
                    meta: p.meta.clone(),
                })
                .collect();
            let clock = self.clock;
            self.send(Body::State { clock, entries });
        }
    }

    /// Takes the encoded messages to publish.
    pub(crate) fn take_publish(&mut self) -> Vec<Text> {
        std::mem::take(&mut self.publish)
    }

    fn flush_delta(&mut self) {
        if !self.delta.is_empty() {
            let ops = std::mem::take(&mut self.delta);
            self.send(Body::Delta { ops });
        }
    }

    fn send(&mut self, body: Body) {
        self.seq += 1;
        let message = Message {
            from: self.options.replica.clone(),
            seq: self.seq,
            body,
        };
        let text = wire::encode(&message);
        // Too long for the bus: peers will see a gap in our numbers, and ask for our state.
        if text.len() <= self.options.max_message_len {
            self.publish.push(text);
        }
    }

    // ---- time ----

    /// When [`Cluster::tick`] wants to run next.
    pub(crate) fn next_deadline(&self) -> u64 {
        let o = &self.options;
        let remotes = self.remotes.values().map(|r| {
            let after = if r.up {
                o.down_after_ms
            } else {
                o.permdown_after_ms
            };
            r.last_heard_ms.saturating_add(after)
        });
        remotes.fold(self.next_heartbeat_ms, u64::min)
    }

    /// Heartbeats out; replicas silent too long go down, or are forgotten.
    pub(crate) fn tick(&mut self, now_ms: u64, tracker: &mut Tracker, fx: &mut Effects) {
        if now_ms >= self.next_heartbeat_ms {
            self.flush_delta();
            let clock = self.clock;
            self.send(Body::Heartbeat { clock });
            self.next_heartbeat_ms = now_ms.saturating_add(self.options.heartbeat_interval_ms);
        }
        let (down_after, permdown_after) =
            (self.options.down_after_ms, self.options.permdown_after_ms);
        let mut forget = Vec::new();
        for (index, r) in self.remotes.iter_mut() {
            let silent = now_ms.saturating_sub(r.last_heard_ms);
            if silent >= permdown_after {
                forget.push(*index);
            } else if r.up && silent >= down_after {
                fx.notices.push(format!(
                    "cluster: {} is down (silent {silent} ms)",
                    r.replica
                ));
                set_up(*index, r, false, tracker, fx);
            }
        }
        for index in forget {
            let name = self.remotes.get(&index).map(|r| r.replica.to_string());
            fx.notices.push(format!(
                "cluster: {} forgotten (permanently down)",
                name.unwrap_or_default()
            ));
            self.forget(index, tracker, fx);
        }
    }

    // ---- what other nodes say ----

    /// Reads one message from the bus.
    pub(crate) fn receive(
        &mut self,
        now_ms: u64,
        text: &str,
        tracker: &mut Tracker,
        fx: &mut Effects,
    ) {
        let message = match wire::decode(text, self.options.max_message_len) {
            Ok(m) => m,
            Err(e) => return fx.notices.push(format!("cluster: message dropped: {e}")),
        };
        if message.from == self.options.replica {
            return; // Our own, back from the bus.
        }
        if message.from.node == self.options.replica.node {
            return fx.notices.push(format!(
                "cluster: {} uses this node's id; its messages are ignored",
                message.from
            ));
        }
        let Some(index) = self.remote(now_ms, &message, tracker, fx) else {
            return;
        };
        let Some(r) = self.remotes.get_mut(&index) else {
            return;
        };
        // Broadcasts are taken once each and in order: one numbered at or below the latest
        // message taken is a repeat, or overtaken. Presence messages merge in any order, and
        // any number of times.
        let late = message.seq <= r.last_seq;
        if late && matches!(message.body, Body::Broadcast { .. }) {
            return fx.notices.push(format!(
                "cluster: a repeated or late broadcast from {} dropped",
                r.replica
            ));
        }
        let mut behind = false;
        if !late {
            if r.last_seq != 0 && message.seq > r.last_seq + 1 {
                let lost = message.seq - r.last_seq - 1;
                fx.notices
                    .push(format!("cluster: {lost} messages from {} lost", r.replica));
                behind = true;
            }
            r.last_seq = message.seq;
        }
        r.last_heard_ms = now_ms;
        if !r.up {
            fx.notices.push(format!("cluster: {} is back", r.replica));
            set_up(index, r, true, tracker, fx);
            behind = true;
        }
        match message.body {
            Body::Broadcast {
                topic,
                event,
                payload,
            } => fx.broadcasts.push((topic, event, payload)),
            Body::Delta { ops } => {
                let limits = Limits::of(&self.options);
                for op in ops {
                    behind |= !apply(index, r, op, limits, tracker, fx);
                }
            }
            Body::Heartbeat { clock } => behind |= !r.context.covers(clock),
            Body::StateRequest { to } => {
                if to.is_none_or(|to| to == self.options.replica) {
                    self.state_due = true;
                }
            }
            Body::State { clock, entries } => {
                let limits = Limits::of(&self.options);
                merge_state(index, r, clock, entries, limits, tracker, fx);
                behind = false;
            }
            Body::Goodbye => {
                fx.notices
                    .push(format!("cluster: {} said goodbye", message.from));
                return self.forget(index, tracker, fx);
            }
        }
        if behind {
            self.ask(index, now_ms);
        }
    }

    /// The index of the message's sender, known or new; `None` when no more fit.
    fn remote(
        &mut self,
        now_ms: u64,
        message: &Message,
        tracker: &mut Tracker,
        fx: &mut Effects,
    ) -> Option<u64> {
        if let Some(index) = self.by_replica.get(&message.from) {
            return Some(*index);
        }
        // A node that restarted is a new replica: the old one's presences go now.
        let old: Vec<u64> = (self.remotes.iter())
            .filter(|(_, r)| r.replica.node == message.from.node)
            .map(|(i, _)| *i)
            .collect();
        for index in old {
            fx.notices.push(format!(
                "cluster: {} replaced by {}",
                self.remotes[&index].replica, message.from
            ));
            self.forget(index, tracker, fx);
        }
        if self.remotes.len() >= self.options.max_replicas {
            fx.notices.push(format!(
                "cluster: {} dropped: {} replicas known already",
                message.from, self.options.max_replicas
            ));
            return None;
        }
        let index = self.next_index;
        self.next_index += 1;
        self.by_replica.insert(message.from.clone(), index);
        self.remotes.insert(
            index,
            Remote {
                replica: message.from.clone(),
                context: Context::default(),
                entries: BTreeMap::new(),
                last_heard_ms: now_ms,
                last_seq: 0,
                up: true,
                asked_ms: None,
            },
        );
        fx.notices.push(format!("cluster: {} joined", message.from));
        if !matches!(message.body, Body::State { .. }) {
            self.ask(index, now_ms);
        }
        Some(index)
    }

    /// Asks a replica for its state, at most once per heartbeat interval.
    fn ask(&mut self, index: u64, now_ms: u64) {
        let interval = self.options.heartbeat_interval_ms;
        let Some(r) = self.remotes.get_mut(&index) else {
            return;
        };
        if r.asked_ms
            .is_some_and(|at| now_ms < at.saturating_add(interval))
        {
            return;
        }
        r.asked_ms = Some(now_ms);
        let to = Some(r.replica.clone());
        self.send(Body::StateRequest { to });
    }

    fn forget(&mut self, index: u64, tracker: &mut Tracker, fx: &mut Effects) {
        let Some(mut r) = self.remotes.remove(&index) else {
            return;
        };
        self.by_replica.remove(&r.replica);
        if r.up {
            set_up(index, &mut r, false, tracker, fx);
        }
    }
}

/// Puts a replica's presences into the tracker (up) or takes them out (down).
fn set_up(index: u64, r: &mut Remote, up: bool, tracker: &mut Tracker, fx: &mut Effects) {
    r.up = up;
    for (dot, p) in &r.entries {
        if up {
            insert(index, *dot, p, tracker, fx);
        } else {
            fx.diff(
                &p.topic,
                tracker.remove_remote(&p.topic, &p.key, index, *dot),
            );
        }
    }
}

fn insert(index: u64, dot: u64, p: &Presence, tracker: &mut Tracker, fx: &mut Effects) {
    match tracker.insert_remote(&p.topic, &p.key, index, dot, p.meta.clone()) {
        Ok(diff) => fx.diff(&p.topic, diff),
        Err(e) => fx
            .notices
            .push(format!("cluster: a presence on {} not shown: {e}", p.topic)),
    }
}

/// The bounds on what a node keeps of another replica.
#[derive(Clone, Copy)]
struct Limits {
    out_of_order: usize,
    presences: usize,
}

impl Limits {
    fn of(o: &Options) -> Limits {
        Limits {
            out_of_order: o.max_out_of_order,
            presences: o.max_presences_per_replica,
        }
    }
}

/// Keeps a presence of `r`, unless it holds as many as the limit allows.
fn keep(
    index: u64,
    r: &mut Remote,
    dot: u64,
    p: Presence,
    max: usize,
    tracker: &mut Tracker,
    fx: &mut Effects,
) {
    if r.entries.len() >= max {
        return fx.notices.push(format!(
            "cluster: a presence of {} dropped: {max} kept already",
            r.replica
        ));
    }
    if r.up {
        insert(index, dot, &p, tracker, fx);
    }
    r.entries.insert(dot, p);
}

/// Merges one change; false when it could not be kept (too far out of order).
fn apply(
    index: u64,
    r: &mut Remote,
    op: Op,
    limits: Limits,
    tracker: &mut Tracker,
    fx: &mut Effects,
) -> bool {
    let max_out_of_order = limits.out_of_order;
    if r.context.contains(op.dot) {
        return true; // Seen already.
    }
    let beyond = |c: &Context, dot: u64| dot > 0 && !c.covers(dot - 1);
    if beyond(&r.context, op.dot) && r.context.out_of_order() >= max_out_of_order {
        return false;
    }
    r.context.insert(op.dot);
    match op.change {
        Change::Add { topic, key, meta } => {
            let p = Presence { topic, key, meta };
            keep(index, r, op.dot, p, limits.presences, tracker, fx);
        }
        Change::Remove(dot) => {
            if !r.context.contains(dot)
                && beyond(&r.context, dot)
                && r.context.out_of_order() >= max_out_of_order
            {
                return false;
            }
            r.context.insert(dot);
            if let Some(p) = r.entries.remove(&dot)
                && r.up
            {
                fx.diff(
                    &p.topic,
                    tracker.remove_remote(&p.topic, &p.key, index, dot),
                );
            }
        }
    }
    true
}

/// Merges a replica's full state as of `clock`: what it no longer has goes, what is new comes.
fn merge_state(
    index: u64,
    r: &mut Remote,
    clock: u64,
    entries: Vec<Entry>,
    limits: Limits,
    tracker: &mut Tracker,
    fx: &mut Effects,
) {
    let live: BTreeSet<u64> = entries.iter().map(|e| e.dot).collect();
    let gone: Vec<u64> = (r.entries.range(..=clock))
        .map(|(dot, _)| *dot)
        .filter(|dot| !live.contains(dot))
        .collect();
    for dot in gone {
        if let Some(p) = r.entries.remove(&dot)
            && r.up
        {
            fx.diff(
                &p.topic,
                tracker.remove_remote(&p.topic, &p.key, index, dot),
            );
        }
    }
    for e in entries {
        // A dot seen already is here, or was removed by a change newer than this state.
        if r.context.contains(e.dot) || e.dot > clock {
            continue;
        }
        let p = Presence {
            topic: e.topic,
            key: e.key,
            meta: e.meta,
        };
        keep(index, r, e.dot, p, limits.presences, tracker, fx);
    }
    r.context.insert_through(clock);
    r.asked_ms = None;
}
