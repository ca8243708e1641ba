//! Why an attempt failed, why a proxy refused, why a call did not get its reply.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a connection attempt failed, or an open connection was lost before it closed cleanly.
/// Each is followed by another attempt after the backoff, unless `max_attempts` is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum Error {
    /// The shell could not open the TCP connection (refused, unreachable, no address); the
    /// text is the shell's.
    Connect {
        /// What the shell said.
        reason: String,
    },
    /// TLS failed; the text is the shell's.
    Tls {
        /// What the shell said.
        reason: String,
    },
    /// The proxy refused the tunnel or answered nonsense.
    Proxy {
        /// How.
        proxy: ProxyError,
    },
    /// The attempt took longer than `connect_timeout_ms`; `state` is where it stood.
    Timeout {
        /// The state the attempt was in: `connecting`, `proxying`, `securing`, `upgrading`.
        state: super::State,
    },
    /// The transport ended before the connection opened.
    TransportClosed {
        /// The state the attempt was in.
        state: super::State,
    },
    /// The server refused or botched the WebSocket handshake; the text says how.
    Handshake {
        /// The WebSocket machine's reason.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { reason } => write!(f, "connect failed: {reason}"),
            Error::Tls { reason } => write!(f, "tls failed: {reason}"),
            Error::Proxy { proxy } => write!(f, "proxy: {proxy}"),
            Error::Timeout { state } => write!(f, "timed out while {}", state.name()),
            Error::TransportClosed { state } => {
                write!(f, "connection closed while {}", state.name())
            }
            Error::Handshake { reason } => write!(f, "handshake failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// How an HTTP proxy refused a `CONNECT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyError {
    /// 407: the proxy wants credentials, or refused the ones sent.
    AuthRequired,
    /// 403: the proxy does not allow this destination.
    Forbidden,
    /// 502: the proxy could not reach the server.
    BadGateway,
    /// Any other status that is not 2xx.
    Status(u16),
    /// The answer is not HTTP, or its head is longer than `ws.limits.max_handshake_len`.
    Malformed,
    /// The proxy sent bytes after its answer, before TLS started.
    UnexpectedBytes,
}

impl ProxyError {
    /// The error for an HTTP status that refuses a tunnel.
    pub fn from_status(status: u16) -> ProxyError {
        match status {
            407 => ProxyError::AuthRequired,
            403 => ProxyError::Forbidden,
            502 => ProxyError::BadGateway,
            other => ProxyError::Status(other),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::AuthRequired => f.write_str("407 proxy authentication required"),
            ProxyError::Forbidden => f.write_str("403 forbidden by the proxy"),
            ProxyError::BadGateway => f.write_str("502 the proxy could not reach the server"),
            ProxyError::Status(s) => write!(f, "the proxy answered {s}"),
            ProxyError::Malformed => f.write_str("the proxy's answer is not valid HTTP"),
            ProxyError::UnexpectedBytes => f.write_str("the proxy sent bytes after its answer"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Why a call got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallError {
    /// Its timeout passed first.
    Timeout,
    /// `max_calls` calls were waiting already.
    TooMany,
    /// Another call with the same id is waiting.
    DuplicateId,
    /// The client stopped first.
    Stopped,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallError::Timeout => "call timed out",
            CallError::TooMany => "too many calls waiting",
            CallError::DuplicateId => "a call with this id is waiting",
            CallError::Stopped => "the client stopped",
        })
    }
}

impl std::error::Error for CallError {}
