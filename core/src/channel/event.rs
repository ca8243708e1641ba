//! What goes into the channel [`Runtime`](super::Runtime) and what comes out.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::payload::Payload;
use crate::presence;
use crate::ws::Text;

/// A socket, as the shell numbers them. Chosen by the shell, unique while the socket lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub u64);

/// A WebSocket message to or from a client: what the shell reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// A text frame: the V2 JSON array.
    Text(Text),
    /// A binary frame: the V2 binary serializer.
    Binary(#[serde(with = "crate::b64")] Bytes),
}

/// Something that happened, handed to [`Runtime::handle`](super::Runtime::handle).
///
/// Shells mostly send `Connect`, `Receive` and `Disconnect`: the runtime decodes frames into the
/// other events itself. The others serve applications and tests that drive it without a wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A socket connected.
    Connect {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
    },
    /// A frame from a socket, in the Phoenix V2 protocol.
    Receive {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
        /// The frame.
        frame: Frame,
    },
    /// A socket is gone; its channels end and its presences leave.
    Disconnect {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
    },
    /// A client joins a topic, or joins it again (phoenix.js's rejoin after an error is the
    /// same `phx_join`; logs from before the two were one may say `rejoin`).
    #[serde(alias = "rejoin")]
    Join {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
        /// The topic.
        topic: String,
        /// The join's reference; later messages on this channel carry it.
        join_ref: String,
        /// The message reference to reply to (phoenix.js uses `join_ref`).
        #[serde(rename = "ref")]
        msg_ref: Option<String>,
        /// The join parameters.
        params: Value,
    },
    /// A client leaves a topic.
    Leave {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
        /// The topic.
        topic: String,
        /// The channel's join reference, if the client sent one.
        join_ref: Option<String>,
        /// The message reference to reply to.
        #[serde(rename = "ref")]
        msg_ref: Option<String>,
    },
    /// A client sends an event on a joined topic.
    Push {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        client_id: ClientId,
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The channel's join reference; a stale one is dropped.
        join_ref: Option<String>,
        /// The message reference to reply to.
        #[serde(rename = "ref")]
        msg_ref: Option<String>,
        /// The payload.
        payload: Payload,
    },
    /// The application broadcasts to a topic's subscribers, but for `except` if given.
    Broadcast {
        /// The shell's clock.
        now_ms: u64,
        /// A socket not to deliver to (broadcast_from).
        except: Option<ClientId>,
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
    },
    /// A channel crashed (`client_id` and `topic` given), or the whole runtime did (neither).
    Crash {
        /// The shell's clock.
        now_ms: u64,
        /// The socket whose channel crashed.
        client_id: Option<ClientId>,
        /// The topic of the channel that crashed.
        topic: Option<String>,
        /// Why, for the logs.
        reason: String,
    },
    /// The runtime recovers from a crash and accepts joins again.
    Restart {
        /// The shell's clock.
        now_ms: u64,
    },
    /// Time passed: the shell's timer for [`Runtime::next_deadline`](super::Runtime::next_deadline)
    /// fired. Sockets silent for the heartbeat timeout are dropped.
    Tick {
        /// The shell's clock.
        now_ms: u64,
    },
    /// A message from the cluster's bus, as read (cluster mode; see [`crate::cluster`]).
    ClusterReceive {
        /// The shell's clock.
        now_ms: u64,
        /// The message.
        data: Text,
    },
    /// The shell's link to the bus came up, first or again: this node publishes its state
    /// and asks for everyone's, since what was said while the link was down is lost.
    ClusterUp {
        /// The shell's clock.
        now_ms: u64,
    },
    /// The node is shutting down: in cluster mode its peers are told, so its presences leave
    /// at once.
    Shutdown {
        /// The shell's clock.
        now_ms: u64,
    },
}

impl Event {
    /// The instant this event carries.
    pub fn now_ms(&self) -> u64 {
        match *self {
            Event::Connect { now_ms, .. }
            | Event::Receive { now_ms, .. }
            | Event::Disconnect { now_ms, .. }
            | Event::Join { now_ms, .. }
            | Event::Leave { now_ms, .. }
            | Event::Push { now_ms, .. }
            | Event::Broadcast { now_ms, .. }
            | Event::Crash { now_ms, .. }
            | Event::Restart { now_ms }
            | Event::Tick { now_ms }
            | Event::ClusterReceive { now_ms, .. }
            | Event::ClusterUp { now_ms }
            | Event::Shutdown { now_ms } => now_ms,
        }
    }

    /// The socket this event says was heard from, if any: it sent a frame, or joined, left or
    /// pushed, or connected.
    pub fn sender(&self) -> Option<ClientId> {
        match *self {
            Event::Connect { client_id, .. }
            | Event::Receive { client_id, .. }
            | Event::Join { client_id, .. }
            | Event::Leave { client_id, .. }
            | Event::Push { client_id, .. } => Some(client_id),
            Event::Disconnect { .. }
            | Event::Broadcast { .. }
            | Event::Crash { .. }
            | Event::Restart { .. }
            | Event::Tick { .. }
            | Event::ClusterReceive { .. }
            | Event::ClusterUp { .. }
            | Event::Shutdown { .. } => None,
        }
    }
}

/// What the runtime asks its shell to deliver, or tells it.
///
/// Every variant that reaches clients carries its encoded [`Frame`]; a broadcast's frame is
/// encoded once and the same bytes go to every recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outbound", rename_all = "snake_case")]
pub enum Outbound {
    /// A reply to a client's join, push, leave or heartbeat.
    Reply {
        /// The recipient.
        client_id: ClientId,
        /// The topic.
        topic: String,
        /// The channel's join reference (null for unmatched topics and heartbeats).
        join_ref: Option<String>,
        /// The reference of the message replied to.
        #[serde(rename = "ref")]
        msg_ref: Option<String>,
        /// `ok` or `error` (or an application's own).
        status: String,
        /// The response.
        response: Payload,
        /// The encoded reply.
        frame: Frame,
    },
    /// A message for one client: an application push, `presence_state`, `phx_close`, `phx_error`.
    PushMessage {
        /// The recipient.
        client_id: ClientId,
        /// The topic.
        topic: String,
        /// The recipient channel's join reference.
        join_ref: Option<String>,
        /// Set on `phx_close` and `phx_error` (it is the join reference), else null.
        #[serde(rename = "ref")]
        msg_ref: Option<String>,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
        /// The encoded message.
        frame: Frame,
    },
    /// A broadcast: one frame, many recipients.
    BroadcastMessage {
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// Who gets it, in subscription order.
        recipients: Vec<ClientId>,
        /// The encoded broadcast, the same for every recipient.
        frame: Frame,
    },
    /// Presence changed on a topic: a `presence_diff` broadcast.
    PresenceDiff {
        /// The topic.
        topic: String,
        /// What joined and what left.
        diff: presence::Diff,
        /// Who gets it.
        recipients: Vec<ClientId>,
        /// The encoded `presence_diff` broadcast.
        frame: Frame,
    },
    /// A socket must be closed with this WebSocket close code (it sent what cannot be decoded).
    CloseSocket {
        /// The socket.
        client_id: ClientId,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A notice for logs and tests: a dropped stale message, a crash, a restart.
    System {
        /// A short stable label.
        label: String,
    },
    /// A message for the cluster's bus (cluster mode): publish it on the cluster's channel.
    ClusterPublish {
        /// The encoded message.
        data: Text,
    },
}

/// Who an outbound's frame goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipients<'a> {
    /// Nobody: a notice or a command.
    None,
    /// One socket.
    One(ClientId),
    /// Several sockets, the same frame to each.
    Many(&'a [ClientId]),
}

impl Outbound {
    /// The frame to send, and to whom.
    pub fn delivery(&self) -> (Recipients<'_>, Option<&Frame>) {
        match self {
            Outbound::Reply {
                client_id, frame, ..
            }
            | Outbound::PushMessage {
                client_id, frame, ..
            } => (Recipients::One(*client_id), Some(frame)),
            Outbound::BroadcastMessage {
                recipients, frame, ..
            }
            | Outbound::PresenceDiff {
                recipients, frame, ..
            } => (Recipients::Many(recipients), Some(frame)),
            Outbound::CloseSocket { .. }
            | Outbound::System { .. }
            | Outbound::ClusterPublish { .. } => (Recipients::None, None),
        }
    }
}
