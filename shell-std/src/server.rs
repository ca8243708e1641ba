//! The WebSocket server: the raw server ([`TcpServer`]) running the WebSocket session machine
//! ([`WsProtocol`]) for a [`Handler`]. This file is only the builder; the event loops are in
//! [`crate::event_loop`], the session in [`crate::ws_session`].

use std::path::PathBuf;
use std::time::Duration;

use spool_core::{session, ws};

use crate::event_loop::{ServerLimits, TcpServer, TcpServerHandle};
use crate::handler::{Handler, StartError};
use crate::ws_session::WsProtocol;

/// A running server; see [`TcpServerHandle`].
pub type ServerHandle = TcpServerHandle;

/// A WebSocket server to configure and [`start`](Server::start).
///
/// Handlers run on the server's event-loop threads (one per core): they must not block. To do
/// blocking work, hand it to a thread of your own with the connection's
/// [`Mailbox`](crate::Mailbox) and send the result back through it:
///
/// ```
/// use spool_std::{Conn, Handler, Incoming, Next, Server};
/// use spool_core::ws::Message;
///
/// struct Slow;
/// impl Handler for Slow {
///     type State = ();
///     type User = String; // results coming back from worker threads
///     fn on_init(&self, _conn: &mut Conn<String>) {}
///     fn handle(&self, _: &mut (), incoming: Incoming<String>, conn: &mut Conn<String>) -> Next {
///         match incoming {
///             Incoming::Message(Message::Text(query)) => {
///                 let mailbox = conn.mailbox();
///                 let query = query.to_string();
///                 std::thread::spawn(move || {
///                     let answer = query.to_uppercase(); // stands for a database call
///                     let _ = mailbox.send(answer);
///                 });
///             }
///             Incoming::User(answer) => conn.send(Message::text(answer)),
///             Incoming::Message(_) => {}
///         }
///         Next::Continue
///     }
/// }
///
/// let server = Server::new(Slow).bind("127.0.0.1:0").start().unwrap();
/// println!("listening on {}", server.local_addr());
/// server.shutdown();
/// ```
pub struct Server<H: Handler> {
    handler: H,
    addr: String,
    threads: Option<usize>,
    tls: Option<(PathBuf, PathBuf)>,
    config: ws::Config,
    session: session::Config,
    record: Option<PathBuf>,
    limits: ServerLimits,
}

impl<H: Handler> Server<H> {
    /// A server for `handler`: bound to 127.0.0.1 on a port the OS picks, one event loop per
    /// core, the default WebSocket configuration, session policy and limits, no TLS, no
    /// recording.
    #[must_use = "a builder does nothing until start()"]
    pub fn new(handler: H) -> Self {
        Server {
            handler,
            addr: "127.0.0.1:0".to_string(),
            threads: None,
            tls: None,
            config: ws::Config::default(),
            session: session::Config::default(),
            record: None,
            limits: ServerLimits::default(),
        }
    }

    /// The address to listen on, as `host:port` (`"0.0.0.0:9001"`); port 0 lets the OS pick.
    #[must_use = "a builder does nothing until start()"]
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How many event-loop threads run the connections. Default: the number of cores.
    #[must_use = "a builder does nothing until start()"]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
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

    /// Records every connection's event log into `dir` as `<n>.jsonl`, `n` counting accepted
    /// connections from 0, for replay with `spool_core::replay`.
    #[must_use = "a builder does nothing until start()"]
    pub fn record(mut self, dir: impl Into<PathBuf>) -> Self {
        self.record = Some(dir.into());
        self
    }

    /// Binds, starts the event loops and returns once they run.
    ///
    /// # Errors
    /// [`StartError::Config`] for an invalid configuration, [`StartError::Tls`] for unusable
    /// certificate or key files, [`StartError::SystemError`] when binding, creating the record
    /// directory or spawning a thread fails.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        // The TLS handshake counts against the WebSocket opening handshake's bound.
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
