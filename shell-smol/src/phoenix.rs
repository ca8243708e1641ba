//! A Phoenix channels client (protocol V2, phoenix.js 1.8 semantics) on the reconnecting
//! client of [`crate::reconnecting`].
//!
//! [`PhoenixClient::connect`] opens the socket (`…/websocket?vsn=2.0.0`, as phoenix.js builds
//! it) and keeps it open with the core machine's backoff; [`PhoenixClient::channel`] gives a
//! [`Channel`] that joins with params, pushes with replies and timeouts, receives what the
//! server sends to the topic, tracks presence (phoenix.js's sync rules) and leaves.
//!
//! The protocol's rules (refs and join_refs, rejoins on phoenix.js's schedule, held pushes,
//! push, join and leave timeouts, heartbeats, the bound on pushes awaiting replies, the
//! idempotency keys of [`Channel::push_once`]) are spool-core's sans-IO
//! [`spool_core::client::phoenix::Channels`] machine: this module only hands it the socket's
//! frames and opens and closes, the callers' requests and the clock, arms one timer at its
//! next deadline, and carries its answers to the callers. Read that module for what phoenix.js
//! does and this does too.
//!
//! A dead peer is detected by the WebSocket keep-alive of the core client machine (ping, pong
//! deadline), not by a missing heartbeat reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use smol::channel::{Receiver, Sender};
use spool_core::client::phoenix::{self as core, Change, rejoin_ms};
use spool_core::client::{self, Backoff};
use spool_core::ws::{Message, Url};

pub use spool_core::client::phoenix::{JoinError, PushError};

use crate::io::{Clock, random_bytes};
use crate::reconnecting::{self, ClientHandle, ClientSender, Handler, Next};

/// How a [`PhoenixClient`] behaves; the defaults are phoenix.js's.
#[derive(Clone)]
pub struct PhoenixOptions {
    /// How long a join, push or leave waits for its reply. Default 10 s.
    pub timeout: Duration,
    /// How often a heartbeat goes to the `phoenix` topic. Default 30 s.
    pub heartbeat_interval: Duration,
    /// The delay before rejoin attempt `tries` (from 1). Default phoenix.js's 1 s, 2 s, 5 s,
    /// then 10 s ([`rejoin_ms`]). Read for tries 1 to [`REJOIN_SCHEDULE_LEN`] when the client
    /// is made (the machine takes a schedule as data); the last delay repeats.
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
    /// Write the channels machine's event log here (its configuration, then every event, one
    /// JSON object a line): `spool_core::client::phoenix::replay` runs it again to the same
    /// outbounds. Default: none.
    pub record: Option<std::path::PathBuf>,
}

/// How many tries of [`PhoenixOptions::rejoin_after`] become the machine's rejoin schedule.
pub const REJOIN_SCHEDULE_LEN: u32 = 16;

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
            record: None,
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
    /// The record file could not be written.
    Record(std::io::Error),
    /// The reconnecting client refused the configuration.
    Client(reconnecting::ConnectError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Url(e) => write!(f, "bad URL: {e}"),
            ConnectError::Record(e) => write!(f, "cannot write the record file: {e}"),
            ConnectError::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A message the server sent to a channel: a broadcast or a push to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage {
    /// The event (`"shout"`, `"presence_diff"`, …).
    pub event: String,
    /// Its payload.
    pub payload: Value,
}

/// What a caller asks of the machine, with where its answer goes.
enum Cmd {
    Join {
        id: u64,
        topic: String,
        params: Value,
        sinks: Sinks,
        answer: Sender<Result<Value, JoinError>>,
    },
    Push {
        id: u64,
        topic: String,
        event: String,
        payload: Value,
        timeout_ms: u64,
        once: bool,
        answer: Sender<Result<Value, PushError>>,
    },
    Leave {
        id: u64,
        topic: String,
        answer: Sender<()>,
    },
    /// The machine's deadline came.
    Tick,
}

#[derive(Clone)]
struct Sinks {
    events: Sender<ChannelMessage>,
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

/// The Late handler: feeds the machine, carries out what it says. Its maps hold one entry per
/// request the machine has not answered yet, so the machine's bounds bound them too.
struct PhoenixHandler {
    machine: Arc<Mutex<core::Channels>>,
    clock: Clock,
    joins: HashMap<u64, Sender<Result<Value, JoinError>>>,
    pushes: HashMap<u64, Sender<Result<Value, PushError>>>,
    leaves: HashMap<u64, Sender<()>>,
    sinks: HashMap<String, Sinks>,
    /// Where ticks go: the client's own info channel, through a forwarding task.
    timers: Sender<Cmd>,
    /// The deadline a timer is armed for.
    armed: Option<u64>,
    recorder: Option<std::io::BufWriter<std::fs::File>>,
}

/// Writes one line of the machine's log.
fn write_line(
    file: &mut std::io::BufWriter<std::fs::File>,
    line: &core::Line,
) -> std::io::Result<()> {
    use std::io::Write as _;
    serde_json::to_writer(&mut *file, line)?;
    file.write_all(b"\n")?;
    file.flush()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PhoenixHandler {
    /// Gives the machine `event`, carries out its answer, re-arms the timer; the frames to
    /// send on the current socket.
    fn feed(&mut self, event: core::Event) -> Next {
        if let Some(file) = self.recorder.as_mut()
            && let Err(e) = write_line(file, &core::Line::Event(event.clone()))
        {
            tracing::warn!("recording stopped: {e}");
            self.recorder = None;
        }
        let (out, deadline) = {
            let mut machine = lock(&self.machine);
            let out = machine.handle(event);
            (out, machine.next_deadline())
        };
        let mut frames = Vec::new();
        for outbound in out {
            match outbound {
                core::Outbound::Send { text } => frames.push(Message::text(text)),
                core::Outbound::JoinDone { id, result } => {
                    if let Err(e) = &result {
                        tracing::debug!("join {id}: {e}");
                    }
                    if let Some(answer) = self.joins.remove(&id) {
                        let _ = answer.try_send(result);
                    }
                }
                core::Outbound::PushDone { id, result } => {
                    if let Err(e) = &result {
                        tracing::debug!("push {id}: {e}");
                    }
                    if let Some(answer) = self.pushes.remove(&id) {
                        let _ = answer.try_send(result);
                    }
                }
                core::Outbound::LeaveDone { id } => {
                    if let Some(answer) = self.leaves.remove(&id) {
                        let _ = answer.try_send(());
                    }
                }
                core::Outbound::Message {
                    topic,
                    event,
                    payload,
                } => {
                    if let Some(sinks) = self.sinks.get(&topic) {
                        let message = ChannelMessage { event, payload };
                        sinks.offer(&sinks.events, message, &topic);
                    }
                }
                core::Outbound::PresenceChanged { topic, changes } => {
                    if let Some(sinks) = self.sinks.get(&topic) {
                        for change in changes {
                            sinks.offer(&sinks.changes, change, &topic);
                        }
                    }
                }
            }
        }
        self.arm(deadline);
        if frames.is_empty() {
            Next::Ok
        } else {
            Next::Reply(frames)
        }
    }

    /// One timer at the machine's next deadline; an earlier one armed already is enough (a
    /// tick before the deadline does nothing but re-arm).
    fn arm(&mut self, deadline: Option<u64>) {
        let Some(at) = deadline else {
            return;
        };
        let now = self.clock.now_ms();
        if self.armed.is_some_and(|armed| armed <= at && armed >= now) {
            return;
        }
        self.armed = Some(at);
        let timers = self.timers.clone();
        let delay = Duration::from_millis(at.saturating_sub(now));
        smol::spawn(async move {
            smol::Timer::after(delay).await;
            let _ = timers.send(Cmd::Tick).await;
        })
        .detach();
    }
}

impl Handler for PhoenixHandler {
    type Call = ();
    type Reply = ();
    type Info = Cmd;

    fn handle_connect(&mut self, _headers: &[(String, String)]) -> Next {
        let now_ms = self.clock.now_ms();
        self.feed(core::Event::Opened { now_ms })
    }

    fn handle_disconnect(&mut self, _code: u16, _reason: &str) -> Next {
        let now_ms = self.clock.now_ms();
        // Frames for a socket that is gone go nowhere: a disconnect sends nothing.
        let _ = self.feed(core::Event::Closed { now_ms });
        Next::Ok
    }

    fn handle_in(&mut self, frame: Message) -> Next {
        let Some(text) = frame.as_text() else {
            return Next::Ok;
        };
        let now_ms = self.clock.now_ms();
        let text = text.to_string();
        self.feed(core::Event::Receive { now_ms, text })
    }

    fn handle_info(&mut self, cmd: Cmd) -> Next {
        let now_ms = self.clock.now_ms();
        let event = match cmd {
            Cmd::Join {
                id,
                topic,
                params,
                sinks,
                answer,
            } => {
                self.sinks.insert(topic.clone(), sinks);
                self.joins.insert(id, answer);
                core::Event::Join {
                    now_ms,
                    id,
                    topic,
                    params,
                }
            }
            Cmd::Push {
                id,
                topic,
                event,
                payload,
                timeout_ms,
                once,
                answer,
            } => {
                self.pushes.insert(id, answer);
                core::Event::Push {
                    now_ms,
                    id,
                    topic,
                    event,
                    payload,
                    timeout_ms,
                    once,
                }
            }
            Cmd::Leave { id, topic, answer } => {
                self.sinks.remove(&topic);
                self.leaves.insert(id, answer);
                core::Event::Leave { now_ms, id, topic }
            }
            Cmd::Tick => {
                self.armed = None;
                core::Event::Tick { now_ms }
            }
        };
        self.feed(event)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connected (or connecting) Phoenix socket.
pub struct PhoenixClient {
    handle: Option<ClientHandle<PhoenixHandler>>,
    sender: ClientSender<PhoenixHandler>,
    machine: Arc<Mutex<core::Channels>>,
    ids: Arc<AtomicU64>,
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
        config.connect_timeout_ms = millis(options.connect_timeout).max(1);
        let machine_config = core::Config {
            timeout_ms: millis(options.timeout),
            heartbeat_interval_ms: millis(options.heartbeat_interval).max(1),
            rejoin_schedule_ms: (1..=REJOIN_SCHEDULE_LEN)
                .map(|tries| millis((options.rejoin_after)(tries)))
                .collect(),
            max_pending: options.max_pending.max(1),
            // Drawn from the OS: the machine's idempotency keys are unique to this run.
            run_id: random_bytes::<8>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        let recorder = match &options.record {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(ConnectError::Record)?;
                let mut file = std::io::BufWriter::new(file);
                let setup = core::Line::Setup(machine_config.clone());
                write_line(&mut file, &setup).map_err(ConnectError::Record)?;
                Some(file)
            }
            None => None,
        };
        let machine = Arc::new(Mutex::new(core::Channels::new(machine_config)));
        let (timers, timer_inbox) = smol::channel::unbounded();
        let handler = PhoenixHandler {
            machine: machine.clone(),
            clock: Clock::new(),
            joins: HashMap::new(),
            pushes: HashMap::new(),
            leaves: HashMap::new(),
            sinks: HashMap::new(),
            timers,
            armed: None,
            recorder,
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
        Ok(PhoenixClient {
            handle: Some(handle),
            sender,
            machine,
            ids: Arc::new(AtomicU64::new(1)),
            timeout: options.timeout,
            channel_buffer: options.channel_buffer.max(1),
            _tasks: vec![forward],
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
            machine: self.machine.clone(),
            ids: self.ids.clone(),
            timeout: self.timeout,
            sinks: Sinks {
                events: events_tx,
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
    machine: Arc<Mutex<core::Channels>>,
    ids: Arc<AtomicU64>,
    timeout: Duration,
    sinks: Sinks,
    events: Receiver<ChannelMessage>,
    changes: Receiver<Change>,
}

impl Channel {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Joins (or rejoins) the topic and waits for the reply, at most the client's timeout. After
    /// a successful join the channel stays joined across reconnects.
    ///
    /// # Errors
    /// [`JoinError`].
    pub async fn join(&self) -> Result<Value, JoinError> {
        let (answer, answered) = smol::channel::bounded(1);
        let cmd = Cmd::Join {
            id: self.id(),
            topic: self.topic.clone(),
            params: self.params.clone(),
            sinks: self.sinks.clone(),
            answer,
        };
        self.sender.info(cmd).await.map_err(|_| JoinError::Closed)?;
        answered.recv().await.unwrap_or(Err(JoinError::Closed))
    }

    /// Pushes `event` with `payload` and waits for its reply, at most the client's timeout
    /// (phoenix.js: 10 s).
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push(&self, event: &str, payload: Value) -> Result<Value, PushError> {
        self.push_inner(event, payload, self.timeout, false).await
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
    /// whose timeout passed is forgotten.
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
            id: self.id(),
            topic: self.topic.clone(),
            event: event.to_string(),
            payload,
            timeout_ms: millis(timeout),
            once,
            answer,
        };
        self.sender.info(cmd).await.map_err(|_| PushError::Closed)?;
        answered.recv().await.unwrap_or(Err(PushError::Closed))
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
        lock(&self.machine)
            .presence(&self.topic)
            .cloned()
            .unwrap_or_default()
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
            id: self.id(),
            topic: self.topic.clone(),
            answer,
        };
        if self.sender.info(cmd).await.is_ok() {
            let _ = answered.recv().await;
        }
    }
}
