//! The WebSocket state machine: one [`Connection`] per socket, server or client.
//!
//! Phases: `Fresh` until [`Event::Open`]; `Handshake` while the HTTP head is read (a server then
//! waits in `AwaitingDecision` for [`Event::Accept`] or [`Event::Reject`]); `Open`; `Closing`
//! once this side sent a close frame; `Draining` for a client that finished the close handshake
//! and waits for the server to hang up (RFC 6455 §7.1.1: the server closes TCP first); `Done`.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::config::Config;
use super::deflate::{DeflateParams, Deflater, Inflater};
use super::error::{ConfigError, HandshakeError, ProtocolError};
use super::event::{CloseInfo, Event, Handshake, Initiator, Message, Outbound};
use super::frame::{FrameHeader, MAX_HEADER_LEN, Opcode, is_valid_close_code};
use super::handshake::{self, Parsed, ServerOffer};
use super::mask::apply_mask;
use super::text::Text;
use super::transmit::Transmit;
use super::url::Url;
use super::utf8::Utf8Validator;
use crate::rand::Rng;

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

/// Timers, each an absolute instant in ms, or `None` when not armed.
#[derive(Clone, Copy, Debug, Default)]
struct Timers {
    /// When the opening handshake must have finished.
    handshake: Option<u64>,
    /// When the peer's close frame (or, draining, its hang-up) must have arrived.
    close: Option<u64>,
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
    config: Config,
    role: Role,
    phase: Phase,
    client: Option<ClientSide>,
    offer: Option<ServerOffer>,
    /// Unconsumed input; emptied (and its memory freed) whenever everything was consumed.
    buf: BytesMut,
    frame: Option<FrameInProgress>,
    message: Option<MessageInProgress>,
    deflate: Option<DeflateParams>,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
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
        Connection::new(config, Role::Server, None)
    }

    /// A client-side connection; on [`Event::Open`] it transmits its upgrade request.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is inconsistent.
    pub fn client(config: Config, request: ClientRequest) -> Result<Connection, ConfigError> {
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, request.key);
        let rng = Rng::new(request.mask_seed);
        Connection::new(config, Role::Client, Some(ClientSide { request, key, rng }))
    }

    fn new(
        config: Config,
        role: Role,
        client: Option<ClientSide>,
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

    /// Whether messages may be sent now.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection has ended and asks nothing more of its shell.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The instant of the next timer, if any: the shell sends [`Event::Tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.deferred_failure.is_some() {
            return Some(self.now_ms);
        }
        let mut next = [self.timers.handshake, self.timers.close]
            .into_iter()
            .flatten()
            .min();
        if self.phase == Phase::Open {
            let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
            if let Some(idle) = self.config.idle_timeout_ms {
                consider(self.last_receive_ms.saturating_add(idle));
            }
            if let Some(interval) = self.config.ping_interval_ms {
                consider(
                    self.last_receive_ms
                        .max(self.last_ping_ms)
                        .saturating_add(interval),
                );
            }
        }
        next
    }

    /// Handles one event and returns what the shell must do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.handle_into(event, &mut out);
        out
    }

    /// [`Connection::handle`] appending to a vector the caller reuses.
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
            Event::Close { code, reason, .. } => self.on_close_requested(code, &reason, out),
            Event::Tick { .. } => self.on_tick(out),
            Event::TransportClosed { .. } => self.on_transport_closed(out),
        }
        if let Some(error) = deferred {
            self.deferred_failure = Some(error);
            self.fail_deferred(out);
        }
    }

    fn fail_deferred(&mut self, out: &mut Vec<Outbound>) {
        if let Some(error) = self.deferred_failure.take() {
            if matches!(self.phase, Phase::Open | Phase::Closing) {
                self.fail(error, out);
            }
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
                out.push(Outbound::Upgrade(offer.request.clone()));
                self.offer = Some(offer);
                self.phase = Phase::AwaitingDecision;
            }
            Ok(Some((Parsed::Plain(request), head_len))) => {
                self.buf.advance(head_len);
                out.push(Outbound::HttpRequest(request));
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

    /// Ends the connection from this side: no more input is read and no timer is left.
    fn hang_up(&mut self, out: &mut Vec<Outbound>) {
        self.phase = Phase::Done;
        self.timers = Timers::default();
        self.offer = None;
        self.buf = BytesMut::new();
        self.frame = None;
        self.message = None;
        out.push(Outbound::Disconnect);
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

    /// Reads every whole frame in `buf`, and as much of a partial data frame as arrived.
    fn read_frames(&mut self, out: &mut Vec<Outbound>) {
        while matches!(self.phase, Phase::Open | Phase::Closing) {
            let delivered_before = out.len();
            match self.read_one(out) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e)
                    if out[..delivered_before]
                        .iter()
                        .any(|o| matches!(o, Outbound::Deliver(_))) =>
                {
                    // Messages before the bad frame were delivered in this same call. Give the
                    // application one event to answer them (an echo, say) before failing, as
                    // a peer that read them one at a time would have; the deadline is now, so
                    // a shell with nothing to send ticks at once.
                    self.deferred_failure = Some(e);
                    self.buf = BytesMut::new();
                    break;
                }
                Err(e) => {
                    self.fail(e, out);
                    break;
                }
            }
        }
    }

    /// Makes progress on one frame. `Ok(false)`: more bytes are needed.
    fn read_one(&mut self, out: &mut Vec<Outbound>) -> Result<bool, ProtocolError> {
        let frame = match self.frame {
            Some(f) => f,
            None => {
                let Some((header, len)) = FrameHeader::parse(&self.buf)? else {
                    return Ok(false);
                };
                self.check_header(&header)?;
                self.buf.advance(len);
                let f = FrameInProgress {
                    header,
                    consumed: 0,
                };
                self.frame = Some(f);
                f
            }
        };
        let h = frame.header;
        if h.opcode.is_control() {
            let len = h.payload_len as usize; // at most 125: checked in FrameHeader::parse
            if self.buf.len() < len {
                return Ok(false);
            }
            let mut payload = self.buf.split_to(len);
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            self.frame = None;
            self.on_control(h.opcode, payload.freeze(), out)?;
            return Ok(true);
        }
        let remaining = h.payload_len - frame.consumed;
        let take = remaining.min(self.buf.len() as u64) as usize;
        if take == 0 && remaining > 0 {
            return Ok(false);
        }
        let mut chunk = self.buf.split_to(take);
        if let Some(key) = h.mask {
            apply_mask(&mut chunk, key, frame.consumed as usize);
        }
        let frame_done = take as u64 == remaining;
        self.frame = if frame_done {
            None
        } else {
            Some(FrameInProgress {
                header: h,
                consumed: frame.consumed + take as u64,
            })
        };
        self.on_data(chunk, frame_done && h.fin, out)?;
        Ok(frame_done)
    }

    /// Checks what a header allows before any of its payload is buffered.
    fn check_header(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        // RFC 6455 §5.1: clients mask every frame, servers none.
        if h.mask.is_some() != (self.role == Role::Server) {
            return Err(ProtocolError::BadMask);
        }
        // RFC 6455 §5.2 and RFC 7692 §6: RSV1 only on the first frame of a compressed message.
        let first_data = matches!(h.opcode, Opcode::Text | Opcode::Binary);
        if h.rsv23 || (h.rsv1 && !(first_data && self.deflate.is_some())) {
            return Err(ProtocolError::ReservedBits);
        }
        if h.payload_len > self.config.limits.max_frame_len as u64 {
            return Err(ProtocolError::FrameTooBig);
        }
        match (h.opcode, &self.message) {
            (Opcode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            let held = self.message.as_ref().map_or(0, |m| m.data.len()) as u64;
            let compressed = h.rsv1 || self.message.as_ref().is_some_and(|m| m.compressed);
            if !compressed && held + h.payload_len > self.config.limits.max_message_len as u64 {
                return Err(ProtocolError::MessageTooBig);
            }
            if self.message.is_none() {
                self.message = Some(MessageInProgress {
                    text: h.opcode == Opcode::Text,
                    compressed: h.rsv1,
                    data: Vec::new(),
                    utf8: Utf8Validator::new(),
                });
            }
        }
        Ok(())
    }

    /// Takes a piece of a data frame's payload, unmasked; `last` ends the message.
    fn on_data(
        &mut self,
        chunk: BytesMut,
        last: bool,
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        let limit = self.config.limits.max_message_len;
        // check_header opened the message before any payload arrived.
        let Some(msg) = self.message.as_mut() else {
            return Ok(());
        };
        if last && !msg.compressed && msg.data.is_empty() {
            // The common case, a whole message in one frame: hand the buffer over uncopied.
            let msg = self.message.take().unwrap_or_else(|| unreachable!());
            let message = if msg.text {
                let text =
                    Text::from_utf8(chunk.freeze()).map_err(|_| ProtocolError::InvalidUtf8)?;
                Message::Text(text)
            } else {
                Message::Binary(chunk.freeze())
            };
            if self.phase == Phase::Open {
                out.push(Outbound::Deliver(message));
            }
            return Ok(());
        }
        let before = msg.data.len();
        if msg.compressed {
            let inflater = self.inflater.get_or_insert_with(|| {
                Inflater::new(peer_no_context_takeover(self.role, self.deflate))
            });
            inflater.feed(&chunk, &mut msg.data, limit)?;
            if last {
                inflater.finish(&mut msg.data, limit)?;
            }
        } else {
            msg.data.extend_from_slice(&chunk);
        }
        if msg.text {
            msg.utf8
                .feed(&msg.data[before..])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !last {
            return Ok(());
        }
        let mut msg = self.message.take().unwrap_or_else(|| unreachable!());
        let message = if msg.text {
            msg.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            let text =
                Text::from_utf8(Bytes::from(msg.data)).map_err(|_| ProtocolError::InvalidUtf8)?;
            Message::Text(text)
        } else {
            Message::Binary(Bytes::from(msg.data))
        };
        if self.phase == Phase::Open {
            out.push(Outbound::Deliver(message));
        }
        Ok(())
    }

    fn on_control(
        &mut self,
        opcode: Opcode,
        payload: Bytes,
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        // Once this side sent a close frame, pings go unanswered and pongs unreported.
        let open = self.phase == Phase::Open;
        match opcode {
            Opcode::Ping if open => {
                self.push_frame(Opcode::Pong, false, payload.clone(), out);
                out.push(Outbound::Deliver(Message::Ping(payload)));
            }
            Opcode::Pong if open => out.push(Outbound::Deliver(Message::Pong(payload))),
            Opcode::Close => self.on_close_frame(&payload, out)?,
            // FrameHeader::parse only lets the three control opcodes through.
            _ => {}
        }
        Ok(())
    }

    fn on_close_frame(
        &mut self,
        payload: &[u8],
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        // RFC 6455 §5.5.1: empty, or a 2-byte code and a UTF-8 reason.
        let (code, reason) = match payload {
            [] => (1005, String::new()),
            [_] => return Err(ProtocolError::CloseTooShort),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(ProtocolError::InvalidCloseCode);
                }
                let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                (code, reason.to_string())
            }
        };
        self.message = None;
        if self.close.is_none() {
            // Echo the peer's code (§5.5.1), or an empty close if it sent none.
            let echo = if code == 1005 {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&payload[..2])
            };
            self.push_frame(Opcode::Close, false, echo, out);
            self.close = Some((code, reason, Initiator::Remote));
        }
        let (code, reason, initiator) =
            self.close
                .clone()
                .unwrap_or((code, String::new(), Initiator::Remote));
        self.finish(code, reason, true, initiator, out);
        self.end_transport(out);
        Ok(())
    }

    /// After a completed close handshake: a server hangs up; a client waits for the server to.
    fn end_transport(&mut self, out: &mut Vec<Outbound>) {
        match self.role {
            Role::Server => {
                self.phase = Phase::Done;
                self.timers.close = None;
                out.push(Outbound::Disconnect);
            }
            Role::Client => {
                self.phase = Phase::Draining;
                self.timers.close = Some(self.now_ms.saturating_add(self.config.close_timeout_ms));
            }
        }
        self.buf = BytesMut::new();
        self.frame = None;
    }

    /// Fails the connection on a protocol error (§7.1.7): a close frame with the error's code,
    /// then the transport is closed without waiting for an answer.
    fn fail(&mut self, error: ProtocolError, out: &mut Vec<Outbound>) {
        let code = error.close_code();
        if self.close.is_none() {
            self.push_close(code, error.as_str(), out);
        }
        self.finish(
            code,
            error.as_str().to_string(),
            false,
            Initiator::Local,
            out,
        );
        self.hang_up(out);
    }

    fn on_send(&mut self, message: Message, out: &mut Vec<Outbound>) {
        if self.phase != Phase::Open {
            return;
        }
        let (opcode, payload) = match message {
            Message::Text(t) => (Opcode::Text, t.into_bytes()),
            Message::Binary(b) => (Opcode::Binary, b),
            // §5.5: control payloads are at most 125 bytes.
            Message::Ping(b) => (Opcode::Ping, b.slice(..b.len().min(125))),
            Message::Pong(b) => (Opcode::Pong, b.slice(..b.len().min(125))),
        };
        let threshold = self.config.deflate.map_or(usize::MAX, |d| d.threshold_len);
        match self.deflate {
            Some(params) if !opcode.is_control() && payload.len() >= threshold => {
                let (level, bits, reset) = own_compression(
                    self.role,
                    &params,
                    self.config.deflate.map_or(1, |d| d.level),
                );
                let deflater = self
                    .deflater
                    .get_or_insert_with(|| Deflater::new(level, bits, reset));
                let compressed = deflater.compress(&payload);
                self.push_frame(opcode, true, Bytes::from(compressed), out);
            }
            _ => self.push_frame(opcode, false, payload, out),
        }
    }

    fn on_close_requested(&mut self, code: u16, reason: &str, out: &mut Vec<Outbound>) {
        match self.phase {
            Phase::Open => {
                let code = if is_valid_close_code(code) {
                    code
                } else {
                    1000
                };
                self.push_close(code, reason, out);
            }
            Phase::Fresh | Phase::Handshake | Phase::AwaitingDecision => {
                self.finish(1006, reason.to_string(), false, Initiator::Local, out);
                self.hang_up(out);
            }
            Phase::Closing | Phase::Draining | Phase::Done => {}
        }
    }

    /// Sends a close frame and waits for the answer.
    fn push_close(&mut self, code: u16, reason: &str, out: &mut Vec<Outbound>) {
        let reason = truncate_utf8(reason, 123);
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.push_frame(Opcode::Close, false, payload.freeze(), out);
        self.close = Some((code, reason.to_string(), Initiator::Local));
        self.phase = Phase::Closing;
        self.timers.close = Some(self.now_ms.saturating_add(self.config.close_timeout_ms));
    }

    fn on_tick(&mut self, out: &mut Vec<Outbound>) {
        let now = self.now_ms;
        if self.timers.handshake.is_some_and(|t| now >= t) {
            self.timers.handshake = None;
            if matches!(self.phase, Phase::Handshake | Phase::AwaitingDecision) {
                self.fail_handshake(HandshakeError::Timeout, out);
                return;
            }
        }
        if self.timers.close.is_some_and(|t| now >= t) {
            self.timers.close = None;
            if self.phase == Phase::Closing {
                let (code, reason, initiator) =
                    self.close
                        .clone()
                        .unwrap_or((1006, String::new(), Initiator::Local));
                self.finish(code, reason, false, initiator, out);
            }
            if matches!(self.phase, Phase::Closing | Phase::Draining) {
                self.hang_up(out);
            }
            return;
        }
        if self.phase != Phase::Open {
            return;
        }
        if let Some(idle) = self.config.idle_timeout_ms {
            if now >= self.last_receive_ms.saturating_add(idle) {
                self.push_close(1001, "idle timeout", out);
                return;
            }
        }
        if let Some(interval) = self.config.ping_interval_ms {
            if now
                >= self
                    .last_receive_ms
                    .max(self.last_ping_ms)
                    .saturating_add(interval)
            {
                self.last_ping_ms = now;
                self.push_frame(Opcode::Ping, false, Bytes::new(), out);
            }
        }
    }

    fn on_transport_closed(&mut self, out: &mut Vec<Outbound>) {
        if self.phase == Phase::Done {
            return;
        }
        self.finish(1006, String::new(), false, Initiator::Transport, out);
        self.phase = Phase::Done;
        self.timers = Timers::default();
        self.buf = BytesMut::new();
        self.message = None;
        self.frame = None;
    }

    /// Reports the end of the connection, once.
    fn finish(
        &mut self,
        code: u16,
        reason: String,
        clean: bool,
        initiator: Initiator,
        out: &mut Vec<Outbound>,
    ) {
        if self.closed_reported {
            return;
        }
        self.closed_reported = true;
        out.push(Outbound::Closed(CloseInfo {
            code,
            reason,
            clean,
            initiator,
        }));
    }

    /// Frames `payload` and queues it: the header inline, the payload as the caller's own
    /// bytes. A client masks the payload in place when it is the only owner (a `String` sent as
    /// text, say), and on a copy otherwise.
    fn push_frame(&mut self, opcode: Opcode, rsv1: bool, payload: Bytes, out: &mut Vec<Outbound>) {
        let mask = self.client.as_mut().map(|c| c.rng.next_mask());
        let header = FrameHeader {
            fin: true,
            rsv1,
            rsv23: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = header.encode(&mut head);
        let body = match mask {
            Some(key) => {
                let mut owned = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                apply_mask(&mut owned, key, 0);
                owned.freeze()
            }
            None => payload,
        };
        out.push(Outbound::Transmit(Transmit::frame(&head[..head_len], body)));
    }
}

/// Whether the peer resets its compression window after each message.
fn peer_no_context_takeover(role: Role, params: Option<DeflateParams>) -> bool {
    params.is_some_and(|p| match role {
        Role::Server => p.client_no_context_takeover,
        Role::Client => p.server_no_context_takeover,
    })
}

/// This side's compressor settings: level, window bits, reset after each message.
fn own_compression(role: Role, params: &DeflateParams, level: u32) -> (u32, u8, bool) {
    match role {
        Role::Server => (
            level,
            params.server_max_window_bits,
            params.server_no_context_takeover,
        ),
        Role::Client => (
            level,
            params.client_max_window_bits,
            params.client_no_context_takeover,
        ),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
