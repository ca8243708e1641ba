//! What goes into a [`Connection`](super::Connection) and what comes out: the serde surface of
//! the WebSocket machine, and nothing else.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::deflate::DeflateParams;
use super::prepared::PreparedMessage;
use super::text::Text;
use super::transmit::Transmit;

/// Something that happened to a connection, handed to [`Connection::handle`](super::Connection::handle).
///
/// Every variant carries `now_ms`, the shell's clock in milliseconds. Only differences between
/// instants matter; a `now_ms` older than one already seen counts as the one already seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The transport is up. A server starts its handshake timer; a client transmits its
    /// upgrade request.
    Open {
        /// The shell's clock.
        now_ms: u64,
    },
    /// Bytes arrived from the peer, in a chunk of any size.
    Receive {
        /// The shell's clock.
        now_ms: u64,
        /// The bytes, exactly as read.
        #[serde(with = "crate::b64")]
        bytes: Bytes,
    },
    /// Server only: the application accepts the upgrade request reported by
    /// [`Outbound::Upgrade`]. The 101 answer is transmitted and the connection opens.
    Accept {
        /// The shell's clock.
        now_ms: u64,
    },
    /// Server only: the application refuses the upgrade request reported by
    /// [`Outbound::Upgrade`] with an HTTP status (403 for a refused origin, say).
    Reject {
        /// The shell's clock.
        now_ms: u64,
        /// The HTTP status code of the answer.
        status: u16,
        /// A short text that becomes the answer's body.
        reason: String,
    },
    /// Server only: the application answers a plain HTTP request reported by
    /// [`Outbound::HttpRequest`] (or refuses an upgrade with a page of its own). The connection
    /// closes after the answer.
    Respond {
        /// The shell's clock.
        now_ms: u64,
        /// The HTTP status code.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        #[serde(with = "crate::b64")]
        body: Bytes,
    },
    /// The application sends a message. Ignored unless the connection is open.
    Send {
        /// The shell's clock.
        now_ms: u64,
        /// The message to send.
        message: Message,
    },
    /// The application sends a message prepared once for many connections (a broadcast),
    /// maybe compressed already; see [`PreparedMessage`]. Ignored unless the connection is open.
    SendPrepared {
        /// The shell's clock.
        now_ms: u64,
        /// The message, and its compressed form if it has one.
        message: PreparedMessage,
    },
    /// The application starts the close handshake.
    Close {
        /// The shell's clock.
        now_ms: u64,
        /// The close code (RFC 6455 §7.4); an invalid one is sent as 1000.
        code: u16,
        /// The close reason, cut to fit a control frame.
        reason: String,
    },
    /// A timer fired. A tick before [`Connection::next_deadline`](super::Connection::next_deadline)
    /// does nothing.
    Tick {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The transport is gone (the peer hung up, or a read or write failed).
    TransportClosed {
        /// The shell's clock.
        now_ms: u64,
    },
}

impl Event {
    /// The instant this event carries.
    pub fn now_ms(&self) -> u64 {
        match *self {
            Event::Open { now_ms }
            | Event::Receive { now_ms, .. }
            | Event::Accept { now_ms }
            | Event::Reject { now_ms, .. }
            | Event::Respond { now_ms, .. }
            | Event::Send { now_ms, .. }
            | Event::SendPrepared { now_ms, .. }
            | Event::Close { now_ms, .. }
            | Event::Tick { now_ms }
            | Event::TransportClosed { now_ms } => now_ms,
        }
    }
}

/// A WebSocket message, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Message {
    /// A text message: valid UTF-8 by construction, in shared bytes.
    Text(Text),
    /// A binary message.
    Binary(#[serde(with = "crate::b64")] Bytes),
    /// A ping. Received pings are answered by the connection itself; they are delivered too,
    /// for applications that watch liveness.
    Ping(#[serde(with = "crate::b64")] Bytes),
    /// A pong.
    Pong(#[serde(with = "crate::b64")] Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Text>) -> Message {
        Message::Text(text.into())
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Message {
        Message::Binary(bytes.into())
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a ping or a pong.
    pub fn is_control(&self) -> bool {
        matches!(self, Message::Ping(_) | Message::Pong(_))
    }
}

/// What a connection asks its shell to do, or tells it.
///
/// A shell carries these out in order. All `Transmit`s from one call to `handle` should be written
/// in one vectored write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outbound", rename_all = "snake_case")]
pub enum Outbound {
    /// Write these bytes to the transport: [`Transmit::slices`] gives them as two slices for
    /// a vectored write.
    Transmit(Transmit),
    /// Server only: a valid upgrade request arrived. Answer with [`Event::Accept`] or
    /// [`Event::Reject`]; until then the connection waits (within its handshake timeout).
    /// Boxed, as the next one is: they come once a connection, and unboxed they would make
    /// every `Outbound` (one a delivered message) three times as large.
    Upgrade(Box<Request>),
    /// Server only, with [`Config::plain_http`](super::Config::plain_http): a GET that is not
    /// an upgrade arrived. Answer with [`Event::Respond`].
    HttpRequest(Box<Request>),
    /// The handshake is complete; messages may flow.
    Opened(Handshake),
    /// A whole message arrived from the peer.
    Deliver(Message),
    /// The connection has ended, cleanly or not. Emitted exactly once.
    Closed(CloseInfo),
    /// Close the transport once the preceding transmits are written. Not emitted after
    /// [`Event::TransportClosed`]: that transport is gone already.
    Disconnect,
}

/// An upgrade request as the server parsed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The request target: path and query, as sent (`/chat?room=1`).
    pub target: String,
    /// The `Host` header.
    pub host: String,
    /// The `Origin` header, if any: the input to an origin check.
    pub origin: Option<String>,
    /// The subprotocols the client offered, in its order.
    pub offered_protocols: Vec<String>,
    /// The subprotocol the server will answer with: the first of its configured list that the
    /// client offered.
    pub protocol: Option<String>,
    /// Every header, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query part of the target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the two sides agreed on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The subprotocol in use, if any.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters in use, if compression was negotiated.
    pub deflate: Option<DeflateParams>,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseInfo {
    /// The close code: the one received or sent, 1005 when a close frame carried none, 1006
    /// when the connection ended without a close handshake.
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// Whether both close frames were exchanged.
    pub clean: bool,
    /// Who ended it.
    pub initiator: Initiator,
}

/// Who ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// This side: the application, or the connection itself on a protocol error or timeout.
    Local,
    /// The peer sent a close frame.
    Remote,
    /// The transport went away.
    Transport,
}
