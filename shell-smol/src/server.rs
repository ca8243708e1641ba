//! The WebSocket server: the raw server ([`TcpServer`]) running the WebSocket session machine
//! both shells share ([`WsProtocol`]) for a [`Handler`]. This file is only the builder; the
//! executor threads, acceptors and connection tasks are in [`crate::tcp_server`], the session in
//! `spool_std::ws_session`.

use std::path::PathBuf;
use std::time::Duration;

use spool_core::{session, ws};
use spool_std::handler::{Handler, StartError};
use spool_std::{ServerLimits, WsProtocol};

use crate::tcp_server::{TcpServer, TcpServerHandle};

/// A running server; see [`TcpServerHandle`]. Dropping it shuts the server down.
pub type ServerHandle = TcpServerHandle;

/// A WebSocket server, built with chained calls and started with [`Server::start`].
///
/// Handlers run on the server's executor threads: they must not block. Hand blocking work to a
/// thread of your own and send the result back through the connection's
/// [`Mailbox`](crate::Mailbox).
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
    session: session::Config,
    record: Option<PathBuf>,
    limits: ServerLimits,
}

impl<H: Handler> Server<H> {
    /// A server for `handler`: bound to 127.0.0.1 on a free port, 10 acceptors, the default
    /// WebSocket configuration, session policy and limits, no TLS, no recording.
    #[must_use = "a builder does nothing until start()"]
    pub fn new(handler: H) -> Self {
        Server {
            handler,
            addr: "127.0.0.1:0".to_string(),
            pool_size: 10,
            threads: None,
            tls: None,
            config: ws::Config::default(),
            session: session::Config::default(),
            record: None,
            limits: ServerLimits::default(),
        }
    }

    /// The address to listen on, `host:port` (`[::1]:9001` for IPv6).
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

    /// Serves `wss://` with the PEM certificate chain and private key in these files.
    #[must_use = "a builder does nothing until start()"]
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The WebSocket configuration every connection runs with. Its `handshake_timeout_ms`
    /// bounds the TLS handshake too (and then the WebSocket handshake after it).
    #[must_use = "a builder does nothing until start()"]
    pub fn config(mut self, config: ws::Config) -> Self {
        self.config = config;
        self
    }

    /// The session policy: close codes for each way a connection ends, the linger.
    #[must_use = "a builder does nothing until start()"]
    pub fn session(mut self, session: session::Config) -> Self {
        self.session = session;
        self
    }

    /// The server's bounds: connections, unsent bytes per connection, mailbox size, shutdown
    /// grace.
    #[must_use = "a builder does nothing until start()"]
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Connections held at once; past it a new one is answered 503 and closed.
    #[must_use = "a builder does nothing until start()"]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// Bytes that may wait to be written to one connection before it is closed with 1008.
    #[must_use = "a builder does nothing until start()"]
    pub fn max_unsent_bytes(mut self, n: usize) -> Self {
        self.limits.max_unsent_bytes = n;
        self
    }

    /// How long shutdown waits for connections to close by themselves.
    #[must_use = "a builder does nothing until start()"]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.limits.shutdown_grace = grace;
        self
    }

    /// Records every connection's event log as `dir/<n>.jsonl` (created if missing), `n`
    /// counting connections from 0, for replay with `spool_core::replay`.
    #[must_use = "a builder does nothing until start()"]
    pub fn record(mut self, dir: impl Into<PathBuf>) -> Self {
        self.record = Some(dir.into());
        self
    }

    /// Binds, spawns the executor threads and returns once every acceptor is waiting.
    ///
    /// # Errors
    /// [`StartError`]: an invalid configuration, unreadable TLS files, a refused bind, a record
    /// directory that cannot be created, or threads that could not be spawned or did not start.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        let tls_handshake = Duration::from_millis(self.config.handshake_timeout_ms);
        let protocol = WsProtocol::new(
            self.handler,
            self.config,
            self.session,
            self.limits.max_unsent_bytes,
            self.record,
        )?;
        let mut server = TcpServer::new(protocol)
            .bind(self.addr)
            .pool_size(self.pool_size)
            .tls_handshake_timeout(tls_handshake)
            .limits(self.limits);
        if let Some(n) = self.threads {
            server = server.threads(n);
        }
        if let Some((cert, key)) = self.tls {
            server = server.tls(cert, key);
        }
        server.start()
    }
}
