//! Live views over WebSockets: [`Live`] holds the cassette (`spool_core::cassette`) and serves
//! its pages and client script; [`LiveSocket`] is the [`Handler`] of `/live`; [`Site`] puts a
//! live socket beside another handler (a channel socket) on one server; [`Ticker`] drives
//! time-based work (the preflight sweep, a dashboard's refresh) from a thread of its own.
//!
//! Preflight ids (128 bits) and CSRF tokens (256 bits) are drawn here from the OS
//! ([`crate::random`]), never in the core.
//!
//! # Why a mutex and not a thread
//!
//! The cassette sits behind one `Mutex`, locked by the event-loop thread whose socket sent the
//! message, for as long as one decode, one view call, one render and one diff take (micro- to
//! milliseconds for the views here). A dedicated thread like the channel hub would add a queue
//! hop on the way in for every event and serialise the same work anyway; the lock keeps the
//! work on the thread that already has the socket. A view that is slow to render slows every
//! live socket: such a view should hand its slow part to a worker and take the result in
//! `handle_info`. Everything the cassette sends goes through the socket's mailbox, its own
//! replies included, so the patches of a socket reach it in the order they were made even when
//! a [`Live::info`] from another thread interleaves.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spool_core::cassette::{self, Cassette, ConnId, Event, Outbound, Views};
use spool_core::ws::{CloseInfo, Message, Request};

use crate::handler::{
    Action, Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxError, MailboxSink, Next,
    Rejection,
};

/// What the cassette sends a live socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToLive {
    /// A text message to write.
    Text(String),
    /// Close the socket.
    Close(u16, String),
}

/// A live socket as [`Live`] holds it.
struct Member {
    mailbox: Mailbox<ToLive>,
    /// Set when its mailbox was full: it missed a patch, so it is closed on its next turn.
    evicted: Arc<AtomicBool>,
}

struct Inner {
    cassette: Cassette,
    /// The event log being written, if recording: one JSON line per event with its outbounds.
    record: Option<std::io::BufWriter<std::fs::File>>,
    /// One per open live socket (the server's `max_connections` bounds it).
    members: HashMap<ConnId, Member>,
}

/// The live-view service of a server: the cassette, the page routes, the live sockets.
pub struct Live {
    inner: Mutex<Inner>,
    /// Page path to view name.
    routes: Vec<(String, String)>,
    /// Where live sockets connect.
    socket_path: String,
    /// Where the client script is served (the cassette config's `script_path`).
    script_path: String,
    start: Instant,
    next_conn: AtomicU64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("routes", &self.routes)
            .finish()
    }
}

impl Live {
    /// A service for `views` with `config`; sockets at `/live`, no page routes yet.
    pub fn new(views: Views, config: cassette::Config) -> Live {
        let script_path = config.script_path.clone();
        Live {
            script_path,
            inner: Mutex::new(Inner {
                cassette: Cassette::new(views, config),
                record: None,
                members: HashMap::new(),
            }),
            routes: Vec::new(),
            socket_path: "/live".into(),
            start: Instant::now(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Serves view `view` at page `path` (an HTTP GET there stores a preflight).
    #[must_use]
    pub fn route(mut self, path: impl Into<String>, view: impl Into<String>) -> Live {
        self.routes.push((path.into(), view.into()));
        self
    }

    /// Writes every event given to the cassette, with what it produced, to `path` as JSON lines
    /// (`{"event": .., "outbounds": [..]}`): a fresh cassette with the same views replays it to
    /// the same outbounds.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn record(self, path: impl AsRef<std::path::Path>) -> std::io::Result<Live> {
        let file = std::fs::File::create(path)?;
        self.lock().record = Some(std::io::BufWriter::new(file));
        Ok(self)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since the service started: the cassette's clock.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// `(preflights, sprockets)` held now.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (
            inner.cassette.preflight_count(),
            inner.cassette.sprocket_count(),
        )
    }

    /// Live sockets open now.
    pub fn socket_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The cassette's state, for tests and debugging.
    pub fn state(&self) -> cassette::State {
        self.lock().cassette.state()
    }

    /// Answers a GET of a live page (with a fresh preflight) or of the client script; `None`
    /// for any other path.
    pub fn page(&self, request: &Request) -> Option<HttpResponse> {
        let path = request.path();
        if path == self.script_path {
            return Some(HttpResponse::new(
                200,
                "text/javascript; charset=utf-8",
                cassette::CLIENT_JS,
            ));
        }
        let view = &self.routes.iter().find(|(p, _)| p == path)?.1;
        // Drawn before the lock: reading the OS's randomness is a system call.
        let (id, csrf_token) = (random_hex(16), random_hex(32));
        let now_ms = self.now_ms();
        let out = self.lock().handle(Event::PushPreflight {
            now_ms,
            id,
            csrf_token,
            view: view.clone(),
        });
        out.into_iter().find_map(|o| match o {
            Outbound::Page { status, html } => {
                Some(HttpResponse::new(status, "text/html; charset=utf-8", html))
            }
            _ => None,
        })
    }

    /// Sweeps expired preflights.
    pub fn tick(&self) {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        let out = inner.handle(Event::Tick { now_ms });
        inner.dispatch(out, now_ms);
    }

    /// Tells every sprocket of view `view` `message` (their `handle_info`), and sends each the
    /// patch of its new render.
    pub fn info(&self, view: &str, message: serde_json::Value) {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        let out = inner.handle(Event::Info {
            now_ms,
            view: view.into(),
            message,
        });
        inner.dispatch(out, now_ms);
    }

    fn connect(&self, mailbox: Mailbox<ToLive>) -> (ConnId, Arc<AtomicBool>) {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let evicted = Arc::new(AtomicBool::new(false));
        self.lock().members.insert(
            id,
            Member {
                mailbox,
                evicted: evicted.clone(),
            },
        );
        (id, evicted)
    }

    fn receive(&self, conn: ConnId, text: String) {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        let out = inner.handle(Event::Receive { now_ms, conn, text });
        inner.dispatch(out, now_ms);
    }

    fn disconnect(&self, conn: ConnId) {
        let now_ms = self.now_ms();
        let mut inner = self.lock();
        inner.members.remove(&conn);
        inner.handle(Event::Disconnect { now_ms, conn });
    }
}

impl Inner {
    /// Gives the cassette one event, recording it when asked to.
    fn handle(&mut self, event: Event) -> Vec<Outbound> {
        let Some(w) = self.record.as_mut() else {
            return self.cassette.handle(event);
        };
        let line = serde_json::json!({ "event": &event });
        let out = self.cassette.handle(event);
        let mut line = line;
        line["outbounds"] = serde_json::to_value(&out).unwrap_or_default();
        // A full disk stops the recording, not the live views.
        if writeln!(w, "{line}").and_then(|()| w.flush()).is_err() {
            tracing::error!("live recording failed; recording stopped");
            self.record = None;
        }
        out
    }

    /// Hands each outbound to its socket's mailbox. A socket whose mailbox is full missed a
    /// patch: its session ends now and the socket closes itself with 1008 on its next turn.
    fn dispatch(&mut self, out: Vec<Outbound>, now_ms: u64) {
        let mut cut = Vec::new();
        for o in out {
            let (conn, message) = match o {
                Outbound::Transmit { conn, text } => (conn, ToLive::Text(text)),
                Outbound::Close { conn, code, reason } => (conn, ToLive::Close(code, reason)),
                Outbound::Page { .. } | Outbound::Popped { .. } => continue,
            };
            let Some(member) = self.members.get(&conn) else {
                continue;
            };
            if member.evicted.load(Ordering::Acquire) {
                continue;
            }
            match member.mailbox.send(message) {
                Ok(()) | Err(MailboxError::Gone(_)) => {}
                Err(MailboxError::Full(_)) => {
                    tracing::warn!(conn = conn.0, "a live socket's mailbox is full; ending it");
                    member.evicted.store(true, Ordering::Release);
                    cut.push(conn);
                }
            }
        }
        for conn in cut {
            self.handle(Event::Disconnect { now_ms, conn });
        }
    }
}

/// Lowercase hex of `n` bytes from the OS.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    crate::random::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `origin` (`http://host:port`) names `host`: a live socket opened by another site's
/// page is refused (the CSRF token stops it too; this stops it before any work).
fn same_origin(origin: Option<&str>, host: &str) -> bool {
    match origin {
        None => true,
        Some(o) => o.split_once("://").map(|(_, h)| h) == Some(host),
    }
}

/// The [`Handler`] of live sockets.
#[derive(Clone)]
pub struct LiveSocket {
    live: Arc<Live>,
    /// Decides a socket's `Origin`; `None`: the request's own host and port only.
    origin: Option<Arc<OriginRule>>,
}

/// An application's rule for the `Origin` of a live socket (a page of another site must not
/// ride its visitor's cookies into a live session).
pub type OriginRule = dyn Fn(&Request) -> Result<(), Rejection> + Send + Sync;

impl std::fmt::Debug for LiveSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSocket")
            .field("live", &self.live)
            .field("origin", &self.origin.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// A live socket's state.
#[derive(Debug)]
pub struct LiveConn {
    id: ConnId,
    evicted: Arc<AtomicBool>,
}

impl LiveSocket {
    /// Live sockets of `live`.
    pub fn new(live: Arc<Live>) -> LiveSocket {
        LiveSocket { live, origin: None }
    }

    /// Decides the `Origin` of live sockets with `rule` instead of the default (the request's
    /// own host and port), so that a server's one origin policy covers every socket it serves.
    #[must_use]
    pub fn with_origin_rule(mut self, rule: Arc<OriginRule>) -> LiveSocket {
        self.origin = Some(rule);
        self
    }

    /// The service.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Handler for LiveSocket {
    type State = LiveConn;
    type User = ToLive;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        if request.path() != self.live.socket_path {
            return Err(Rejection::new(404, "no socket here"));
        }
        if let Some(rule) = &self.origin {
            return rule(request);
        }
        if !same_origin(request.origin.as_deref(), &request.host) {
            return Err(Rejection::new(403, "cross-origin live socket"));
        }
        Ok(())
    }

    fn on_request(&self, request: &Request) -> HttpResponse {
        self.live
            .page(request)
            .unwrap_or_else(|| HttpResponse::new(404, "text/plain; charset=utf-8", "not found\n"))
    }

    fn on_init(&self, conn: &mut Conn<ToLive>) -> LiveConn {
        let (id, evicted) = self.live.connect(conn.mailbox());
        LiveConn { id, evicted }
    }

    fn handle(
        &self,
        state: &mut LiveConn,
        incoming: Incoming<ToLive>,
        conn: &mut Conn<ToLive>,
    ) -> Next {
        if state.evicted.load(Ordering::Acquire) {
            conn.close(1008, "too slow: the live socket's mailbox was full");
            return Next::Continue;
        }
        match incoming {
            Incoming::Message(Message::Text(t)) => self.live.receive(state.id, t.to_string()),
            Incoming::Message(_) => {}
            Incoming::User(ToLive::Text(t)) => conn.send(Message::text(t)),
            Incoming::User(ToLive::Close(code, reason)) => conn.close(code, reason),
        }
        Next::Continue
    }

    fn on_close(&self, state: LiveConn, _info: &CloseInfo) {
        self.live.disconnect(state.id);
    }
}

/// How many connections a [`Site`] holds and how many messages went through it.
#[derive(Debug, Default)]
pub struct SiteStats {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Messages received, since start.
    pub messages_in: AtomicU64,
    /// Messages sent, since start.
    pub messages_out: AtomicU64,
}

/// A user message of a [`Site`]: for the other handler, or for a live socket.
#[derive(Debug)]
pub enum SiteMessage<U> {
    /// For the other handler's connection.
    Other(U),
    /// For a live socket.
    Live(ToLive),
}

/// A connection of a [`Site`]: the handler it belongs to, with that handler's state and view
/// of the connection.
pub enum SiteState<H: Handler> {
    /// The other handler's.
    Other(H::State, Conn<H::User>),
    /// A live socket.
    Live(LiveConn, Conn<ToLive>),
}

/// Live sockets (at `/live`) and live pages beside another handler `H` (a channel socket and
/// its pages) on one server, counting connections and messages for a dashboard.
pub struct Site<H: Handler> {
    other: H,
    live: LiveSocket,
    stats: Arc<SiteStats>,
}

impl<H: Handler> Site<H> {
    /// `other` beside `live`'s sockets and pages.
    pub fn new(other: H, live: Arc<Live>) -> Site<H> {
        Site::with_live_socket(other, LiveSocket::new(live))
    }

    /// `other` beside the sockets and pages of `live` (with its origin rule).
    pub fn with_live_socket(other: H, live: LiveSocket) -> Site<H> {
        Site {
            other,
            live,
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SiteStats> {
        self.stats.clone()
    }
}

/// Delivers an inner handler's user messages into the outer connection's mailbox.
struct MapSink<U, V> {
    outer: Mailbox<V>,
    wrap: fn(U) -> V,
    unwrap: fn(V) -> Option<U>,
}

impl<U: Send + 'static, V: Send + 'static> MailboxSink<U> for MapSink<U, V> {
    fn deliver(&self, message: U) -> Result<(), MailboxError<U>> {
        let back = |v: V| (self.unwrap)(v);
        match self.outer.send((self.wrap)(message)) {
            Ok(()) => Ok(()),
            // `unwrap` inverts `wrap`, so the message always comes back.
            Err(MailboxError::Full(v)) => back(v).map_or(Ok(()), |u| Err(MailboxError::Full(u))),
            Err(MailboxError::Gone(v)) => back(v).map_or(Ok(()), |u| Err(MailboxError::Gone(u))),
        }
    }

    fn close(&self) {
        self.outer.close();
    }
}

fn inner_conn<U: Send + 'static, V: Send + 'static>(
    outer: &Conn<V>,
    wrap: fn(U) -> V,
    unwrap: fn(V) -> Option<U>,
) -> Conn<U> {
    let sink = MapSink {
        outer: outer.mailbox(),
        wrap,
        unwrap,
    };
    Conn::new(
        outer.peer_addr(),
        outer.request().clone(),
        outer.protocol().map(str::to_string),
        Mailbox::new(Arc::new(sink)),
    )
}

impl<H: Handler> Site<H> {
    /// Runs one callback of an inner handler on `inner`, with the real connection's lent
    /// action list (a callback that sends then allocates none), and moves what it queued onto
    /// the real connection, counting sends.
    fn inner_call<U, V, R>(
        &self,
        inner: &mut Conn<U>,
        outer: &mut Conn<V>,
        f: impl FnOnce(&mut Conn<U>) -> R,
    ) -> R {
        outer.lend_actions_to(inner);
        let result = f(inner);
        let actions = inner.take_actions();
        let sends = actions
            .iter()
            .filter(|a| matches!(a, Action::Send(_)))
            .count();
        self.stats
            .messages_out
            .fetch_add(sends as u64, Ordering::Relaxed);
        outer.append_actions(actions);
        result
    }
}

impl<H: Handler> Handler for Site<H> {
    type State = SiteState<H>;
    type User = SiteMessage<H::User>;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        if request.path() == self.live.live.socket_path {
            self.live.on_upgrade(request)
        } else {
            self.other.on_upgrade(request)
        }
    }

    fn on_request(&self, request: &Request) -> HttpResponse {
        self.live
            .live
            .page(request)
            .unwrap_or_else(|| self.other.on_request(request))
    }

    fn on_init(&self, conn: &mut Conn<Self::User>) -> Self::State {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        if conn.request().path() == self.live.live.socket_path {
            let mut c = inner_conn(conn, SiteMessage::Live, |v| match v {
                SiteMessage::Live(m) => Some(m),
                SiteMessage::Other(_) => None,
            });
            let state = self.inner_call(&mut c, conn, |c| self.live.on_init(c));
            SiteState::Live(state, c)
        } else {
            let mut c = inner_conn(conn, SiteMessage::Other, |v| match v {
                SiteMessage::Other(m) => Some(m),
                SiteMessage::Live(_) => None,
            });
            let state = self.inner_call(&mut c, conn, |c| self.other.on_init(c));
            SiteState::Other(state, c)
        }
    }

    fn handle(
        &self,
        state: &mut Self::State,
        incoming: Incoming<Self::User>,
        conn: &mut Conn<Self::User>,
    ) -> Next {
        if let Incoming::Message(Message::Text(_) | Message::Binary(_)) = &incoming {
            self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        match (state, incoming) {
            (SiteState::Live(s, c), Incoming::Message(m)) => {
                self.inner_call(c, conn, |c| self.live.handle(s, Incoming::Message(m), c))
            }
            (SiteState::Live(s, c), Incoming::User(SiteMessage::Live(m))) => {
                self.inner_call(c, conn, |c| self.live.handle(s, Incoming::User(m), c))
            }
            (SiteState::Other(s, c), Incoming::Message(m)) => {
                self.inner_call(c, conn, |c| self.other.handle(s, Incoming::Message(m), c))
            }
            (SiteState::Other(s, c), Incoming::User(SiteMessage::Other(m))) => {
                self.inner_call(c, conn, |c| self.other.handle(s, Incoming::User(m), c))
            }
            // A message for the other kind of connection cannot be addressed to this one.
            (_, Incoming::User(_)) => Next::Continue,
        }
    }

    fn on_close(&self, state: Self::State, info: &CloseInfo) {
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        match state {
            SiteState::Live(s, _) => self.live.on_close(s, info),
            SiteState::Other(s, _) => self.other.on_close(s, info),
        }
    }
}

/// A thread that runs `job` every `period` until dropped (it is stopped and joined then).
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Runs `job` every `period`, the first time one period from now.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(
        name: &str,
        period: Duration,
        mut job: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut next = Instant::now() + period;
                    loop {
                        let (lock, cv) = &*stop;
                        let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        while !*stopped {
                            let now = Instant::now();
                            if now >= next {
                                break;
                            }
                            stopped = cv
                                .wait_timeout(stopped, next - now)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        if *stopped {
                            return;
                        }
                        drop(stopped);
                        job();
                        // Fixed-rate: the period does not drift by the job's run time.
                        next += period;
                        let now = Instant::now();
                        if next < now {
                            next = now + period;
                        }
                    }
                })?
        };
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(same_origin(None, "a:1"));
        assert!(same_origin(Some("http://a:1"), "a:1"));
        assert!(!same_origin(Some("http://evil:1"), "a:1"));
        assert!(!same_origin(Some("null"), "a:1"));
    }

    #[test]
    fn ids_are_long_and_differ() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
