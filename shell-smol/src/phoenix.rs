//! A Phoenix channels client (protocol V2, phoenix.js 1.8 semantics) on the reconnecting
//! client of [`crate::reconnecting`].
//!
//! [`PhoenixClient::connect`] opens the socket (`…/websocket?vsn=2.0.0`, as phoenix.js builds
//! it) and keeps it open with the core machine's backoff; [`PhoenixClient::channel`] gives a
//! [`Channel`] that joins with params, pushes with replies and timeouts, receives what the
//! server sends to the topic, tracks presence with [`spool_core::client::phoenix::Presence`]
//! (phoenix.js's sync rules) and leaves.
//!
//! What phoenix.js does, this does:
//! - refs come from one counter per client, and every (re)join takes a new join_ref; a message
//!   whose join_ref is not the channel's current one is dropped;
//! - when the socket drops, joined channels become errored; when it opens again every errored
//!   channel rejoins at once; a rejoin that fails (refused, timed out, or a `phx_error` while
//!   connected) is retried after [`PhoenixOptions::rejoin_after`] (phoenix.js: 1 s, 2 s, 5 s,
//!   then 10 s), the count restarting after a join succeeds or the socket opens;
//! - pushes made while the channel is not joined are held and sent after the join, their
//!   timeout running from the push;
//! - pushes awaiting replies (sent, held, or kept for a resend) are bounded by
//!   [`PhoenixOptions::max_pending`] (1,024): past it a push fails at once with
//!   [`PushError::TooMany`] rather than the client's memory growing;
//! - [`Channel::push_once`] (a spool addition, opt-in) adds an idempotency key to the payload,
//!   `client_msg_id: "<run id>-<n>"` (the run id drawn from the OS per client), and keeps the
//!   push until its reply confirms it: a push whose reply died with the connection (or a
//!   crashed channel) is sent again, in order, after the channel rejoins. A server that drops
//!   repeats of a key (`spool serve`'s `room:*` does) then sees it once; one that does not may
//!   see it twice (at-least-once). A plain [`Channel::push`] is never resent: it fails with its
//!   timeout if its connection dies (at-most-once), as in phoenix.js;
//! - a heartbeat goes to the `phoenix` topic every [`PhoenixOptions::heartbeat_interval`]
//!   (30 s). A dead peer is detected by the WebSocket keep-alive of the core machine
//!   (ping, pong deadline), not by a missing heartbeat reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_lite::FutureExt as _;
use serde_json::{Map, Value, json};
use smol::channel::{Receiver, Sender};
use spool_core::client::phoenix::{Change, Presence, rejoin_ms};
use spool_core::client::{self, Backoff};
use spool_core::ws::{Message, Url};

use crate::reconnecting::{self, ClientHandle, ClientSender, Handler, Next};

/// How a [`PhoenixClient`] behaves; the defaults are phoenix.js's.
#[derive(Clone)]
pub struct PhoenixOptions {
    /// How long a join, push or leave waits for its reply. Default 10 s.
    pub timeout: Duration,
    /// How often a heartbeat goes to the `phoenix` topic. Default 30 s.
    pub heartbeat_interval: Duration,
    /// The delay before rejoin attempt `tries` (from 1). Default phoenix.js's 1 s, 2 s, 5 s,
    /// then 10 s ([`rejoin_ms`]).
    pub rejoin_after: Arc<dyn Fn(u32) -> Duration + Send + Sync>,
    /// The socket's reconnect backoff (the core machine's, with jitter).
    pub backoff: Backoff,
    /// Connect plus handshake, per attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// Messages (and, apart, presence changes) one channel keeps for its reader. Past it a
    /// reader that is not keeping up loses the newest, counted by [`Channel::dropped`] and
    /// logged, rather than the client's memory growing. Default 1,024.
    pub channel_buffer: usize,
    /// The most pushes awaiting replies at once, over all channels (sent, held until a join,
    /// or kept by [`Channel::push_once`] for a resend). Past it a push fails at once with
    /// [`PushError::TooMany`]. Default 1,024, as the core's `max_calls`.
    pub max_pending: usize,
}

impl Default for PhoenixOptions {
    fn default() -> Self {
        PhoenixOptions {
            timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            rejoin_after: Arc::new(|tries| Duration::from_millis(rejoin_ms(tries))),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            channel_buffer: 1024,
            max_pending: 1024,
        }
    }
}

impl std::fmt::Debug for PhoenixOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoenixOptions")
            .field("timeout", &self.timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("channel_buffer", &self.channel_buffer)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

/// Why a [`PhoenixClient`] could not start.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL is not a `ws`, `wss`, `http` or `https` URL.
    Url(String),
    /// The reconnecting client refused the configuration.
    Client(reconnecting::ConnectError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Url(e) => write!(f, "bad URL: {e}"),
            ConnectError::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why a join did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinError {
    /// The server refused it (`status` "error"); the channel keeps rejoining, as phoenix.js's
    /// does, until [`Channel::leave`].
    Refused(Value),
    /// No reply within the timeout (the channel keeps trying).
    Timeout,
    /// The channel was closed, or the client stopped.
    Closed,
}

/// Why a push did not get an `ok` reply.
#[derive(Debug, Clone, PartialEq)]
pub enum PushError {
    /// The reply had another status (`"error"` …): the status and its response.
    Reply(String, Value),
    /// No reply within the timeout.
    Timeout,
    /// The channel is closed, was never joined, or the client stopped.
    Closed,
    /// [`PhoenixOptions::max_pending`] pushes await replies already; this one was not sent.
    TooMany,
    /// [`Channel::push_once`] needs a JSON object to put its key in.
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

/// A message the server sent to a channel: a broadcast or a push to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage {
    /// The event (`"shout"`, `"presence_diff"`, …).
    pub event: String,
    /// Its payload.
    pub payload: Value,
}

type PushAnswer = Sender<Result<Value, PushError>>;

enum Cmd {
    Join {
        topic: String,
        params: Value,
        sinks: Sinks,
        answer: Sender<Result<Value, JoinError>>,
    },
    Push {
        topic: String,
        event: String,
        payload: Value,
        answer: PushAnswer,
        /// With an idempotency key, kept until its reply and resent after a rejoin.
        once: bool,
    },
    Leave {
        topic: String,
        answer: Sender<()>,
    },
    Heartbeat,
    Rejoin {
        topic: String,
        generation: u64,
    },
    JoinTimeout {
        topic: String,
        join_ref: String,
    },
}

#[derive(Clone)]
struct Sinks {
    events: Sender<ChannelMessage>,
    presence: Arc<Mutex<Presence>>,
    changes: Sender<Change>,
    /// Messages and presence changes a full buffer refused.
    dropped: Arc<AtomicU64>,
}

impl Sinks {
    /// Hands `item` to the reader, or counts it dropped when the reader is not keeping up.
    fn offer<T>(&self, sink: &Sender<T>, item: T, topic: &str) {
        if let Err(smol::channel::TrySendError::Full(_)) = sink.try_send(item) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                topic,
                dropped,
                "a channel's reader is not keeping up; message dropped"
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Joining,
    Joined,
    Errored,
}

struct Chan {
    params: Value,
    state: State,
    join_ref: Option<String>,
    waiter: Option<Sender<Result<Value, JoinError>>>,
    tries: u32,
    generation: u64,
    held: Vec<(String, Value, PushAnswer)>,
    /// `push_once` pushes not yet answered, oldest first, with the ref of the copy in flight.
    unconfirmed: std::collections::VecDeque<Keyed>,
    sinks: Sinks,
}

/// A [`Channel::push_once`] push awaiting its reply.
struct Keyed {
    event: String,
    /// With its `client_msg_id`.
    payload: Value,
    answer: PushAnswer,
    /// The ref of the copy sent on the current join, if one was.
    sent: Option<String>,
}

enum Pending {
    Push(PushAnswer),
    /// A `push_once` push of this topic (found in its channel's `unconfirmed` by ref).
    Keyed(String),
    Join(String),
    Leave(Sender<()>),
}

struct PhoenixHandler {
    connected: bool,
    next_ref: u64,
    channels: HashMap<String, Chan>,
    pending: HashMap<String, Pending>,
    timers: Sender<Cmd>,
    timeout: Duration,
    rejoin_after: Arc<dyn Fn(u32) -> Duration + Send + Sync>,
    max_pending: usize,
    /// Drawn from the OS when the client is made: keys are `<run>-<n>`.
    run: String,
    /// The last key's `n`.
    keys: u64,
}

fn frame(join_ref: Option<&str>, r: &str, topic: &str, event: &str, payload: &Value) -> Message {
    Message::text(json!([join_ref, r, topic, event, payload]).to_string())
}

impl PhoenixHandler {
    fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn after(&self, delay: Duration, cmd: Cmd) {
        let timers = self.timers.clone();
        smol::spawn(async move {
            smol::Timer::after(delay).await;
            let _ = timers.send(cmd).await;
        })
        .detach();
    }

    /// A join frame with a new join_ref, if connected.
    fn join_frame(&mut self, topic: &str) -> Option<Message> {
        if !self.connected || !self.channels.contains_key(topic) {
            return None;
        }
        let r = self.make_ref();
        let chan = self.channels.get_mut(topic)?;
        if let Some(old) = chan.join_ref.replace(r.clone()) {
            self.pending.remove(&old);
        }
        chan.state = State::Joining;
        let message = frame(Some(&r), &r, topic, "phx_join", &chan.params);
        self.pending
            .insert(r.clone(), Pending::Join(topic.to_string()));
        self.after(
            self.timeout,
            Cmd::JoinTimeout {
                topic: topic.to_string(),
                join_ref: r,
            },
        );
        Some(message)
    }

    fn schedule_rejoin(&mut self, topic: &str) {
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        chan.state = State::Errored;
        chan.tries += 1;
        chan.generation += 1;
        let delay = (self.rejoin_after)(chan.tries);
        let generation = chan.generation;
        if self.connected {
            self.after(
                delay,
                Cmd::Rejoin {
                    topic: topic.to_string(),
                    generation,
                },
            );
        }
    }

    fn push_frame(
        &mut self,
        topic: &str,
        event: &str,
        payload: &Value,
        answer: PushAnswer,
    ) -> Message {
        let r = self.make_ref();
        let join_ref = self.channels.get(topic).and_then(|c| c.join_ref.clone());
        self.pending.insert(r.clone(), Pending::Push(answer));
        frame(join_ref.as_deref(), &r, topic, event, payload)
    }

    fn forget_abandoned(&mut self) {
        self.pending
            .retain(|_, p| !matches!(p, Pending::Push(a) if a.is_closed()));
        for chan in self.channels.values_mut() {
            chan.unconfirmed.retain(|k| {
                let keep = !k.answer.is_closed();
                if let (false, Some(r)) = (keep, &k.sent) {
                    self.pending.remove(r);
                }
                keep
            });
        }
    }

    /// Pushes awaiting replies: sent, held for a join, or kept for a resend.
    fn awaiting(&self) -> usize {
        let sent = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Push(_)))
            .count();
        let kept: usize = self
            .channels
            .values()
            .map(|c| c.held.len() + c.unconfirmed.len())
            .sum();
        sent + kept
    }

    /// Sends every unanswered `push_once` push of `topic` that has no copy in flight on the
    /// current join, oldest first.
    fn send_unconfirmed(&mut self, topic: &str) -> Vec<Message> {
        let Some(chan) = self.channels.get(topic) else {
            return Vec::new();
        };
        let join_ref = chan.join_ref.clone();
        let due: Vec<usize> = (0..chan.unconfirmed.len())
            .filter(|&i| chan.unconfirmed[i].sent.is_none())
            .collect();
        let mut out = Vec::new();
        for i in due {
            let r = self.make_ref();
            self.pending
                .insert(r.clone(), Pending::Keyed(topic.to_string()));
            let Some(keyed) = self
                .channels
                .get_mut(topic)
                .and_then(|c| c.unconfirmed.get_mut(i))
            else {
                continue;
            };
            keyed.sent = Some(r.clone());
            out.push(frame(
                join_ref.as_deref(),
                &r,
                topic,
                &keyed.event,
                &keyed.payload,
            ));
        }
        out
    }

    /// The copies of `topic`'s `push_once` pushes in flight are lost (their connection or
    /// join ended): each will be sent again after the next join.
    fn unsend(&mut self, topic: &str) {
        let Some(chan) = self.channels.get_mut(topic) else {
            return;
        };
        for keyed in &mut chan.unconfirmed {
            if let Some(r) = keyed.sent.take() {
                self.pending.remove(&r);
            }
        }
    }

    fn on_reply(&mut self, r: &str, topic: &str, payload: &Value) -> Vec<Message> {
        let status = payload
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let response = payload.get("response").cloned().unwrap_or(Value::Null);
        let mut out = Vec::new();
        match self.pending.remove(r) {
            Some(Pending::Push(answer)) => {
                let result = if status == "ok" {
                    Ok(response)
                } else {
                    Err(PushError::Reply(status, response))
                };
                let _ = answer.try_send(result);
            }
            Some(Pending::Keyed(keyed_topic)) => {
                let chan = self.channels.get_mut(&keyed_topic);
                let found = chan.and_then(|c| {
                    let i = c
                        .unconfirmed
                        .iter()
                        .position(|k| k.sent.as_deref() == Some(r))?;
                    c.unconfirmed.remove(i)
                });
                if let Some(keyed) = found {
                    let result = if status == "ok" {
                        Ok(response)
                    } else {
                        Err(PushError::Reply(status, response))
                    };
                    let _ = keyed.answer.try_send(result);
                }
            }
            Some(Pending::Leave(answer)) => {
                let _ = answer.try_send(());
            }
            Some(Pending::Join(joined)) if joined == topic => {
                let Some(chan) = self.channels.get_mut(topic) else {
                    return out;
                };
                if chan.join_ref.as_deref() != Some(r) {
                    return out;
                }
                if status == "ok" {
                    chan.state = State::Joined;
                    chan.tries = 0;
                    chan.generation += 1;
                    if let Some(waiter) = chan.waiter.take() {
                        let _ = waiter.try_send(Ok(response));
                    }
                    let held = std::mem::take(&mut chan.held);
                    // What an earlier join left unanswered goes first: it was pushed first.
                    self.unsend(topic);
                    out.extend(self.send_unconfirmed(topic));
                    for (event, payload, answer) in held {
                        if !answer.is_closed() {
                            out.push(self.push_frame(topic, &event, &payload, answer));
                        }
                    }
                } else {
                    if let Some(waiter) = chan.waiter.take() {
                        let _ = waiter.try_send(Err(JoinError::Refused(response)));
                    }
                    self.schedule_rejoin(topic);
                }
            }
            _ => {}
        }
        out
    }

    fn on_message(&mut self, join_ref: Option<&str>, topic: &str, event: &str, payload: Value) {
        let Some((state, current)) = self
            .channels
            .get(topic)
            .map(|c| (c.state, c.join_ref.clone()))
        else {
            return;
        };
        // phoenix.js's isMember: a message of an earlier join is dropped.
        if join_ref.is_some() && join_ref != current.as_deref() {
            return;
        }
        match event {
            "phx_error" => {
                if state != State::Errored {
                    if let Some(r) = current {
                        self.pending.remove(&r);
                    }
                    self.unsend(topic);
                    self.schedule_rejoin(topic);
                }
            }
            "phx_close" => {
                if let Some(chan) = self.channels.remove(topic) {
                    if let Some(waiter) = chan.waiter {
                        let _ = waiter.try_send(Err(JoinError::Closed));
                    }
                    for (_, _, answer) in chan.held {
                        let _ = answer.try_send(Err(PushError::Closed));
                    }
                    for keyed in chan.unconfirmed {
                        let _ = keyed.answer.try_send(Err(PushError::Closed));
                    }
                }
            }
            _ => {
                let Some(chan) = self.channels.get(topic) else {
                    return;
                };
                let current = current.unwrap_or_default();
                let changes = match event {
                    "presence_state" => lock(&chan.sinks.presence).on_state(&current, &payload),
                    "presence_diff" => lock(&chan.sinks.presence).on_diff(&current, &payload),
                    _ => Vec::new(),
                };
                for change in changes {
                    chan.sinks.offer(&chan.sinks.changes, change, topic);
                }
                let message = ChannelMessage {
                    event: event.to_string(),
                    payload,
                };
                chan.sinks.offer(&chan.sinks.events, message, topic);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn reply(frames: Vec<Message>) -> Next {
    if frames.is_empty() {
        Next::Ok
    } else {
        Next::Reply(frames)
    }
}

impl Handler for PhoenixHandler {
    type Call = ();
    type Reply = ();
    type Info = Cmd;

    fn handle_connect(&mut self, _headers: &[(String, String)]) -> Next {
        self.connected = true;
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        let mut out = Vec::new();
        for topic in topics {
            if let Some(chan) = self.channels.get_mut(&topic) {
                // phoenix.js: the socket opened, so the rejoin timer restarts and an errored
                // channel rejoins now.
                chan.tries = 0;
                chan.generation += 1;
            }
            out.extend(self.join_frame(&topic));
        }
        reply(out)
    }

    fn handle_disconnect(&mut self, _code: u16, _reason: &str) -> Next {
        self.connected = false;
        for chan in self.channels.values_mut() {
            chan.state = State::Errored;
            chan.generation += 1;
        }
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.unsend(&topic);
        }
        self.pending.retain(|_, p| match p {
            Pending::Join(_) | Pending::Keyed(_) => false,
            Pending::Leave(answer) => {
                let _ = answer.try_send(());
                false
            }
            Pending::Push(_) => true,
        });
        Next::Ok
    }

    fn handle_in(&mut self, frame: Message) -> Next {
        let Some(text) = frame.as_text() else {
            return Next::Ok;
        };
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(text) else {
            return Next::Ok;
        };
        let Ok([join_ref, r, topic, event, payload]) = <[Value; 5]>::try_from(parts) else {
            return Next::Ok;
        };
        let (Some(topic), Some(event)) = (topic.as_str(), event.as_str()) else {
            return Next::Ok;
        };
        if event == "phx_reply" {
            if let Some(r) = r.as_str() {
                return reply(self.on_reply(r, topic, &payload));
            }
            return Next::Ok;
        }
        self.on_message(join_ref.as_str(), topic, event, payload);
        Next::Ok
    }

    fn handle_info(&mut self, cmd: Cmd) -> Next {
        self.forget_abandoned();
        match cmd {
            Cmd::Join {
                topic,
                params,
                sinks,
                answer,
            } => {
                if let Some(old) = self.channels.remove(&topic) {
                    if let Some(waiter) = old.waiter {
                        let _ = waiter.try_send(Err(JoinError::Closed));
                    }
                }
                self.channels.insert(
                    topic.clone(),
                    Chan {
                        params,
                        state: State::Joining,
                        join_ref: None,
                        waiter: Some(answer),
                        tries: 0,
                        generation: 0,
                        held: Vec::new(),
                        unconfirmed: std::collections::VecDeque::new(),
                        sinks,
                    },
                );
                reply(self.join_frame(&topic).into_iter().collect())
            }
            Cmd::Push {
                topic,
                event,
                mut payload,
                answer,
                once,
            } => {
                if !self.channels.contains_key(&topic) {
                    let _ = answer.try_send(Err(PushError::Closed));
                    return Next::Ok;
                }
                if self.awaiting() >= self.max_pending {
                    tracing::warn!(
                        topic,
                        event,
                        max = self.max_pending,
                        "push refused: too many pushes awaiting replies"
                    );
                    let _ = answer.try_send(Err(PushError::TooMany));
                    return Next::Ok;
                }
                if once {
                    let Some(object) = payload.as_object_mut() else {
                        let _ = answer.try_send(Err(PushError::NotAnObject));
                        return Next::Ok;
                    };
                    self.keys += 1;
                    let key = format!("{}-{}", self.run, self.keys);
                    object.insert("client_msg_id".into(), Value::String(key));
                    let connected = self.connected;
                    let Some(chan) = self.channels.get_mut(&topic) else {
                        return Next::Ok;
                    };
                    chan.unconfirmed.push_back(Keyed {
                        event,
                        payload,
                        answer,
                        sent: None,
                    });
                    if chan.state == State::Joined && connected {
                        return reply(self.send_unconfirmed(&topic));
                    }
                    return Next::Ok;
                }
                let Some(chan) = self.channels.get_mut(&topic) else {
                    return Next::Ok;
                };
                if chan.state == State::Joined && self.connected {
                    reply(vec![self.push_frame(&topic, &event, &payload, answer)])
                } else {
                    chan.held.push((event, payload, answer));
                    Next::Ok
                }
            }
            Cmd::Leave { topic, answer } => {
                let Some(chan) = self.channels.remove(&topic) else {
                    let _ = answer.try_send(());
                    return Next::Ok;
                };
                for (_, _, held) in chan.held {
                    let _ = held.try_send(Err(PushError::Closed));
                }
                for keyed in chan.unconfirmed {
                    if let Some(r) = keyed.sent {
                        self.pending.remove(&r);
                    }
                    let _ = keyed.answer.try_send(Err(PushError::Closed));
                }
                if let Some(join_ref) = chan.join_ref.filter(|_| self.connected) {
                    self.pending.remove(&join_ref);
                    let r = self.make_ref();
                    self.pending.insert(r.clone(), Pending::Leave(answer));
                    reply(vec![frame(
                        Some(&join_ref),
                        &r,
                        &topic,
                        "phx_leave",
                        &json!({}),
                    )])
                } else {
                    let _ = answer.try_send(());
                    Next::Ok
                }
            }
            Cmd::Heartbeat => {
                if !self.connected {
                    return Next::Ok;
                }
                let r = self.make_ref();
                reply(vec![frame(None, &r, "phoenix", "heartbeat", &json!({}))])
            }
            Cmd::Rejoin { topic, generation } => {
                let due = self
                    .channels
                    .get(&topic)
                    .is_some_and(|c| c.generation == generation && c.state == State::Errored);
                if due {
                    reply(self.join_frame(&topic).into_iter().collect())
                } else {
                    Next::Ok
                }
            }
            Cmd::JoinTimeout { topic, join_ref } => {
                let timed_out = self.channels.get(&topic).is_some_and(|c| {
                    c.state == State::Joining && c.join_ref.as_deref() == Some(&join_ref)
                });
                if !timed_out || !self.connected {
                    return Next::Ok;
                }
                // phoenix.js: leave that join, then rejoin on the backoff.
                self.pending.remove(&join_ref);
                let r = self.make_ref();
                let leave = frame(Some(&join_ref), &r, &topic, "phx_leave", &json!({}));
                self.schedule_rejoin(&topic);
                reply(vec![leave])
            }
        }
    }
}

/// A connected (or connecting) Phoenix socket.
pub struct PhoenixClient {
    handle: Option<ClientHandle<PhoenixHandler>>,
    sender: ClientSender<PhoenixHandler>,
    timeout: Duration,
    channel_buffer: usize,
    _tasks: Vec<smol::Task<()>>,
}

impl PhoenixClient {
    /// Connects to a Phoenix socket endpoint such as `ws://host/socket` (phoenix.js appends
    /// `/websocket` and `vsn=2.0.0`; so does this, unless the URL has them). Runs on smol's
    /// global executor; reconnects until [`PhoenixClient::close`] or drop.
    ///
    /// # Errors
    /// [`ConnectError`] for a bad URL or configuration.
    pub fn connect(url: &str, options: PhoenixOptions) -> Result<PhoenixClient, ConnectError> {
        let mut url = Url::parse(url).map_err(|e| ConnectError::Url(format!("{url}: {e}")))?;
        let (path, query) = match url.target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (url.target.clone(), None),
        };
        let mut path = path;
        if !path.ends_with("/websocket") {
            path = format!("{}/websocket", path.trim_end_matches('/'));
        }
        let mut query = query.unwrap_or_default();
        if !query.split('&').any(|kv| kv.starts_with("vsn=")) {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("vsn=2.0.0");
        }
        url.target = format!("{path}?{query}");
        let mut config = client::Config::new(url);
        config.backoff = options.backoff;
        config.connect_timeout_ms = u64::try_from(options.connect_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (timers, timer_inbox) = smol::channel::unbounded();
        let handler = PhoenixHandler {
            connected: false,
            next_ref: 0,
            channels: HashMap::new(),
            pending: HashMap::new(),
            timers,
            timeout: options.timeout,
            rejoin_after: options.rejoin_after.clone(),
            max_pending: options.max_pending.max(1),
            run: crate::io::random_bytes::<8>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            keys: 0,
        };
        let handle = reconnecting::connect(config, handler).map_err(ConnectError::Client)?;
        let sender = handle.sender();
        let forward = {
            let sender = sender.clone();
            smol::spawn(async move {
                while let Ok(cmd) = timer_inbox.recv().await {
                    if sender.info(cmd).await.is_err() {
                        break;
                    }
                }
            })
        };
        let heartbeat = {
            let sender = sender.clone();
            let every = options.heartbeat_interval.max(Duration::from_millis(1));
            smol::spawn(async move {
                loop {
                    smol::Timer::after(every).await;
                    if sender.info(Cmd::Heartbeat).await.is_err() {
                        break;
                    }
                }
            })
        };
        Ok(PhoenixClient {
            handle: Some(handle),
            sender,
            timeout: options.timeout,
            channel_buffer: options.channel_buffer.max(1),
            _tasks: vec![forward, heartbeat],
        })
    }

    /// A channel on `topic`, joined with `params` by [`Channel::join`]. One channel a topic: a
    /// second join of the same topic replaces the first.
    pub fn channel(&self, topic: &str, params: Value) -> Channel {
        let (events_tx, events) = smol::channel::bounded(self.channel_buffer);
        let (changes_tx, changes) = smol::channel::bounded(self.channel_buffer);
        Channel {
            topic: topic.to_string(),
            params,
            sender: self.sender.clone(),
            timeout: self.timeout,
            sinks: Sinks {
                events: events_tx,
                presence: Arc::new(Mutex::new(Presence::new())),
                changes: changes_tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            events,
            changes,
        }
    }

    /// Closes the socket (1000), stops reconnecting and waits for the client to stop.
    pub async fn close(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.close().await;
            handle.wait().await;
        }
    }
}

impl Drop for PhoenixClient {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.sender.try_close();
        }
    }
}

/// One topic of a [`PhoenixClient`].
pub struct Channel {
    topic: String,
    params: Value,
    sender: ClientSender<PhoenixHandler>,
    timeout: Duration,
    sinks: Sinks,
    events: Receiver<ChannelMessage>,
    changes: Receiver<Change>,
}

async fn within<T>(timeout: Duration, answer: Receiver<T>) -> Option<Option<T>> {
    async { Some(answer.recv().await.ok()) }
        .or(async {
            smol::Timer::after(timeout).await;
            None
        })
        .await
}

impl Channel {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Joins (or rejoins) the topic and waits for the reply, at most the client's timeout. After
    /// a successful join the channel stays joined across reconnects.
    ///
    /// # Errors
    /// [`JoinError`].
    pub async fn join(&self) -> Result<Value, JoinError> {
        let (answer, answered) = smol::channel::bounded(1);
        let cmd = Cmd::Join {
            topic: self.topic.clone(),
            params: self.params.clone(),
            sinks: self.sinks.clone(),
            answer,
        };
        self.sender.info(cmd).await.map_err(|_| JoinError::Closed)?;
        match within(self.timeout, answered).await {
            None => Err(JoinError::Timeout),
            Some(None) => Err(JoinError::Closed),
            Some(Some(result)) => result,
        }
    }

    /// Pushes `event` with `payload` and waits for its reply, at most the client's timeout
    /// (phoenix.js: 10 s).
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push(&self, event: &str, payload: Value) -> Result<Value, PushError> {
        self.push_with_timeout(event, payload, self.timeout).await
    }

    /// [`Channel::push`] with its own timeout.
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push_with_timeout(
        &self,
        event: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, PushError> {
        self.push_inner(event, payload, timeout, false).await
    }

    /// Pushes `event` with `payload` (a JSON object) plus an idempotency key, `client_msg_id`,
    /// unique in this client's run, and waits for its reply, at most the client's timeout.
    /// Until the reply comes the push is kept and, if its connection dies or its channel
    /// crashes, sent again (same key, in order) after the channel rejoins: with a server that
    /// drops repeats of a key it arrives once; with one that does not, at least once. A push
    /// whose caller stopped waiting (the timeout) is forgotten.
    ///
    /// # Errors
    /// [`PushError`]; [`PushError::NotAnObject`] for a payload that is not an object.
    pub async fn push_once(&self, event: &str, payload: Value) -> Result<Value, PushError> {
        self.push_inner(event, payload, self.timeout, true).await
    }

    /// [`Channel::push_once`] with its own timeout.
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push_once_with_timeout(
        &self,
        event: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, PushError> {
        self.push_inner(event, payload, timeout, true).await
    }

    async fn push_inner(
        &self,
        event: &str,
        payload: Value,
        timeout: Duration,
        once: bool,
    ) -> Result<Value, PushError> {
        let (answer, answered) = smol::channel::bounded(1);
        let cmd = Cmd::Push {
            topic: self.topic.clone(),
            event: event.to_string(),
            payload,
            answer,
            once,
        };
        self.sender.info(cmd).await.map_err(|_| PushError::Closed)?;
        match within(timeout, answered).await {
            None => Err(PushError::Timeout),
            Some(None) => Err(PushError::Closed),
            Some(Some(result)) => result,
        }
    }

    /// The next message the server sent to this channel (broadcasts, pushes, presence events),
    /// or `None` once the channel is gone.
    pub async fn recv(&self) -> Option<ChannelMessage> {
        self.events.recv().await.ok()
    }

    /// The stream of messages [`Channel::recv`] reads, for another task.
    pub fn messages(&self) -> Receiver<ChannelMessage> {
        self.events.clone()
    }

    /// Messages and presence changes dropped because this channel's reader fell more than
    /// [`PhoenixOptions::channel_buffer`] behind.
    pub fn dropped(&self) -> u64 {
        self.sinks.dropped.load(Ordering::Relaxed)
    }

    /// The presences now: `{"key": {"metas": [..]}}`.
    pub fn presence(&self) -> Map<String, Value> {
        lock(&self.sinks.presence).state().clone()
    }

    /// Every presence join and leave, as phoenix.js's `onJoin` / `onLeave` see them.
    pub fn presence_changes(&self) -> Receiver<Change> {
        self.changes.clone()
    }

    /// Leaves the topic and waits for the server's answer (at most the timeout); the channel
    /// stops rejoining either way.
    pub async fn leave(&self) {
        let (answer, answered) = smol::channel::bounded(1);
        let cmd = Cmd::Leave {
            topic: self.topic.clone(),
            answer,
        };
        if self.sender.info(cmd).await.is_ok() {
            let _ = within(self.timeout, answered).await;
        }
    }
}
