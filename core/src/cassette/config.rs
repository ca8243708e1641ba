//! The cassette's configuration and bounds.

use serde::{Deserialize, Serialize};

/// How a [`crate::cassette::Cassette`] behaves, and the bounds a reviewer audits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Patches name their ops (`"Update"`) instead of numbering them, and `update` messages say
    /// `{"debug": true}`. Default false.
    pub debug: bool,
    /// How long a preflight waits for its socket, ms. Default 60,000 (sprocket's 60 s: a page
    /// that takes longer to load and connect reloads itself on `preflight_not_found`).
    pub preflight_ttl_ms: u64,
    /// Preflights held at once. Default 10,000 (about 200 bytes each: 2 MB). Past it the oldest
    /// is evicted: its page gets `preflight_not_found` and reloads, the new page works.
    pub max_preflights: usize,
    /// Live sprockets held at once. Default 10,000. Past it a join is answered `connect_error`
    /// and its preflight is left for a retry.
    pub max_sprockets: usize,
    /// The longest client message read, bytes. Default 65,536 (an input's value, a hook's
    /// payload); a longer one is answered `connect_error` without being parsed.
    pub max_message_len: usize,
    /// Where the page's `<script src>` points. Default `/spool.js`.
    pub script_path: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            debug: false,
            preflight_ttl_ms: 60_000,
            max_preflights: 10_000,
            max_sprockets: 10_000,
            max_message_len: 65_536,
            script_path: "/spool.js".to_string(),
        }
    }
}
