//! The WebSocket state machine: one [`Connection`] per socket, server or client.
//!
//! Phases: `Fresh` until [`Event::Open`]; `Handshake` while the HTTP head is read (a server then
//! waits in `AwaitingDecision` for [`Event::Accept`] or [`Event::Reject`]); `Open`; `Closing`
//! once this side sent a close frame; `Draining` for a client that finished the close handshake
//! and waits for the server to hang up (RFC 6455 §7.1.1: the server closes TCP first); `Done`.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::config::Config;
use super::deflate::{DeflateParams, Deflater, Inflater};
use super::error::{ConfigError, HandshakeError, ProtocolError};
use super::event::{Event, Handshake, Initiator, Outbound};
use super::frame::FrameHeader;
use super::handshake::{self, Parsed, ServerOffer};
use super::url::Url;
use super::utf8::Utf8Validator;
use crate::rand::Rng;

mod close;
mod receive;
mod send;
mod timers;

use timers::Timers;

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts upgrade requests; sends unmasked frames.
    Server,
    /// Sends the upgrade request; masks every frame.
    Client,
}

/// What a client needs to open a connection. The shell draws `key` and `mask_seed` from the OS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Where to connect; the target and host go into the request.
    pub url: Url,
    /// The 16 random bytes behind `Sec-WebSocket-Key`.
    #[serde(with = "crate::b64::array")]
    pub key: [u8; 16],
    /// Seeds the generator of frame masks (RFC 6455 §5.3).
    pub mask_seed: u64,
    /// Extra request headers (`Origin`, `Authorization`, cookies).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Fresh,
    Handshake,
    AwaitingDecision,
    Open,
    Closing,
    Draining,
    Done,
}

/// The frame being read: its header and how much of its payload is already consumed.
#[derive(Clone, Copy, Debug)]
struct FrameInProgress {
    header: FrameHeader,
    consumed: u64,
}

/// A data message being reassembled from frames.
struct MessageInProgress {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    utf8: Utf8Validator,
}

/// Client-only state.
struct ClientSide {
    request: ClientRequest,
    key: String,
    rng: Rng,
}

/// A WebSocket connection: feed it [`Event`]s, carry out its [`Outbound`]s.
///
/// ```
/// use spool_core::ws::{Config, Connection, Event, Outbound};
///
/// let mut server = Connection::server(Config::default()).unwrap();
/// server.handle(Event::Open { now_ms: 0 });
/// let request = "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
///     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///     Sec-WebSocket-Version: 13\r\n\r\n";
/// let out = server.handle(Event::Receive { now_ms: 1, bytes: request.into() });
/// assert!(matches!(&out[..], [Outbound::Upgrade(r)] if r.path() == "/chat"));
/// let out = server.handle(Event::Accept { now_ms: 2 });
/// assert!(matches!(&out[..], [Outbound::Transmit(_), Outbound::Opened(_)]));
/// ```
pub struct Connection {
    /// Shared by every connection a shell makes from one configuration.
    config: Arc<Config>,
    role: Role,
    phase: Phase,
    // What a connection needs only in some roles or phases is boxed, so that an idle server
    // connection stays small (a few hundred bytes; the shells keep thousands).
    client: Option<Box<ClientSide>>,
    offer: Option<Box<ServerOffer>>,
    /// Unconsumed input; emptied (and its memory freed) whenever everything was consumed.
    buf: BytesMut,
    frame: Option<FrameInProgress>,
    message: Option<MessageInProgress>,
    deflate: Option<DeflateParams>,
    deflater: Option<Box<Deflater>>,
    inflater: Option<Box<Inflater>>,
    /// The first close frame of the close handshake, and who sent it.
    close: Option<(u16, String, Initiator)>,
    closed_reported: bool,
    /// A protocol error found after messages were delivered in the same call; see `read_frames`.
    deferred_failure: Option<ProtocolError>,
    timers: Timers,
    now_ms: u64,
    last_receive_ms: u64,
    last_ping_ms: u64,
}

impl Connection {
    /// A server-side connection, waiting for [`Event::Open`] and then an upgrade request.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is inconsistent.
    pub fn server(config: Config) -> Result<Connection, ConfigError> {
        Connection::server_shared(Arc::new(config))
    }

    /// A server-side connection on a configuration shared with others: what a server that
    /// makes many connections from one configuration uses, so that each holds a reference, not
    /// a copy.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is inconsistent.
    pub fn server_shared(config: Arc<Config>) -> Result<Connection, ConfigError> {
        Connection::new(config, Role::Server, None)
    }

    /// A client-side connection; on [`Event::Open`] it transmits its upgrade request.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is inconsistent, or when the request's URL would
    /// not fit in a request head (see [`Url::validate`]).
    pub fn client(config: Config, request: ClientRequest) -> Result<Connection, ConfigError> {
        if request.url.validate().is_err() {
            return Err(ConfigError::new(
                "request.url",
                "needs a host, a target starting with '/', and no space or control character",
            ));
        }
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, request.key);
        let rng = Rng::new(request.mask_seed);
        let client = Box::new(ClientSide { request, key, rng });
        Connection::new(Arc::new(config), Role::Client, Some(client))
    }

    fn new(
        config: Arc<Config>,
        role: Role,
        client: Option<Box<ClientSide>>,
    ) -> Result<Connection, ConfigError> {
        config.validate()?;
        Ok(Connection {
            config,
            role,
            phase: Phase::Fresh,
            client,
            offer: None,
            buf: BytesMut::new(),
            frame: None,
            message: None,
            deflate: None,
            deflater: None,
            inflater: None,
            close: None,
            closed_reported: false,
            deferred_failure: None,
            timers: Timers::default(),
            now_ms: 0,
            last_receive_ms: 0,
            last_ping_ms: 0,
        })
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The permessage-deflate parameters agreed on, once open with compression: what a
    /// broadcaster compares to decide whether a [`PreparedMessage`](super::PreparedMessage)'s
    /// compressed bytes fit this connection.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }

    /// Whether messages may be sent now.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection has ended and asks nothing more of its shell.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Handles one event and returns what the shell must do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.handle_into(event, &mut out);
        out
    }

    /// [`Connection::handle`] appending to a vector the caller reuses. What it appends depends
    /// only on the events so far, never on what the vector already held.
    pub fn handle_into(&mut self, event: Event, out: &mut Vec<Outbound>) {
        self.now_ms = self.now_ms.max(event.now_ms());
        let deferred = self.deferred_failure.take();
        if deferred.is_some() && matches!(event, Event::Receive { .. }) {
            // The input after a protocol error means nothing; fail now.
            self.deferred_failure = deferred;
            return self.fail_deferred(out);
        }
        match event {
            Event::Open { .. } => self.on_open(out),
            Event::Receive { bytes, .. } => self.on_receive(bytes, out),
            Event::Accept { .. } => self.on_accept(out),
            Event::Reject { status, reason, .. } => self.on_reject(status, &reason, out),
            Event::Respond {
                status,
                content_type,
                body,
                ..
            } => self.on_respond(status, &content_type, body, out),
            Event::Send { message, .. } => self.on_send(message, out),
            Event::SendPrepared { message, .. } => self.on_send_prepared(message, out),
            Event::Close { code, reason, .. } => self.on_close_requested(code, &reason, out),
            Event::Tick { .. } => self.on_tick(out),
            Event::TransportClosed { .. } => self.on_transport_closed(out),
        }
        if let Some(error) = deferred {
            self.deferred_failure = Some(error);
            self.fail_deferred(out);
        }
    }

    /// An [`Event::Receive`] of bytes the caller keeps, such as a read into a buffer of its
    /// own: the same outbounds, byte for byte, as
    /// `handle_into(Event::Receive { now_ms, bytes: Bytes::copy_from_slice(bytes) }, out)`.
    /// Between messages, which is where an open connection usually is when a read arrives,
    /// whole messages are unmasked straight out of `bytes` into a buffer of their own: one
    /// pass over each payload and no copy of the read. A recording of the connection holds
    /// the event above.
    pub fn handle_read(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Outbound>) {
        let between_messages = self.phase == Phase::Open
            && self.buf.is_empty()
            && self.frame.is_none()
            && self.message.is_none()
            && self.deferred_failure.is_none();
        if !between_messages || bytes.is_empty() {
            let bytes = Bytes::copy_from_slice(bytes);
            return self.handle_into(Event::Receive { now_ms, bytes }, out);
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.last_receive_ms = self.now_ms;
        self.read_from(bytes, out);
    }

    fn fail_deferred(&mut self, out: &mut Vec<Outbound>) {
        if let Some(error) = self.deferred_failure.take()
            && matches!(self.phase, Phase::Open | Phase::Closing)
        {
            self.fail(error, out);
        }
    }

    fn on_open(&mut self, out: &mut Vec<Outbound>) {
        if self.phase != Phase::Fresh {
            return;
        }
        self.phase = Phase::Handshake;
        self.timers.handshake = Some(self.now_ms.saturating_add(self.config.handshake_timeout_ms));
        if let Some(client) = &self.client {
            let request = handshake::client_request(
                &client.request.url,
                &client.key,
                &self.config,
                &client.request.headers,
            );
            out.push(Outbound::Transmit(request.into()));
        }
    }

    fn on_receive(&mut self, bytes: Bytes, out: &mut Vec<Outbound>) {
        if self.phase == Phase::Fresh {
            self.on_open(out); // a shell that skipped Open still gets a handshake timer
        }
        if matches!(self.phase, Phase::Draining | Phase::Done) || bytes.is_empty() {
            return;
        }
        self.last_receive_ms = self.now_ms;
        if self.buf.is_empty() {
            self.buf = bytes
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        } else {
            self.buf.extend_from_slice(&bytes);
        }
        match self.phase {
            Phase::Handshake => match self.role {
                Role::Server => self.read_request(out),
                Role::Client => self.read_response(out),
            },
            Phase::AwaitingDecision => {
                // A client may not send frames before the 101; bound what it can make us hold.
                if self.buf.len() > self.config.limits.max_handshake_len {
                    self.fail_handshake(HandshakeError::TooLarge, out);
                }
            }
            Phase::Open | Phase::Closing => self.read_frames(out),
            Phase::Fresh | Phase::Draining | Phase::Done => {}
        }
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    fn read_request(&mut self, out: &mut Vec<Outbound>) {
        match handshake::parse_request(&self.buf, &self.config) {
            Ok(None) => {}
            Ok(Some((Parsed::Upgrade(offer), head_len))) => {
                self.buf.advance(head_len);
                out.push(Outbound::Upgrade(Box::new(offer.request.clone())));
                self.offer = Some(Box::new(offer));
                self.phase = Phase::AwaitingDecision;
            }
            Ok(Some((Parsed::Plain(request), head_len))) => {
                self.buf.advance(head_len);
                out.push(Outbound::HttpRequest(Box::new(request)));
                self.phase = Phase::AwaitingDecision;
            }
            Err(e) => self.fail_handshake(e, out),
        }
    }

    fn read_response(&mut self, out: &mut Vec<Outbound>) {
        let Some(client) = &self.client else { return };
        match handshake::parse_response(&self.buf, &client.key, &self.config) {
            Ok(None) => {}
            Ok(Some(answer)) => {
                let handshake::ServerAnswer {
                    protocol,
                    deflate,
                    head_len,
                } = answer;
                self.buf.advance(head_len);
                self.open(protocol, deflate, out);
                self.read_frames(out);
            }
            Err(e) => self.fail_handshake(e, out),
        }
    }

    fn on_accept(&mut self, out: &mut Vec<Outbound>) {
        if self.phase != Phase::AwaitingDecision {
            return;
        }
        let Some(offer) = self.offer.take() else {
            // A plain HTTP request cannot be accepted as a WebSocket.
            return self.on_respond(
                426,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"websocket upgrade required\n"),
                out,
            );
        };
        out.push(Outbound::Transmit(
            handshake::accept_response(&offer).into(),
        ));
        self.open(offer.request.protocol, offer.deflate.map(|(p, _)| p), out);
        self.read_frames(out);
    }

    fn on_reject(&mut self, status: u16, reason: &str, out: &mut Vec<Outbound>) {
        if self.phase != Phase::AwaitingDecision {
            return;
        }
        self.offer = None;
        let status = if (400..=599).contains(&status) {
            status
        } else {
            403
        };
        out.push(Outbound::Transmit(handshake::error_response(
            status, reason,
        )));
        self.finish(1006, reason.to_string(), false, Initiator::Local, out);
        self.hang_up(out);
    }

    fn on_respond(
        &mut self,
        status: u16,
        content_type: &str,
        body: Bytes,
        out: &mut Vec<Outbound>,
    ) {
        if self.phase != Phase::AwaitingDecision {
            return;
        }
        out.push(Outbound::Transmit(handshake::http_response(
            status,
            content_type,
            body,
        )));
        self.finish(
            1006,
            format!("answered http {status}"),
            false,
            Initiator::Local,
            out,
        );
        self.hang_up(out);
    }

    fn fail_handshake(&mut self, error: HandshakeError, out: &mut Vec<Outbound>) {
        if self.role == Role::Server {
            out.push(Outbound::Transmit(handshake::error_response(
                error.status(),
                &error.to_string(),
            )));
        }
        self.finish(1006, error.to_string(), false, Initiator::Local, out);
        self.hang_up(out);
    }

    fn open(
        &mut self,
        protocol: Option<String>,
        deflate: Option<DeflateParams>,
        out: &mut Vec<Outbound>,
    ) {
        self.phase = Phase::Open;
        self.timers.handshake = None;
        self.deflate = deflate;
        self.last_receive_ms = self.now_ms;
        self.last_ping_ms = self.now_ms;
        out.push(Outbound::Opened(Handshake { protocol, deflate }));
    }
}
