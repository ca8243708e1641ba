//! What goes into a [`Client`](super::Client) and what comes out: its serde surface.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{CallError, Error};
use crate::ws::{Message, Transmit};

/// Something that happened, handed to [`Client::handle`](super::Client::handle). Every variant
/// carries `now_ms`, the shell's clock; an older one than already seen counts as the newest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Begin: the first attempt is asked for at once.
    Start {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The TCP connection asked for by [`Outbound::Connect`] is up. The shell draws a fresh
    /// WebSocket key and mask seed for each attempt.
    Connected {
        /// The shell's clock.
        now_ms: u64,
        /// The 16 random bytes behind `Sec-WebSocket-Key`.
        #[serde(with = "crate::b64::array")]
        key: [u8; 16],
        /// Seeds the frame masks.
        mask_seed: u64,
    },
    /// The TCP connection could not be opened.
    ConnectFailed {
        /// The shell's clock.
        now_ms: u64,
        /// Why, in the shell's words.
        reason: String,
    },
    /// TLS asked for by [`Outbound::StartTls`] is up.
    Secured {
        /// The shell's clock.
        now_ms: u64,
    },
    /// TLS failed.
    TlsFailed {
        /// The shell's clock.
        now_ms: u64,
        /// Why, in the shell's words.
        reason: String,
    },
    /// Bytes arrived (after TLS, decrypted).
    Receive {
        /// The shell's clock.
        now_ms: u64,
        /// The bytes, exactly as read.
        #[serde(with = "crate::b64")]
        bytes: Bytes,
    },
    /// The transport ended (end of stream, reset, a failed read or write).
    TransportClosed {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The application sends a message: at once when open and the rate limit allows, else
    /// queued (or dropped, when the queue is full).
    Send {
        /// The shell's clock.
        now_ms: u64,
        /// A text or binary message.
        message: Message,
    },
    /// The application sends a message on this connection only: at once when open (no queue,
    /// no rate limit, no resend), else nowhere. For what belongs to one connection: a join,
    /// a heartbeat, an answer.
    SendNow {
        /// The shell's clock.
        now_ms: u64,
        /// The message.
        message: Message,
    },
    /// With `hold_until_ready`, the connection is ready for the queue (a channel is joined,
    /// say): queued messages flow from now until the connection ends.
    Ready {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The server answered the oldest `count` messages sent and not yet confirmed (with
    /// `confirm_by_reply`; its replies come in the order of the messages): they leave the
    /// queue. More than were sent confirms those sent. Ignored without `confirm_by_reply`.
    Confirmed {
        /// The shell's clock.
        now_ms: u64,
        /// How many.
        count: u32,
    },
    /// The messages sent on this connection and not yet confirmed were lost on the way (a
    /// Phoenix channel crashed, say): they wait to be sent again, first, and with
    /// `hold_until_ready` the queue waits for the next [`Event::Ready`].
    Rewind {
        /// The shell's clock.
        now_ms: u64,
    },
    /// A caller waits for a reply under `id` (chosen by the shell, unique among waiting calls).
    Call {
        /// The shell's clock.
        now_ms: u64,
        /// The call's id.
        id: u64,
        /// How long to wait; `None`: `call_timeout_ms`.
        timeout_ms: Option<u64>,
    },
    /// The reply to call `id` is ready. Answered by [`Outbound::Reply`] when the call still
    /// waits; ignored when it timed out already, so every call ends exactly once.
    Reply {
        /// The shell's clock.
        now_ms: u64,
        /// The call's id.
        id: u64,
    },
    /// The application is done: close the connection (code and reason for the close frame)
    /// and make no more attempts.
    Close {
        /// The shell's clock.
        now_ms: u64,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A timer fired; early ticks do nothing.
    Tick {
        /// The shell's clock.
        now_ms: u64,
    },
}

impl Event {
    /// The instant this event carries.
    pub fn now_ms(&self) -> u64 {
        match *self {
            Event::Start { now_ms }
            | Event::Connected { now_ms, .. }
            | Event::ConnectFailed { now_ms, .. }
            | Event::Secured { now_ms }
            | Event::TlsFailed { now_ms, .. }
            | Event::Receive { now_ms, .. }
            | Event::TransportClosed { now_ms }
            | Event::Send { now_ms, .. }
            | Event::SendNow { now_ms, .. }
            | Event::Ready { now_ms }
            | Event::Confirmed { now_ms, .. }
            | Event::Rewind { now_ms }
            | Event::Call { now_ms, .. }
            | Event::Reply { now_ms, .. }
            | Event::Close { now_ms, .. }
            | Event::Tick { now_ms } => now_ms,
        }
    }
}

/// What the client asks its shell to do, or tells it. Carried out in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outbound", rename_all = "snake_case")]
pub enum Outbound {
    /// Open a TCP connection to this host and port (the proxy's, with a proxy), then answer
    /// [`Event::Connected`] or [`Event::ConnectFailed`]. Any earlier transport is gone by now.
    Connect {
        /// A host name or address.
        host: String,
        /// The port.
        port: u16,
    },
    /// Start TLS over the transport for this server name, then answer [`Event::Secured`] or
    /// [`Event::TlsFailed`].
    StartTls {
        /// The server name to verify.
        host: String,
    },
    /// Write these bytes.
    Transmit(Transmit),
    /// Close the transport once the preceding transmits are written.
    Disconnect,
    /// The WebSocket connection is open (Late's `handle_connect`).
    Opened {
        /// The subprotocol the server chose.
        protocol: Option<String>,
        /// The response headers, names lowercased, in order.
        headers: Vec<(String, String)>,
    },
    /// A message arrived (pings and pongs too; pings are answered already).
    Deliver(Message),
    /// An attempt failed; another follows after the backoff unless `Stopped` comes next.
    Failed(Error),
    /// An open connection ended (Late's `handle_disconnect`); another attempt follows after
    /// the backoff unless the application closed it.
    Disconnected {
        /// The close code: the one received or sent, 1006 without a close handshake.
        code: u16,
        /// The close reason (`pong timeout` when the heartbeat declared the peer dead).
        reason: String,
    },
    /// The next attempt is in `delay_ms`, at `at_ms`; `attempt` counts attempts in a row.
    Retrying {
        /// The attempt that comes next, from 1.
        attempt: u32,
        /// The backoff delay.
        delay_ms: u64,
        /// When.
        at_ms: u64,
    },
    /// A message was refused because the queue is full; `dropped` is the running total.
    Dropped {
        /// Messages dropped since the client was made.
        dropped: u64,
    },
    /// Every queued message is sent and confirmed: nothing waits to be sent.
    Drained,
    /// Deliver the reply to call `id`.
    Reply {
        /// The call's id.
        id: u64,
    },
    /// Call `id` ends without a reply.
    CallFailed {
        /// The call's id.
        id: u64,
        /// Why.
        error: CallError,
    },
    /// The client will make no more attempts; emitted once, last.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// Why a client stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The application closed it.
    Closed,
    /// `backoff.max_attempts` attempts in a row failed.
    GaveUp,
}

/// Where a client stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Made, not started.
    Idle,
    /// Waiting for the TCP connection.
    Connecting,
    /// Waiting for the proxy's answer to `CONNECT`.
    Proxying,
    /// Waiting for TLS.
    Securing,
    /// Waiting for the WebSocket handshake.
    Upgrading,
    /// Open: messages flow.
    Open,
    /// Closing at the application's request.
    Closing,
    /// Waiting out the backoff before the next attempt.
    Waiting,
    /// Done for good.
    Stopped,
}

impl State {
    /// The state's name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Proxying => "proxying",
            State::Securing => "securing",
            State::Upgrading => "upgrading",
            State::Open => "open",
            State::Closing => "closing",
            State::Waiting => "waiting",
            State::Stopped => "stopped",
        }
    }
}
