//! Cluster mode: several nodes share topics and presence through a pubsub bus (Redis in the
//! shells), as Phoenix.PubSub's Redis adapter and Phoenix.Tracker do (PROTOCOLS.md, Presence).
//!
//! The bus is one channel per cluster. Every node publishes there and reads everything; a
//! message is one JSON object ([`wire`]) stamped with its sender's [`Replica`] and a sequence
//! number. The core never touches the bus: the channel [`Runtime`](crate::channel::Runtime)
//! hands what to publish to its shell as
//! [`Outbound::ClusterPublish`](crate::channel::Outbound::ClusterPublish), and the shell hands
//! what it read back as [`Event::ClusterReceive`](crate::channel::Event::ClusterReceive).
//!
//! # Broadcasts
//!
//! A broadcast on one node goes to its own subscribers and onto the bus; every other node
//! delivers it to its subscribers, encoding the frame once. Sequence numbers make delivery
//! at most once and in publish order per publisher: a repeat, or a message older than one
//! already taken, is dropped. Redis's pub/sub is itself at most once, so a message published
//! while a node's link is down is lost for that node (it is counted in a notice).
//!
//! # Presence
//!
//! Presence is a delta-state observed-remove set. Each node owns the presences of its own
//! sockets and tags every change with a dot `(replica, clock)`, its clock counting the
//! changes it made; a replica is the node id plus a per-boot id the shell draws, so a node that
//! restarts is a new replica. A change travels as a delta (`add` a presence under a dot, or
//! `remove` the presence of a dot, itself under a new dot), and a node merges deltas in any
//! order: a dot it has seen is never applied twice, and a removal seen before its add wins.
//! Each node remembers which dots of each replica it has seen (a contiguous prefix and a
//! bounded set of dots past it); a heartbeat carries its sender's clock, and a node that finds
//! itself behind (a lost delta, a gap in sequence numbers, a first contact) asks for the
//! sender's state, a full list of its presences, which repairs anything lost.
//!
//! A replica not heard from for `down_after_ms` is down: its presences leave (local clients
//! get a `presence_diff`) and come back if it is heard from again; after `permdown_after_ms`
//! it is forgotten. A node shutting down cleanly says goodbye, and its presences leave at once;
//! a node that restarts is a new replica, and the old one is forgotten when the new one is
//! first heard.

mod context;
pub(crate) mod state;
pub mod wire;

use serde::{Deserialize, Serialize};

/// One boot of one node: the owner of presences, and the sender of messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// The node id, stable across restarts (`--node-id`).
    pub node: String,
    /// Drawn by the shell at each boot, so that a restarted node is a new replica.
    pub boot: u64,
}

impl std::fmt::Display for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:x}", self.node, self.boot)
    }
}

/// Cluster options that do not hold together: says which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionsError(pub String);

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster options: {}", self.0)
    }
}

impl std::error::Error for OptionsError {}

/// How a node takes part in its cluster. Plain data, written into channel logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// The cluster's name: nodes of one cluster share its bus channel.
    pub cluster: String,
    /// This node: its id and this boot's id.
    pub replica: Replica,
    /// What carries the bus, for `adapter_label` (`redis`, `memory`, ...).
    #[serde(default = "default::transport")]
    pub transport: String,
    /// How often this node says it is alive, with its clock. Default 1,500 ms, Phoenix.Tracker's
    /// `broadcast_period`.
    #[serde(default = "default::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// A replica silent this long is down: its presences leave. Default 30,000 ms,
    /// Phoenix.Tracker's `down_period`.
    #[serde(default = "default::down_after_ms")]
    pub down_after_ms: u64,
    /// A replica silent this long is forgotten. Default 1,200,000 ms (20 minutes),
    /// Phoenix.Tracker's `permdown_period`.
    #[serde(default = "default::permdown_after_ms")]
    pub permdown_after_ms: u64,
    /// Replicas remembered at once; a message from one more is dropped with a notice.
    /// Default 1,024.
    #[serde(default = "default::max_replicas")]
    pub max_replicas: usize,
    /// The longest bus message read or written, in bytes: a longer one is dropped with a
    /// notice (a state transfer that long cannot be sent: peers then see that node's presences
    /// through deltas only). Default 16 MiB.
    #[serde(default = "default::max_message_len")]
    pub max_message_len: usize,
    /// Presences kept per other replica; an add past it is dropped with a notice (that
    /// replica's presences then stay incomplete here until some leave). Default 1,000,000.
    #[serde(default = "default::max_presences_per_replica")]
    pub max_presences_per_replica: usize,
    /// Dots seen out of order that a node keeps per replica; past it, that replica's deltas are
    /// dropped until its state arrives. Default 4,096.
    #[serde(default = "default::max_out_of_order")]
    pub max_out_of_order: usize,
}

impl Options {
    /// The defaults for `node` in `cluster`, this boot being `boot` (random, from the shell).
    pub fn new(cluster: &str, node: &str, boot: u64) -> Options {
        Options {
            cluster: cluster.into(),
            replica: Replica {
                node: node.into(),
                boot,
            },
            transport: default::transport(),
            heartbeat_interval_ms: default::heartbeat_interval_ms(),
            down_after_ms: default::down_after_ms(),
            permdown_after_ms: default::permdown_after_ms(),
            max_replicas: default::max_replicas(),
            max_message_len: default::max_message_len(),
            max_presences_per_replica: default::max_presences_per_replica(),
            max_out_of_order: default::max_out_of_order(),
        }
    }

    /// Names the bus, for [`Runtime::adapter_label`](crate::channel::Runtime::adapter_label).
    pub fn transport(mut self, transport: &str) -> Options {
        self.transport = transport.into();
        self
    }

    /// Checks the timers: each must be positive, and a replica must be down before it is
    /// forgotten.
    ///
    /// # Errors
    /// A sentence saying which setting is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 {
            return Err("the heartbeat interval must be positive".into());
        }
        if self.down_after_ms <= self.heartbeat_interval_ms {
            return Err("down_after_ms must be longer than the heartbeat interval".into());
        }
        if self.permdown_after_ms < self.down_after_ms {
            return Err("permdown_after_ms must not be shorter than down_after_ms".into());
        }
        if self.replica.node.is_empty() || self.replica.node.len() > wire::MAX_NAME_LEN {
            return Err(format!(
                "a node id is 1 to {} bytes long",
                wire::MAX_NAME_LEN
            ));
        }
        if self.max_replicas == 0 || self.max_message_len == 0 {
            return Err("max_replicas and max_message_len must be positive".into());
        }
        Ok(())
    }
}

mod default {
    pub(super) fn transport() -> String {
        "bus".into()
    }
    pub(super) fn heartbeat_interval_ms() -> u64 {
        1_500
    }
    pub(super) fn down_after_ms() -> u64 {
        30_000
    }
    pub(super) fn permdown_after_ms() -> u64 {
        1_200_000
    }
    pub(super) fn max_replicas() -> usize {
        1_024
    }
    pub(super) fn max_message_len() -> usize {
        16 << 20
    }
    pub(super) fn max_presences_per_replica() -> usize {
        1_000_000
    }
    pub(super) fn max_out_of_order() -> usize {
        4_096
    }
}
