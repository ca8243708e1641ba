//! The session machine: [`Client::handle`] and the transitions between its states.

use bytes::{Bytes, BytesMut};

use super::calls::Calls;
use super::config::Config;
use super::error::{CallError, Error};
use super::event::{Event, Outbound, State, StopReason};
use super::proxy;
use super::queue::Queue;
use super::rate::Bucket;
use crate::rand::Rng;
use crate::ws::{self, ClientRequest, ConfigError, Message};

/// A client session: feed it [`Event`]s, carry out its [`Outbound`]s, tick it at
/// [`Client::next_deadline`].
///
/// ```
/// use spool_core::client::{Client, Config, Event, Outbound};
/// use spool_core::ws::Url;
///
/// let mut client = Client::new(Config::new(Url::parse("ws://example.com/").unwrap())).unwrap();
/// let out = client.handle(Event::Start { now_ms: 0 });
/// assert_eq!(out, [Outbound::Connect { host: "example.com".into(), port: 80 }]);
/// // The shell could not connect: the next attempt comes after the backoff.
/// let out = client.handle(Event::ConnectFailed { now_ms: 5, reason: "refused".into() });
/// assert!(matches!(out[..], [Outbound::Failed(_), Outbound::Retrying { attempt: 2, .. }]));
/// ```
pub struct Client {
    config: Config,
    state: State,
    now_ms: u64,
    rng: Rng,
    /// Attempts failed in a row.
    failures: u32,
    /// When the current attempt times out.
    attempt_deadline: Option<u64>,
    /// When the next attempt starts (waiting).
    retry_at: Option<u64>,
    /// Key and mask seed for the attempt's WebSocket connection, from `Connected`.
    secrets: Option<([u8; 16], u64)>,
    ws: Option<ws::Connection>,
    /// The proxy's answer while proxying; a copy of the server's answer while upgrading (for
    /// its headers). Empty otherwise.
    head: BytesMut,
    /// The shell reported the transport gone: nothing to disconnect.
    transport_gone: bool,
    queue: Queue,
    drained_reported: bool,
    bucket: Bucket,
    calls: Calls,
    close_requested: Option<(u16, String)>,
    /// The queue may flow on this connection (always, unless `hold_until_ready`).
    ready: bool,
}

impl Client {
    /// A client for `config`, idle until [`Event::Start`].
    ///
    /// # Errors
    /// [`ConfigError`] naming a field that makes no sense.
    pub fn new(mut config: Config) -> Result<Client, ConfigError> {
        config.ws.handshake_timeout_ms = config.connect_timeout_ms;
        config.validate()?;
        Ok(Client {
            rng: Rng::new(config.jitter_seed),
            bucket: Bucket::new(config.rate_limit),
            config,
            state: State::Idle,
            now_ms: 0,
            failures: 0,
            attempt_deadline: None,
            retry_at: None,
            secrets: None,
            ws: None,
            head: BytesMut::new(),
            transport_gone: true,
            queue: Queue::default(),
            drained_reported: false,
            calls: Calls::default(),
            close_requested: None,
            ready: false,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where it stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The latest instant it was given.
    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// Whether messages flow now.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Messages held: waiting to be sent, or sent and not yet confirmed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a new message would be dropped now (the queue holds `queue_max`).
    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.config.queue_max
    }

    /// Messages refused so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped
    }

    /// Calls waiting for replies.
    pub fn calls_waiting(&self) -> usize {
        self.calls.len()
    }

    /// The instant of the next timer, if any: the shell sends [`Event::Tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut next = self.calls.next_deadline();
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match self.state {
            State::Connecting | State::Proxying | State::Securing | State::Upgrading => {
                consider(self.attempt_deadline);
            }
            State::Waiting => consider(self.retry_at),
            State::Open if self.ready && self.queue.has_unsent() => {
                consider(self.bucket.next_token_ms())
            }
            _ => {}
        }
        consider(self.ws.as_ref().and_then(ws::Connection::next_deadline));
        next
    }

    /// Handles one event and returns what the shell must do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.now_ms = self.now_ms.max(event.now_ms());
        match event {
            Event::Start { .. } => {
                if self.state == State::Idle {
                    self.connect(&mut out);
                }
            }
            Event::Connected { key, mask_seed, .. } => self.on_connected(key, mask_seed, &mut out),
            Event::ConnectFailed { reason, .. } => {
                if self.state == State::Connecting {
                    self.transport_gone = true;
                    self.fail(Error::Connect { reason }, &mut out);
                }
            }
            Event::Secured { .. } => {
                if self.state == State::Securing {
                    self.start_ws(Bytes::new(), &mut out);
                }
            }
            Event::TlsFailed { reason, .. } => {
                if self.state == State::Securing {
                    self.fail(Error::Tls { reason }, &mut out);
                }
            }
            Event::Receive { bytes, .. } => self.on_receive(bytes, &mut out),
            Event::TransportClosed { .. } => self.on_transport_closed(&mut out),
            Event::Send { message, .. } => self.on_send(message, &mut out),
            Event::SendNow { message, .. } => {
                let now_ms = self.now_ms;
                if self.state == State::Open {
                    self.feed(ws::Event::Send { now_ms, message }, &mut out);
                }
            }
            Event::Ready { .. } => self.ready = true,
            Event::Confirmed { count, .. } if self.config.confirm_by_reply => {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                self.queue.confirm(count);
            }
            // Pongs confirm: a confirming ping covers a count of messages, which confirming
            // some by other means would throw off.
            Event::Confirmed { .. } => {}
            Event::Rewind { .. } => {
                if self.state == State::Open {
                    self.queue.rewind();
                    self.ready = !self.config.hold_until_ready;
                }
            }
            Event::Call { id, timeout_ms, .. } => self.on_call(id, timeout_ms, &mut out),
            Event::Reply { id, .. } => {
                if self.calls.remove(id) {
                    out.push(Outbound::Reply { id });
                }
            }
            Event::Close { code, reason, .. } => self.on_close(code, reason, &mut out),
            Event::Tick { .. } => self.on_tick(&mut out),
        }
        if self.state == State::Open && self.ready {
            self.flush(&mut out);
            if self.queue.is_empty() && !self.drained_reported {
                self.drained_reported = true;
                out.push(Outbound::Drained);
            }
        }
        out
    }

    fn connect(&mut self, out: &mut Vec<Outbound>) {
        self.state = State::Connecting;
        self.retry_at = None;
        self.attempt_deadline = Some(self.now_ms.saturating_add(self.config.connect_timeout_ms));
        self.transport_gone = false;
        self.secrets = None;
        let (host, port) = match &self.config.proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (self.config.url.host.clone(), self.config.url.port),
        };
        out.push(Outbound::Connect { host, port });
    }

    fn on_connected(&mut self, key: [u8; 16], mask_seed: u64, out: &mut Vec<Outbound>) {
        if self.state != State::Connecting {
            return;
        }
        self.secrets = Some((key, mask_seed));
        match &self.config.proxy {
            Some(p) => {
                self.state = State::Proxying;
                self.head.clear();
                let request = p.connect_request(&self.config.url);
                out.push(Outbound::Transmit(Bytes::from(request).into()));
            }
            None => self.after_tunnel(Bytes::new(), out),
        }
    }

    /// TCP is up and, with a proxy, the tunnel too: TLS next, or the WebSocket handshake.
    fn after_tunnel(&mut self, rest: Bytes, out: &mut Vec<Outbound>) {
        if self.config.url.secure {
            if !rest.is_empty() {
                // The server speaks after our ClientHello, not before: these bytes are the
                // proxy's, and TLS would choke on them.
                let proxy = super::ProxyError::UnexpectedBytes;
                return self.fail(Error::Proxy { proxy }, out);
            }
            self.state = State::Securing;
            out.push(Outbound::StartTls {
                host: self.config.url.host.clone(),
            });
        } else {
            self.start_ws(rest, out);
        }
    }

    fn start_ws(&mut self, rest: Bytes, out: &mut Vec<Outbound>) {
        let (key, mask_seed) = self.secrets.take().unwrap_or_default();
        let request = ClientRequest {
            url: self.config.url.clone(),
            key,
            mask_seed,
            headers: self.config.headers.clone(),
        };
        match ws::Connection::client(self.config.ws.clone(), request) {
            Ok(ws) => self.ws = Some(ws),
            Err(e) => {
                // Not reached: `Client::new` checked both.
                let reason = e.to_string();
                return self.fail(Error::Handshake { reason }, out);
            }
        }
        self.state = State::Upgrading;
        self.head.clear();
        let now_ms = self.now_ms;
        self.feed(ws::Event::Open { now_ms }, out);
        if !rest.is_empty() {
            self.on_receive(rest, out);
        }
    }

    fn on_receive(&mut self, bytes: Bytes, out: &mut Vec<Outbound>) {
        let now_ms = self.now_ms;
        match self.state {
            State::Proxying => {
                self.head.extend_from_slice(&bytes);
                let max = self.config.ws.limits.max_handshake_len;
                match proxy::parse_answer(&self.head, max) {
                    Ok(None) => {}
                    Ok(Some(len)) => {
                        let rest = self.head.split_off(len).freeze();
                        self.head = BytesMut::new();
                        self.after_tunnel(rest, out);
                    }
                    Err(proxy) => self.fail(Error::Proxy { proxy }, out),
                }
            }
            State::Upgrading => {
                // A copy of the answer for its headers, bounded as the WebSocket machine
                // bounds the head itself.
                let room = self
                    .config
                    .ws
                    .limits
                    .max_handshake_len
                    .saturating_sub(self.head.len());
                self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
                self.feed(ws::Event::Receive { now_ms, bytes }, out);
            }
            State::Open | State::Closing => self.feed(ws::Event::Receive { now_ms, bytes }, out),
            _ => {}
        }
    }

    fn on_transport_closed(&mut self, out: &mut Vec<Outbound>) {
        self.transport_gone = true;
        let now_ms = self.now_ms;
        match self.state {
            State::Connecting | State::Proxying | State::Securing | State::Upgrading => {
                let state = self.state;
                self.fail(Error::TransportClosed { state }, out);
            }
            State::Open | State::Closing => self.feed(ws::Event::TransportClosed { now_ms }, out),
            State::Idle | State::Waiting | State::Stopped => {}
        }
    }

    fn on_send(&mut self, message: Message, out: &mut Vec<Outbound>) {
        let accepting = !matches!(self.state, State::Closing | State::Stopped);
        let (max, max_len) = (self.config.queue_max, self.config.queue_max_len);
        if accepting && self.queue.push(message, max, max_len) {
            self.drained_reported = false;
        } else {
            if !accepting {
                self.queue.dropped += 1;
            }
            out.push(Outbound::Dropped {
                dropped: self.queue.dropped,
            });
        }
    }

    fn on_call(&mut self, id: u64, timeout_ms: Option<u64>, out: &mut Vec<Outbound>) {
        let error = if self.state == State::Stopped {
            Some(CallError::Stopped)
        } else if self.calls.contains(id) {
            Some(CallError::DuplicateId)
        } else if self.calls.len() >= self.config.max_calls {
            Some(CallError::TooMany)
        } else {
            None
        };
        match error {
            Some(error) => out.push(Outbound::CallFailed { id, error }),
            None => {
                let timeout = timeout_ms.unwrap_or(self.config.call_timeout_ms);
                self.calls.insert(id, self.now_ms.saturating_add(timeout));
            }
        }
    }

    fn on_close(&mut self, code: u16, reason: String, out: &mut Vec<Outbound>) {
        let now_ms = self.now_ms;
        match self.state {
            State::Open => {
                self.state = State::Closing;
                self.close_requested = Some((code, reason.clone()));
                self.feed(
                    ws::Event::Close {
                        now_ms,
                        code,
                        reason,
                    },
                    out,
                );
            }
            State::Connecting | State::Proxying | State::Securing | State::Upgrading => {
                self.drop_transport(out);
                self.stop(StopReason::Closed, out);
            }
            State::Idle | State::Waiting => self.stop(StopReason::Closed, out),
            State::Closing | State::Stopped => {}
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Outbound>) {
        let now = self.now_ms;
        for id in self.calls.expire(now) {
            out.push(Outbound::CallFailed {
                id,
                error: CallError::Timeout,
            });
        }
        match self.state {
            State::Connecting | State::Proxying | State::Securing | State::Upgrading
                if self.attempt_deadline.is_some_and(|t| now >= t) =>
            {
                let state = self.state;
                return self.fail(Error::Timeout { state }, out);
            }
            State::Waiting if self.retry_at.is_some_and(|t| now >= t) => {
                return self.connect(out);
            }
            _ => {}
        }
        if self.ws.is_some() {
            self.feed(ws::Event::Tick { now_ms: now }, out);
        }
    }

    /// Sends what waits, as far as the rate limit allows, then a confirming ping when sent
    /// messages wait for confirmation and none is in flight.
    fn flush(&mut self, out: &mut Vec<Outbound>) {
        let now_ms = self.now_ms;
        while self.queue.has_unsent() && self.bucket.take(now_ms) {
            let Some(message) = self.queue.next_unsent() else {
                break;
            };
            self.feed(ws::Event::Send { now_ms, message }, out);
            if !self.config.resend_unconfirmed {
                self.queue.confirm(1);
            }
            if self.state != State::Open {
                return;
            }
        }
        let by_pong = !self.config.confirm_by_reply;
        if by_pong && self.queue.unconfirmed() > 0 && self.queue.confirming.is_none() {
            let seq = self.queue.next_ping;
            self.queue.next_ping += 1;
            self.queue.confirming = Some((seq, self.queue.unconfirmed()));
            let message = Message::Ping(confirm_payload(seq));
            self.feed(ws::Event::Send { now_ms, message }, out);
        }
    }

    /// Gives an event to the WebSocket connection and turns what it says into outbounds.
    fn feed(&mut self, event: ws::Event, out: &mut Vec<Outbound>) {
        let Some(ws) = self.ws.as_mut() else { return };
        let mut closed = None;
        for outbound in ws.handle(event) {
            match outbound {
                ws::Outbound::Transmit(t) => out.push(Outbound::Transmit(t)),
                ws::Outbound::Opened(handshake) => self.on_opened(handshake.protocol, out),
                ws::Outbound::Deliver(Message::Pong(payload)) if self.is_confirming(&payload) => {
                    if let Some((_, covered)) = self.queue.confirming.take() {
                        self.queue.confirm(covered);
                    }
                }
                ws::Outbound::Deliver(message) => out.push(Outbound::Deliver(message)),
                ws::Outbound::Closed(info) => closed = Some(info),
                // Folded into this machine's own `Disconnect` below; the server-only ones
                // cannot come from a client connection.
                ws::Outbound::Disconnect
                | ws::Outbound::Upgrade(_)
                | ws::Outbound::HttpRequest(_) => {}
            }
        }
        if let Some(info) = closed {
            self.on_ws_closed(info, out);
        }
    }

    fn is_confirming(&self, payload: &[u8]) -> bool {
        self.queue
            .confirming
            .is_some_and(|(seq, _)| payload == &confirm_payload(seq)[..])
    }

    fn on_opened(&mut self, protocol: Option<String>, out: &mut Vec<Outbound>) {
        self.state = State::Open;
        self.ready = !self.config.hold_until_ready;
        self.failures = 0;
        self.attempt_deadline = None;
        let headers = response_headers(&self.head);
        self.head = BytesMut::new();
        out.push(Outbound::Opened { protocol, headers });
    }

    fn on_ws_closed(&mut self, info: ws::CloseInfo, out: &mut Vec<Outbound>) {
        match self.state {
            State::Upgrading => {
                let reason = info.reason;
                self.fail(Error::Handshake { reason }, out);
            }
            State::Open | State::Closing => {
                out.push(Outbound::Disconnected {
                    code: info.code,
                    reason: info.reason,
                });
                self.drop_transport(out);
                self.queue.rewind();
                if self.close_requested.is_some() {
                    self.stop(StopReason::Closed, out);
                } else {
                    self.retry(out);
                }
            }
            _ => {}
        }
    }

    /// The attempt failed: say why, drop its transport, and wait for the next one.
    fn fail(&mut self, error: Error, out: &mut Vec<Outbound>) {
        out.push(Outbound::Failed(error));
        self.drop_transport(out);
        self.retry(out);
    }

    fn drop_transport(&mut self, out: &mut Vec<Outbound>) {
        self.ws = None;
        self.head = BytesMut::new();
        self.secrets = None;
        self.attempt_deadline = None;
        if !self.transport_gone {
            self.transport_gone = true;
            out.push(Outbound::Disconnect);
        }
    }

    fn retry(&mut self, out: &mut Vec<Outbound>) {
        self.failures = self.failures.saturating_add(1);
        if !self.config.backoff.allows(self.failures) {
            return self.stop(StopReason::GaveUp, out);
        }
        let delay_ms = self.config.backoff.delay_ms(self.failures, &mut self.rng);
        let at_ms = self.now_ms.saturating_add(delay_ms);
        self.state = State::Waiting;
        self.retry_at = Some(at_ms);
        out.push(Outbound::Retrying {
            attempt: self.failures + 1,
            delay_ms,
            at_ms,
        });
    }

    fn stop(&mut self, reason: StopReason, out: &mut Vec<Outbound>) {
        self.state = State::Stopped;
        self.retry_at = None;
        for id in self.calls.drain() {
            out.push(Outbound::CallFailed {
                id,
                error: CallError::Stopped,
            });
        }
        out.push(Outbound::Stopped { reason });
    }
}

/// The payload of confirming ping `seq`: a tag and the counter.
fn confirm_payload(seq: u64) -> Bytes {
    let mut payload = Vec::with_capacity(13);
    payload.extend_from_slice(b"spool");
    payload.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(payload)
}

/// The headers of the server's 101 answer, names lowercased.
fn response_headers(head: &[u8]) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}
