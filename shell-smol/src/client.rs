//! The client: an async WebSocket connection, `ws://` or `wss://`, driven by the caller's
//! `send` and `recv` on any executor.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{FutureExt as _, future};
use futures_rustls::TlsConnector;
use futures_rustls::pki_types::ServerName;
use smol::Async;
use spool_core::replay::Setup;
use spool_core::ws::{self, ClientRequest, CloseInfo, Connection, Event, Message, Outbound, Url};
use spool_std::handler::ClientError;

use spool_std::record::Recorder;

use crate::io::{
    Clock, Deadline, LINGER, Outgoing, Socket, hang_up, poll_read, poll_write, random_bytes,
    write_all,
};

pub use spool_std::ClientOptions;

/// An open WebSocket client connection.
///
/// ```no_run
/// # smol::block_on(async {
/// use spool_smol::{Client, ws};
///
/// let mut client = Client::connect("ws://127.0.0.1:9001/", ws::Config::default()).await?;
/// client.send(ws::Message::text("hello")).await?;
/// let echo = client.recv().await?;
/// client.close(1000, "").await?;
/// # Ok::<_, spool_smol::ClientError>(())
/// # });
/// ```
pub struct Client {
    io: Transport,
    core: Core,
    deadline: Deadline,
}

impl Client {
    /// Connects to a `ws://` or `wss://` URL with `config` and no extra headers.
    ///
    /// # Errors
    /// [`ClientError`]: a bad URL or configuration, a failed connect, TLS set-up or handshake.
    pub async fn connect(url: &str, config: ws::Config) -> Result<Client, ClientError> {
        Client::connect_with(
            url,
            ClientOptions {
                config,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// Connects with every option.
    ///
    /// # Errors
    /// [`ClientError`]: a bad URL or configuration, an unwritable record file, a failed
    /// connect, TLS set-up or handshake.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let url = Url::parse(url).map_err(ClientError::Url)?;
        let record_file = options.record_file();
        let request = ClientRequest {
            url: url.clone(),
            key: random_bytes(),
            mask_seed: u64::from_le_bytes(random_bytes()),
            headers: options.headers,
        };
        let ws = Connection::client(options.config.clone(), request.clone())
            .map_err(ClientError::Config)?;
        let recorder = match record_file {
            Some(path) => {
                let setup = Setup::Client {
                    config: options.config,
                    request,
                };
                Some(Recorder::create(&path, setup)?)
            }
            None => None,
        };
        let mut core = Core {
            ws,
            clock: Clock::new(),
            recorder,
            out: Vec::new(),
            outgoing: Outgoing::default(),
            inbox: VecDeque::new(),
            protocol: None,
            opened: false,
            closed: None,
            disconnect: false,
            finished: false,
        };
        core.step(Event::Open {
            now_ms: core.clock.now_ms(),
        });

        // Connecting and TLS count against the core's handshake deadline.
        let mut deadline = Deadline::new();
        deadline.arm(core.ws.next_deadline(), &core.clock);
        let connect = async { Some(open_transport(&url, options.ca_file.as_deref()).await) };
        let fired = async {
            future::poll_fn(|cx| deadline.poll_fired(cx)).await;
            None
        };
        let io = match connect.or(fired).await {
            Some(Ok(io)) => io,
            Some(Err(e)) => {
                core.step(Event::TransportClosed {
                    now_ms: core.clock.now_ms(),
                });
                return Err(e);
            }
            None => {
                core.step(Event::Tick {
                    now_ms: core.clock.now_ms(),
                });
                return Err(handshake_error(core.closed.as_ref()));
            }
        };

        let mut client = Client { io, core, deadline };
        while !client.core.opened {
            if client.core.closed.is_some() || client.core.finished {
                return Err(handshake_error(client.core.closed.as_ref()));
            }
            client.pump().await;
        }
        Ok(client)
    }

    /// Sends a message.
    ///
    /// # Errors
    /// [`ClientError::Closed`] once the connection has ended; [`ClientError::Io`] when the write
    /// fails (the connection is then closed).
    pub async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        if let Some(info) = &self.core.closed {
            return Err(ClientError::Closed(info.clone()));
        }
        self.core.step(Event::Send {
            now_ms: self.core.clock.now_ms(),
            message,
        });
        if let Err(e) = write_all(&mut self.core.outgoing, &mut self.io).await {
            self.core.outgoing.clear();
            self.core.step(Event::TransportClosed {
                now_ms: self.core.clock.now_ms(),
            });
            self.core.finished = true;
            return Err(ClientError::Io(e));
        }
        Ok(())
    }

    /// The next message from the server (pings and pongs included; pings are answered already).
    ///
    /// # Errors
    /// [`ClientError::Closed`] with how the connection ended, once it has and every message
    /// that arrived before is taken.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(message) = self.core.inbox.pop_front() {
                return Ok(message);
            }
            if self.core.finished {
                return Err(self.core.ended());
            }
            self.pump().await;
        }
    }

    /// Starts the close handshake with `code` and `reason` and waits until it is over (the
    /// server hung up, or the core's close timeout passed). Messages that arrived before stay
    /// readable with [`Client::recv`].
    ///
    /// # Errors
    /// None so far: a connection that ended badly is closed all the same. The `Result` leaves
    /// room for failures a caller must hear about.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        if !self.core.finished {
            let now_ms = self.core.clock.now_ms();
            self.core.step(Event::Close {
                now_ms,
                code,
                reason: reason.to_string(),
            });
        }
        while !self.core.finished {
            self.pump().await;
        }
        Ok(())
    }

    /// The subprotocol the server chose.
    pub fn protocol(&self) -> Option<&str> {
        self.core.protocol.as_deref()
    }

    /// One turn: write what the core produced, hang up when it says so, else wait for bytes or
    /// its deadline.
    async fn pump(&mut self) {
        let Client { io, core, deadline } = self;
        if core.disconnect {
            hang_up(io, &mut core.outgoing, LINGER).await;
            core.finished = true;
            return;
        }
        deadline.arm(core.ws.next_deadline(), &core.clock);
        if !core.outgoing.is_empty() {
            let written = future::poll_fn(|cx| {
                if deadline.poll_fired(cx).is_ready() {
                    return Poll::Ready(None);
                }
                poll_write(&mut core.outgoing, io, cx).map(Some)
            })
            .await;
            match written {
                None => core.step(Event::Tick {
                    now_ms: core.clock.now_ms(),
                }),
                Some(Ok(())) => {}
                Some(Err(_)) => {
                    core.outgoing.clear();
                    core.step(Event::TransportClosed {
                        now_ms: core.clock.now_ms(),
                    });
                    core.finished = true;
                }
            }
            return;
        }
        if core.ws.is_done() {
            core.finished = true;
            return;
        }
        let read = future::poll_fn(|cx| {
            if deadline.poll_fired(cx).is_ready() {
                return Poll::Ready(None);
            }
            poll_read(io, cx).map(Some)
        })
        .await;
        let now_ms = core.clock.now_ms();
        match read {
            None => core.step(Event::Tick { now_ms }),
            Some(Ok(bytes)) if !bytes.is_empty() => core.step(Event::Receive { now_ms, bytes }),
            Some(_) => core.step(Event::TransportClosed { now_ms }),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &self.core.protocol)
            .field("closed", &self.core.closed)
            .finish_non_exhaustive()
    }
}

/// The client's side of the core: what its outbounds left for `send`, `recv` and `close`.
struct Core {
    ws: Connection,
    clock: Clock,
    recorder: Option<Recorder>,
    out: Vec<Outbound>,
    outgoing: Outgoing,
    inbox: VecDeque<Message>,
    protocol: Option<String>,
    opened: bool,
    closed: Option<CloseInfo>,
    disconnect: bool,
    /// The transport is finished with: hung up, or gone.
    finished: bool,
}

impl Core {
    fn step(&mut self, event: Event) {
        if let Some(recorder) = &mut self.recorder {
            recorder.event(&event);
            recorder.flush();
        }
        let mut out = std::mem::take(&mut self.out);
        self.ws.handle_into(event, &mut out);
        for outbound in out.drain(..) {
            match outbound {
                Outbound::Transmit(bytes) => self.outgoing.push(bytes),
                // Server only: a client connection never asks for a decision.
                Outbound::Upgrade(_) | Outbound::HttpRequest(_) => {}
                Outbound::Opened(handshake) => {
                    self.protocol = handshake.protocol;
                    self.opened = true;
                }
                Outbound::Deliver(message) => self.inbox.push_back(message),
                Outbound::Closed(info) => self.closed = Some(info),
                Outbound::Disconnect => self.disconnect = true,
            }
        }
        self.out = out;
        if self.ws.is_done() && !self.disconnect {
            // Done without a hang-up to carry out: the transport is already gone.
            self.finished = true;
        }
    }

    fn ended(&self) -> ClientError {
        match &self.closed {
            Some(info) => ClientError::Closed(info.clone()),
            // The core reports `Closed` before it is done; this is only for a transport that
            // failed in `send` before the core could say so.
            None => ClientError::Io(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// A `Closed` before `Opened`: the reason the core gave.
fn handshake_error(info: Option<&CloseInfo>) -> ClientError {
    match info {
        Some(info) if !info.reason.is_empty() => ClientError::Handshake(info.reason.clone()),
        _ => ClientError::Handshake(
            "the connection ended before the handshake completed".to_string(),
        ),
    }
}

/// Plain TCP, or TLS over it.
enum Transport {
    Plain(Async<TcpStream>),
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
}

async fn open_transport(url: &Url, ca_file: Option<&Path>) -> Result<Transport, ClientError> {
    let tcp = connect_tcp(&url.host, url.port).await?;
    let _ = tcp.get_ref().set_nodelay(true);
    if !url.secure {
        return Ok(Transport::Plain(tcp));
    }
    let config = spool_std::tls::client_config(ca_file).map_err(ClientError::Tls)?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| ClientError::Tls(format!("{}: {e}", url.host)))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(format!("{}: {e}", url.host)))?;
    Ok(Transport::Tls(Box::new(tls)))
}

async fn connect_tcp(host: &str, port: u16) -> io::Result<Async<TcpStream>> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let host = host.to_string();
            smol::unblock(move || {
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
            })
            .await?
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in addrs {
        match Async::<TcpStream>::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Socket for Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s.tcp(),
            Transport::Tls(s) => s.tcp(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
