//! The blocking client, shaped after Late's connect/send/receive: all its I/O happens on the
//! caller's thread, inside [`Client::connect`], [`Client::send`], [`Client::recv`] and
//! [`Client::close`].
//!
//! While the caller blocks in `recv`, the socket's read timeout is the core's next deadline,
//! so pings are answered (the core does that) and timers fire. Between calls nothing runs: a
//! client that stops calling `recv` stops answering pings.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use spool_core::replay::Setup;
use spool_core::ws::{
    self, ClientRequest, CloseInfo, Connection, Event, Initiator, Message, Outbound, Transmit, Url,
};

use crate::clock::Clock;
use crate::handler::ClientError;
use crate::random;
use crate::record::Recorder;
use crate::tls;
use crate::transport::{Read, Transport};

/// How to connect, beyond the URL.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The WebSocket configuration (subprotocols offered, compression, limits, timeouts).
    pub config: ws::Config,
    /// Extra request headers: `Origin`, `Authorization`, cookies.
    pub headers: Vec<(String, String)>,
    /// A PEM file of certificates to trust for `wss://` besides the Mozilla roots: a test CA, a
    /// company root.
    pub ca_file: Option<PathBuf>,
    /// Records the connection's event log: to this file, or to `<n>.jsonl` inside it when it is
    /// an existing directory (`n` counting this process's recorded clients).
    pub record: Option<PathBuf>,
}

impl ClientOptions {
    /// The file the event log goes to, if recording: see [`ClientOptions::record`].
    pub fn record_file(&self) -> Option<PathBuf> {
        static RECORDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.record.as_ref()?;
        Some(if path.is_dir() {
            let n = RECORDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            path.join(format!("{n}.jsonl"))
        } else {
            path.clone()
        })
    }
}

/// A WebSocket client connection.
///
/// ```
/// # use spool_std::{Conn, Handler, Incoming, Next, Server};
/// # struct Echo;
/// # impl Handler for Echo {
/// #     type State = ();
/// #     type User = ();
/// #     fn on_init(&self, _conn: &mut Conn<()>) {}
/// #     fn handle(&self, _: &mut (), incoming: Incoming<()>, conn: &mut Conn<()>) -> Next {
/// #         if let Incoming::Message(m) = incoming { conn.send(m); }
/// #         Next::Continue
/// #     }
/// # }
/// # let server = Server::new(Echo).threads(2).start().unwrap();
/// # let url = format!("ws://{}/", server.local_addr());
/// use spool_core::ws::{Config, Message};
/// use spool_std::Client;
///
/// let mut client = Client::connect(&url, Config::default()).unwrap();
/// client.send(Message::text("hello")).unwrap();
/// assert_eq!(client.recv().unwrap(), Message::text("hello"));
/// client.close(1000, "bye").unwrap();
/// # server.shutdown();
/// ```
pub struct Client {
    ws: Connection,
    transport: Transport,
    clock: Clock,
    recorder: Option<Recorder>,
    /// Reused for every call to the core.
    out: Vec<Outbound>,
    /// The transmits of one call to the core, written together.
    batch: Vec<Transmit>,
    /// Messages delivered by the core and not yet returned by `recv`.
    inbox: VecDeque<Message>,
    opened: bool,
    protocol: Option<String>,
    closed: Option<CloseInfo>,
    /// The socket is finished with: `Disconnect` carried out or `TransportClosed` given.
    ended: bool,
    /// The I/O error that ended the transport, for the next call to report.
    error: Option<io::Error>,
}

impl Client {
    /// Connects to a `ws://` or `wss://` URL and runs the opening handshake.
    ///
    /// # Errors
    /// See [`Client::connect_with`].
    pub fn connect(url: &str, config: ws::Config) -> Result<Client, ClientError> {
        Client::connect_with(
            url,
            ClientOptions {
                config,
                ..ClientOptions::default()
            },
        )
    }

    /// Connects with headers, a CA file or recording, and runs the opening handshake; returns
    /// once the connection is open.
    ///
    /// # Errors
    /// [`ClientError::Url`], [`ClientError::Config`] or [`ClientError::Tls`] for bad input;
    /// [`ClientError::Io`] when resolving, connecting, reading or writing fails (or the record
    /// file cannot be created); [`ClientError::Handshake`] when the server refuses or the
    /// handshake fails, with the core's reason.
    pub fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let url = Url::parse(url).map_err(ClientError::Url)?;
        let record_file = options.record_file();
        let (mut key, mut seed) = ([0u8; 16], [0u8; 8]);
        random::fill(&mut key);
        random::fill(&mut seed);
        let request = ClientRequest {
            url,
            key,
            mask_seed: u64::from_le_bytes(seed),
            headers: options.headers,
        };
        let ws = Connection::client(options.config.clone(), request.clone())
            .map_err(ClientError::Config)?;
        let tls_config = if request.url.secure {
            Some(tls::client_config(options.ca_file.as_deref()).map_err(ClientError::Tls)?)
        } else {
            None
        };
        let connect_timeout = Duration::from_millis(options.config.handshake_timeout_ms);
        let tcp = dial(&request.url, connect_timeout)?;
        // Frames are written whole, in one vectored write: Nagle would only delay them.
        tcp.set_nodelay(true)?;
        let transport = match tls_config {
            Some(config) => {
                let name = ServerName::try_from(request.url.host.clone())
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let tls = rustls::ClientConnection::new(config, name)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                Transport::tls(Arc::new(tcp), tls)
            }
            None => Transport::plain(Arc::new(tcp)),
        };
        let recorder = match record_file {
            Some(path) => Some(Recorder::create(
                &path,
                Setup::Client {
                    config: options.config,
                    request,
                },
            )?),
            None => None,
        };
        let mut client = Client {
            ws,
            transport,
            clock: Clock::new(),
            recorder,
            out: Vec::new(),
            batch: Vec::new(),
            inbox: VecDeque::new(),
            opened: false,
            protocol: None,
            closed: None,
            ended: false,
            error: None,
        };
        client.feed(Event::Open {
            now_ms: client.clock.now_ms(),
        });
        while !client.opened {
            if client.ended || client.closed.is_some() {
                if let Some(e) = client.error.take() {
                    return Err(io_or_tls(e));
                }
                let reason = client.closed.map(|info| info.reason).unwrap_or_default();
                return Err(ClientError::Handshake(if reason.is_empty() {
                    "connection closed during the handshake".to_string()
                } else {
                    reason
                }));
            }
            client.pump();
        }
        Ok(client)
    }

    /// Sends a message.
    ///
    /// # Errors
    /// [`ClientError::Closed`] once the connection has closed; [`ClientError::Io`] when writing
    /// fails (the connection is then closed).
    pub fn send(&mut self, message: Message) -> Result<(), ClientError> {
        if self.ended || self.closed.is_some() {
            return Err(self.closed_error());
        }
        self.feed(Event::Send {
            now_ms: self.clock.now_ms(),
            message,
        });
        match self.error.take() {
            Some(e) => Err(ClientError::Io(e)),
            None => Ok(()),
        }
    }

    /// Blocks until a message arrives. Pings and pongs are returned too (pings are already
    /// answered).
    ///
    /// # Errors
    /// [`ClientError::Closed`] with how the connection ended, once it has ended and every
    /// message that arrived before was returned; [`ClientError::Io`] once, when reading or
    /// writing failed.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                return Ok(message);
            }
            if self.ended {
                return Err(match self.error.take() {
                    Some(e) => ClientError::Io(e),
                    None => self.closed_error(),
                });
            }
            self.pump();
        }
    }

    /// Starts the close handshake and runs it to its end: the server's answer and its hang-up,
    /// or the configuration's `close_timeout_ms`. Messages that arrived before stay available
    /// to [`Client::recv`].
    ///
    /// # Errors
    /// [`ClientError::Io`] when reading or writing failed on the way.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        if !self.ended {
            self.feed(Event::Close {
                now_ms: self.clock.now_ms(),
                code,
                reason: reason.to_string(),
            });
        }
        while !self.ended {
            self.pump();
        }
        match self.error.take() {
            Some(e) => Err(ClientError::Io(e)),
            None => Ok(()),
        }
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Waits for bytes or the next deadline, once, and gives the core what happened.
    fn pump(&mut self) {
        let timeout = match self.ws.next_deadline() {
            Some(deadline) => match self.clock.until(deadline) {
                wait if wait.is_zero() => {
                    return self.feed(Event::Tick {
                        now_ms: self.clock.now_ms(),
                    });
                }
                wait => Some(wait),
            },
            None => None,
        };
        let read = self
            .transport
            .set_read_timeout(timeout)
            .and_then(|()| self.transport.read());
        let now_ms = self.clock.now_ms();
        match read {
            Ok(Read::Data(bytes)) if bytes.is_empty() => {}
            Ok(Read::Data(bytes)) => self.feed(Event::Receive { now_ms, bytes }),
            Ok(Read::Eof) => self.feed(Event::TransportClosed { now_ms }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.feed(Event::Tick { now_ms });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self.transport_failed(e),
        }
    }

    /// A read or write failed: the transport is gone. The error is kept for the caller only
    /// when it is news: after the close handshake, a reset is just how some servers hang up.
    fn transport_failed(&mut self, e: io::Error) {
        if self.closed.is_none() {
            self.error = Some(e);
        }
        self.transport.shutdown();
        self.feed(Event::TransportClosed {
            now_ms: self.clock.now_ms(),
        });
    }

    /// Gives one event to the core and carries out what it returns, in order.
    fn feed(&mut self, event: Event) {
        if self.ended {
            return;
        }
        let transport_closed = matches!(event, Event::TransportClosed { .. });
        if let Some(recorder) = &mut self.recorder {
            recorder.event(&event);
        }
        let mut out = mem::take(&mut self.out);
        self.ws.handle_into(event, &mut out);
        if transport_closed {
            // Closing our side too ends the server's wait for our hang-up at once.
            self.transport.shutdown();
            self.ended = true;
        }
        for outbound in out.drain(..) {
            match outbound {
                Outbound::Transmit(bytes) => self.batch.push(bytes),
                // Server only: a client connection never asks for an upgrade decision.
                Outbound::Upgrade(_) | Outbound::HttpRequest(_) => {}
                Outbound::Opened(handshake) => {
                    self.opened = true;
                    self.protocol = handshake.protocol;
                }
                Outbound::Deliver(message) => self.inbox.push_back(message),
                Outbound::Closed(info) => self.closed = Some(info),
                Outbound::Disconnect => {
                    self.flush();
                    if !self.ended {
                        self.transport.shutdown_write();
                        self.linger();
                        self.transport.shutdown();
                        self.ended = true;
                    }
                }
            }
        }
        self.out = out;
        self.flush();
    }

    /// Writes the batched transmits in one vectored write; a failure closes the transport.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let written = if self.ended {
            Ok(())
        } else {
            self.transport.write(&self.batch)
        };
        self.batch.clear();
        if let Err(e) = written {
            self.transport_failed(e);
        }
    }

    /// After `Disconnect`: reads and discards until the server closes too, for a bounded time,
    /// so that our close frame is not destroyed by a reset over unread bytes.
    fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.transport.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.transport.read() {
                Ok(Read::Data(_)) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Read::Eof) | Err(_) => return,
            }
        }
    }

    fn closed_error(&self) -> ClientError {
        // The core reports Closed before it lets go of the transport; the default only covers
        // a core that broke that promise.
        let info = self.closed.clone().unwrap_or(CloseInfo {
            code: 1006,
            reason: String::new(),
            clean: false,
            initiator: Initiator::Transport,
        });
        ClientError::Closed(info)
    }
}

/// A TLS failure while connecting (an untrusted certificate, a name mismatch) is reported as
/// [`ClientError::Tls`]; it reaches the shell as the `io::Error` rustls wraps it in.
fn io_or_tls(e: io::Error) -> ClientError {
    match e.get_ref() {
        Some(inner) if inner.is::<rustls::Error>() => ClientError::Tls(inner.to_string()),
        _ => ClientError::Io(e),
    }
}

/// Resolves the URL's host and connects to the first address that answers.
fn dial(url: &Url, timeout: Duration) -> io::Result<TcpStream> {
    let timeout = timeout.max(Duration::from_millis(1)); // the OS refuses a zero timeout
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "the host name resolved to no address",
    );
    for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// How long to drain the server after `Disconnect` before dropping the socket.
const LINGER: Duration = Duration::from_secs(2);
