//! Channel runtime configuration: plain data, written into event logs.

use serde::{Deserialize, Serialize};

/// How the runtime behaves, and its limits.
///
/// There is no `Default`: the hash seed must be chosen. Start from [`Config::with_seed`], which
/// fills in every other field with the default its doc gives. A logged configuration without a
/// `hash_seed` is refused; missing limits take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Joins past this many channels on one socket are refused with "too many channels joined".
    /// Default 100, Phoenix's `max_channels_per_transport`.
    #[serde(default = "default::max_channels_per_socket")]
    pub max_channels_per_socket: usize,
    /// The longest message a client may send, in bytes (the frame's payload): past it, the
    /// socket is closed with 1009 before anything is parsed. Default 1 MiB. Handling a message
    /// holds at most about twice its length (the frame, and the frame a handler makes of it).
    #[serde(default = "default::max_message_len")]
    pub max_message_len: usize,
    /// The longest topic, in bytes. Default 255: the binary serializer's length byte. A
    /// message with a longer one closes its socket with 1008; it is never echoed.
    #[serde(default = "default::max_topic_len")]
    pub max_topic_len: usize,
    /// The longest `join_ref` or `ref`, in bytes. Default 255, as for topics (phoenix.js's refs
    /// are counters, a few digits). Past it, the socket is closed with 1008.
    #[serde(default = "default::max_ref_len")]
    pub max_ref_len: usize,
    /// The longest event name, in bytes. Default 255, as for topics. Past it, the socket is
    /// closed with 1008.
    #[serde(default = "default::max_event_len")]
    pub max_event_len: usize,
    /// Presences one topic may hold; a track past it is dropped with a notice. Default 100,000.
    #[serde(default = "default::max_presences_per_topic")]
    pub max_presences_per_topic: usize,
    /// Push `presence_state` (the topic's whole presence map) after every successful join, so
    /// phoenix.js's `Presence` leaves its pending state. Default true.
    #[serde(default = "default::presence_state_on_join")]
    pub presence_state_on_join: bool,
    /// A socket that sends nothing for this long is dropped: its channels end, its presences
    /// leave, and the shell is told to close it with 1001. `None` never drops one. Default
    /// 60,000 ms, Phoenix's: phoenix.js sends a heartbeat every 30 s. The runtime asks for a
    /// [`Event::Tick`](super::Event::Tick) through `Runtime::next_deadline`.
    #[serde(default = "default::heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// This node's name; it prefixes every `phx_ref` so refs stay unique across nodes. A shell
    /// should make it unique per boot. Default "spool".
    #[serde(default = "default::node")]
    pub node: String,
    /// Seeds the hash maps keyed by topics and presence keys, which peers choose: a seed they
    /// can guess lets them pick keys that collide. A shell draws it from the OS; a replay reuses
    /// the logged one; a test picks any. No default.
    pub hash_seed: u64,
}

impl Config {
    /// The defaults, with `hash_seed` (from the OS in a server; any number in a test).
    pub fn with_seed(hash_seed: u64) -> Config {
        Config {
            max_channels_per_socket: default::max_channels_per_socket(),
            max_message_len: default::max_message_len(),
            max_topic_len: default::max_topic_len(),
            max_ref_len: default::max_ref_len(),
            max_event_len: default::max_event_len(),
            max_presences_per_topic: default::max_presences_per_topic(),
            presence_state_on_join: default::presence_state_on_join(),
            heartbeat_timeout_ms: default::heartbeat_timeout_ms(),
            node: default::node(),
            hash_seed,
        }
    }
}

/// Each field's default, for [`Config::with_seed`] and for logs written before a field existed.
mod default {
    pub(super) fn max_channels_per_socket() -> usize {
        100
    }
    pub(super) fn max_message_len() -> usize {
        1 << 20
    }
    pub(super) fn max_topic_len() -> usize {
        255
    }
    pub(super) fn max_ref_len() -> usize {
        255
    }
    pub(super) fn max_event_len() -> usize {
        255
    }
    pub(super) fn max_presences_per_topic() -> usize {
        100_000
    }
    pub(super) fn presence_state_on_join() -> bool {
        true
    }
    pub(super) fn heartbeat_timeout_ms() -> Option<u64> {
        Some(60_000)
    }
    pub(super) fn node() -> String {
        "spool".into()
    }
}
