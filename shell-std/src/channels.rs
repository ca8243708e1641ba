//! Serving channels over WebSockets: a hub thread that owns the channel [`Runtime`], and a
//! [`Handler`] ([`ChannelSocket`]) that connects each socket to it. Works with both shells'
//! servers, since they share the handler trait.
//!
//! The hub is the shell around the runtime: it turns socket events into `channel::Event`s,
//! calls `handle`, and hands each outbound's frame to its recipients' mailboxes. A broadcast's
//! frame is one `Bytes`: every recipient gets a reference to the same bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use hashbrown::HashMap;
use spool_core::channel::{self, ClientId, Frame, Outbound, Recipients, Runtime};
use spool_core::replay::{ChannelLine, ChannelSetup};
use spool_core::ws::{CloseInfo, Message, Request};

use crate::clock::Clock;
use crate::cluster::{ClusterBus, Inbox};
use crate::handler::{
    Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxError, Next, Rejection,
};

/// A seed for [`channel::Config::with_seed`], from the OS: the runtime's hash maps are keyed
/// by topics and presence keys that peers choose, so the seed must be one they cannot guess.
pub fn hash_seed() -> u64 {
    let mut seed = [0; 8];
    crate::random::fill(&mut seed);
    u64::from_le_bytes(seed)
}

/// What the hub sends a socket.
#[derive(Clone, Debug)]
pub enum ToSocket {
    /// A frame to write.
    Frame(Frame),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

enum HubInput {
    Connect(ClientId, Mailbox<ToSocket>, Arc<AtomicBool>),
    Event(channel::Event),
    /// Runs on the hub's thread with the runtime, for a dashboard's read-only look.
    Inspect(Box<dyn FnOnce(&Runtime) + Send>),
    Stop,
}

/// Events that may wait for the hub (frames from sockets, the application's own events); past
/// it a socket's frame is refused (the socket is closed with 1013, try again later) and
/// [`Hub::event`] returns [`HubFull`], rather than the hub's memory growing. Connects and
/// disconnects always enter: there is one of each per connection, and the server bounds
/// connections.
pub const HUB_QUEUE_CAPACITY: usize = 65_536;

/// The hub's input: a queue with a bound on socket frames.
struct HubQueue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    capacity: usize,
}

struct QueueInner {
    items: VecDeque<HubInput>,
    /// Bounded events among `items`: all but connects and disconnects.
    frames: usize,
}

/// The hub's queue holds [`HUB_QUEUE_CAPACITY`] events already: this one was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubFull;

impl std::fmt::Display for HubFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the channel hub's queue is full")
    }
}

impl std::error::Error for HubFull {}

impl HubInput {
    /// Whether this input counts against the queue's bound.
    fn is_bounded(&self) -> bool {
        matches!(self, HubInput::Event(e) if !matches!(
            e,
            channel::Event::Connect { .. }
                | channel::Event::Disconnect { .. }
                | channel::Event::ClusterUp { .. }
        ))
    }
}

impl HubQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an input, within the bound if it [is bounded](HubInput::is_bounded).
    fn push(&self, input: HubInput) -> Result<(), HubFull> {
        let mut inner = self.lock();
        if input.is_bounded() {
            if inner.frames >= self.capacity {
                return Err(HubFull);
            }
            inner.frames += 1;
        }
        inner.items.push_back(input);
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next input, or `None` once `wait` has passed without one.
    fn pop_within(&self, wait: std::time::Duration) -> Option<HubInput> {
        let deadline = std::time::Instant::now() + wait;
        let mut inner = self.lock();
        loop {
            if let Some(input) = self.take(&mut inner) {
                return Some(input);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            inner = self
                .ready
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn take(&self, inner: &mut QueueInner) -> Option<HubInput> {
        let input = inner.items.pop_front()?;
        if input.is_bounded() {
            inner.frames -= 1;
        }
        Some(input)
    }

    fn pop(&self) -> HubInput {
        let mut inner = self.lock();
        loop {
            if let Some(input) = self.take(&mut inner) {
                return input;
            }
            inner = self
                .ready
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The hub's thread. Dropping it stops the thread.
pub struct Hub {
    queue: Arc<HubQueue>,
    /// Set when the hub's thread has failed: sockets are closed with 1011 from then on.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    clock: Clock,
}

/// How long a stopping hub lets its cluster bus publish the goodbye and what was queued.
pub const BUS_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The bus's way into the hub.
struct HubInbox {
    queue: Arc<HubQueue>,
    clock: Clock,
}

impl Inbox for HubInbox {
    fn receive(&self, data: spool_core::ws::Text) {
        let event = channel::Event::ClusterReceive {
            now_ms: self.clock.now_ms(),
            data,
        };
        if self.queue.push(HubInput::Event(event)).is_err() {
            // The core finds the gap and asks for the sender's state again.
            tracing::warn!("the channel hub's queue is full; a cluster message dropped");
        }
    }

    fn link_up(&self) {
        let event = channel::Event::ClusterUp {
            now_ms: self.clock.now_ms(),
        };
        let _ = self.queue.push(HubInput::Event(event));
    }
}

/// A socket as the hub holds it: its mailbox, and the flag that tells it it was cut off.
struct Member {
    mailbox: Mailbox<ToSocket>,
    evicted: Arc<AtomicBool>,
}

impl Hub {
    /// Starts the hub around `runtime`. With `record`, every event and its outbounds are
    /// written there as a channel log (`spool replay` reads it); `app` names the application
    /// in the log's setup line.
    ///
    /// # Errors
    /// When the record file cannot be created or the thread cannot start.
    pub fn start(runtime: Runtime, app: &str, record: Option<PathBuf>) -> std::io::Result<Hub> {
        Hub::start_with_bus(runtime, app, record, None)
    }

    /// Starts the hub of a cluster node: `runtime` made by `Runtime::new_cluster_ready`, and
    /// the bus that carries its messages to the other nodes ([`crate::cluster::RedisBus`]).
    /// The hub starts the bus, publishes what the runtime asks, and when dropped says goodbye
    /// to the cluster and gives the bus [`BUS_STOP_GRACE`] to publish it.
    ///
    /// # Errors
    /// When the record file cannot be created or the thread cannot start.
    pub fn start_clustered(
        runtime: Runtime,
        app: &str,
        record: Option<PathBuf>,
        bus: Box<dyn ClusterBus>,
    ) -> std::io::Result<Hub> {
        Hub::start_with_bus(runtime, app, record, Some(bus))
    }

    fn start_with_bus(
        mut runtime: Runtime,
        app: &str,
        record: Option<PathBuf>,
        mut bus: Option<Box<dyn ClusterBus>>,
    ) -> std::io::Result<Hub> {
        let mut recorder = match record {
            Some(path) => {
                let mut w = BufWriter::new(File::create(path)?);
                let setup = ChannelSetup {
                    app: app.to_string(),
                    adapter: runtime.adapter_label(),
                    config: runtime.config().clone(),
                    cluster: match runtime.adapter() {
                        channel::Adapter::Cluster(o) => Some((**o).clone()),
                        channel::Adapter::SingleNode => None,
                    },
                };
                writeln!(
                    w,
                    "{}",
                    serde_json::to_string(&ChannelLine::Setup(setup)).unwrap_or_default()
                )?;
                w.flush()?;
                Some(w)
            }
            None => None,
        };
        let clock = Clock::new();
        let queue = Arc::new(HubQueue {
            inner: Mutex::new(QueueInner {
                items: VecDeque::new(),
                frames: 0,
            }),
            ready: Condvar::new(),
            capacity: HUB_QUEUE_CAPACITY,
        });
        let failed = Arc::new(AtomicBool::new(false));
        if let Some(bus) = bus.as_mut() {
            bus.start(Arc::new(HubInbox {
                queue: queue.clone(),
                clock,
            }));
        }
        let thread = {
            let (queue, failed) = (queue.clone(), failed.clone());
            std::thread::Builder::new()
                .name("spool-hub".into())
                .spawn(move || {
                    // Keyed by ClientIds the hub hands out itself, never chosen by a peer: a
                    // fast hash (foldhash, hashbrown's default) needs no defence against
                    // flooding, and SipHash cost about 100 instructions a delivery.
                    let mut members: HashMap<ClientId, Member> = HashMap::default();
                    let mut stopping = false;
                    loop {
                        // One timer: the runtime's next deadline, which a Tick answers.
                        let input = match runtime.next_deadline() {
                            Some(at) => queue.pop_within(clock.until(at)),
                            None => Some(queue.pop()),
                        };
                        let event = match input {
                            None => channel::Event::Tick {
                                now_ms: clock.now_ms(),
                            },
                            // A cluster node says goodbye (recorded like any event), then stops.
                            Some(HubInput::Stop) if bus.is_some() && !stopping => {
                                stopping = true;
                                channel::Event::Shutdown {
                                    now_ms: clock.now_ms(),
                                }
                            }
                            Some(HubInput::Stop) => break,
                            Some(HubInput::Connect(id, mailbox, evicted)) => {
                                members.insert(id, Member { mailbox, evicted });
                                continue;
                            }
                            Some(HubInput::Inspect(f)) => {
                                f(&runtime);
                                continue;
                            }
                            Some(HubInput::Event(e)) => e,
                        };
                        let gone = match &event {
                            channel::Event::Disconnect { client_id, .. } => Some(*client_id),
                            _ => None,
                        };
                        let now_ms = clock.now_ms();
                        let handled =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                runtime.handle(event.clone())
                            }));
                        let Ok(outbounds) = handled else {
                            // The runtime's state cannot be trusted after a panic: say so, close
                            // every socket rather than go silent, and refuse new ones.
                            tracing::error!(
                                sockets = members.len(),
                                "the channel hub failed; closing every socket with 1011"
                            );
                            failed.store(true, Ordering::Release);
                            for member in members.values() {
                                member.evicted.store(true, Ordering::Release);
                                let _ = member
                                    .mailbox
                                    .send(ToSocket::Close(1011, "channel hub failed".into()));
                            }
                            break;
                        };
                        let evicted = deliver(&outbounds, &members);
                        if let Some(bus) = bus.as_mut() {
                            for o in &outbounds {
                                match o {
                                    Outbound::ClusterPublish { data } => bus.publish(data.clone()),
                                    // What the cluster says of its nodes (joined, down, lost
                                    // messages) is worth a line in the log.
                                    Outbound::System { label } if label.starts_with("cluster:") => {
                                        tracing::info!("{label}");
                                    }
                                    _ => {}
                                }
                            }
                        }
                        if let Some(w) = recorder.as_mut() {
                            let line = ChannelLine::Step { event, outbounds };
                            // A full disk stops the recording, not the server.
                            if writeln!(w, "{}", serde_json::to_string(&line).unwrap_or_default())
                                .and_then(|_| w.flush())
                                .is_err()
                            {
                                tracing::error!("channel recording failed; recording stopped");
                                recorder = None;
                            }
                        }
                        if stopping {
                            if let Some(bus) = bus.as_mut() {
                                bus.stop(BUS_STOP_GRACE);
                            }
                            break;
                        }
                        if let Some(id) = gone {
                            members.remove(&id);
                        }
                        // Sockets whose mailboxes were full: cut off here (memberships and
                        // presences leave now); each closes itself with 1008 on its next turn.
                        for id in evicted {
                            if members.remove(&id).is_some() {
                                let _ = queue.push(HubInput::Event(channel::Event::Disconnect {
                                    now_ms,
                                    client_id: id,
                                }));
                            }
                        }
                    }
                })?
        };
        Ok(Hub {
            queue,
            failed,
            thread: Some(thread),
            clock,
        })
    }

    /// Whether the hub's thread has failed (sockets are then closed with 1011).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn send(&self, input: HubInput) {
        // Nobody reads the queue of a failed hub.
        if !self.has_failed() {
            let _ = self.queue.push(input);
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs `f` with the runtime on the hub's thread, between two events (a dashboard's look).
    pub fn inspect(&self, f: impl FnOnce(&Runtime) + Send + 'static) {
        self.send(HubInput::Inspect(Box::new(f)));
    }

    /// Gives an event to the runtime from outside a socket (an application broadcast, say).
    ///
    /// # Errors
    /// [`HubFull`] when [`HUB_QUEUE_CAPACITY`] events wait already: the hub is not keeping up,
    /// and the event was dropped. A failed hub drops every event.
    pub fn event(&self, event: channel::Event) -> Result<(), HubFull> {
        if self.has_failed() {
            return Ok(());
        }
        self.queue.push(HubInput::Event(event))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.send(HubInput::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hands each outbound's frame to its recipients: one clone of the frame's `Bytes` each.
/// Returns the sockets whose mailboxes were full: they are not keeping up and are cut off.
fn deliver(outbounds: &[Outbound], members: &HashMap<ClientId, Member>) -> Vec<ClientId> {
    let mut evicted = Vec::new();
    for o in outbounds {
        match (o.delivery(), o) {
            ((Recipients::One(c), Some(frame)), _) => {
                send_to(members, c, ToSocket::Frame(frame.clone()), &mut evicted);
            }
            ((Recipients::Many(cs), Some(frame)), _) => {
                for c in cs {
                    send_to(members, *c, ToSocket::Frame(frame.clone()), &mut evicted);
                }
            }
            (
                _,
                Outbound::CloseSocket {
                    client_id,
                    code,
                    reason,
                },
            ) => {
                let close = ToSocket::Close(*code, reason.clone());
                send_to(members, *client_id, close, &mut evicted);
            }
            _ => {}
        }
    }
    evicted
}

fn send_to(
    members: &HashMap<ClientId, Member>,
    client: ClientId,
    message: ToSocket,
    evicted: &mut Vec<ClientId>,
) {
    let Some(member) = members.get(&client) else {
        return;
    };
    // Only a socket cut off earlier in this same hand-out can be marked (the hub removes
    // the cut-off ones after each event): with none cut off, the flag, an allocation of its
    // own, is not read, which in a fan-out to 10,000 was a cache miss a delivery.
    if !evicted.is_empty() && member.evicted.load(Ordering::Relaxed) {
        return;
    }
    match member.mailbox.send(message) {
        Ok(()) => {}
        // A socket that just went away misses this frame; its Disconnect is on its way.
        Err(MailboxError::Gone(_)) => {}
        Err(MailboxError::Full(_)) => {
            tracing::warn!(
                client = client.0,
                "a socket's mailbox is full; cutting it off"
            );
            member.evicted.store(true, Ordering::Release);
            evicted.push(client);
        }
    }
}

/// Pages served next to the socket (the chat page, say): `None` answers 404.
pub type Pages = dyn Fn(&Request) -> Option<HttpResponse> + Send + Sync;

/// The WebSocket handler of a channel server: each socket is a client of the hub.
pub struct ChannelSocket {
    hub: Arc<Hub>,
    next_id: AtomicU64,
    mount: String,
    pages: Box<Pages>,
}

impl ChannelSocket {
    /// Sockets at `mount` (phoenix.js appends `/websocket` to its endpoint, so
    /// `/socket/websocket` for `new Socket("/socket")`), pages from `pages`.
    pub fn new(hub: Arc<Hub>, mount: &str, pages: Box<Pages>) -> ChannelSocket {
        ChannelSocket {
            hub,
            next_id: AtomicU64::new(1),
            mount: mount.to_string(),
            pages,
        }
    }

    /// The WebSocket configuration a channel server wants: `phoenix` as subprotocol (for
    /// clients that send their token that way), pages on, no compression (as Phoenix: a
    /// broadcast's frame is shared only while nobody compresses it per socket), and a 60 s idle
    /// timeout that phoenix.js's 30 s heartbeat keeps from firing.
    pub fn ws_config() -> spool_core::ws::Config {
        spool_core::ws::Config {
            protocols: vec!["phoenix".into()],
            plain_http: true,
            deflate: None,
            idle_timeout_ms: Some(60_000),
            ..spool_core::ws::Config::default()
        }
    }
}

/// A channel socket's state: its id at the hub, and whether the hub cut it off.
#[derive(Debug)]
pub struct SocketState {
    id: ClientId,
    evicted: Arc<AtomicBool>,
}

impl Handler for ChannelSocket {
    type State = SocketState;
    type User = ToSocket;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        if request.path() == self.mount {
            Ok(())
        } else {
            Err(Rejection::new(404, "no socket here"))
        }
    }

    fn on_request(&self, request: &Request) -> HttpResponse {
        (self.pages)(request)
            .unwrap_or_else(|| HttpResponse::new(404, "text/plain; charset=utf-8", "not found\n"))
    }

    fn on_init(&self, conn: &mut Conn<ToSocket>) -> SocketState {
        let id = ClientId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let evicted = Arc::new(AtomicBool::new(false));
        if self.hub.has_failed() {
            evicted.store(true, Ordering::Release);
            conn.close(1011, "channel hub failed");
        } else {
            self.hub
                .send(HubInput::Connect(id, conn.mailbox(), evicted.clone()));
            self.hub.send(HubInput::Event(channel::Event::Connect {
                now_ms: self.hub.now_ms(),
                client_id: id,
            }));
        }
        SocketState { id, evicted }
    }

    fn handle(
        &self,
        state: &mut SocketState,
        incoming: Incoming<ToSocket>,
        conn: &mut Conn<ToSocket>,
    ) -> Next {
        if state.evicted.load(Ordering::Acquire) {
            if let Incoming::User(ToSocket::Close(code, reason)) = incoming {
                conn.close(code, reason);
            } else {
                conn.close(1008, "too slow: the socket's mailbox was full");
            }
            return Next::Continue;
        }
        let frame = match incoming {
            Incoming::Message(Message::Text(t)) => Frame::Text(t),
            Incoming::Message(Message::Binary(b)) => Frame::Binary(b),
            Incoming::Message(_) => return Next::Continue,
            Incoming::User(ToSocket::Frame(Frame::Text(t))) => {
                conn.send(Message::Text(t));
                return Next::Continue;
            }
            Incoming::User(ToSocket::Frame(Frame::Binary(b))) => {
                conn.send(Message::Binary(b));
                return Next::Continue;
            }
            Incoming::User(ToSocket::Close(code, reason)) => {
                conn.close(code, reason);
                return Next::Continue;
            }
        };
        let event = channel::Event::Receive {
            now_ms: self.hub.now_ms(),
            client_id: state.id,
            frame,
        };
        if self.hub.has_failed() {
            conn.close(1011, "channel hub failed");
        } else if self.hub.queue.push(HubInput::Event(event)).is_err() {
            tracing::warn!(
                client = state.id.0,
                "the channel hub's queue is full; closing a socket with 1013"
            );
            conn.close(1013, "server overloaded: try again later");
        }
        Next::Continue
    }

    fn on_close(&self, state: SocketState, _info: &CloseInfo) {
        // A socket the hub cut off was disconnected there already; a second Disconnect of the
        // same client is a no-op for the runtime.
        let _ = &state.evicted;
        {
            self.hub.send(HubInput::Event(channel::Event::Disconnect {
                now_ms: self.hub.now_ms(),
                client_id: state.id,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> HubQueue {
        HubQueue {
            inner: Mutex::new(QueueInner {
                items: VecDeque::new(),
                frames: 0,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn frame(n: u64) -> HubInput {
        HubInput::Event(channel::Event::Receive {
            now_ms: 0,
            client_id: ClientId(n),
            frame: Frame::Text("[]".into()),
        })
    }

    #[test]
    fn frames_and_application_events_are_bounded_connects_and_disconnects_are_not() {
        let q = queue(3);
        for n in 0..3 {
            assert!(q.push(frame(n)).is_ok());
        }
        assert_eq!(q.push(frame(9)).err(), Some(HubFull));
        let broadcast = HubInput::Event(channel::Event::Broadcast {
            now_ms: 0,
            except: None,
            topic: "t".into(),
            event: "e".into(),
            payload: channel::Payload::empty(),
        });
        assert_eq!(q.push(broadcast).err(), Some(HubFull));
        // Lifecycle events always enter, so no socket's presences are ever left behind.
        let disconnect = channel::Event::Disconnect {
            now_ms: 0,
            client_id: ClientId(1),
        };
        assert!(q.push(HubInput::Event(disconnect)).is_ok());
        assert!(q.push(HubInput::Stop).is_ok());
        // Taking a frame makes room for one more.
        assert!(matches!(
            q.pop(),
            HubInput::Event(channel::Event::Receive { .. })
        ));
        assert!(q.push(frame(10)).is_ok());
        assert_eq!(q.push(frame(11)).err(), Some(HubFull));
    }
}
