//! [`Channels`]: the protocol rules of a Phoenix channels client (V2, phoenix.js 1.8), sans-IO.
//!
//! It sits on a reconnecting socket (the [`Client`](crate::client::Client) machine and a
//! shell): the shell tells it when the socket opens and closes and hands it every text frame;
//! it answers with frames to send on the current socket ([`Outbound::Send`]) and with what
//! the application waits for (join, push and leave results, messages, presence changes).
//! Time enters as `now_ms`; its timers (join, push and leave timeouts, rejoins, heartbeats)
//! are state, read by [`Channels::next_deadline`] and fired by [`Event::Tick`]. Events and
//! outbounds are serde data, so a session can be logged and replayed.
//!
//! What phoenix.js does, this does:
//! - refs come from one counter, and every (re)join takes a new join_ref; a message whose
//!   join_ref is not the channel's current one is dropped (`isMember`);
//! - when the socket drops, joined channels become errored; when it opens again every channel
//!   rejoins at once; a rejoin that fails (refused, timed out, or a `phx_error`) is retried
//!   after `rejoin_schedule_ms` (phoenix.js: 1 s, 2 s, 5 s, then 10 s), the count restarting
//!   after a join succeeds or the socket opens; a join that times out is left first;
//! - pushes made while the channel is not joined are held and sent after the join, their
//!   timeout running from the push; a plain push is never resent (at-most-once);
//! - a heartbeat goes to the `phoenix` topic every `heartbeat_interval_ms` while open.
//!
//! What it adds: pushes awaiting replies are bounded by `max_pending` (past it a push fails at
//! once with [`PushError::TooMany`]); a push made `once` carries an idempotency key,
//! `client_msg_id: "<run_id>-<n>"`, and is kept until its reply: if its socket dies or its
//! channel crashes first it is sent again, in order, after the rejoin (a server that drops
//! repeated keys then sees it once).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Change, Presence};

/// How a [`Channels`] machine behaves; the defaults are phoenix.js's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How long a join, push or leave waits for its reply. Default 10,000 ms.
    pub timeout_ms: u64,
    /// How often a heartbeat goes to the `phoenix` topic while the socket is open. Default
    /// 30,000 ms.
    pub heartbeat_interval_ms: u64,
    /// The delay before rejoin attempt `n` (from 1) is entry `n - 1`; the last entry repeats.
    /// Default phoenix.js's `[1000, 2000, 5000, 10000]`. Empty: 1,000 ms.
    pub rejoin_schedule_ms: Vec<u64>,
    /// The most pushes awaiting replies at once, over all channels (sent, held until a join,
    /// or kept for a resend); past it a push fails at once with [`PushError::TooMany`].
    /// Default 1,024.
    pub max_pending: usize,
    /// Unique to this client's run (the shell draws it): idempotency keys are
    /// `<run_id>-<n>`.
    pub run_id: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            timeout_ms: 10_000,
            heartbeat_interval_ms: 30_000,
            rejoin_schedule_ms: vec![1_000, 2_000, 5_000, 10_000],
            max_pending: 1_024,
            run_id: String::new(),
        }
    }
}

/// What happened, handed to [`Channels::handle`]. Ids are the caller's, to match results.
/// Serialized with a `kind` tag (`event` is a push's field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The socket is open (again).
    Opened {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The socket closed.
    Closed {
        /// The shell's clock.
        now_ms: u64,
    },
    /// A text frame arrived.
    Receive {
        /// The shell's clock.
        now_ms: u64,
        /// The frame.
        text: String,
    },
    /// Join `topic` with `params`; one channel a topic: a second join replaces the first.
    Join {
        /// The shell's clock.
        now_ms: u64,
        /// Answered by [`Outbound::JoinDone`] under this id.
        id: u64,
        /// The topic.
        topic: String,
        /// The join's payload.
        params: Value,
    },
    /// Push `event` with `payload` on `topic`.
    Push {
        /// The shell's clock.
        now_ms: u64,
        /// Answered by [`Outbound::PushDone`] under this id.
        id: u64,
        /// The topic.
        topic: String,
        /// The event.
        event: String,
        /// The payload (an object when `once`).
        payload: Value,
        /// How long to wait for the reply.
        timeout_ms: u64,
        /// Add an idempotency key and resend until the reply comes.
        once: bool,
    },
    /// Leave `topic`.
    Leave {
        /// The shell's clock.
        now_ms: u64,
        /// Answered by [`Outbound::LeaveDone`] under this id.
        id: u64,
        /// The topic.
        topic: String,
    },
    /// A timer fired; early ticks do nothing.
    Tick {
        /// The shell's clock.
        now_ms: u64,
    },
}

impl Event {
    /// The instant this event carries.
    pub fn now_ms(&self) -> u64 {
        match *self {
            Event::Opened { now_ms }
            | Event::Closed { now_ms }
            | Event::Receive { now_ms, .. }
            | Event::Join { now_ms, .. }
            | Event::Push { now_ms, .. }
            | Event::Leave { now_ms, .. }
            | Event::Tick { now_ms } => now_ms,
        }
    }
}

/// What the shell must do or deliver, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outbound", rename_all = "snake_case")]
pub enum Outbound {
    /// Send this text frame on the current socket (never queued for another one).
    Send {
        /// The frame.
        text: String,
    },
    /// Join `id` ended.
    JoinDone {
        /// The join's id.
        id: u64,
        /// The server's response, or why not.
        result: Result<Value, JoinError>,
    },
    /// Push `id` ended.
    PushDone {
        /// The push's id.
        id: u64,
        /// The `ok` reply's response, or why not.
        result: Result<Value, PushError>,
    },
    /// Leave `id` ended (answered, timed out, or nothing to leave).
    LeaveDone {
        /// The leave's id.
        id: u64,
    },
    /// The server sent `event` to `topic` (a broadcast, a push, a presence event).
    Message {
        /// The topic.
        topic: String,
        /// The event.
        event: String,
        /// Its payload.
        payload: Value,
    },
    /// `topic`'s presence changed, as phoenix.js's `onJoin` / `onLeave` see it.
    PresenceChanged {
        /// The topic.
        topic: String,
        /// What changed, in order.
        changes: Vec<Change>,
    },
}

/// Why a join did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinError {
    /// The server refused it (`status` "error"); the channel keeps rejoining, as phoenix.js's
    /// does, until it is left.
    Refused(Value),
    /// No reply within the timeout (the channel keeps trying).
    Timeout,
    /// The channel was closed or replaced, or the client stopped.
    Closed,
}

/// Why a push did not get an `ok` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushError {
    /// The reply had another status (`"error"` …): the status and its response.
    Reply(String, Value),
    /// No reply within the timeout.
    Timeout,
    /// The channel is closed, was never joined, or the client stopped.
    Closed,
    /// `max_pending` pushes await replies already; this one was not sent.
    TooMany,
    /// A `once` push needs a JSON object to put its key in.
    NotAnObject,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Refused(r) => write!(f, "join refused: {r}"),
            JoinError::Timeout => f.write_str("join timed out"),
            JoinError::Closed => f.write_str("channel closed"),
        }
    }
}

impl std::error::Error for JoinError {}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Reply(status, r) => write!(f, "reply {status}: {r}"),
            PushError::Timeout => f.write_str("push timed out"),
            PushError::Closed => f.write_str("channel closed"),
            PushError::TooMany => f.write_str("too many pushes awaiting replies"),
            PushError::NotAnObject => f.write_str("push_once needs a JSON object payload"),
        }
    }
}

impl std::error::Error for PushError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Joining,
    Joined,
    Errored,
}

/// A push waiting for a join, or a `once` push waiting for its reply.
#[derive(Debug)]
struct Waiting {
    id: u64,
    event: String,
    payload: Value,
    deadline: u64,
    /// For a `once` push: the ref of the copy sent on the current join, if one was.
    sent: Option<String>,
}

#[derive(Debug)]
struct Chan {
    params: Value,
    state: State,
    join_ref: Option<String>,
    /// The caller of the latest join, until its first answer: id and deadline.
    waiter: Option<(u64, u64)>,
    /// When the join in flight times out.
    join_deadline: Option<u64>,
    /// When the next rejoin goes (errored, socket open).
    rejoin_at: Option<u64>,
    tries: u32,
    held: Vec<Waiting>,
    unconfirmed: VecDeque<Waiting>,
    presence: Presence,
}

#[derive(Debug)]
enum Pending {
    /// A plain push in flight: id and deadline.
    Push(u64, u64),
    /// A `once` push of this topic (found in its channel's `unconfirmed` by ref).
    Once(String),
    Join(String),
    /// A leave: id and deadline.
    Leave(u64, u64),
}

/// The channels of one Phoenix socket. Feed it [`Event`]s, carry out its [`Outbound`]s, tick
/// it at [`Channels::next_deadline`].
///
/// ```
/// use serde_json::json;
/// use spool_core::client::phoenix::{Channels, Config, Event, Outbound};
///
/// let mut channels = Channels::new(Config::default());
/// channels.handle(Event::Opened { now_ms: 0 });
/// let out = channels.handle(Event::Join { now_ms: 1, id: 7, topic: "room:a".into(), params: json!({}) });
/// let join = r#"["1","1","room:a","phx_join",{}]"#.to_string();
/// assert_eq!(out, [Outbound::Send { text: join }]);
/// let reply = r#"["1","1","room:a","phx_reply",{"status":"ok","response":{}}]"#;
/// let out = channels.handle(Event::Receive { now_ms: 2, text: reply.into() });
/// assert_eq!(out, [Outbound::JoinDone { id: 7, result: Ok(json!({})) }]);
/// ```
#[derive(Debug)]
pub struct Channels {
    config: Config,
    now_ms: u64,
    connected: bool,
    next_ref: u64,
    keys: u64,
    heartbeat_at: Option<u64>,
    /// By topic; ordered, so that nothing a map's order decides reaches an output.
    channels: BTreeMap<String, Chan>,
    /// By ref.
    pending: BTreeMap<String, Pending>,
}

impl Channels {
    /// A machine for `config`, its socket closed.
    pub fn new(config: Config) -> Channels {
        Channels {
            config,
            now_ms: 0,
            connected: false,
            next_ref: 0,
            keys: 0,
            heartbeat_at: None,
            channels: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `topic`'s presences now, if it has a channel: `{"key": {"metas": [..]}}`.
    pub fn presence(&self, topic: &str) -> Option<&Map<String, Value>> {
        self.channels.get(topic).map(|c| c.presence.state())
    }

    /// Pushes awaiting replies: sent, held for a join, or kept for a resend.
    pub fn awaiting(&self) -> usize {
        let sent = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Push(..)))
            .count();
        let kept: usize = self
            .channels
            .values()
            .map(|c| c.held.len() + c.unconfirmed.len())
            .sum();
        sent + kept
    }

    /// The instant of the next timer, if any: the shell sends [`Event::Tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.heartbeat_at);
        for chan in self.channels.values() {
            consider(chan.waiter.map(|(_, d)| d));
            consider(chan.join_deadline);
            consider(chan.rejoin_at);
            for w in chan.held.iter().chain(&chan.unconfirmed) {
                consider(Some(w.deadline));
            }
        }
        for p in self.pending.values() {
            if let Pending::Push(_, d) | Pending::Leave(_, d) = p {
                consider(Some(*d));
            }
        }
        next
    }

    /// Handles one event and returns what the shell must do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        self.now_ms = self.now_ms.max(event.now_ms());
        let mut out = Vec::new();
        match event {
            Event::Opened { .. } => self.on_opened(&mut out),
            Event::Closed { .. } => self.on_closed(&mut out),
            Event::Receive { text, .. } => self.on_receive(&text, &mut out),
            Event::Join {
                id, topic, params, ..
            } => self.on_join(id, topic, params, &mut out),
            Event::Push {
                id,
                topic,
                event,
                payload,
                timeout_ms,
                once,
                ..
            } => {
                let deadline = self.now_ms.saturating_add(timeout_ms);
                let push = Waiting {
                    id,
                    event,
                    payload,
                    deadline,
                    sent: None,
                };
                self.on_push(&topic, push, once, &mut out);
            }
            Event::Leave { id, topic, .. } => self.on_leave(id, &topic, &mut out),
            Event::Tick { .. } => self.on_tick(&mut out),
        }
        out
    }

    fn on_opened(&mut self, out: &mut Vec<Outbound>) {
        self.connected = true;
        self.heartbeat_at = Some(self.now_ms.saturating_add(self.heartbeat_interval()));
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            if let Some(chan) = self.channels.get_mut(&topic) {
                // phoenix.js: the socket opened, so the rejoin count restarts and an errored
                // channel rejoins now.
                chan.tries = 0;
                chan.rejoin_at = None;
            }
            self.join_frame(&topic, out);
        }
    }

    fn on_closed(&mut self, out: &mut Vec<Outbound>) {
        self.connected = false;
        self.heartbeat_at = None;
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in &topics {
            self.unsend(topic);
            if let Some(chan) = self.channels.get_mut(topic) {
                chan.state = State::Errored;
                chan.join_deadline = None;
                chan.rejoin_at = None;
            }
        }
        // Plain pushes in flight stay until their timeouts (a reply cannot come now); joins
        // are made again on the next socket; leaves are done: the server forgets the socket.
        let pending = std::mem::take(&mut self.pending);
        for (r, p) in pending {
            match p {
                Pending::Push(..) => {
                    self.pending.insert(r, p);
                }
                Pending::Leave(id, _) => out.push(Outbound::LeaveDone { id }),
                Pending::Join(_) | Pending::Once(_) => {}
            }
        }
    }

    fn on_receive(&mut self, text: &str, out: &mut Vec<Outbound>) {
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Ok([join_ref, r, topic, event, payload]) = <[Value; 5]>::try_from(parts) else {
            return;
        };
        let (Some(topic), Some(event)) = (topic.as_str(), event.as_str()) else {
            return;
        };
        if event == "phx_reply" {
            if let Some(r) = r.as_str() {
                self.on_reply(r, topic, &payload, out);
            }
            return;
        }
        self.on_message(join_ref.as_str(), topic, event, payload, out);
    }

    fn on_join(&mut self, id: u64, topic: String, params: Value, out: &mut Vec<Outbound>) {
        if let Some(old) = self.channels.remove(&topic) {
            self.close_chan(old, out);
        }
        let deadline = self.now_ms.saturating_add(self.config.timeout_ms);
        self.channels.insert(
            topic.clone(),
            Chan {
                params,
                state: State::Joining,
                join_ref: None,
                waiter: Some((id, deadline)),
                join_deadline: None,
                rejoin_at: None,
                tries: 0,
                held: Vec::new(),
                unconfirmed: VecDeque::new(),
                presence: Presence::new(),
            },
        );
        self.join_frame(&topic, out);
    }

    fn on_push(&mut self, topic: &str, mut push: Waiting, once: bool, out: &mut Vec<Outbound>) {
        let id = push.id;
        if !self.channels.contains_key(topic) {
            return out.push(Outbound::PushDone {
                id,
                result: Err(PushError::Closed),
            });
        }
        if self.awaiting() >= self.config.max_pending {
            return out.push(Outbound::PushDone {
                id,
                result: Err(PushError::TooMany),
            });
        }
        let ready = self.connected
            && self
                .channels
                .get(topic)
                .is_some_and(|c| c.state == State::Joined);
        if once {
            let Some(object) = push.payload.as_object_mut() else {
                return out.push(Outbound::PushDone {
                    id,
                    result: Err(PushError::NotAnObject),
                });
            };
            self.keys += 1;
            let key = format!("{}-{}", self.config.run_id, self.keys);
            object.insert("client_msg_id".into(), Value::String(key));
            if let Some(chan) = self.channels.get_mut(topic) {
                chan.unconfirmed.push_back(push);
            }
            if ready {
                self.send_unconfirmed(topic, out);
            }
        } else if ready {
            self.push_frame(topic, push, out);
        } else if let Some(chan) = self.channels.get_mut(topic) {
            chan.held.push(push);
        }
    }

    fn on_leave(&mut self, id: u64, topic: &str, out: &mut Vec<Outbound>) {
        let Some(chan) = self.channels.remove(topic) else {
            return out.push(Outbound::LeaveDone { id });
        };
        let join_ref = chan.join_ref.clone().filter(|_| self.connected);
        self.close_chan(chan, out);
        match join_ref {
            Some(join_ref) => {
                self.pending.remove(&join_ref);
                let r = self.make_ref();
                let deadline = self.now_ms.saturating_add(self.config.timeout_ms);
                self.pending.insert(r.clone(), Pending::Leave(id, deadline));
                let leave = frame(Some(&join_ref), &r, topic, "phx_leave", &json!({}));
                out.push(Outbound::Send { text: leave });
            }
            None => out.push(Outbound::LeaveDone { id }),
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Outbound>) {
        let now = self.now_ms;
        if self.connected && self.heartbeat_at.is_some_and(|t| now >= t) {
            self.heartbeat_at = Some(now.saturating_add(self.heartbeat_interval()));
            let r = self.make_ref();
            out.push(Outbound::Send {
                text: frame(None, &r, "phoenix", "heartbeat", &json!({})),
            });
        }
        // Replies that did not come in time, by ref (ordered).
        let expired: Vec<(String, u64)> = self
            .pending
            .iter()
            .filter_map(|(r, p)| match *p {
                Pending::Push(id, d) | Pending::Leave(id, d) if now >= d => Some((r.clone(), id)),
                _ => None,
            })
            .collect();
        for (r, id) in expired {
            match self.pending.remove(&r) {
                Some(Pending::Push(..)) => out.push(Outbound::PushDone {
                    id,
                    result: Err(PushError::Timeout),
                }),
                Some(Pending::Leave(..)) => out.push(Outbound::LeaveDone { id }),
                _ => {}
            }
        }
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.tick_chan(&topic, now, out);
        }
    }

    /// One channel's timers: its join caller's patience, its pushes' timeouts, the join in
    /// flight, the next rejoin.
    fn tick_chan(&mut self, topic: &str, now: u64, out: &mut Vec<Outbound>) {
        let connected = self.connected;
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        if let Some((id, _)) = chan.waiter.filter(|&(_, d)| now >= d) {
            chan.waiter = None;
            out.push(Outbound::JoinDone {
                id,
                result: Err(JoinError::Timeout),
            });
        }
        let mut expired = Vec::new();
        chan.held.retain(|w| {
            let keep = now < w.deadline;
            if !keep {
                expired.push((w.id, None));
            }
            keep
        });
        chan.unconfirmed.retain(|w| {
            let keep = now < w.deadline;
            if !keep {
                expired.push((w.id, w.sent.clone()));
            }
            keep
        });
        let join_timed_out = chan.state == State::Joining
            && connected
            && chan.join_deadline.is_some_and(|d| now >= d);
        let rejoin_due =
            chan.state == State::Errored && connected && chan.rejoin_at.is_some_and(|t| now >= t);
        let join_ref = chan.join_ref.clone();
        for (id, sent) in expired {
            if let Some(r) = sent {
                self.pending.remove(&r);
            }
            out.push(Outbound::PushDone {
                id,
                result: Err(PushError::Timeout),
            });
        }
        if join_timed_out {
            // phoenix.js: leave that join, then rejoin on the schedule.
            if let Some(join_ref) = join_ref {
                self.pending.remove(&join_ref);
                let r = self.make_ref();
                let leave = frame(Some(&join_ref), &r, topic, "phx_leave", &json!({}));
                out.push(Outbound::Send { text: leave });
            }
            self.unsend(topic);
            self.schedule_rejoin(topic);
        } else if rejoin_due {
            self.join_frame(topic, out);
        }
    }

    fn on_reply(&mut self, r: &str, topic: &str, payload: &Value, out: &mut Vec<Outbound>) {
        let status = payload
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let response = payload.get("response").cloned().unwrap_or(Value::Null);
        let result = |status: String, response: Value| match status.as_str() {
            "ok" => Ok(response),
            _ => Err(PushError::Reply(status, response)),
        };
        match self.pending.remove(r) {
            Some(Pending::Push(id, _)) => out.push(Outbound::PushDone {
                id,
                result: result(status, response),
            }),
            Some(Pending::Once(once_topic)) => {
                let found = self.channels.get_mut(&once_topic).and_then(|c| {
                    let i = c
                        .unconfirmed
                        .iter()
                        .position(|w| w.sent.as_deref() == Some(r))?;
                    c.unconfirmed.remove(i)
                });
                if let Some(push) = found {
                    out.push(Outbound::PushDone {
                        id: push.id,
                        result: result(status, response),
                    });
                }
            }
            Some(Pending::Leave(id, _)) => out.push(Outbound::LeaveDone { id }),
            Some(Pending::Join(joined)) if joined == topic => {
                self.on_join_reply(r, topic, &status, response, out);
            }
            Some(other) => {
                // A reply on another topic than its ref's: not ours after all.
                self.pending.insert(r.to_string(), other);
            }
            None => {}
        }
    }

    fn on_join_reply(
        &mut self,
        r: &str,
        topic: &str,
        status: &str,
        response: Value,
        out: &mut Vec<Outbound>,
    ) {
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        if chan.join_ref.as_deref() != Some(r) {
            return;
        }
        chan.join_deadline = None;
        if status == "ok" {
            chan.state = State::Joined;
            chan.tries = 0;
            chan.rejoin_at = None;
            if let Some((id, _)) = chan.waiter.take() {
                out.push(Outbound::JoinDone {
                    id,
                    result: Ok(response),
                });
            }
            let held = std::mem::take(&mut chan.held);
            // What an earlier join left unanswered goes first: it was pushed first.
            self.unsend(topic);
            self.send_unconfirmed(topic, out);
            for push in held {
                self.push_frame(topic, push, out);
            }
        } else {
            if let Some((id, _)) = chan.waiter.take() {
                out.push(Outbound::JoinDone {
                    id,
                    result: Err(JoinError::Refused(response)),
                });
            }
            self.schedule_rejoin(topic);
        }
    }

    fn on_message(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
        out: &mut Vec<Outbound>,
    ) {
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        // phoenix.js's isMember: a message of an earlier join is dropped.
        if join_ref.is_some() && join_ref != chan.join_ref.as_deref() {
            return;
        }
        match event {
            "phx_error" => {
                if chan.state != State::Errored {
                    if let Some(r) = chan.join_ref.clone() {
                        self.pending.remove(&r);
                    }
                    if let Some(chan) = self.channels.get_mut(topic) {
                        chan.join_deadline = None;
                    }
                    self.unsend(topic);
                    self.schedule_rejoin(topic);
                }
            }
            "phx_close" => {
                if let Some(chan) = self.channels.remove(topic) {
                    self.close_chan(chan, out);
                }
            }
            _ => {
                let current = chan.join_ref.clone().unwrap_or_default();
                let changes = match event {
                    "presence_state" => chan.presence.on_state(&current, &payload),
                    "presence_diff" => chan.presence.on_diff(&current, &payload),
                    _ => Vec::new(),
                };
                if !changes.is_empty() {
                    out.push(Outbound::PresenceChanged {
                        topic: topic.to_string(),
                        changes,
                    });
                }
                out.push(Outbound::Message {
                    topic: topic.to_string(),
                    event: event.to_string(),
                    payload,
                });
            }
        }
    }

    fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn heartbeat_interval(&self) -> u64 {
        self.config.heartbeat_interval_ms.max(1)
    }

    /// A join with a new join_ref, if the socket is open.
    fn join_frame(&mut self, topic: &str, out: &mut Vec<Outbound>) {
        if !self.connected || !self.channels.contains_key(topic) {
            return;
        }
        let r = self.make_ref();
        let deadline = self.now_ms.saturating_add(self.config.timeout_ms);
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        let old = chan.join_ref.replace(r.clone());
        chan.state = State::Joining;
        chan.join_deadline = Some(deadline);
        chan.rejoin_at = None;
        let message = frame(Some(&r), &r, topic, "phx_join", &chan.params);
        if let Some(old) = old {
            self.pending.remove(&old);
        }
        self.pending.insert(r, Pending::Join(topic.to_string()));
        out.push(Outbound::Send { text: message });
    }

    fn schedule_rejoin(&mut self, topic: &str) {
        let connected = self.connected;
        let now = self.now_ms;
        let schedule = &self.config.rejoin_schedule_ms;
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        chan.state = State::Errored;
        chan.join_deadline = None;
        chan.tries = chan.tries.saturating_add(1);
        let i = (chan.tries as usize).saturating_sub(1);
        let delay = schedule
            .get(i)
            .or(schedule.last())
            .copied()
            .unwrap_or(1_000);
        chan.rejoin_at = connected.then(|| now.saturating_add(delay));
    }

    fn push_frame(&mut self, topic: &str, push: Waiting, out: &mut Vec<Outbound>) {
        let r = self.make_ref();
        let join_ref = self.channels.get(topic).and_then(|c| c.join_ref.clone());
        self.pending
            .insert(r.clone(), Pending::Push(push.id, push.deadline));
        let message = frame(join_ref.as_deref(), &r, topic, &push.event, &push.payload);
        out.push(Outbound::Send { text: message });
    }

    /// Sends every unanswered `once` push of `topic` with no copy in flight, oldest first.
    fn send_unconfirmed(&mut self, topic: &str, out: &mut Vec<Outbound>) {
        let Some(chan) = self.channels.get(topic) else {
            return;
        };
        let join_ref = chan.join_ref.clone();
        let due: Vec<usize> = (0..chan.unconfirmed.len())
            .filter(|&i| chan.unconfirmed[i].sent.is_none())
            .collect();
        for i in due {
            let r = self.make_ref();
            let Some(push) = self
                .channels
                .get_mut(topic)
                .and_then(|c| c.unconfirmed.get_mut(i))
            else {
                continue;
            };
            push.sent = Some(r.clone());
            let message = frame(join_ref.as_deref(), &r, topic, &push.event, &push.payload);
            self.pending.insert(r, Pending::Once(topic.to_string()));
            out.push(Outbound::Send { text: message });
        }
    }

    /// The copies of `topic`'s `once` pushes in flight are lost (their socket or join ended):
    /// each is sent again after the next join.
    fn unsend(&mut self, topic: &str) {
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        for push in &mut chan.unconfirmed {
            if let Some(r) = push.sent.take() {
                self.pending.remove(&r);
            }
        }
    }

    /// A channel is gone (left, closed by the server, replaced): everyone waiting on it hears.
    fn close_chan(&mut self, chan: Chan, out: &mut Vec<Outbound>) {
        if let Some(r) = &chan.join_ref
            && matches!(self.pending.get(r), Some(Pending::Join(_)))
        {
            self.pending.remove(r);
        }
        if let Some((id, _)) = chan.waiter {
            out.push(Outbound::JoinDone {
                id,
                result: Err(JoinError::Closed),
            });
        }
        for push in chan.held.into_iter().chain(chan.unconfirmed) {
            if let Some(r) = push.sent {
                self.pending.remove(&r);
            }
            out.push(Outbound::PushDone {
                id: push.id,
                result: Err(PushError::Closed),
            });
        }
    }
}

/// A Phoenix V2 frame.
fn frame(join_ref: Option<&str>, r: &str, topic: &str, event: &str, payload: &Value) -> String {
    json!([join_ref, r, topic, event, payload]).to_string()
}
