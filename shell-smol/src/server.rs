//! The server: a listener, a pool of acceptor tasks spread over executor threads, and one task
//! per connection driving a [`spool_core::ws::Connection`].
//!
//! Each executor thread runs a `LocalExecutor` under `smol::block_on`, which drives the async-io
//! reactor on that thread whenever it would otherwise park. A connection runs on the thread
//! whose acceptor took it, so its reads, timers and handler calls stay on one thread.
//!
//! Shutdown closes one stop channel: each thread cancels its acceptors, every connection asks
//! its core to close with 1001 and runs the close handshake and hang-up as usual, and the thread
//! ends once its connections have (or a bound has passed, when the rest are dropped).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::task::Poll;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_lite::{FutureExt as _, Stream as _, future, ready};
use futures_rustls::TlsAcceptor;
use smol::channel::{Receiver, Sender};
use smol::{Async, LocalExecutor, Timer};
use spool_core::replay::Setup;
use spool_core::ws::{self, Connection, Event, Outbound, Request};
use spool_std::handler::{
    Action, Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxError, MailboxSink, Next,
    StartError,
};

use crate::io::{Clock, Deadline, Outgoing, Recorder, Socket, hang_up, poll_read};

/// How long `start` waits for every acceptor to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an acceptor rests after a failed `accept` (out of file descriptors, say), so that
/// a listener that stays readable does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// User messages handled in one turn before the socket gets its say again.
const MAILBOX_BATCH: usize = 64;

/// The close code every live connection is asked to close with when the server shuts down:
/// 1001, going away (RFC 6455 §7.4.1). This is the server's application-level choice, as
/// `Next::Stop` stands for 1000; the close handshake it starts is the core's business.
const SHUTDOWN_CLOSE_CODE: u16 = 1001;

/// The close reason that goes with [`SHUTDOWN_CLOSE_CODE`].
const SHUTDOWN_CLOSE_REASON: &str = "server shutting down";

/// Slack on top of the close handshake's and the hang-up's bounds before shutdown drops the
/// connections that are still there.
const SHUTDOWN_SPARE: Duration = Duration::from_secs(1);

/// A WebSocket server, built with chained calls and started with [`Server::start`].
///
/// ```no_run
/// use spool_smol::{Conn, Handler, Incoming, Next, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     type User = ();
///     fn on_init(&self, _: &mut Conn<()>) {}
///     fn handle(&self, _: &mut (), incoming: Incoming<()>, conn: &mut Conn<()>) -> Next {
///         if let Incoming::Message(m) = incoming {
///             if !m.is_control() {
///                 conn.send(m);
///             }
///         }
///         Next::Continue
///     }
/// }
///
/// let server = Server::new(Echo).bind("127.0.0.1:9001").start().unwrap();
/// println!("listening on {}", server.local_addr());
/// server.wait();
/// ```
pub struct Server<H: Handler> {
    handler: H,
    addr: String,
    pool_size: usize,
    threads: Option<usize>,
    tls: Option<(PathBuf, PathBuf)>,
    config: ws::Config,
    record: Option<PathBuf>,
}

impl<H: Handler> Server<H> {
    /// A server for `handler`: bound to 127.0.0.1 on a free port, 10 acceptors, the default
    /// WebSocket configuration, no TLS.
    pub fn new(handler: H) -> Self {
        Server {
            handler,
            addr: "127.0.0.1:0".to_string(),
            pool_size: 10,
            threads: None,
            tls: None,
            config: ws::Config::default(),
            record: None,
        }
    }

    /// The address to listen on, `host:port` (`[::1]:9001` for IPv6).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How many acceptor tasks wait on the listener (glisten's pool), spread over the threads.
    /// Default 10; at least 1.
    pub fn pool_size(mut self, acceptors: usize) -> Self {
        self.pool_size = acceptors.max(1);
        self
    }

    /// How many executor threads run the acceptors and their connections. Default: the number
    /// of CPUs; never more than the pool size, since a thread without an acceptor gets no work.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Serves `wss://` with the PEM certificate chain and private key in these files.
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The WebSocket configuration every connection runs with.
    pub fn config(mut self, config: ws::Config) -> Self {
        self.config = config;
        self
    }

    /// Records every connection's event log as `dir/<n>.jsonl` (created if missing), `n`
    /// counting connections from 0.
    pub fn record(mut self, dir: impl Into<PathBuf>) -> Self {
        self.record = Some(dir.into());
        self
    }

    /// Binds, spawns the executor threads and returns once every acceptor is waiting.
    ///
    /// # Errors
    /// [`StartError`]: an invalid configuration, unreadable TLS files, a refused bind, or
    /// threads that could not be spawned or did not start.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(
                spool_std::tls::server_config(cert, key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        if let Some(dir) = &self.record {
            std::fs::create_dir_all(dir)?;
        }
        let listener = TcpListener::bind(self.addr.as_str())?;
        let local_addr = listener.local_addr()?;
        let listener = Async::new(listener)?;

        let shared = Arc::new(Shared {
            handler: self.handler,
            config: self.config,
            tls,
            clock: Clock::new(),
            record: self.record,
            recorded: AtomicU64::new(0),
            listener,
        });
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.threads.unwrap_or(cpus).min(self.pool_size).max(1);
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let (ready, readied) = mpsc::channel::<()>();
        let mut handle = ServerHandle {
            local_addr,
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
        Ok(handle)
    }
}

/// A running server. Dropping it shuts the server down, like [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, starts the close handshake on every live connection (code 1001, going
    /// away; one still in its opening handshake is dropped), and returns once every connection
    /// has ended and run its `on_close`. A peer that never answers the close is waited for as
    /// long as the configuration's `close_timeout_ms`; connections still there a few seconds
    /// after that (a peer that stopped reading) are dropped, and end as a vanished transport.
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
        // Closing the channel wakes every thread's `stopped.recv()` and every connection's
        // `Stop`.
        if let Some(stop) = self.stop.take() {
            stop.close();
        }
        for join in self.threads.drain(..) {
            let _ = join.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What every thread of one server shares.
struct Shared<H: Handler> {
    handler: H,
    config: ws::Config,
    tls: Option<TlsAcceptor>,
    clock: Clock,
    record: Option<PathBuf>,
    recorded: AtomicU64,
    listener: Async<TcpListener>,
}

fn run_thread<H: Handler>(
    shared: Arc<Shared<H>>,
    acceptors: usize,
    ready: mpsc::Sender<()>,
    stopped: Receiver<()>,
) {
    // The close handshake's own bound, the hang-up after it, and a second to spare.
    let grace =
        Duration::from_millis(shared.config.close_timeout_ms) + crate::io::LINGER + SHUTDOWN_SPARE;
    let executor = Rc::new(LocalExecutor::new());
    // Every connection task (and every acceptor, which hands out clones) holds a clone of
    // `live`; `drained.recv()` fails once the last one is dropped. Nothing is ever sent.
    let (live, drained) = smol::channel::bounded::<()>(1);
    let acceptors: Vec<_> = (0..acceptors)
        .map(|_| {
            let task = accept_loop(
                Rc::downgrade(&executor),
                shared.clone(),
                ready.clone(),
                stopped.clone(),
                live.clone(),
            );
            executor.spawn(task)
        })
        .collect();
    drop((ready, live));
    smol::block_on(executor.run(async {
        let _ = stopped.recv().await;
        // No connection starts after this; the ones running saw the same channel close and
        // are closing.
        for acceptor in acceptors {
            acceptor.cancel().await;
        }
        let timeout = async {
            Timer::after(grace).await;
            Ok(())
        };
        let _ = drained.recv().or(timeout).await;
    }));
    // Dropping the executor drops every connection task still running; each one's session
    // reports the end to the handler as it goes.
    drop(executor);
}

async fn accept_loop<H: Handler>(
    executor: Weak<LocalExecutor<'static>>,
    shared: Arc<Shared<H>>,
    ready: mpsc::Sender<()>,
    stopped: Receiver<()>,
    live: Sender<()>,
) {
    let _ = ready.send(());
    drop(ready);
    loop {
        match shared.listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                let Some(executor) = executor.upgrade() else {
                    return;
                };
                // A panicking handler ends its own connection, not the thread's others.
                let stop = Stop::new(stopped.clone());
                let task =
                    AssertUnwindSafe(serve(shared.clone(), stream, peer, stop)).catch_unwind();
                // Held for as long as the task runs, or until it is dropped with the executor.
                let live = live.clone();
                executor
                    .spawn(async move {
                        let _ = task.await;
                        drop(live);
                    })
                    .detach();
            }
            Err(_) => {
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One connection, from accept to drop.
async fn serve<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    stop: Stop,
) {
    let Some(mut session) = Session::new(shared.clone(), peer, stop) else {
        return;
    };
    session.feed(Event::Open {
        now_ms: session.clock.now_ms(),
    });
    match &shared.tls {
        None => drive(&mut session, stream).await,
        // Boxed, so that a plain connection's task is not sized for a TLS session.
        Some(acceptor) => Box::pin(serve_tls(&mut session, acceptor, stream)).await,
    }
}

async fn serve_tls<H: Handler>(
    session: &mut Session<H>,
    acceptor: &TlsAcceptor,
    stream: Async<TcpStream>,
) {
    enum Tls<S> {
        Up(std::io::Result<S>),
        Timeout,
        Shutdown,
    }
    // The TLS handshake counts against the core's handshake deadline.
    let mut deadline = Deadline::new();
    deadline.arm(&session.ws, &session.clock);
    let accept = async { Tls::Up(acceptor.accept(stream).await) };
    let fired = async {
        future::poll_fn(|cx| deadline.poll_fired(cx)).await;
        Tls::Timeout
    };
    let stop = &mut session.stop;
    let stopped = async {
        future::poll_fn(|cx| stop.poll_fired(cx)).await;
        Tls::Shutdown
    };
    match accept.or(fired).or(stopped).await {
        Tls::Up(Ok(tls)) => drive(session, tls).await,
        Tls::Up(Err(_)) => session.feed(Event::TransportClosed {
            now_ms: session.clock.now_ms(),
        }),
        // Nothing can be written before TLS is up: whatever the core answers is dropped.
        Tls::Timeout => session.feed(Event::Tick {
            now_ms: session.clock.now_ms(),
        }),
        Tls::Shutdown => session.shut_down(),
    }
}

/// The server's shutdown as one connection sees it: the stop channel, which is never sent on
/// and closes when the server shuts down. Ready once, then pending for good.
struct Stop(Option<Pin<Box<Receiver<()>>>>);

impl Stop {
    fn new(stopped: Receiver<()>) -> Stop {
        // Pinned: a receiver polled as a stream keeps its listener in place.
        Stop(Some(Box::pin(stopped)))
    }

    fn poll_fired(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let Some(rx) = &mut self.0 else {
            return Poll::Pending;
        };
        ready!(rx.as_mut().poll_next(cx));
        // A closed channel stays ready: forget it so that it fires once.
        self.0 = None;
        Poll::Ready(())
    }
}

/// What woke a connection.
enum Wake<U> {
    Tick,
    Shutdown,
    Read(std::io::Result<bytes::Bytes>),
    User(U),
    Written(std::io::Result<()>),
}

/// The connection loop: write what the core produced, hang up when it says so, otherwise wait
/// for bytes, a user message or the core's deadline.
async fn drive<H: Handler, S: Socket>(s: &mut Session<H>, mut stream: S) {
    let mut deadline = Deadline::new();
    let mut user_first = false;
    loop {
        if s.disconnect {
            hang_up(&mut stream, &mut s.outgoing).await;
            return;
        }
        deadline.arm(&s.ws, &s.clock);
        if !s.outgoing.is_empty() {
            let wake = future::poll_fn(|cx| {
                if s.stop.poll_fired(cx).is_ready() {
                    return Poll::Ready(Wake::<H::User>::Shutdown);
                }
                if deadline.poll_fired(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                s.outgoing.poll_write(&mut stream, cx).map(Wake::Written)
            })
            .await;
            match wake {
                Wake::Tick => s.feed(Event::Tick {
                    now_ms: s.clock.now_ms(),
                }),
                // Queued behind what is being written; the core's close timer bounds the wait
                // for a peer that stopped reading.
                Wake::Shutdown => s.shut_down(),
                Wake::Written(Ok(())) | Wake::Read(_) | Wake::User(_) => {}
                Wake::Written(Err(_)) => {
                    // The transport is gone: nothing more can be written or read.
                    s.outgoing.clear();
                    s.feed(Event::TransportClosed {
                        now_ms: s.clock.now_ms(),
                    });
                    return;
                }
            }
            continue;
        }
        if s.ws.is_done() {
            return;
        }
        user_first = !user_first;
        let wake = future::poll_fn(|cx| {
            if s.stop.poll_fired(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            if deadline.poll_fired(cx).is_ready() {
                return Poll::Ready(Wake::Tick);
            }
            let mut poll_user = |cx: &mut std::task::Context<'_>| match &mut s.mailbox {
                // Closed once the connection reported its end: `None` then means nothing more.
                Some(rx) if s.state.is_some() => match rx.as_mut().poll_next(cx) {
                    Poll::Ready(Some(u)) => Poll::Ready(Wake::User(u)),
                    _ => Poll::Pending,
                },
                _ => Poll::Pending,
            };
            if user_first {
                if let Poll::Ready(w) = poll_user(cx) {
                    return Poll::Ready(w);
                }
            }
            if let Poll::Ready(r) = poll_read(&mut stream, cx) {
                return Poll::Ready(Wake::Read(r));
            }
            if !user_first {
                return poll_user(cx);
            }
            Poll::Pending
        })
        .await;
        let now_ms = s.clock.now_ms();
        match wake {
            Wake::Tick => s.feed(Event::Tick { now_ms }),
            Wake::Shutdown => s.shut_down(),
            Wake::Read(Ok(bytes)) if !bytes.is_empty() => s.feed(Event::Receive { now_ms, bytes }),
            Wake::Read(_) => s.feed(Event::TransportClosed { now_ms }),
            Wake::User(u) => {
                s.callback(Incoming::User(u));
                for _ in 1..MAILBOX_BATCH {
                    match s.mailbox.as_ref().map(|rx| rx.try_recv()) {
                        Some(Ok(u)) if s.state.is_some() => s.callback(Incoming::User(u)),
                        _ => break,
                    }
                }
                s.run();
            }
            Wake::Written(_) => {}
        }
    }
}

/// A connection's state between events: the core, the handler's state, and what the last
/// turn produced.
struct Session<H: Handler> {
    shared: Arc<Shared<H>>,
    clock: Clock,
    peer: SocketAddr,
    ws: Connection,
    /// The upgrade request, from `Upgrade` until `Opened` makes the `Conn`.
    request: Option<Request>,
    /// The handler's state: `Some` from `on_init` until `on_close`.
    state: Option<H::State>,
    conn: Option<Conn<H::User>>,
    /// Pinned: a receiver polled as a stream keeps its listener in place.
    mailbox: Option<Pin<Box<Receiver<H::User>>>>,
    recorder: Option<Recorder>,
    /// Events the handler's actions produced, fed to the core in order.
    pending: VecDeque<Event>,
    out: Vec<Outbound>,
    outgoing: Outgoing,
    disconnect: bool,
    /// Fires when the server shuts down.
    stop: Stop,
}

impl<H: Handler> Session<H> {
    fn new(shared: Arc<Shared<H>>, peer: SocketAddr, stop: Stop) -> Option<Session<H>> {
        // The config was validated in `start`; this cannot fail.
        let ws = Connection::server(shared.config.clone()).ok()?;
        let recorder = shared.record.as_ref().and_then(|dir| {
            let n = shared.recorded.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{n}.jsonl"));
            let setup = Setup::Server {
                config: shared.config.clone(),
                session: spool_core::session::Config::default(),
            };
            Recorder::create(&path, setup)
                .map_err(|e| eprintln!("spool: not recording to {}: {e}", path.display()))
                .ok()
        });
        Some(Session {
            clock: shared.clock,
            shared,
            peer,
            ws,
            request: None,
            state: None,
            conn: None,
            mailbox: None,
            recorder,
            pending: VecDeque::new(),
            out: Vec::new(),
            outgoing: Outgoing::default(),
            disconnect: false,
            stop,
        })
    }

    fn feed(&mut self, event: Event) {
        self.pending.push_back(event);
        self.run();
    }

    /// The server is shutting down: asks the core to close; the connection loop carries out
    /// the close handshake and the hang-up as for any other close.
    fn shut_down(&mut self) {
        self.feed(Event::Close {
            now_ms: self.clock.now_ms(),
            code: SHUTDOWN_CLOSE_CODE,
            reason: SHUTDOWN_CLOSE_REASON.to_string(),
        });
    }

    /// Feeds the pending events to the core and carries out what comes back, until the handler
    /// has nothing more to say.
    fn run(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        while let Some(event) = self.pending.pop_front() {
            if let Some(recorder) = &mut self.recorder {
                recorder.event(&event);
            }
            self.ws.handle_into(event, &mut out);
            for outbound in out.drain(..) {
                self.carry_out(outbound);
            }
        }
        self.out = out;
        if let Some(recorder) = &mut self.recorder {
            recorder.flush();
        }
    }

    fn carry_out(&mut self, outbound: Outbound) {
        let handler = &self.shared.handler;
        match outbound {
            Outbound::Transmit(bytes) => self.outgoing.push(bytes),
            Outbound::Upgrade(request) => {
                let now_ms = self.clock.now_ms();
                let event = match handler.on_upgrade(&request) {
                    Ok(()) => Event::Accept { now_ms },
                    Err(r) => Event::Reject {
                        now_ms,
                        status: r.status,
                        reason: r.reason,
                    },
                };
                self.request = Some(request);
                self.pending.push_back(event);
            }
            Outbound::HttpRequest(request) => {
                let HttpResponse {
                    status,
                    content_type,
                    body,
                } = handler.on_request(&request);
                let now_ms = self.clock.now_ms();
                self.pending.push_back(Event::Respond {
                    now_ms,
                    status,
                    content_type,
                    body,
                });
            }
            Outbound::Opened(handshake) => {
                let (tx, rx) = smol::channel::unbounded();
                self.mailbox = Some(Box::pin(rx));
                let mailbox = Mailbox::new(Arc::new(ChannelSink(tx)));
                let request = self.request.take().unwrap_or_default();
                let mut conn = Conn::new(self.peer, request, handshake.protocol, mailbox);
                self.state = Some(handler.on_init(&mut conn));
                self.take_actions(&mut conn, Next::Continue);
                self.conn = Some(conn);
            }
            Outbound::Deliver(message) => self.callback(Incoming::Message(message)),
            Outbound::Closed(info) => {
                if let Some(rx) = &self.mailbox {
                    rx.close();
                }
                if let Some(state) = self.state.take() {
                    handler.on_close(state, &info);
                }
            }
            Outbound::Disconnect => self.disconnect = true,
        }
    }

    /// Runs `handle` and queues what it asked for.
    fn callback(&mut self, incoming: Incoming<H::User>) {
        let (Some(state), Some(mut conn)) = (self.state.as_mut(), self.conn.take()) else {
            return;
        };
        let next = self.shared.handler.handle(state, incoming, &mut conn);
        self.take_actions(&mut conn, next);
        self.conn = Some(conn);
    }

    fn take_actions(&mut self, conn: &mut Conn<H::User>, next: Next) {
        let now_ms = self.clock.now_ms();
        for action in conn.take_actions() {
            self.pending.push_back(match action {
                Action::Send(message) => Event::Send { now_ms, message },
                Action::Close { code, reason } => Event::Close {
                    now_ms,
                    code,
                    reason,
                },
            });
        }
        match next {
            Next::Continue => {}
            Next::Stop => self.pending.push_back(Event::Close {
                now_ms,
                code: 1000,
                reason: String::new(),
            }),
        }
    }
}

impl<H: Handler> Drop for Session<H> {
    /// However the task ends (the loop returned, the server shut down, a handler panicked), a
    /// connection whose `on_init` ran tells the core its transport is gone, and the core's
    /// `Closed` runs `on_close`.
    fn drop(&mut self) {
        if self.state.is_some() {
            self.feed(Event::TransportClosed {
                now_ms: self.clock.now_ms(),
            });
        }
    }
}

/// A mailbox over an unbounded channel: sending fails only once the connection is gone.
struct ChannelSink<U>(Sender<U>);

impl<U: Send> MailboxSink<U> for ChannelSink<U> {
    fn deliver(&self, message: U) -> Result<(), MailboxError<U>> {
        self.0.try_send(message).map_err(|e| match e {
            smol::channel::TrySendError::Full(m) => MailboxError::Full(m),
            smol::channel::TrySendError::Closed(m) => MailboxError::Gone(m),
        })
    }

    fn close(&self) {
        self.0.close();
    }
}
