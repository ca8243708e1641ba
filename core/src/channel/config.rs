//! Channel runtime configuration: plain data with defaults, written into event logs.

use serde::{Deserialize, Serialize};

/// How the runtime behaves, and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Joins past this many channels on one socket are refused with "too many channels joined".
    /// Default 100, Phoenix's `max_channels_per_transport`.
    pub max_channels_per_socket: usize,
    /// The longest topic, in bytes. Default 255: the binary serializer's length byte.
    pub max_topic_len: usize,
    /// Presences one topic may hold; a track past it is dropped with a notice. Default 100,000.
    pub max_presences_per_topic: usize,
    /// Push `presence_state` (the topic's whole presence map) after every successful join, so
    /// phoenix.js's `Presence` leaves its pending state. Default true.
    pub presence_state_on_join: bool,
    /// This node's name; it prefixes every `phx_ref` so refs stay unique across nodes. A shell
    /// should make it unique per boot. Default "spool".
    pub node: String,
    /// Seeds the hash maps keyed by topics and presence keys (chosen by peers). A shell draws
    /// it from the OS; replays reuse the logged one. Default 0.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_channels_per_socket: 100,
            max_topic_len: 255,
            max_presences_per_topic: 100_000,
            presence_state_on_join: true,
            node: "spool".into(),
            hash_seed: 0,
        }
    }
}
