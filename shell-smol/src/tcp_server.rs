//! The raw server on smol: a listener, a pool of acceptor tasks spread over executor threads,
//! and one task per connection driving the connection's [`tcp::Slot`], the handler side both
//! shells share. The WebSocket server is this server running `spool_std::WsProtocol`.
//!
//! Each executor thread runs its tasks on a [`Runner`], a run queue of the thread's own (see
//! `runner`). A connection runs on the thread whose acceptor took it, so its reads, timers,
//! mailbox and handler calls stay on one thread. Connection sockets (plain and under TLS) sit on
//! the thread's own edge-triggered poller ([`edge`]), registered once, rather than on
//! async-io's one-shot registrations, and the runner sleeps in that poller until the earliest
//! of its connections' deadlines, which it keeps itself ([`crate::timers`]); the listener (and
//! the rare timers of accept back-off, TLS handshakes and shutdown) stay on async-io, driven by
//! its own thread.
//!
//! A connection's task waits on everything at once: bytes from the peer (to
//! [`Slot::data`]), its mailbox, a bounded queue (to [`Slot::user`]), one timer at the
//! handler's deadline (to [`Slot::deadline_passed`]), the server's shutdown (to
//! [`Slot::shutdown`]), and the writes of its [`Outgoing`] queue, so a peer that does not read
//! holds up neither its timers nor its mailbox: the unsent-bytes bound decides when it is too
//! slow. Once the handler hangs up, the task writes what is left and closes, at once or after
//! lingering, as [`Hangup`] says.
//!
//! Shutdown closes one stop channel: each thread fires its connections' stop signal and cancels
//! its acceptors, every connection's handler gets `on_shutdown` (a WebSocket sends 1001) and
//! closes as usual, and the thread ends once its connections have, or the shutdown grace has
//! passed and the rest are dropped (each still reaching `on_close`).

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_lite::io::AsyncWriteExt as _;
use futures_lite::{FutureExt as _, future};
use futures_rustls::TlsAcceptor;
use slab::Slab;
use smol::channel::{Receiver, Sender};
use smol::{Async, Timer};
use spool_std::ServerLimits;
use spool_std::handler::{Mailbox, StartError};
use spool_std::tcp::{self, End, Hangup, Slot};

use crate::edge::{self, EdgeStream};
use crate::inbox::{Inbox, Receiving};
use crate::io::{Clock, Outgoing, Received, Socket, drain_until_eof, holds_waker, poll_write};
use crate::runner::Runner;
use crate::timers::TaskDeadline;

/// How long `start` waits for every acceptor to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an acceptor rests after a failed `accept` (out of file descriptors, say), so that
/// a listener that stays readable does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// User messages handled in one turn before the socket gets its say again.
const MAILBOX_BATCH: usize = 64;

/// Bytes a turn's user messages may queue before they are written.
const BATCH_BYTES: usize = 64 * 1024;

/// How long a TLS handshake may take, unless the server says otherwise.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection may take to write what it still has, when the handler asked
/// to close at once: the queue is bounded, so this is for a peer that stopped reading. (The
/// std shell's bound too.)
const FLUSH_ON_CLOSE_MS: u64 = 2_000;

/// Turns a connection takes in a row without waiting (a peer that keeps the socket readable)
/// before it lets the thread's other connections run.
const TURNS_BEFORE_YIELD: u32 = 32;

/// A raw TCP/TLS server on smol, to configure and [`start`](TcpServer::start): the same
/// [`tcp::Handler`]s, limits and shutdown as `spool_std::TcpServer`.
///
/// ```
/// use spool_smol::TcpServer;
/// use spool_smol::tcp::{Conn, Handler, Packet};
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
    pool_size: usize,
    threads: Option<usize>,
    tls: Option<(PathBuf, PathBuf)>,
    tls_handshake_timeout: Duration,
    limits: ServerLimits,
}

impl<H: tcp::Handler> TcpServer<H> {
    /// A server for `handler`: 127.0.0.1 on a port the OS picks, 10 acceptors, one executor
    /// thread per core, the default limits, no TLS.
    #[must_use = "a builder does nothing until start()"]
    pub fn new(handler: H) -> Self {
        TcpServer {
            handler,
            addr: "127.0.0.1:0".to_string(),
            pool_size: 10,
            threads: None,
            tls: None,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            limits: ServerLimits::default(),
        }
    }

    /// The address to listen on, `host:port` (`[::1]:9001` for IPv6); port 0 lets the OS pick.
    #[must_use = "a builder does nothing until start()"]
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How many acceptor tasks wait on the listener (glisten's pool), spread over the threads.
    /// Default 10; at least 1.
    #[must_use = "a builder does nothing until start()"]
    pub fn pool_size(mut self, acceptors: usize) -> Self {
        self.pool_size = acceptors.max(1);
        self
    }

    /// How many executor threads run the acceptors and their connections. Default: the number
    /// of CPUs; never more than the pool size, since a thread without an acceptor gets no work.
    #[must_use = "a builder does nothing until start()"]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Serves TLS with the PEM certificate chain and private key in these files.
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

    /// Binds, spawns the executor threads and returns once every acceptor is waiting.
    ///
    /// # Errors
    /// [`StartError::Tls`] for unusable certificate or key files, [`StartError::SystemError`]
    /// when binding or spawning a thread fails, [`StartError::AcceptorTimeout`] or
    /// [`StartError::AcceptorFailed`] when the acceptors did not start.
    pub fn start(self) -> Result<TcpServerHandle, StartError> {
        let tls = match &self.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(
                spool_std::tls::server_config(cert, key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(self.addr.as_str()).map_err(|e| {
            StartError::SystemError(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", self.addr),
            ))
        })?;
        let local_addr = listener.local_addr()?;
        let listener = Async::new(listener)?;
        let live = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            handler: self.handler,
            tls,
            tls_handshake_timeout: self.tls_handshake_timeout,
            clock: Clock::new(),
            limits: ServerLimits {
                max_unsent_bytes: self.limits.max_unsent_bytes.max(1),
                mailbox_capacity: self.limits.mailbox_capacity.max(1),
                ..self.limits
            },
            live: live.clone(),
            refused: AtomicU64::new(0),
            refused_logged_ms: AtomicU64::new(0),
            listener,
        });
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.threads.unwrap_or(cpus).min(self.pool_size).max(1);
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let (ready, readied) = mpsc::channel::<()>();
        let mut handle = TcpServerHandle {
            local_addr,
            live,
            stop: Some(stop),
            threads: Vec::with_capacity(threads),
        };
        for t in 0..threads {
            // pool_size acceptors dealt out as evenly as they go.
            let acceptors = self.pool_size / threads + usize::from(t < self.pool_size % threads);
            let (shared, ready, stopped) = (shared.clone(), ready.clone(), stopped.clone());
            let spawned = thread::Builder::new()
                .name(format!("spool-smol-{t}"))
                .spawn(move || run_thread(shared, acceptors, ready, stopped));
            match spawned {
                Ok(join) => handle.threads.push(join),
                Err(e) => {
                    handle.stop_and_join();
                    return Err(StartError::SystemError(e));
                }
            }
        }
        drop(ready);
        let deadline = Instant::now() + START_TIMEOUT;
        for _ in 0..self.pool_size {
            let left = deadline.saturating_duration_since(Instant::now());
            match readied.recv_timeout(left) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    handle.stop_and_join();
                    return Err(StartError::AcceptorTimeout);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    handle.stop_and_join();
                    return Err(StartError::AcceptorFailed(
                        "an executor thread exited while starting".into(),
                    ));
                }
            }
        }
        tracing::debug!(%local_addr, threads, acceptors = self.pool_size, "server started");
        Ok(handle)
    }
}

/// A running server. Dropping it shuts the server down, like [`TcpServerHandle::shutdown`].
#[derive(Debug)]
pub struct TcpServerHandle {
    local_addr: SocketAddr,
    live: Arc<AtomicUsize>,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpServerHandle {
    /// The address the server listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections held right now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Stops accepting, asks every connection to close ([`tcp::Handler::on_shutdown`]: a
    /// WebSocket sends 1001; one still in its TLS handshake is dropped), and returns once every
    /// connection has ended and run its `on_close`; those still open after the shutdown grace
    /// are dropped.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Blocks until the server stops, which it only does if its threads die.
    pub fn wait(mut self) {
        for join in self.threads.drain(..) {
            let _ = join.join();
        }
    }

    fn stop_and_join(&mut self) {
        // Closing the channel wakes every thread's `stopped.recv()`; each thread fires its
        // connections' `Stop`.
        if let Some(stop) = self.stop.take() {
            stop.close();
        }
        for join in self.threads.drain(..) {
            if join.join().is_err() {
                tracing::error!("an executor thread panicked");
            }
        }
    }
}

impl Drop for TcpServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What every thread of one server shares.
struct Shared<H: tcp::Handler> {
    handler: H,
    tls: Option<TlsAcceptor>,
    tls_handshake_timeout: Duration,
    clock: Clock,
    limits: ServerLimits,
    /// Connections held by all threads, for the connection limit.
    live: Arc<AtomicUsize>,
    /// Refusals past the connection limit since the last log line.
    refused: AtomicU64,
    refused_logged_ms: AtomicU64,
    listener: Async<TcpListener>,
}

fn run_thread<H: tcp::Handler>(
    shared: Arc<Shared<H>>,
    acceptors: usize,
    ready: mpsc::Sender<()>,
    stopped: Receiver<()>,
) {
    let grace = shared.limits.shutdown_grace;
    let executor = Rc::new(Runner::new());
    let signal = Rc::new(StopSignal::default());
    // Every connection task (and every acceptor, which hands out clones) holds a clone of
    // `live`; `drained.recv()` fails once the last one is dropped. Nothing is ever sent.
    let (live, drained) = smol::channel::bounded::<()>(1);
    let acceptors: Vec<_> = (0..acceptors)
        .map(|_| {
            let task = accept_loop(
                Rc::downgrade(&executor),
                shared.clone(),
                ready.clone(),
                signal.clone(),
                live.clone(),
            );
            executor.spawn(task)
        })
        .collect();
    drop((ready, live));
    // Connection sockets go on the thread's own edge-triggered poller (see `edge`), which the
    // runner also sleeps in; without one they stay on async-io's, which costs more per message
    // but works the same.
    if let Err(e) = edge::install() {
        tracing::warn!("no edge-triggered poller on this thread: {e}");
    }
    executor.run(async {
        let _ = stopped.recv().await;
        signal.fire();
        // No connection starts after this; the ones running saw the same channel close and
        // are closing.
        for acceptor in acceptors {
            acceptor.cancel().await;
        }
        let timeout = async {
            Timer::after(grace).await;
            tracing::warn!("shutdown grace period over; dropping the connections still open");
            Ok(())
        };
        let _ = drained.recv().or(timeout).await;
    });
    // Dropping the executor drops every connection task still running; each one's slot runs
    // its handler's `on_close` as it goes.
    drop(executor);
}

async fn accept_loop<H: tcp::Handler>(
    executor: Weak<Runner>,
    shared: Arc<Shared<H>>,
    ready: mpsc::Sender<()>,
    signal: Rc<StopSignal>,
    live: Sender<()>,
) {
    let _ = ready.send(());
    drop(ready);
    loop {
        match shared.listener.accept().await {
            Ok((stream, peer)) => {
                let limit = shared.limits.max_connections;
                if shared.live.fetch_add(1, Ordering::AcqRel) >= limit {
                    shared.live.fetch_sub(1, Ordering::AcqRel);
                    refuse(&shared, &stream, peer, limit);
                    continue;
                }
                // Counted until the task ends or is dropped with the executor.
                let counted = Counted(shared.live.clone());
                let Some(executor) = executor.upgrade() else {
                    return;
                };
                let stop = Stop::new(signal.clone());
                let accepted = Accepted {
                    shared: shared.clone(),
                    stream: Some(stream),
                    peer,
                    stop,
                    _tenure: (counted, live.clone()),
                };
                executor.spawn(connection(accepted)).detach();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // Out of descriptors or memory: accepting again at once would fail again.
                tracing::warn!(
                    "accept failed: {e}; this acceptor rests {} ms",
                    ACCEPT_BACKOFF.as_millis()
                );
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One connection counted against the limit, until dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection past the limit: the handler's refusal, best effort and never blocking (a fresh
/// socket's send buffer takes a short answer), then closed.
fn refuse<H: tcp::Handler>(
    shared: &Shared<H>,
    stream: &Async<TcpStream>,
    peer: SocketAddr,
    limit: usize,
) {
    let refusal = catch_unwind(AssertUnwindSafe(|| shared.handler.refusal())).unwrap_or(None);
    if let Some(bytes) = refusal {
        let _ = stream.get_ref().write(&bytes);
    }
    let _ = stream.get_ref().shutdown(Shutdown::Both);
    let refused = shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
    let now = shared.clock.now_ms();
    let logged = shared.refused_logged_ms.load(Ordering::Relaxed);
    if refused == 1 || now.saturating_sub(logged) >= 1_000 {
        shared.refused_logged_ms.store(now, Ordering::Relaxed);
        shared.refused.store(0, Ordering::Relaxed);
        tracing::warn!(
            %peer,
            limit,
            refused,
            "connection limit reached; refusing new connections"
        );
    }
}

/// What a connection's task owns, from accept to close.
struct Accepted<H: tcp::Handler> {
    shared: Arc<Shared<H>>,
    /// Taken by a TLS handshake, which wraps it.
    stream: Option<Async<TcpStream>>,
    peer: SocketAddr,
    stop: Stop,
    /// Its place under the connection limit and in the thread's drain count, given up when the
    /// task ends.
    _tenure: (Counted, Sender<()>),
}

/// One connection's task.
///
/// Not an `async fn`, and the futures below take references: an `async fn` keeps its
/// arguments twice (as given and as moved into its body), and an async block that awaits a
/// future it captured keeps that future twice (once captured, once as what it awaits). Both
/// were in every idle connection's task: 2,840 bytes to 1,384 (the task with its header).
/// For the same reason `run`, `drive` and `hang_up` return an `async move` block, which uses
/// its arguments where they are, rather than being `async fn`s.
#[allow(clippy::manual_async_fn)]
fn connection<H: tcp::Handler>(mut accepted: Accepted<H>) -> impl Future<Output = ()> {
    async move {
        // A panic in the shell's own code ends its connection, not the thread's others (the
        // handler's panics are caught closer, by the slot).
        let served = AssertUnwindSafe(serve(&mut accepted)).catch_unwind().await;
        if served.is_err() {
            tracing::error!(peer = %accepted.peer, "a connection task panicked");
        }
    }
}

/// One connection, from accept to close.
async fn serve<H: tcp::Handler>(accepted: &mut Accepted<H>) {
    let Accepted {
        shared,
        stream,
        peer,
        stop,
        ..
    } = accepted;
    let Some(stream) = stream else {
        return;
    };
    // Writes are whole frames in one vectored write: Nagle would only delay them.
    let _ = stream.get_ref().set_nodelay(true);
    match &shared.tls {
        None if !edge::installed() => run(shared, stream, peer, false, stop).await,
        None => {
            let Some(stream) = accepted.stream.take() else {
                return;
            };
            match EdgeStream::adopt(stream) {
                Ok(mut stream) => run(shared, &mut stream, peer, false, stop).await,
                Err(e) => tracing::warn!(%peer, "cannot watch the socket: {e}"),
            }
        }
        // Boxed, so that a plain connection's task is not sized for a TLS session.
        Some(acceptor) => {
            let Some(stream) = accepted.stream.take() else {
                return;
            };
            if !edge::installed() {
                Box::pin(serve_tls(shared, acceptor, stream, peer, stop)).await;
                return;
            }
            match EdgeStream::adopt(stream) {
                Ok(stream) => Box::pin(serve_tls(shared, acceptor, stream, peer, stop)).await,
                Err(e) => tracing::warn!(%peer, "cannot watch the socket: {e}"),
            }
        }
    }
}

async fn serve_tls<H: tcp::Handler, S: Socket>(
    shared: &Shared<H>,
    acceptor: &TlsAcceptor,
    stream: S,
    peer: &SocketAddr,
    stop: &mut Stop,
) {
    enum Tls<S> {
        Up(std::io::Result<S>),
        TimedOut,
        Stopped,
    }
    let accept = async { Tls::Up(acceptor.accept(stream).await) };
    let timeout = async {
        Timer::after(shared.tls_handshake_timeout).await;
        Tls::TimedOut
    };
    let stopped = async {
        future::poll_fn(|cx| stop.poll_fired(cx)).await;
        Tls::Stopped
    };
    let up = accept.or(timeout).or(stopped).await;
    match up {
        Tls::Up(Ok(mut tls)) => run(shared, &mut tls, peer, true, stop).await,
        Tls::Up(Err(e)) => tracing::debug!(%peer, "tls handshake failed: {e}"),
        Tls::TimedOut => tracing::debug!(%peer, "tls handshake timed out"),
        Tls::Stopped => {}
    }
}

/// A connection's slot, ended when dropped: a task dropped with its executor (shutdown past the
/// grace period) or unwinding from a panic still runs the handler's `on_close`.
struct Held<'a, H: tcp::Handler> {
    handler: &'a H,
    clock: Clock,
    slot: Slot<H>,
}

impl<H: tcp::Handler> Drop for Held<'_, H> {
    fn drop(&mut self) {
        let end = if thread::panicking() {
            End::Panicked
        } else {
            End::Shutdown
        };
        self.slot.end(self.handler, end, self.clock.now_ms());
    }
}

/// Runs the handler over a connection whose transport is up.
// Not an async fn, on purpose: an async fn keeps its arguments twice.
#[allow(clippy::manual_async_fn)]
fn run<H: tcp::Handler, S: Socket>(
    shared: &Shared<H>,
    stream: &mut S,
    peer: &SocketAddr,
    tls: bool,
    stop: &mut Stop,
) -> impl Future<Output = ()> {
    async move {
        let handler = &shared.handler;
        let clock = shared.clock;
        let inbox = Receiving(Inbox::new(shared.limits.mailbox_capacity));
        let conn = tcp::Conn::new(*peer, tls, Mailbox::new(inbox.0.clone()));
        let mut out = Outgoing::default();
        let slot = Slot::open(
            handler,
            conn,
            shared.limits.max_unsent_bytes,
            clock.now_ms(),
            &mut out,
        );
        let mut held = Held {
            handler,
            clock,
            slot,
        };
        let end = match drive(&mut held, &mut out, stream, &inbox.0, stop).await {
            Ok(hangup) => hang_up(stream, &mut out, hangup, peer).await,
            Err(end) => end,
        };
        held.slot.end(handler, end, clock.now_ms());
    }
}

/// The server's shutdown as one thread's connections see it: fired once, by the thread, when
/// the server's stop channel closes. Each connection that waits for it has its waker here (a
/// slab entry, 24 bytes, where a listener of its own on the stop channel took about 100).
#[derive(Default)]
struct StopSignal {
    fired: Cell<bool>,
    waiting: RefCell<Slab<Waker>>,
}

impl StopSignal {
    /// Fires: wakes every connection waiting, and every later poll is ready at once.
    fn fire(&self) {
        self.fired.set(true);
        let waiting = mem::take(&mut *self.waiting.borrow_mut());
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

/// The server's shutdown as one connection sees it: ready once, then pending for good.
struct Stop {
    /// `None` once it has fired.
    signal: Option<Rc<StopSignal>>,
    /// This connection's entry among the signal's waiting, once it has waited.
    key: Option<usize>,
    /// A copy of the waker in that entry, to see without borrowing the signal that it is
    /// still the one to wake.
    registered: Option<Waker>,
}

impl Stop {
    fn new(signal: Rc<StopSignal>) -> Stop {
        Stop {
            signal: Some(signal),
            key: None,
            registered: None,
        }
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(signal) = &self.signal else {
            return Poll::Pending;
        };
        if signal.fired.get() {
            // Fired: forget the signal so that it fires once.
            self.signal = None;
            self.key = None;
            self.registered = None;
            return Poll::Ready(());
        }
        if holds_waker(&self.registered, cx) {
            // The signal holds this waker already: the usual case, a task polled again.
            return Poll::Pending;
        }
        let mut waiting = signal.waiting.borrow_mut();
        match self.key.and_then(|key| waiting.get_mut(key)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => self.key = Some(waiting.insert(cx.waker().clone())),
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        // Once fired, the signal's entries are gone: a key would name someone else's.
        if let (Some(signal), Some(key)) = (&self.signal, self.key)
            && !signal.fired.get()
        {
            signal.waiting.borrow_mut().try_remove(key);
        }
    }
}

/// What woke a connection.
enum Wake<U> {
    Stop,
    Deadline,
    /// Bytes read and handed to the handler already: their count, 0 at end of stream.
    Read(std::io::Result<usize>),
    User(U),
    WriteFailed(std::io::Error),
}

/// The connection loop, while the handler runs: returns how to hang up once it asks to, or how
/// the connection ended under it.
// Not an async fn, on purpose: an async fn keeps its arguments twice.
#[allow(clippy::manual_async_fn)]
fn drive<H: tcp::Handler, S: Socket>(
    held: &mut Held<'_, H>,
    out: &mut Outgoing,
    stream: &mut S,
    inbox: &Inbox<H::User>,
    stop: &mut Stop,
) -> impl Future<Output = Result<Hangup, End>> {
    async move {
        let handler: &H = held.handler;
        let clock = &held.clock;
        let slot = &mut held.slot;
        let mut deadline = TaskDeadline::new();
        // Bytes handed to the stream that may still sit in it (TLS records not yet flushed).
        let mut unflushed = false;
        let mut user_first = false;
        // `Some` once a read came back short, leaving the socket empty: until it is readable
        // again, wait for readiness rather than read. async-io's own poll_read meets an empty
        // socket with two reads that say EAGAIN (the first readiness check after a wake-up
        // reports the readiness that woke the task); this saves both, two system calls a
        // message in an echo. `Some(true)` until the first check, which is the stale one. Bytes
        // that arrive meanwhile are not missed: re-arming the epoll registration reports a
        // socket that is readable already.
        let mut drained: Option<bool> = None;
        let mut turns = 0;
        // The time the current wake-up is handled at, read once a poll.
        let mut now = 0;
        // True right after an event was handled, when the loop goes round again within the
        // same poll of the task, with the same waker. The stop signal and the mailbox, if they
        // were found waiting in the previous look, hold that waker: a change since (a handler
        // writing to its own mailbox) has woken the task, which will be polled again, so they
        // need no second look now; nor does the clock, a few microseconds later.
        let mut again = false;
        let mut stop_waiting = false;
        let mut inbox_waiting = false;
        // Likewise the deadline, unless it was moved since.
        let mut deadline_waiting = false;
        loop {
            if let Some((hangup, _)) = slot.hangup() {
                // Nothing more reaches the handler: senders hear `Gone` from now on.
                inbox.close();
                return Ok(hangup);
            }
            // Fires early at worst: `Wake::Deadline` below checks what is due.
            if deadline.arm_no_later(slot.deadline(handler), clock) {
                deadline_waiting = false;
            }
            if turns >= TURNS_BEFORE_YIELD {
                turns = 0;
                again = false;
                future::yield_now().await;
            }
            user_first = !user_first;
            let mut polls = 0u32;
            let wake = future::poll_fn(|cx| {
                polls += 1;
                let quick = again && polls == 1;
                if !quick {
                    // The batch's time (see `runner::now`), but never earlier than a deadline's
                    // fresh reading below: the core's time only goes forward.
                    now = now.max(crate::runner::now_ms(clock));
                    inbox_waiting = false;
                }
                if !(quick && stop_waiting) {
                    if stop.poll_fired(cx).is_ready() {
                        return Poll::Ready(Wake::Stop);
                    }
                    stop_waiting = true;
                }
                if !(quick && deadline_waiting) {
                    if deadline.poll_due(now, cx).is_ready() {
                        return Poll::Ready(Wake::Deadline);
                    }
                    deadline_waiting = true;
                }
                if unflushed || !out.is_empty() {
                    match poll_write(out, stream, cx) {
                        Poll::Ready(Ok(())) => unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Wake::WriteFailed(e)),
                        Poll::Pending => unflushed = true,
                    }
                }
                let look_at_inbox = !inbox_waiting;
                if user_first && look_at_inbox {
                    if let Poll::Ready(u) = inbox.poll_recv(cx) {
                        return Poll::Ready(Wake::User(u));
                    }
                    inbox_waiting = true;
                }
                if let Some(fresh) = drained {
                    let mut ready = stream.poll_readiness(cx).is_ready();
                    if ready && fresh {
                        // async-io's first answer after a wake-up reports the readiness that
                        // woke the task, which the short read used up; the second registers.
                        ready = stream.poll_readiness(cx).is_ready();
                    }
                    drained = if ready { None } else { Some(false) };
                }
                if drained.is_none() {
                    // The bytes go to the handler as they lie in the thread's read buffer:
                    // lent if few (it copies what it keeps), given away if many.
                    let read = stream.poll_read_into(cx, |read| match read {
                        Received::Lent([]) => {}
                        read => slot.received(handler, read, now, out),
                    });
                    if let Poll::Ready(r) = read {
                        return Poll::Ready(Wake::Read(r.map(|(n, ())| n)));
                    }
                }
                if !user_first && look_at_inbox {
                    if let Poll::Ready(u) = inbox.poll_recv(cx) {
                        return Poll::Ready(Wake::User(u));
                    }
                    inbox_waiting = true;
                }
                Poll::Pending
            })
            .await;
            again = true;
            // A connection that never had to wait keeps count, so it cannot starve the others.
            turns = if polls > 1 { 0 } else { turns + 1 };
            match wake {
                Wake::Stop => slot.shutdown(handler, now, out),
                Wake::Deadline => {
                    // The poll's time can be older than the timer that fired (see
                    // `Deadline::poll_due`); a timer fires about once a keep-alive period, so
                    // the clock is read afresh here.
                    now = clock.now_ms();
                    if slot.deadline(handler).is_some_and(|at| at <= now) {
                        slot.deadline_passed(handler, now, out);
                    }
                }
                // Handed to the handler already.
                Wake::Read(Ok(n)) if n > 0 => drained = crate::io::was_short(n).then_some(true),
                Wake::Read(_) => return Err(End::PeerGone),
                Wake::User(message) => {
                    slot.user(handler, message, now, out);
                    for _ in 1..MAILBOX_BATCH {
                        // A batch's frames go out in one write (a broadcast backlog costs one
                        // system call per connection, not one per frame), up to BATCH_BYTES: the
                        // unsent-bytes bound is for a peer that reads too slowly, not for a batch.
                        if !slot.is_open() || out.unsent() >= BATCH_BYTES {
                            break;
                        }
                        match inbox.try_recv() {
                            Some(message) => slot.user(handler, message, now, out),
                            None => break,
                        }
                    }
                }
                Wake::WriteFailed(e) => {
                    tracing::debug!("write failed: {e}");
                    return Err(End::PeerGone);
                }
            }
        }
    }
}

/// Ends a connection whose handler hung up: writes what is left and flushes (TLS close_notify)
/// within a bound, then closes at once or lingers, as `hangup` says.
// Not an async fn, on purpose: an async fn keeps its arguments twice.
#[allow(clippy::manual_async_fn)]
fn hang_up<S: Socket>(
    stream: &mut S,
    out: &mut Outgoing,
    hangup: Hangup,
    peer: &SocketAddr,
) -> impl Future<Output = End> {
    async move {
        let flush_for = match hangup {
            Hangup::Linger(ms) => ms.max(FLUSH_ON_CLOSE_MS),
            Hangup::Now => FLUSH_ON_CLOSE_MS,
        };
        let flush = async {
            if future::poll_fn(|cx| poll_write(out, stream, cx))
                .await
                .is_err()
            {
                return Some(End::PeerGone);
            }
            // TLS says goodbye after the last bytes, so the peer can tell an end from a cut.
            let _ = stream.close().await;
            None
        };
        let timeout = async {
            Timer::after(Duration::from_millis(flush_for)).await;
            tracing::debug!(%peer, "the peer did not take the last bytes in time; dropping them");
            Some(End::TooSlow)
        };
        if let Some(end) = flush.or(timeout).await {
            return end;
        }
        if let Hangup::Linger(ms) = hangup {
            let _ = stream.tcp().shutdown(Shutdown::Write);
            let drain = async {
                drain_until_eof(stream).await;
            };
            drain
                .or(async {
                    Timer::after(Duration::from_millis(ms)).await;
                })
                .await;
        }
        End::Closed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::inbox::Count;

    /// The size of the future the async function `f` returns, read from its type: `f` is
    /// never called.
    fn future_size<A, F: Future>(_f: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A WebSocket handler with no state, as the echo server's.
    struct Echo;

    impl spool_std::handler::Handler for Echo {
        type State = ();
        type User = ();
        fn on_init(&self, _: &mut spool_std::handler::Conn<()>) {}
        fn handle(
            &self,
            _: &mut (),
            _: spool_std::handler::Incoming<()>,
            _: &mut spool_std::handler::Conn<()>,
        ) -> spool_std::handler::Next {
            spool_std::handler::Next::Continue
        }
    }

    #[test]
    fn an_idle_websocket_connection_task_stays_small() {
        // Every open connection holds its task: this future, in one allocation with the
        // executor's header. 1,120 bytes when written (it was 2,768, the future held twice);
        // 1,232 since the deadline and the stop signal keep the waker they were given, which
        // spares each wake-up a timer poll, a clock read and a borrow of the signal; 1,264 since
        // the loop remembers what its last look found waiting, which spares a round trip's
        // second look a clock read, the signal and the mailbox's lock; 1,280 since reads go to
        // the handler from inside the poll, lent or given (`ReadBuffer`), not copied out first;
        // 1,304 since the send queue keeps its oldest transmit inline (`Outgoing`), which
        // spares a reply a queue borrowed from the thread's pool and given back.
        let size = future_size(connection::<spool_std::WsProtocol<Echo>>);
        assert!(size <= 1_304, "a connection's future grew to {size} bytes");
    }

    #[test]
    fn the_stop_signal_holds_one_entry_a_waiting_connection_and_fires_each_once() {
        let signal = Rc::new(StopSignal::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut stops: Vec<Stop> = (0..3).map(|_| Stop::new(signal.clone())).collect();
        for stop in &mut stops {
            assert_eq!(stop.poll_fired(&mut cx), Poll::Pending);
            // Waiting again keeps the one entry.
            assert_eq!(stop.poll_fired(&mut cx), Poll::Pending);
        }
        assert_eq!(signal.waiting.borrow().len(), 3);
        // A connection that ends gives its entry back.
        drop(stops.pop());
        assert_eq!(signal.waiting.borrow().len(), 2);
        signal.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert_eq!(signal.waiting.borrow().len(), 0);
        // Each fires once, and one made after the fire fires at once.
        stops.push(Stop::new(signal.clone()));
        for stop in &mut stops {
            assert_eq!(stop.poll_fired(&mut cx), Poll::Ready(()));
            assert_eq!(stop.poll_fired(&mut cx), Poll::Pending);
        }
        drop(stops);
        assert_eq!(signal.waiting.borrow().len(), 0);
    }
}
