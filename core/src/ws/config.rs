//! Configuration: behaviour in [`Config`], the denial-of-service surface in [`Limits`].
//!
//! Both are plain data with defaults, written into event logs so a run can be replayed.

use serde::{Deserialize, Serialize};

use super::deflate::DeflateConfig;
use super::error::ConfigError;

/// How a connection behaves. Build with `Config::default()` and change fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Byte limits; see [`Limits`].
    pub limits: Limits,
    /// Server: the subprotocols it speaks, most preferred first; the first one the client also
    /// offered is chosen. Client: the subprotocols it offers. Default: none.
    pub protocols: Vec<String>,
    /// permessage-deflate (RFC 7692): `Some` offers it (client) or accepts it (server).
    /// Default: off, in both roles, as in Phoenix and Node's `ws` server. With context takeover
    /// a connection keeps its two zlib streams for life, about 420 KiB once a compressed message
    /// went each way; with `*_no_context_takeover` it holds none between messages. A broadcast
    /// is shared only when compressed once: see [`PreparedMessage`](super::PreparedMessage).
    /// Clients are off by default too, so one `Config::default()` means the same in both
    /// roles; a client that wants compression sets `Some(DeflateConfig::default())`.
    pub deflate: Option<DeflateConfig>,
    /// How long the opening handshake may take, from [`Event::Open`](super::Event::Open).
    /// Default 10,000 ms: long enough for a slow client, short enough that half-open
    /// connections do not pile up.
    pub handshake_timeout_ms: u64,
    /// How long to wait for the peer's close frame (or, for a client, the server's hang-up)
    /// once a close frame was sent. Default 5,000 ms.
    pub close_timeout_ms: u64,
    /// Close with 1001 when nothing arrives for this long, pings or not. Default: none (the
    /// keep-alive below finds dead peers; this is for peers that must talk).
    pub idle_timeout_ms: Option<u64>,
    /// Send a ping when nothing arrived for this long. Default 30,000 ms: browsers never ping,
    /// so without it a half-open TCP connection (a peer that vanished without a FIN) would be
    /// held forever; 30 s is Phoenix's heartbeat interval and passes the usual 60 s proxy idle
    /// timeouts. Costs one 2-byte frame per quiet interval. `None`: no pings.
    pub ping_interval_ms: Option<u64>,
    /// Once a keep-alive ping is out, how long to wait for anything at all from the peer (a
    /// pong, or any frame) before taking it for dead: the connection then sends a 1001 (going
    /// away) close frame, reports `Closed { code: 1001, reason: "pong timeout", clean: false }`
    /// and disconnects without waiting for an answer. Default 30,000 ms, so a dead peer is
    /// found within a minute of silence. `None`: keep pinging every `ping_interval_ms`.
    pub pong_timeout_ms: Option<u64>,
    /// Server: report a GET that is not an upgrade as
    /// [`Outbound::HttpRequest`](super::Outbound::HttpRequest), so the application can serve a
    /// page next to its sockets. Default false: such a request is answered 400.
    pub plain_http: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            protocols: Vec::new(),
            deflate: None,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            idle_timeout_ms: None,
            ping_interval_ms: Some(30_000),
            pong_timeout_ms: Some(30_000),
            plain_http: false,
        }
    }
}

impl Config {
    /// Checks that the values make sense together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_handshake_len < 256 {
            return Err(ConfigError::new(
                "limits.max_handshake_len",
                "must be at least 256",
            ));
        }
        if l.max_frame_len == 0 || l.max_message_len == 0 {
            return Err(ConfigError::new(
                "limits",
                "frame and message limits must be positive",
            ));
        }
        // No buffer can hold more than isize::MAX bytes; a larger limit is no limit, and would
        // leave arithmetic on peer-chosen lengths one step from overflowing.
        for (field, len) in [
            ("limits.max_handshake_len", l.max_handshake_len),
            ("limits.max_frame_len", l.max_frame_len),
            ("limits.max_message_len", l.max_message_len),
        ] {
            if len > MAX_BUFFER_LEN {
                return Err(ConfigError::new(field, "must be at most isize::MAX"));
            }
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::new(
                "handshake_timeout_ms",
                "must be positive: no handshake takes no time",
            ));
        }
        for (field, ms) in [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("pong_timeout_ms", self.pong_timeout_ms),
        ] {
            if ms == Some(0) {
                return Err(ConfigError::new(field, "must be positive, or None for off"));
            }
        }
        if let Some(d) = &self.deflate {
            d.validate()?;
        }
        for p in &self.protocols {
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                return Err(ConfigError::new(
                    "protocols",
                    "a subprotocol must be an HTTP token",
                ));
            }
        }
        Ok(())
    }
}

/// Byte limits: everything a peer can make a connection hold.
///
/// Worst case per connection: one partial frame header (14 bytes), the message being reassembled
/// (`max_message_len`), and during the handshake `max_handshake_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// The opening handshake's head, request or response, in bytes. Default 8 KiB, as in most
    /// HTTP servers; a larger head is answered 431.
    pub max_handshake_len: usize,
    /// One frame's payload, in bytes. Default 16 MiB (Autobahn 9.1.6 sends a 16 MiB frame).
    /// A larger frame closes with 1009.
    pub max_frame_len: usize,
    /// One message's payload after reassembly and inflation, in bytes. Default 64 MiB.
    /// A larger message closes with 1009.
    pub max_message_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_handshake_len: 8 * 1024,
            max_frame_len: 16 << 20,
            max_message_len: 64 << 20,
        }
    }
}

/// The most bytes one allocation may hold (`Vec` and `BytesMut` refuse more).
const MAX_BUFFER_LEN: usize = isize::MAX as usize;

/// RFC 7230 §3.2.6 `tchar`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
