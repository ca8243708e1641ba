//! The raw server on std threads: a fixed set of event-loop threads (one per core by default)
//! over a readiness poller (`mio`: epoll, kqueue, IOCP), never a thread per connection.
//!
//! Loop 0 owns the listener: it accepts until the kernel has no more, and deals each socket to
//! the loops in turn (a socket stays on its loop for life), so one accept wakes one thread.
//! Every loop owns its connections in a slab, keeps one timer heap for their deadlines, and
//! sleeps in one `wait` bounded by the earliest deadline. Sockets are registered edge-triggered:
//! a loop reads until the kernel says `WouldBlock` (or a fairness budget runs out, and then it
//! comes back to that socket before sleeping).
//!
//! What crosses threads: new sockets for a loop, and user messages for a connection (its
//! [`Mailbox`]), each through a queue behind a mutex plus the loop's waker.
//!
//! Why mio rather than `polling` (the crate under smol's reactor): a `polling` wait re-arms its
//! notifier and arms a timerfd, four system calls besides `epoll_wait`, and at echo rates that
//! is a wait every eight or so messages. mio's wait is the one call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::clock::Clock;
use crate::direct::{Direct, ReadBuffer, Received};
use crate::handler::{Mailbox, MailboxError, MailboxSink, StartError};
use crate::outgoing::{MAX_IOVECS, Outgoing};
use crate::tcp::{self, End, Hangup, Slot};
use crate::tls;

/// The listener's key in loop 0's poller; connections use their slab index.
const LISTENER: usize = usize::MAX - 1;

/// The key of a loop's waker: other threads handed it sockets, messages or a stop.
const WAKER: usize = usize::MAX - 2;

/// How many readiness events one wait takes; the rest wait for the next turn.
const EVENTS_PER_WAIT: usize = 1024;

/// How much one connection may read in one turn before the others get theirs.
const READ_BUDGET: usize = 256 * 1024;

/// The scratch buffer every TLS connection's plaintext goes through (plain reads go through the
/// loop's `ReadBuffer`); an idle connection holds neither.
const SCRATCH_LEN: usize = 64 * 1024;

/// How long a connection may take over its TLS handshake before it is dropped, by default.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may take to write what it still has, when the handler asked
/// to close at once: the queue is bounded, so this is for a peer that stopped reading.
const FLUSH_ON_CLOSE_MS: u64 = 2_000;

/// How long accepting rests after an error such as running out of descriptors.
const ACCEPT_PAUSE_MS: u64 = 50;

/// Descriptors kept free below `RLIMIT_NOFILE` for the listener, the pollers, log files and
/// whatever else the process opens, when the connection limit is the default.
const RESERVED_DESCRIPTORS: usize = 64;

/// A raw TCP/TLS server to configure and [`start`](TcpServer::start).
///
/// ```
/// use spool_std::tcp::{Conn, Handler, Packet};
/// use spool_std::TcpServer;
///
/// /// Answers every read with the same bytes.
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     type User = ();
///     fn on_init(&self, _conn: &mut Conn<()>) {}
///     fn handle(&self, _: &mut (), packet: Packet<()>, conn: &mut Conn<()>) {
///         if let Packet::Data(bytes) = packet {
///             conn.send(bytes);
///         }
///     }
/// }
///
/// let server = TcpServer::new(Echo).bind("127.0.0.1:0").start().unwrap();
/// println!("listening on {}", server.local_addr());
/// server.shutdown();
/// ```
pub struct TcpServer<H: tcp::Handler> {
    handler: H,
    addr: String,
    threads: Option<usize>,
    tls: Option<(PathBuf, PathBuf)>,
    tls_handshake_timeout: Duration,
    limits: ServerLimits,
}

/// The bounds of a server, the same on both shells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections held at once; past it a new connection gets the handler's
    /// [`refusal`](tcp::Handler::refusal) (a WebSocket server's is a 503) and is closed.
    /// Default: the process's descriptor limit less 64.
    pub max_connections: usize,
    /// Bytes that may wait to be written to one connection. Past it, everything not yet begun
    /// is dropped, the handler says goodbye ([`tcp::Handler::on_too_slow`]: a WebSocket closes
    /// with 1008) and the connection is closed. Default 1 MiB (Centrifugo's default).
    pub max_unsent_bytes: usize,
    /// Messages that may wait in one connection's [`Mailbox`]; past it `send` returns
    /// [`MailboxError::Full`]. Default 1,024.
    pub mailbox_capacity: usize,
    /// How long shutdown lets connections close by themselves before dropping them. Default
    /// 10 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: default_max_connections(),
            max_unsent_bytes: 1 << 20,
            mailbox_capacity: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The descriptor limit less a reserve: a connection is one descriptor.
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own and reads nothing else.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if ok {
            let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
            return soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
        }
    }
    1024 - RESERVED_DESCRIPTORS
}

impl<H: tcp::Handler> TcpServer<H> {
    /// A server for `handler`: 127.0.0.1 on a port the OS picks, one loop per core, the default
    /// limits, no TLS.
    #[must_use = "a builder does nothing until start()"]
    pub fn new(handler: H) -> Self {
        TcpServer {
            handler,
            addr: "127.0.0.1:0".to_string(),
            threads: None,
            tls: None,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            limits: ServerLimits::default(),
        }
    }

    /// The address to listen on, as `host:port`; port 0 lets the OS pick.
    #[must_use = "a builder does nothing until start()"]
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How many event-loop threads serve connections. Default: the number of cores.
    #[must_use = "a builder does nothing until start()"]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Serves TLS with this PEM certificate chain and PEM private key.
    #[must_use = "a builder does nothing until start()"]
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long a TLS handshake may take before the connection is dropped (its handler never
    /// sees it). Default 10 s; the WebSocket server uses its `handshake_timeout_ms`.
    #[must_use = "a builder does nothing until start()"]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// The server's bounds.
    #[must_use = "a builder does nothing until start()"]
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds, starts the loops and returns once they run.
    ///
    /// # Errors
    /// [`StartError::Tls`] for unusable certificate or key files, [`StartError::SystemError`]
    /// when binding, creating a poller or spawning a thread fails.
    pub fn start(self) -> Result<TcpServerHandle, StartError> {
        let tls = match &self.tls {
            Some((cert, key)) => Some(tls::server_config(cert, key).map_err(StartError::Tls)?),
            None => None,
        };
        let listener = TcpListener::bind(self.addr.as_str()).map_err(|e| {
            StartError::SystemError(io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", self.addr),
            ))
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let threads = self
            .threads
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, NonZeroUsize::get))
            .max(1);
        let mut loops = Vec::with_capacity(threads);
        let mut polls = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new()?;
            loops.push(Arc::new(LoopShared {
                waker: Waker::new(poll.registry(), Token(WAKER))?,
                inbox: Mutex::new(Inbox {
                    sockets: Vec::new(),
                    messages: Vec::new(),
                }),
            }));
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            handler: self.handler,
            tls,
            tls_handshake_ms: u64::try_from(self.tls_handshake_timeout.as_millis())
                .unwrap_or(u64::MAX),
            clock: Clock::new(),
            limits: ServerLimits {
                max_unsent_bytes: self.limits.max_unsent_bytes.max(1),
                mailbox_capacity: self.limits.mailbox_capacity.max(1),
                ..self.limits
            },
            stopping: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            loops,
        });
        polls[0].registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            Token(LISTENER),
            Interest::READABLE,
        )?;
        let mut listener = Some(listener);
        let mut joins = Vec::with_capacity(threads);
        for (index, poll) in polls.into_iter().enumerate() {
            let shared_for_thread = shared.clone();
            let listener = if index == 0 { listener.take() } else { None };
            let spawned = thread::Builder::new()
                .name(format!("spool-loop-{index}"))
                .spawn(move || Loop::new(shared_for_thread, index, poll, listener).run());
            match spawned {
                Ok(join) => joins.push(join),
                Err(e) => {
                    let handle = TcpServerHandle {
                        local_addr,
                        shared,
                        joins,
                    };
                    handle.stop_and_join();
                    return Err(StartError::SystemError(e));
                }
            }
        }
        tracing::debug!(%local_addr, threads, "server started");
        Ok(TcpServerHandle {
            local_addr,
            shared,
            joins,
        })
    }
}

/// A running raw server. Dropping it leaves the server running; [`shutdown`] stops it.
///
/// [`shutdown`]: TcpServerHandle::shutdown
pub struct TcpServerHandle {
    local_addr: SocketAddr,
    shared: Arc<dyn Stoppable>,
    joins: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TcpServerHandle {
    /// The address the server listens on (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections held right now.
    pub fn connections(&self) -> usize {
        self.shared.live()
    }

    /// Stops accepting, asks every connection to close ([`tcp::Handler::on_shutdown`]: a
    /// WebSocket sends 1001), and returns once every connection has ended and run its
    /// `on_close`; those still open after the grace period are dropped.
    pub fn shutdown(self) {
        self.stop_and_join();
    }

    /// Blocks until the server stops (a server nobody shuts down never does).
    pub fn wait(mut self) {
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }

    fn stop_and_join(mut self) {
        self.shared.stop();
        for join in self.joins.drain(..) {
            if join.join().is_err() {
                tracing::error!("an event-loop thread panicked");
            }
        }
    }
}

/// What the handle needs of a server, without its handler type.
trait Stoppable: Send + Sync {
    fn stop(&self);
    fn live(&self) -> usize;
}

impl<H: tcp::Handler> Stoppable for Shared<H> {
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for l in &self.loops {
            l.wake();
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// What every loop of one server shares.
struct Shared<H: tcp::Handler> {
    handler: H,
    tls: Option<Arc<rustls::ServerConfig>>,
    tls_handshake_ms: u64,
    clock: Clock,
    limits: ServerLimits,
    stopping: AtomicBool,
    /// Connections held by all loops, for the connection limit.
    live: AtomicUsize,
    loops: Vec<Arc<LoopShared<H::User>>>,
}

/// What other threads may hand a loop.
struct LoopShared<U> {
    waker: Waker,
    inbox: Mutex<Inbox<U>>,
}

struct Inbox<U> {
    /// Sockets accepted by loop 0 for this loop.
    sockets: Vec<(TcpStream, SocketAddr)>,
    /// User messages: (slab key, generation, message).
    messages: Vec<(usize, u64, U)>,
}

impl<U> LoopShared<U> {
    fn inbox(&self) -> MutexGuard<'_, Inbox<U>> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!("cannot wake an event loop: {e}");
        }
    }
}

/// A connection's mailbox: a count against the bound, and the way into its loop. One
/// allocation, shared by the connection's entry (which reads the count and closes it) and
/// every [`Mailbox`] handed out: a delivery reaches the count without another pointer to
/// follow, which at 10,000 subscribers is another cache miss each.
struct LoopSink<U> {
    shared: Arc<LoopShared<U>>,
    key: usize,
    generation: u64,
    capacity: usize,
    /// Messages counted in by senders, ever (raised before one is queued, lowered again only
    /// for one refused as Full). Less `handled`, the messages waiting.
    sent: AtomicUsize,
    /// Messages the loop has taken out of the inbox for this connection, ever. Written by the
    /// loop alone, so a plain store: a locked decrement of one shared count here stalled the
    /// loop on each message's cache miss (in a fan-out to 10,000, 4% of the server's samples
    /// sat on it).
    handled: AtomicUsize,
    closed: AtomicBool,
}

/// Whether a mailbox is full for a sender that found `sent` messages counted before its own,
/// `handled` of all of them taken. `handled` can be ahead of `sent` (another sender counted,
/// queued and had its message taken between the two reads), which leaves room; read late,
/// it only makes the mailbox look fuller than it is. Neither count wraps in practice (2^64).
fn is_full(sent: usize, handled: usize, capacity: usize) -> bool {
    sent.saturating_sub(handled) >= capacity
}

impl<U> LoopSink<U> {
    /// Counts one more message taken out for this connection (by its loop only); true if more
    /// are on their way, later in the inbox or about to be queued.
    fn take_one(&self) -> bool {
        let handled = self.handled.load(Ordering::Relaxed) + 1;
        self.handled.store(handled, Ordering::Release);
        self.sent.load(Ordering::Acquire) != handled
    }
}

impl<U: Send> MailboxSink<U> for LoopSink<U> {
    fn deliver(&self, message: U) -> Result<(), MailboxError<U>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(MailboxError::Gone(message));
        }
        let before = self.sent.fetch_add(1, Ordering::AcqRel);
        if is_full(before, self.handled.load(Ordering::Acquire), self.capacity) {
            self.sent.fetch_sub(1, Ordering::AcqRel);
            return Err(MailboxError::Full(message));
        }
        let was_empty = {
            let mut inbox = self.shared.inbox();
            let was_empty = inbox.messages.is_empty() && inbox.sockets.is_empty();
            inbox.messages.push((self.key, self.generation, message));
            was_empty
        };
        // One wake-up per batch: the loop drains the whole inbox when it wakes.
        if was_empty {
            self.shared.wake();
        }
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// One connection on a loop.
struct Entry<H: tcp::Handler> {
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Box<rustls::ServerConnection>>,
    /// The handler's side; `None` while the TLS handshake runs.
    slot: Option<Slot<H>>,
    out: Outgoing,
    generation: u64,
    mailbox: Arc<LoopSink<H::User>>,
    /// The deadline in the timer heap for this entry, if any.
    armed: Option<u64>,
    /// When the connection was accepted, for the TLS handshake's bound.
    opened_ms: u64,
    /// Closing: the handler is done; write what is left, then hang up.
    closing: Option<Closing>,
    /// TLS: the close_notify alert has been queued.
    close_notified: bool,
    /// On the list of connections [`Loop::drain_inbox`] writes at the end of its batch.
    write_after_batch: bool,
}

#[derive(Clone, Copy)]
enum Closing {
    /// Writing what is left; then hang up as the handler asked. Past `until`, drop it.
    Flushing { hangup: Hangup, until: u64 },
    /// The sending side is shut; reading and discarding until EOF or `until`.
    Lingering { until: u64 },
}

/// One event-loop thread.
struct Loop<H: tcp::Handler> {
    shared: Arc<Shared<H>>,
    index: usize,
    me: Arc<LoopShared<H::User>>,
    poll: Poll,
    listener: Option<TcpListener>,
    entries: Slab<Entry<H>>,
    timers: BinaryHeap<Reverse<(u64, usize, u64)>>,
    next_generation: u64,
    /// Connections to come back to before sleeping: their read budget ran out.
    again: Vec<usize>,
    /// Where accepted sockets go next (loop 0).
    deal: usize,
    accept_paused_until: Option<u64>,
    /// Refusals past the connection limit since the last log line.
    refused: u64,
    refused_logged_ms: u64,
    stop_started: Option<u64>,
    /// Plain connections' reads.
    reads: ReadBuffer,
    /// TLS connections' plaintext.
    scratch: Vec<u8>,
    /// The clock, read once a wake-up: the events of one batch share a millisecond. (Reading
    /// it per event cost more than the rest of the loop's own bookkeeping.)
    now_ms: u64,
}

impl<H: tcp::Handler> Loop<H> {
    fn new(
        shared: Arc<Shared<H>>,
        index: usize,
        poll: Poll,
        listener: Option<TcpListener>,
    ) -> Loop<H> {
        let now_ms = shared.clock.now_ms();
        Loop {
            me: shared.loops[index].clone(),
            shared,
            index,
            poll,
            listener,
            entries: Slab::new(),
            timers: BinaryHeap::new(),
            next_generation: 0,
            again: Vec::new(),
            deal: 0,
            accept_paused_until: None,
            refused: 0,
            refused_logged_ms: 0,
            stop_started: None,
            reads: ReadBuffer::new(),
            scratch: vec![0; SCRATCH_LEN],
            now_ms,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            self.read_clock();
            let now = self.now();
            if self.shared.stopping.load(Ordering::Acquire) && self.stop_started.is_none() {
                self.begin_stop(now);
            }
            if let Some(started) = self.stop_started {
                let grace = u64::try_from(self.shared.limits.shutdown_grace.as_millis())
                    .unwrap_or(u64::MAX);
                if self.entries.is_empty() {
                    break;
                }
                if now >= started.saturating_add(grace) {
                    tracing::warn!(
                        left = self.entries.len(),
                        "shutdown grace period over; dropping the connections still open"
                    );
                    let keys: Vec<usize> = self.entries.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.remove(key, End::Shutdown);
                    }
                    break;
                }
            }
            let timeout = if self.again.is_empty() {
                self.next_wake(now).map(|at| self.shared.clock.until(at))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("poller wait failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
            self.read_clock();
            for event in events.iter() {
                match event.token() {
                    Token(LISTENER) => self.accept(),
                    // The inbox is drained below, every turn.
                    Token(WAKER) => {}
                    Token(key) => {
                        // A hang-up or an error is found by the read that follows.
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.ready(key, readable, event.is_writable());
                    }
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.ready(key, true, false);
            }
            self.drain_inbox();
            self.fire_timers();
            if self
                .accept_paused_until
                .is_some_and(|until| self.now() >= until)
            {
                self.accept_paused_until = None;
                self.accept();
            }
        }
        if let Some(listener) = self.listener.take() {
            self.forget(&listener);
        }
    }

    /// Takes a descriptor out of the poller before it is closed.
    fn forget(&self, fd: &impl AsRawFd) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()));
    }

    fn now(&self) -> u64 {
        self.now_ms
    }

    fn read_clock(&mut self) {
        self.now_ms = self.shared.clock.now_ms();
    }

    /// When the loop must wake even if nothing happens.
    fn next_wake(&self, now: u64) -> Option<u64> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let stop = self.stop_started.map(|started| {
            started.saturating_add(
                u64::try_from(self.shared.limits.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
            )
        });
        [timer, stop, self.accept_paused_until]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.max(now))
    }

    // ---- accepting -------------------------------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() || self.stop_started.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // Out of descriptors or memory: accepting again at once would fail again.
                    tracing::warn!("accept failed: {e}; pausing accepts for {ACCEPT_PAUSE_MS} ms");
                    self.accept_paused_until = Some(self.now() + ACCEPT_PAUSE_MS);
                    return;
                }
            }
        }
    }

    /// A new socket: refused past the limit, otherwise dealt to a loop.
    fn admit(&mut self, socket: TcpStream, peer: SocketAddr) {
        let limit = self.shared.limits.max_connections;
        if self.shared.live.fetch_add(1, Ordering::AcqRel) >= limit {
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
            self.refuse(socket, peer, limit);
            return;
        }
        let target = self.deal % self.shared.loops.len();
        self.deal = self.deal.wrapping_add(1);
        if target == self.index {
            self.open(socket, peer);
        } else {
            let other = &self.shared.loops[target];
            let was_empty = {
                let mut inbox = other.inbox();
                let was_empty = inbox.messages.is_empty() && inbox.sockets.is_empty();
                inbox.sockets.push((socket, peer));
                was_empty
            };
            if was_empty {
                other.wake();
            }
        }
    }

    fn refuse(&mut self, socket: TcpStream, peer: SocketAddr, limit: usize) {
        if let Some(bytes) = self.shared.handler.refusal() {
            // Best effort, never blocking: a fresh socket's send buffer takes a short answer.
            let _ = socket.set_nonblocking(true);
            let _ = (&socket).write(&bytes);
        }
        let _ = socket.shutdown(Shutdown::Both);
        self.refused += 1;
        let now = self.now();
        if now.saturating_sub(self.refused_logged_ms) >= 1_000 || self.refused == 1 {
            tracing::warn!(
                %peer,
                limit,
                refused = self.refused,
                "connection limit reached; refusing new connections"
            );
            self.refused_logged_ms = now;
            self.refused = 0;
        }
    }

    /// Registers an accepted socket on this loop and, without TLS, runs `on_init`.
    fn open(&mut self, socket: TcpStream, peer: SocketAddr) {
        let now = self.now();
        if socket.set_nonblocking(true).is_err() {
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        // Frames are written whole, in one vectored write: Nagle would only delay them.
        let _ = socket.set_nodelay(true);
        let tls = match &self.shared.tls {
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(tls) => Some(Box::new(tls)),
                Err(e) => {
                    tracing::warn!(%peer, "tls session could not be created: {e}");
                    self.shared.live.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            },
            None => None,
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let vacant = self.entries.vacant_entry();
        let key = vacant.key();
        let added = self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = added {
            tracing::warn!(%peer, "cannot watch the socket: {e}");
            self.shared.live.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        vacant.insert(Entry {
            socket,
            peer,
            tls,
            slot: None,
            out: Outgoing::default(),
            generation,
            mailbox: Arc::new(LoopSink {
                shared: self.me.clone(),
                key,
                generation,
                capacity: self.shared.limits.mailbox_capacity,
                sent: AtomicUsize::new(0),
                handled: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
            armed: None,
            opened_ms: now,
            closing: None,
            close_notified: false,
            write_after_batch: false,
        });
        if self.entries[key].tls.is_some() {
            self.arm(key, now.saturating_add(self.shared.tls_handshake_ms));
        } else {
            self.start_handler(key);
        }
        // Edge-triggered: bytes that arrived before registration would not be reported.
        self.ready(key, true, true);
    }

    /// Runs `on_init` for an entry whose transport is up.
    fn start_handler(&mut self, key: usize) {
        let now = self.now();
        let max_unsent = self.shared.limits.max_unsent_bytes;
        let entry = &mut self.entries[key];
        let conn = tcp::Conn::new(
            entry.peer,
            entry.tls.is_some(),
            Mailbox::new(entry.mailbox.clone()),
        );
        entry.slot = Some(Slot::open(
            &self.shared.handler,
            conn,
            max_unsent,
            now,
            &mut entry.out,
        ));
    }

    fn drain_inbox(&mut self) {
        let (sockets, messages) = {
            let mut inbox = self.me.inbox();
            (
                std::mem::take(&mut inbox.sockets),
                std::mem::take(&mut inbox.messages),
            )
        };
        for (socket, peer) in sockets {
            if self.stop_started.is_some() {
                self.shared.live.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            self.open(socket, peer);
        }
        // Connections with more mail counted, written at the batch's end: their frames then go
        // out in one write. Written there even if their last counted message never comes in
        // this batch (it may be in the next, or be one refused as Full, counted for a moment),
        // so that nothing handled waits for the connection's next event.
        let mut later = Vec::new();
        let now = self.now();
        for (key, generation, message) in messages {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            // Messages still on their way to this connection: later in this batch, or in the
            // next (the count is raised before a message is queued).
            let more = entry.mailbox.take_one();
            let Some(slot) = &mut entry.slot else {
                continue;
            };
            slot.user(&self.shared.handler, message, now, &mut entry.out);
            // Write as the batch grows, so that a burst from a mailbox is not mistaken for a
            // backlog the peer failed to read.
            if entry.out.unsent() > self.shared.limits.max_unsent_bytes / 2
                && let Err(e) = write(entry)
            {
                tracing::debug!(peer = %entry.peer, "write failed: {e}");
            }
            if !more {
                // Its last message for now: write while the connection is in cache, and give
                // its send queue back to the thread's pool before the next connection takes
                // one. (Written at the batch's end instead, a broadcast to 10,000 held 10,000
                // queues at once, and allocated all but the pool's 64.)
                entry.write_after_batch = false;
                self.after(key);
            } else if !entry.write_after_batch {
                entry.write_after_batch = true;
                later.push(key);
            }
        }
        for key in later {
            // Written already if its last message came later in the batch, or gone.
            if let Some(entry) = self.entries.get_mut(key)
                && entry.write_after_batch
            {
                entry.write_after_batch = false;
                self.after(key);
            }
        }
    }

    // ---- one connection ----------------------------------------------------------------------

    /// The socket is readable and/or writable.
    fn ready(&mut self, key: usize, readable: bool, writable: bool) {
        if !self.entries.contains(key) {
            return;
        }
        if readable && let Err(end) = self.read(key) {
            self.remove(key, end);
            return;
        }
        let _ = writable;
        self.after(key);
    }

    /// Reads what there is (within the budget) and hands it to the handler.
    fn read(&mut self, key: usize) -> Result<(), End> {
        let mut budget = READ_BUDGET;
        let now = self.now();
        // A plain read that did not fill the read buffer emptied the socket's receive queue: no
        // need for the second read that would only say "would block". Data arriving later is a
        // new edge, and epoll reports it (as tokio reasons too).
        let mut drained = false;
        loop {
            let entry = &mut self.entries[key];
            if drained {
                return Ok(());
            }
            if budget == 0 {
                self.again.push(key);
                return Ok(());
            }
            let lingering = matches!(entry.closing, Some(Closing::Lingering { .. }));
            if entry.slot.as_ref().is_some_and(|s| !s.is_open()) && !lingering {
                // The handler is done and the rest is being written: leave reads in the kernel.
                return Ok(());
            }
            let plain = entry.tls.is_none();
            let read = match &mut entry.tls {
                None => match self.reads.recv(&entry.socket) {
                    Ok(0) => Err(End::PeerGone),
                    Ok(n) => {
                        drained = n < ReadBuffer::CAPACITY;
                        Ok(Some(n))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Err(End::PeerGone),
                },
                Some(tls) => read_tls(tls, &entry.socket, &mut self.scratch, entry.peer),
            };
            let n = match read {
                Ok(Some(n)) => n,
                Ok(None) => {
                    // A TLS handshake may have finished on what was read.
                    if entry.slot.is_none()
                        && entry.tls.as_ref().is_some_and(|t| !t.is_handshaking())
                    {
                        self.start_handler(key);
                        continue;
                    }
                    return Ok(());
                }
                Err(end) => {
                    if lingering {
                        return Err(End::Closed);
                    }
                    return Err(end);
                }
            };
            budget = budget.saturating_sub(n);
            if lingering || n == 0 {
                continue;
            }
            if entry.slot.is_none() && entry.tls.as_ref().is_some_and(|t| !t.is_handshaking()) {
                self.start_handler(key);
            }
            let entry = &mut self.entries[key];
            if let Some(slot) = &mut entry.slot {
                // Lent where it lies (the handler copies what it keeps), or given away whole.
                let read = if plain {
                    self.reads.take()
                } else {
                    Received::Lent(&self.scratch[..n])
                };
                slot.received(&self.shared.handler, read, now, &mut entry.out);
            }
        }
    }

    /// After anything happened to a connection: write, re-arm its deadline, close if due.
    fn after(&mut self, key: usize) {
        let now = self.now();
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Err(e) = write(entry) {
            tracing::debug!(peer = %entry.peer, "write failed: {e}");
            self.remove(key, End::PeerGone);
            return;
        }
        let entry = &mut self.entries[key];
        // The handler finished: start closing.
        if entry.closing.is_none()
            && let Some((hangup, _)) = entry.slot.as_ref().and_then(Slot::hangup)
        {
            let flush_for = match hangup {
                Hangup::Linger(ms) => ms.max(FLUSH_ON_CLOSE_MS),
                Hangup::Now => FLUSH_ON_CLOSE_MS,
            };
            entry.closing = Some(Closing::Flushing {
                hangup,
                until: now.saturating_add(flush_for),
            });
        }
        let mut flushed = entry.out.is_empty() && !tls_wants_write(entry);
        if flushed && entry.closing.is_some() && !entry.close_notified {
            // TLS says goodbye after the last bytes, so the peer can tell an end from a cut.
            if let Some(tls) = &mut entry.tls {
                tls.send_close_notify();
                entry.close_notified = true;
                if write(entry).is_err() {
                    self.remove(key, End::PeerGone);
                    return;
                }
                flushed = !tls_wants_write(entry);
            }
        }
        match entry.closing {
            Some(Closing::Flushing { hangup, .. }) if flushed => {
                match hangup {
                    Hangup::Now => {
                        self.remove(key, End::Closed);
                        return;
                    }
                    Hangup::Linger(ms) => {
                        let _ = entry.socket.shutdown(Shutdown::Write);
                        let until = now.saturating_add(ms);
                        entry.closing = Some(Closing::Lingering { until });
                        self.arm(key, until);
                        // The peer may have closed already.
                        self.again.push(key);
                        return;
                    }
                }
            }
            Some(Closing::Flushing { until, .. }) => {
                self.arm(key, until);
                return;
            }
            Some(Closing::Lingering { .. }) => return,
            None => {}
        }
        let deadline = entry
            .slot
            .as_ref()
            .and_then(|s| s.deadline(&self.shared.handler));
        if let Some(at) = deadline {
            self.arm(key, at);
        }
    }

    /// Makes sure the timer heap will wake this entry no later than `at`.
    fn arm(&mut self, key: usize, at: u64) {
        let entry = &mut self.entries[key];
        // Only an earlier deadline needs a new heap item; a later one is found when the
        // earlier item fires (lazy deletion keeps the heap small under busy traffic).
        if entry.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        entry.armed = Some(at);
        self.timers.push(Reverse((at, key, entry.generation)));
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(Reverse((at, key, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            if entry.generation != generation || entry.armed != Some(at) {
                continue;
            }
            entry.armed = None;
            match entry.closing {
                Some(Closing::Lingering { until } | Closing::Flushing { until, .. }) => {
                    if now >= until {
                        let end = if matches!(entry.closing, Some(Closing::Lingering { .. })) {
                            End::Closed
                        } else {
                            End::TooSlow
                        };
                        self.remove(key, end);
                    } else {
                        self.arm(key, until);
                    }
                    continue;
                }
                None => {}
            }
            let Some(slot) = &mut entry.slot else {
                // Still in the TLS handshake.
                let until = entry.opened_ms.saturating_add(self.shared.tls_handshake_ms);
                if now >= until {
                    tracing::warn!(peer = %entry.peer, "tls handshake timed out");
                    self.remove(key, End::PeerGone);
                } else {
                    self.arm(key, until);
                }
                continue;
            };
            if slot
                .deadline(&self.shared.handler)
                .is_some_and(|d| d <= now)
            {
                slot.deadline_passed(&self.shared.handler, now, &mut entry.out);
            }
            self.after(key);
        }
    }

    /// Ends a connection: `on_close` (if the handler had not ended), forget it, close it.
    fn remove(&mut self, key: usize, end: End) {
        let Some(mut entry) = self.entries.try_remove(key) else {
            return;
        };
        entry.mailbox.closed.store(true, Ordering::Release);
        let now = self.now();
        if let Some(slot) = &mut entry.slot {
            slot.end(&self.shared.handler, end, now);
        }
        self.forget(&entry.socket);
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
        // Dropping the socket closes it.
    }

    fn begin_stop(&mut self, now: u64) {
        self.stop_started = Some(now);
        if let Some(listener) = self.listener.take() {
            self.forget(&listener);
        }
        let keys: Vec<usize> = self.entries.iter().map(|(k, _)| k).collect();
        for key in keys {
            let entry = &mut self.entries[key];
            match &mut entry.slot {
                Some(slot) => {
                    slot.shutdown(&self.shared.handler, now, &mut entry.out);
                    self.after(key);
                }
                None => self.remove(key, End::Shutdown),
            }
        }
    }
}

/// Whether TLS has records to write.
fn tls_wants_write<H: tcp::Handler>(entry: &Entry<H>) -> bool {
    entry.tls.as_ref().is_some_and(|t| t.wants_write())
}

/// Writes what the entry has queued, without blocking.
fn write<H: tcp::Handler>(entry: &mut Entry<H>) -> io::Result<()> {
    let Some(tls) = &mut entry.tls else {
        entry.out.write_to(Direct(&entry.socket))?;
        return Ok(());
    };
    loop {
        // Plaintext into rustls, as much as its send buffer takes (64 KiB by default); a full
        // buffer takes nothing until records are written out below.
        let mut took = 0;
        if !tls.is_handshaking() && !entry.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = entry.out.slices(&mut slices);
            took = tls.writer().write_vectored(&slices[..count])?;
            entry.out.advance(took);
        }
        if !tls.wants_write() {
            if took == 0 || entry.out.is_empty() {
                return Ok(());
            }
            continue;
        }
        match tls.write_tls(&mut &entry.socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One read through TLS: records from the socket, decrypted into `scratch`; the count of bytes
/// there. `Ok(None)`: nothing more now.
fn read_tls(
    tls: &mut rustls::ServerConnection,
    socket: &TcpStream,
    scratch: &mut [u8],
    peer: SocketAddr,
) -> Result<Option<usize>, End> {
    // Plaintext already decrypted first.
    match tls.reader().read(scratch) {
        Ok(0) => return Err(End::PeerGone),
        Ok(n) => return Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return Err(End::PeerGone),
    }
    match tls.read_tls(&mut &*socket) {
        Ok(0) => return Err(End::PeerGone),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(0)),
        Err(_) => return Err(End::PeerGone),
    }
    if let Err(e) = tls.process_new_packets() {
        tracing::warn!(%peer, "tls failed: {e}");
        // Tell the peer why (the alert rustls queued), best effort.
        let _ = tls.write_tls(&mut &*socket);
        return Err(End::PeerGone);
    }
    // Records were read; the caller comes back for their plaintext (a read of 0 bytes means
    // "read again"), and writes the handshake records rustls owes the peer.
    let _ = tls.write_tls(&mut &*socket);
    Ok(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(capacity: usize) -> (Poll, LoopSink<u32>) {
        let poll = Poll::new().unwrap();
        let shared = Arc::new(LoopShared {
            waker: Waker::new(poll.registry(), Token(WAKER)).unwrap(),
            inbox: Mutex::new(Inbox {
                sockets: Vec::new(),
                messages: Vec::new(),
            }),
        });
        let sink = LoopSink {
            shared,
            key: 7,
            generation: 1,
            capacity,
            sent: AtomicUsize::new(0),
            handled: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        };
        (poll, sink)
    }

    /// The bound is exact however sends and takes interleave: a refused send leaves no count
    /// behind, each message taken makes room for one, and the loop learns when it has taken
    /// the last one counted.
    #[test]
    fn a_loop_mailbox_holds_its_capacity_and_frees_a_place_per_message_taken() {
        let (_poll, sink) = sink(3);
        for m in 0..3 {
            assert_eq!(sink.deliver(m), Ok(()));
        }
        for m in 3..6 {
            assert_eq!(sink.deliver(m), Err(MailboxError::Full(m)));
        }
        assert!(sink.take_one(), "two more are counted");
        assert_eq!(sink.deliver(6), Ok(()));
        assert_eq!(sink.deliver(7), Err(MailboxError::Full(7)));
        assert!(sink.take_one());
        assert!(sink.take_one());
        assert!(!sink.take_one(), "the last one counted");
        let queued: Vec<u32> = sink.shared.inbox().messages.iter().map(|m| m.2).collect();
        assert_eq!(queued, [0, 1, 2, 6]);
        for m in 8..11 {
            assert_eq!(sink.deliver(m), Ok(()));
        }
        assert_eq!(sink.deliver(11), Err(MailboxError::Full(11)));
        sink.close();
        assert_eq!(sink.deliver(12), Err(MailboxError::Gone(12)));
    }

    /// Between a sender's count and its read of the loop's, another sender's message can be
    /// counted, queued and taken: the loop's count then passes the first sender's, and that
    /// is room, not a full mailbox (a wrapping difference had called it full).
    #[test]
    fn a_loop_count_ahead_of_a_senders_is_room() {
        assert!(!is_full(5, 6, 3));
        assert!(!is_full(5, 5, 3));
        assert!(!is_full(7, 5, 3));
        assert!(is_full(8, 5, 3));
        assert!(is_full(3, 0, 3));
        assert!(!is_full(0, 0, 1));
        assert!(is_full(1, 0, 1));
    }
}
