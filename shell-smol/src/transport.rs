//! Pluggable transports in the shape of WebsockexNova's: [`Transport`] with `open`, `upgrade`,
//! `send_frame`, `close`, transport messages (`next_message`) and reconnect scheduling; three
//! implementations ([`CoreTransport`] on spool's own WebSocket machine, `TungsteniteTransport`
//! on async-tungstenite behind the `tungstenite` feature, [`MockTransport`] for scripted
//! tests); and [`run`], a reconnecting driver over any of them that calls the same Late-shaped
//! [`Handler`].
//!
//! [`reconnecting::connect`](crate::reconnecting::connect) is the full client: it runs the
//! core's session machine, which also speaks the `CONNECT` proxy, confirms delivery with pongs
//! and records everything. This driver is for the wire a transport owns: it keeps the same
//! backoff ([`client::Backoff`]), a bounded drop-newest queue while disconnected, and a ping
//! and pong deadline of its own; a frame handed to a transport that then fails may be lost.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt as _, future};
use spool_core::client::{self, Backoff};
use spool_core::rand::Rng;
use spool_core::ws::{self, ClientRequest, Connection, Message, Url};

use crate::client::{Transport as Socket, connect_tcp};
use crate::io::{Outgoing, poll_read, random_bytes, write_all};
use crate::reconnecting::{Handler, Next};

/// What a transport reports between frames (WebsockexNova's transport messages).
#[derive(Debug)]
pub enum TransportMessage {
    /// A frame arrived.
    Frame(Message),
    /// The connection ended: the close code and reason (1006 without a close handshake).
    Closed(u16, String),
}

/// A WebSocket transport: one connection at a time; the driver re-opens it.
pub trait Transport: Send + 'static {
    /// Opens the connection to `url`'s host and port (TCP, and TLS for `wss`).
    fn open(&mut self, url: &Url) -> impl Future<Output = io::Result<()>> + Send;

    /// Upgrades the open connection to WebSocket with extra request `headers`; returns the
    /// response headers.
    fn upgrade(
        &mut self,
        url: &Url,
        headers: &[(String, String)],
    ) -> impl Future<Output = io::Result<Vec<(String, String)>>> + Send;

    /// Sends one frame.
    fn send_frame(&mut self, frame: Message) -> impl Future<Output = io::Result<()>> + Send;

    /// The next transport message; `Closed` once the connection is gone.
    fn next_message(&mut self) -> impl Future<Output = TransportMessage> + Send;

    /// Closes the connection (a close frame if it is open), and forgets it.
    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;

    /// The delay before the next attempt after `failures` in a row (WebsockexNova's
    /// `schedule_reconnection`). Default: `backoff` with jitter from `rng`.
    fn schedule_reconnection(&mut self, backoff: &Backoff, failures: u32, rng: &mut Rng) -> u64 {
        backoff.delay_ms(failures, rng)
    }
}

/// Runs `handler` over `transport` until `commands` ends (every sender dropped) or the handler
/// stops, reconnecting with `config`'s backoff, heartbeat and queue bound. Returns the frames
/// still queued (never sent).
///
/// Only `config.url`, `headers`, `backoff`, `jitter_seed`, `queue_max`, `connect_timeout_ms`
/// and `ws.ping_interval_ms` / `ws.pong_timeout_ms` apply here.
pub async fn run<T: Transport, H: Handler>(
    mut transport: T,
    config: client::Config,
    mut handler: H,
    commands: smol::channel::Receiver<Message>,
) -> Vec<Message> {
    let mut rng = Rng::new(config.jitter_seed);
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut dropped = 0u64;
    let mut failures = 0u32;
    let mut stopping = matches!(handler.init(), Next::Stop);
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    while !stopping {
        let attempt = async {
            transport.open(&config.url).await?;
            transport.upgrade(&config.url, &config.headers).await
        };
        let opened = attempt
            .or(async {
                smol::Timer::after(connect_timeout).await;
                Err(io::ErrorKind::TimedOut.into())
            })
            .await;
        let headers = match opened {
            Ok(headers) => headers,
            Err(e) => {
                handler.handle_failure(&client::Error::Connect {
                    reason: e.to_string(),
                });
                transport.close(1006, "").await;
                failures += 1;
                if !config.backoff.allows(failures) {
                    break;
                }
                let delay = transport.schedule_reconnection(&config.backoff, failures, &mut rng);
                // Keep taking frames while waiting, into the bounded queue.
                let wait = async {
                    smol::Timer::after(Duration::from_millis(delay)).await;
                    false
                };
                let take = async {
                    loop {
                        match commands.recv().await {
                            Ok(m) => enqueue(&mut queue, m, &config, &mut dropped, &mut handler),
                            Err(_) => return true,
                        }
                    }
                };
                stopping = wait.or(take).await;
                continue;
            }
        };
        failures = 0;
        let mut pending: VecDeque<Message> = VecDeque::new();
        let next = handler.handle_connect(&headers);
        stopping |= apply(next, &mut pending);
        pending.extend(queue.drain(..));
        let ping_every = config.ws.ping_interval_ms.map(Duration::from_millis);
        let pong_within = config.ws.pong_timeout_ms.map(Duration::from_millis);
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let (code, reason) = loop {
            while let Some(frame) = pending.pop_front() {
                if transport.send_frame(frame.clone()).await.is_err() {
                    pending.push_front(frame);
                    break;
                }
            }
            if stopping {
                transport.close(1000, "").await;
                break (1000, String::new());
            }
            // The heartbeat: a ping after `ping_every` of silence, dead `pong_within` later.
            let deadline = match (ping_sent, ping_every, pong_within) {
                (Some(sent), _, Some(within)) => Some(sent + within),
                (None, Some(every), _) => Some(last_heard + every),
                _ => None,
            };
            enum Wake {
                Message(TransportMessage),
                Command(Option<Message>),
                Timer,
            }
            let timer = async {
                match deadline {
                    Some(at) => smol::Timer::at(at).await,
                    None => future::pending().await,
                };
                Wake::Timer
            };
            let wake = async { Wake::Message(transport.next_message().await) }
                .or(async { Wake::Command(commands.recv().await.ok()) })
                .or(timer)
                .await;
            match wake {
                Wake::Message(TransportMessage::Frame(frame)) => {
                    last_heard = Instant::now();
                    ping_sent = None;
                    let next = handler.handle_in(frame);
                    stopping |= apply(next, &mut pending);
                }
                Wake::Message(TransportMessage::Closed(code, reason)) => break (code, reason),
                Wake::Command(Some(frame)) => pending.push_back(frame),
                Wake::Command(None) => stopping = true,
                Wake::Timer if ping_sent.is_some() => {
                    transport.close(1001, "pong timeout").await;
                    break (1001, "pong timeout".to_string());
                }
                Wake::Timer => {
                    ping_sent = Some(Instant::now());
                    pending.push_back(Message::Ping(bytes::Bytes::new()));
                }
            }
        };
        // Frames not handed over wait for the next connection, within the bound.
        for frame in pending.into_iter().filter(|m| !m.is_control()) {
            enqueue(&mut queue, frame, &config, &mut dropped, &mut handler);
        }
        let next = handler.handle_disconnect(code, &reason);
        stopping |= apply(next, &mut queue);
        if !stopping {
            failures = 1;
            let delay = transport.schedule_reconnection(&config.backoff, failures, &mut rng);
            smol::Timer::after(Duration::from_millis(delay)).await;
        }
    }
    queue.into()
}

fn enqueue<H: Handler>(
    queue: &mut VecDeque<Message>,
    frame: Message,
    config: &client::Config,
    dropped: &mut u64,
    handler: &mut H,
) {
    if queue.len() >= config.queue_max {
        *dropped += 1;
        handler.handle_dropped(*dropped);
    } else {
        queue.push_back(frame);
    }
}

/// Queues a callback's frames; whether it asked to stop.
fn apply(next: Next, pending: &mut VecDeque<Message>) -> bool {
    match next {
        Next::Ok | Next::Ready | Next::Confirmed(_) => false,
        Next::Reply(frames) | Next::Rewind(frames) => {
            pending.extend(frames);
            false
        }
        Next::Stop => true,
    }
}

/// The transports that speak the wire, by name: `core`, and `tungstenite` when spool-smol is
/// built with its `tungstenite` feature.
pub const WIRE_TRANSPORTS: &[&str] = if cfg!(feature = "tungstenite") {
    &["core", "tungstenite"]
} else {
    &["core"]
};

/// Runs one Autobahn client case over the transport named `transport` (see
/// [`WIRE_TRANSPORTS`]): connects to `url` and echoes every text and binary message until the
/// connection ends. The core transport offers permessage-deflate, so that cases 12 and 13 can
/// run; async-tungstenite has no deflate.
///
/// # Errors
/// An unknown transport, a bad URL, or a connection that could not be opened.
pub async fn echo_case(transport: &str, url: &str) -> Result<(), String> {
    let url = Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    match transport {
        "core" => {
            let config = ws::Config {
                deflate: Some(ws::DeflateConfig::default()),
                ..ws::Config::default()
            };
            echo_over(CoreTransport::new(config), &url).await
        }
        #[cfg(feature = "tungstenite")]
        "tungstenite" => echo_over(TungsteniteTransport::default(), &url).await,
        other => Err(format!(
            "unknown transport {other:?}: this build has {WIRE_TRANSPORTS:?}"
        )),
    }
}

async fn echo_over<T: Transport>(mut transport: T, url: &Url) -> Result<(), String> {
    transport.open(url).await.map_err(|e| e.to_string())?;
    transport
        .upgrade(url, &[])
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match transport.next_message().await {
            TransportMessage::Frame(message @ (Message::Text(_) | Message::Binary(_))) => {
                // A failed send ends the connection; the next message says how.
                let _ = transport.send_frame(message).await;
            }
            TransportMessage::Frame(Message::Ping(_) | Message::Pong(_)) => {}
            TransportMessage::Closed(..) => {
                transport.close(1000, "").await;
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// spool's own WebSocket machine over TCP (and TLS): the native transport.
#[derive(Default)]
pub struct CoreTransport {
    config: ws::Config,
    socket: Option<Socket>,
    ws: Option<Connection>,
    outgoing: Outgoing,
    inbox: VecDeque<TransportMessage>,
}

impl CoreTransport {
    /// A transport whose connections use `config`.
    pub fn new(config: ws::Config) -> CoreTransport {
        CoreTransport {
            config,
            ..CoreTransport::default()
        }
    }

    /// Gives the machine an event, queueing its frames and transmits.
    fn step(&mut self, event: ws::Event) -> Option<Vec<(String, String)>> {
        let ws = self.ws.as_mut()?;
        let mut opened = None;
        for outbound in ws.handle(event) {
            match outbound {
                ws::Outbound::Transmit(t) => self.outgoing.push(t),
                ws::Outbound::Opened(_) => opened = Some(Vec::new()),
                ws::Outbound::Deliver(m) => self.inbox.push_back(TransportMessage::Frame(m)),
                ws::Outbound::Closed(info) => self
                    .inbox
                    .push_back(TransportMessage::Closed(info.code, info.reason)),
                ws::Outbound::Disconnect
                | ws::Outbound::Upgrade(_)
                | ws::Outbound::HttpRequest(_) => {}
            }
        }
        opened
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self.socket.as_mut() {
            Some(socket) => write_all(&mut self.outgoing, socket).await,
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self) -> io::Result<bytes::Bytes> {
        let socket = self
            .socket
            .as_mut()
            .ok_or(io::Error::from(io::ErrorKind::NotConnected))?;
        future::poll_fn(|cx| poll_read(socket, cx)).await
    }
}

impl Transport for CoreTransport {
    async fn open(&mut self, url: &Url) -> io::Result<()> {
        self.ws = None;
        self.inbox.clear();
        self.outgoing.clear();
        let tcp = connect_tcp(&url.host, url.port).await?;
        let _ = tcp.get_ref().set_nodelay(true);
        self.socket = Some(if url.secure {
            let config = spool_std::tls::client_config(None).map_err(io::Error::other)?;
            let name = futures_rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(io::Error::other)?;
            let tls = futures_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Socket::Tls(Box::new(tls))
        } else {
            Socket::Plain(tcp)
        });
        Ok(())
    }

    async fn upgrade(
        &mut self,
        url: &Url,
        headers: &[(String, String)],
    ) -> io::Result<Vec<(String, String)>> {
        let request = ClientRequest {
            url: url.clone(),
            key: random_bytes(),
            mask_seed: u64::from_le_bytes(random_bytes()),
            headers: headers.to_vec(),
        };
        let ws = Connection::client(self.config.clone(), request)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        self.ws = Some(ws);
        self.step(ws::Event::Open { now_ms: 0 });
        self.flush().await?;
        loop {
            let bytes = self.read().await?;
            if bytes.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(headers) = self.step(ws::Event::Receive { now_ms: 0, bytes }) {
                self.flush().await?;
                return Ok(headers);
            }
            if let Some(TransportMessage::Closed(_, reason)) = self.inbox.pop_front() {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, reason));
            }
        }
    }

    async fn send_frame(&mut self, frame: Message) -> io::Result<()> {
        self.step(ws::Event::Send {
            now_ms: 0,
            message: frame,
        });
        self.flush().await
    }

    async fn next_message(&mut self) -> TransportMessage {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                return message;
            }
            if self.ws.as_ref().is_none_or(Connection::is_done) {
                return TransportMessage::Closed(1006, String::new());
            }
            match self.read().await {
                Ok(bytes) if !bytes.is_empty() => {
                    self.step(ws::Event::Receive { now_ms: 0, bytes });
                    // Pongs to pings, close replies.
                    if self.flush().await.is_err() {
                        self.step(ws::Event::TransportClosed { now_ms: 0 });
                    }
                }
                _ => {
                    self.step(ws::Event::TransportClosed { now_ms: 0 });
                }
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let reason = reason.to_string();
        self.step(ws::Event::Close {
            now_ms: 0,
            code,
            reason,
        });
        let _ = self.flush().await;
        self.socket = None;
        self.ws = None;
    }
}

// ---------------------------------------------------------------------------------------------

/// One step of a [`MockTransport`]'s script, taken by `open` or `next_message`.
#[derive(Clone, Debug)]
pub enum MockStep {
    /// `open` fails with this text.
    Refuse(String),
    /// `open` and `upgrade` succeed with these response headers.
    Accept(Vec<(String, String)>),
    /// `next_message` gives this frame.
    Frame(Message),
    /// `next_message` reports the end of the connection.
    Close(u16, String),
}

/// A scripted transport for tests: each `open` takes the next `Refuse` or `Accept`, each
/// `next_message` the next `Frame` or `Close`; when the script runs out, `next_message` waits
/// forever. What was sent is kept in `sent`, with `"open"` and `"close"` marks.
#[derive(Clone, Debug, Default)]
pub struct MockTransport {
    script: VecDeque<MockStep>,
    headers: Vec<(String, String)>,
    /// Everything sent, in order: `"open"`, `"close CODE"`, and each frame's `Debug` form.
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl MockTransport {
    /// A transport that follows `script`.
    pub fn new(script: Vec<MockStep>) -> MockTransport {
        MockTransport {
            script: script.into(),
            ..MockTransport::default()
        }
    }

    fn note(&self, what: String) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push(what);
        }
    }
}

impl Transport for MockTransport {
    async fn open(&mut self, _url: &Url) -> io::Result<()> {
        match self.script.pop_front() {
            Some(MockStep::Accept(headers)) => {
                self.note("open".to_string());
                self.headers = headers;
                Ok(())
            }
            Some(MockStep::Refuse(why)) => {
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, why))
            }
            _ => future::pending().await,
        }
    }

    async fn upgrade(
        &mut self,
        _url: &Url,
        _headers: &[(String, String)],
    ) -> io::Result<Vec<(String, String)>> {
        Ok(std::mem::take(&mut self.headers))
    }

    async fn send_frame(&mut self, frame: Message) -> io::Result<()> {
        self.note(match frame.as_text() {
            Some(t) => t.to_string(),
            None => format!("{frame:?}"),
        });
        Ok(())
    }

    async fn next_message(&mut self) -> TransportMessage {
        match self.script.front() {
            Some(MockStep::Frame(_) | MockStep::Close(..)) => match self.script.pop_front() {
                Some(MockStep::Frame(m)) => TransportMessage::Frame(m),
                Some(MockStep::Close(code, reason)) => TransportMessage::Closed(code, reason),
                _ => future::pending().await,
            },
            _ => future::pending().await,
        }
    }

    async fn close(&mut self, code: u16, _reason: &str) {
        self.note(format!("close {code}"));
    }

    fn schedule_reconnection(&mut self, _backoff: &Backoff, failures: u32, _: &mut Rng) -> u64 {
        u64::from(failures)
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tungstenite")]
pub use tung::TungsteniteTransport;

#[cfg(feature = "tungstenite")]
mod tung {
    use std::io;
    use std::net::TcpStream;

    use async_tungstenite::WebSocketStream;
    use async_tungstenite::tungstenite::{self, Message as TMessage};
    use futures_lite::{FutureExt as _, StreamExt as _};
    use smol::Async;
    use spool_core::ws::{Message, Url};

    use super::{Transport, TransportMessage};
    use crate::client::connect_tcp;

    /// async-tungstenite as a transport (plain `ws://` only).
    #[derive(Default)]
    pub struct TungsteniteTransport {
        tcp: Option<Async<TcpStream>>,
        ws: Option<WebSocketStream<Async<TcpStream>>>,
    }

    fn other(e: tungstenite::Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    impl Transport for TungsteniteTransport {
        async fn open(&mut self, url: &Url) -> io::Result<()> {
            if url.secure {
                return Err(io::Error::other("this transport speaks ws:// only"));
            }
            self.ws = None;
            self.tcp = Some(connect_tcp(&url.host, url.port).await?);
            Ok(())
        }

        async fn upgrade(
            &mut self,
            url: &Url,
            headers: &[(String, String)],
        ) -> io::Result<Vec<(String, String)>> {
            use tungstenite::client::IntoClientRequest as _;
            let tcp = self.tcp.take().ok_or(io::ErrorKind::NotConnected)?;
            let mut request = url.to_string().into_client_request().map_err(other)?;
            for (name, value) in headers {
                let name = tungstenite::http::HeaderName::try_from(name.as_str())
                    .map_err(io::Error::other)?;
                let value = tungstenite::http::HeaderValue::try_from(value.as_str())
                    .map_err(io::Error::other)?;
                request.headers_mut().insert(name, value);
            }
            let (ws, response) = async_tungstenite::client_async(request, tcp)
                .await
                .map_err(other)?;
            self.ws = Some(ws);
            Ok(response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect())
        }

        async fn send_frame(&mut self, frame: Message) -> io::Result<()> {
            let ws = self.ws.as_mut().ok_or(io::ErrorKind::NotConnected)?;
            let message = match frame {
                Message::Text(t) => TMessage::text(t.as_str()),
                Message::Binary(b) => TMessage::binary(b),
                Message::Ping(b) => TMessage::Ping(b),
                Message::Pong(b) => TMessage::Pong(b),
            };
            ws.send(message).await.map_err(other)
        }

        async fn next_message(&mut self) -> TransportMessage {
            let Some(ws) = self.ws.as_mut() else {
                return TransportMessage::Closed(1006, String::new());
            };
            loop {
                match ws.next().await {
                    Some(Ok(TMessage::Text(t))) => {
                        return TransportMessage::Frame(Message::text(t.as_str()));
                    }
                    Some(Ok(TMessage::Binary(b))) => {
                        return TransportMessage::Frame(Message::Binary(b));
                    }
                    Some(Ok(TMessage::Ping(b))) => {
                        return TransportMessage::Frame(Message::Ping(b));
                    }
                    Some(Ok(TMessage::Pong(b))) => {
                        return TransportMessage::Frame(Message::Pong(b));
                    }
                    Some(Ok(TMessage::Close(frame))) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        // Send tungstenite's queued close reply, then let the server close
                        // the TCP connection first (RFC 6455 §7.1.1), for at most a second.
                        let _ = ws.close(None).await;
                        let drained = async { while let Some(Ok(_)) = ws.next().await {} };
                        let waited = async {
                            smol::Timer::after(std::time::Duration::from_secs(1)).await;
                        };
                        drained.or(waited).await;
                        self.ws = None;
                        return TransportMessage::Closed(code, reason);
                    }
                    Some(Ok(TMessage::Frame(_))) => {}
                    Some(Err(_)) | None => {
                        self.ws = None;
                        return TransportMessage::Closed(1006, String::new());
                    }
                }
            }
        }

        async fn close(&mut self, code: u16, reason: &str) {
            if let Some(mut ws) = self.ws.take() {
                let frame = tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: reason.to_string().into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            self.tcp = None;
        }
    }
}
