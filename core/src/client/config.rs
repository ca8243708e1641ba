//! [`Config`]: where to connect, how to reconnect, what to keep while disconnected.

use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::proxy::Proxy;
use crate::ws::{self, ConfigError, Url};

/// How a client session behaves. Plain data, written into event logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The server's URL.
    pub url: Url,
    /// The WebSocket connection's configuration. Its `ping_interval_ms` and `pong_timeout_ms`
    /// are the heartbeat: a ping once nothing arrived for the interval, and the peer declared
    /// dead (and the connection dropped and re-made) when nothing answers within the timeout.
    /// Its `handshake_timeout_ms` is replaced by `connect_timeout_ms`.
    #[serde(default)]
    pub ws: ws::Config,
    /// Extra request headers (`Origin`, `Authorization`, cookies).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// An HTTP proxy to tunnel through with `CONNECT`. Default: none.
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// How long one attempt may take, from [`Outbound::Connect`](super::Outbound::Connect)
    /// until the WebSocket handshake completes (TCP, proxy, TLS and upgrade together).
    /// Default 10,000 ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The delays between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Seeds the jitter of the backoff. The shell draws it; replays reuse it.
    #[serde(default)]
    pub jitter_seed: u64,
    /// The most messages kept for sending: those waiting for a connection and those sent but
    /// not yet confirmed. Past it, a new message is dropped (drop newest: what was queued first
    /// keeps its place) and counted. Default 1,000.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// The most payload bytes those messages may hold together; past it, a new message is
    /// dropped as above. Default 16 MiB, so the queue's worst case is about that much.
    #[serde(default = "default_queue_max_len")]
    pub queue_max_len: usize,
    /// Keep sent messages until a pong confirms the peer read them, and send them again after
    /// a reconnect if none did. Default true. Off: a message is forgotten once transmitted, and
    /// what was in flight when a connection died is lost.
    #[serde(default = "default_true")]
    pub resend_unconfirmed: bool,
    /// Sent messages are confirmed by the application's protocol
    /// ([`Event::Confirmed`](super::Event::Confirmed): the server answered them, in order)
    /// rather than by pongs, and no confirming pings are sent. For protocols whose server
    /// answers every message (Phoenix pushes with replies): a pong proves a frame was read, a
    /// reply that it was handled. Default false.
    #[serde(default)]
    pub confirm_by_reply: bool,
    /// After the handshake, keep the queue until [`Event::Ready`](super::Event::Ready): for
    /// protocols where a connection must do something first (join a channel). Default false.
    #[serde(default)]
    pub hold_until_ready: bool,
    /// How long a call waits for its reply when the call names no timeout. Default 5,000 ms
    /// (Late's `call/3`).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// The most calls waiting for replies at once; more fail at once. Default 1,024.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// A limit on sends. Default: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `burst` messages may go at once, then `per_second` on average.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// The bucket's size, in messages. At least 1.
    pub burst: u32,
    /// The refill rate, in messages per second. At least 1.
    pub per_second: u32,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_queue_max() -> usize {
    1_000
}
fn default_queue_max_len() -> usize {
    16 << 20
}
fn default_true() -> bool {
    true
}
fn default_call_timeout_ms() -> u64 {
    5_000
}
fn default_max_calls() -> usize {
    1_024
}

impl Config {
    /// A configuration for `url` with every default.
    pub fn new(url: Url) -> Config {
        Config {
            url,
            ws: ws::Config::default(),
            headers: Vec::new(),
            proxy: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            backoff: Backoff::default(),
            jitter_seed: 0,
            queue_max: default_queue_max(),
            queue_max_len: default_queue_max_len(),
            resend_unconfirmed: true,
            confirm_by_reply: false,
            hold_until_ready: false,
            call_timeout_ms: default_call_timeout_ms(),
            max_calls: default_max_calls(),
            rate_limit: None,
        }
    }

    /// Checks that the values make sense together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.validate().is_err() {
            return Err(ConfigError::new("url", "needs a host and a target"));
        }
        self.ws.validate()?;
        self.backoff.validate()?;
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::new("connect_timeout_ms", "must be positive"));
        }
        if self.queue_max == 0 || self.queue_max_len == 0 {
            return Err(ConfigError::new(
                "queue_max",
                "queue bounds must be positive",
            ));
        }
        if self.call_timeout_ms == 0 {
            return Err(ConfigError::new("call_timeout_ms", "must be positive"));
        }
        if let Some(rate) = self.rate_limit
            && (rate.burst == 0 || rate.per_second == 0)
        {
            return Err(ConfigError::new(
                "rate_limit",
                "burst and per_second must be at least 1",
            ));
        }
        if let Some(proxy) = &self.proxy
            && proxy.host.is_empty()
        {
            return Err(ConfigError::new("proxy.host", "must not be empty"));
        }
        Ok(())
    }
}
