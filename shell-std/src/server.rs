//! The server, shaped after glisten: a listener, a pool of acceptor threads blocking in
//! `accept()` on it, and one connection driven per accepted socket (see [`crate::session`]).
//!
//! This file owns the threads' lives: start-up with typed errors, a registry of live
//! connections, and shutdown that stops accepting, closes every connection (each gets its
//! `on_close`) and joins them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use spool_core::ws;

use crate::clock::Clock;
use crate::handler::{Handler, StartError};
use crate::session::{self, Input};
use crate::tls;

/// A WebSocket server to configure and [`start`](Server::start).
///
/// ```
/// use spool_std::{Conn, Handler, Incoming, Next, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     type User = ();
///     fn on_init(&self, _conn: &mut Conn<()>) {}
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
/// let server = Server::new(Echo).bind("127.0.0.1:0").pool_size(2).start().unwrap();
/// println!("listening on {}", server.local_addr());
/// server.shutdown();
/// ```
pub struct Server<H: Handler> {
    handler: H,
    addr: String,
    pool_size: usize,
    tls: Option<(PathBuf, PathBuf)>,
    config: ws::Config,
    record: Option<PathBuf>,
}

impl<H: Handler> Server<H> {
    /// A server for `handler`: bound to 127.0.0.1 on a port the OS picks, 10 acceptors, the
    /// default WebSocket configuration, no TLS, no recording.
    #[must_use = "a builder does nothing until start()"]
    pub fn new(handler: H) -> Self {
        Server {
            handler,
            addr: "127.0.0.1:0".to_string(),
            pool_size: 10,
            tls: None,
            config: ws::Config::default(),
            record: None,
        }
    }

    /// The address to listen on, as `host:port` (`"0.0.0.0:9001"`); port 0 lets the OS pick.
    #[must_use = "a builder does nothing until start()"]
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How many threads block in `accept()` at once. Default 10, as in glisten: enough that a
    /// burst of connections is not serialised behind one thread setting up the previous one.
    /// Zero counts as one.
    #[must_use = "a builder does nothing until start()"]
    pub fn pool_size(mut self, acceptors: usize) -> Self {
        self.pool_size = acceptors;
        self
    }

    /// Serves `wss://` with this PEM certificate chain and PEM private key.
    #[must_use = "a builder does nothing until start()"]
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The WebSocket configuration every connection runs with.
    #[must_use = "a builder does nothing until start()"]
    pub fn config(mut self, config: ws::Config) -> Self {
        self.config = config;
        self
    }

    /// Records every connection's event log into `dir` as `<n>.jsonl`, `n` counting accepted
    /// connections from 0, for replay with `spool_core::replay`.
    #[must_use = "a builder does nothing until start()"]
    pub fn record(mut self, dir: impl Into<PathBuf>) -> Self {
        self.record = Some(dir.into());
        self
    }

    /// Binds, starts the acceptors and returns once every one of them is ready to accept.
    ///
    /// # Errors
    /// [`StartError::Config`] for an invalid configuration, [`StartError::Tls`] for unusable
    /// certificate or key files, [`StartError::SystemError`] when binding, creating the record
    /// directory or spawning a thread fails, [`StartError::AcceptorTimeout`] or
    /// [`StartError::AcceptorFailed`] when the acceptors do not come up.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(tls::server_config(cert, key).map_err(StartError::Tls)?),
            None => None,
        };
        if let Some(dir) = &self.record {
            std::fs::create_dir_all(dir)?;
        }
        let listener = Arc::new(TcpListener::bind(self.addr.as_str())?);
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            // The close handshake's own bound, the drain after it, and a second to spare.
            grace: Duration::from_millis(self.config.close_timeout_ms)
                + session::LINGER
                + Duration::from_secs(1),
        });
        let ctx = Arc::new(Context {
            handler: self.handler,
            config: self.config,
            tls,
            record: self.record,
            clock: Clock::new(),
            next_id: AtomicU64::new(0),
            shared: shared.clone(),
        });

        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut acceptors = Vec::new();
        for i in 0..self.pool_size.max(1) {
            let (ctx, listener, ready) = (ctx.clone(), listener.clone(), ready_tx.clone());
            let spawned = thread::Builder::new()
                .name(format!("spool-accept-{i}"))
                .spawn(move || {
                    let _ = ready.send(());
                    drop(ready);
                    accept_loop(&ctx, &listener);
                });
            match spawned {
                Ok(acceptor) => acceptors.push(acceptor),
                Err(e) => {
                    stop_acceptors(&shared, local_addr, acceptors);
                    return Err(StartError::SystemError(e));
                }
            }
        }
        drop(ready_tx);
        let deadline = Instant::now() + ACCEPTOR_READY_TIMEOUT;
        for _ in 0..acceptors.len() {
            let failure =
                match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => StartError::AcceptorTimeout,
                    Err(RecvTimeoutError::Disconnected) => StartError::AcceptorFailed(
                        "an acceptor thread ended before it was ready".to_string(),
                    ),
                };
            stop_acceptors(&shared, local_addr, acceptors);
            return Err(failure);
        }
        Ok(ServerHandle {
            local_addr,
            shared,
            acceptors,
        })
    }
}

/// A running server. Dropping it leaves the server running; [`shutdown`](ServerHandle::shutdown)
/// stops it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, starts the close handshake on every live connection (code 1001, going
    /// away; one still in its opening handshake is dropped), and returns once every connection
    /// has ended and run its `on_close`. A peer that never answers the close is waited for as
    /// long as the configuration's `close_timeout_ms`; sockets still open a few seconds after
    /// that (a peer that stopped reading) are closed from here.
    pub fn shutdown(self) {
        stop_acceptors(&self.shared, self.local_addr, self.acceptors);
        // The acceptors are joined: no connection registers after this point.
        let live = lock(&self.shared.live);
        for connection in live.values() {
            (connection.close)();
        }
        let drained = &self.shared.drained;
        let (live, waited) = drained
            .wait_timeout_while(live, self.shared.grace, |live| !live.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            // A driver blocked in a write to a peer that reads nothing sees no timer and no
            // shutdown request; closing the socket fails its write, and it ends with on_close.
            for connection in live.values() {
                let _ = connection.socket.shutdown(Shutdown::Both);
            }
        }
        let _drained = drained
            .wait_while(live, |live| !live.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Blocks until the server stops, which for a server nobody shuts down is never: the
    /// thread serving `main` parks here.
    pub fn wait(self) {
        for acceptor in self.acceptors {
            let _ = acceptor.join();
        }
    }
}

/// What every thread of one server shares. Generic over the handler, unlike [`Shared`], which
/// the (non-generic) handle keeps.
pub(crate) struct Context<H: Handler> {
    pub(crate) handler: H,
    pub(crate) config: ws::Config,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) record: Option<PathBuf>,
    /// Every connection's `now_ms` counts from the server's start.
    pub(crate) clock: Clock,
    next_id: AtomicU64,
    shared: Arc<Shared>,
}

/// The stop flag and the registry of live connections.
struct Shared {
    stopping: AtomicBool,
    /// Each live connection, by id.
    live: Mutex<HashMap<u64, Live>>,
    /// Signalled when `live` becomes empty.
    drained: Condvar,
    /// How long shutdown lets connections close by themselves before closing their sockets.
    grace: Duration,
}

/// A live connection as shutdown sees it.
struct Live {
    /// Asks the connection's driver to start the close handshake.
    close: Box<dyn Fn() + Send>,
    /// The socket, to close from outside when the driver is stuck writing to a peer that
    /// stopped reading.
    socket: Arc<TcpStream>,
}

/// A connection's place in the registry; dropping it (however the connection thread ends)
/// removes it.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Registration {
    /// The connection's number: its event log's name.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = lock(&self.shared.live);
        live.remove(&self.id);
        if live.is_empty() {
            self.shared.drained.notify_all();
        }
    }
}

/// One acceptor: accept, hand the socket to a new connection thread, repeat until stopped.
fn accept_loop<H: Handler>(ctx: &Arc<Context<H>>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if ctx.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((tcp, peer)) => open(ctx, tcp, peer),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            // Out of descriptors or memory: accepting again at once would fail again at once.
            Err(_) => thread::sleep(ACCEPT_ERROR_PAUSE),
        }
    }
}

/// Registers an accepted socket and starts its connection thread.
fn open<H: Handler>(ctx: &Arc<Context<H>>, tcp: TcpStream, peer: SocketAddr) {
    // Frames are written whole, in one vectored write: Nagle would only delay them.
    let _ = tcp.set_nodelay(true);
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Input<H::User>>();
    let tcp = Arc::new(tcp);
    let stop = tx.clone();
    let entry = Live {
        close: Box::new(move || {
            let _ = stop.send(Input::Shutdown);
        }),
        socket: tcp.clone(),
    };
    lock(&ctx.shared.live).insert(id, entry);
    let registration = Registration {
        shared: ctx.shared.clone(),
        id,
    };
    let ctx = ctx.clone();
    // If the thread cannot be spawned, the closure is dropped with the socket (the peer sees
    // the connection close) and the registration (the registry forgets it).
    let _ = thread::Builder::new()
        .name(format!("spool-conn-{id}"))
        .spawn(move || session::serve(ctx, registration, tcp, peer, tx, rx));
}

/// Sets the stop flag, wakes every acceptor with a connection of its own and joins them.
fn stop_acceptors(shared: &Shared, local_addr: SocketAddr, acceptors: Vec<JoinHandle<()>>) {
    shared.stopping.store(true, Ordering::Release);
    // std has no way to interrupt accept(): each acceptor returns from it on a connection,
    // sees the flag and exits. Other connections arriving now only wake them sooner.
    let wake = match local_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local_addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local_addr.port())
        }
        _ => local_addr,
    };
    for _ in &acceptors {
        let _ = TcpStream::connect_timeout(&wake, WAKE_TIMEOUT);
    }
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
}

/// Locks a mutex whose data stays consistent across a panic (a map insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long `start` waits for the acceptors to report ready: thread creation takes
/// microseconds, so this only fires on a machine in trouble.
const ACCEPTOR_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an acceptor rests after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long shutdown's wake-up connection may take to a local listener.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
