//! The policy of a server-side WebSocket session: which close code each way of ending a
//! connection sends, and how long the server drains its peer after hanging up.
//!
//! The shells run one session machine (`spool_std::WsProtocol`) between the bytes and the
//! application's handler. Its decisions are data here so that they are configuration, not code
//! in each shell, and so that they are written into every event log's setup line: a replayed
//! connection ends with the close the live one sent.

use serde::{Deserialize, Serialize};

use crate::ws::ConfigError;

/// How a server session ends connections. Build with `Config::default()` and change fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Sent when the handler returns `Next::Stop`. Default 1000, normal closure.
    pub stop_code: u16,
    /// Sent to every connection when the server shuts down. Default 1001, going away
    /// (RFC 6455 §7.4.1), which is also what Phoenix sends.
    pub shutdown_code: u16,
    /// The reason that goes with `shutdown_code`.
    pub shutdown_reason: String,
    /// Sent when a handler callback panics. Default 1011, internal error.
    pub panic_code: u16,
    /// Sent when more bytes wait for a peer than the server's `max_unsent_bytes` allows
    /// (everything queued for it has been dropped). Default 1008, policy violation.
    pub too_slow_code: u16,
    /// How long the server reads and discards after hanging up, until the peer closes too
    /// (RFC 6455 §7.1.1: the server closes TCP first, and unread bytes arriving must not turn
    /// that close into a reset that destroys the close frame in flight). Default 2,000 ms.
    pub linger_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stop_code: 1000,
            shutdown_code: 1001,
            shutdown_reason: "server shutting down".into(),
            panic_code: 1011,
            too_slow_code: 1008,
            linger_ms: 2_000,
        }
    }
}

impl Config {
    /// The reason sent with `too_slow_code`, naming the bound that was passed.
    pub fn too_slow_reason(&self, limit: usize) -> String {
        format!("too slow: more than {limit} bytes waited to be sent")
    }

    /// Checks that every code can be sent in a close frame (RFC 6455 §7.4).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first code that cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let codes = [
            ("session.stop_code", self.stop_code),
            ("session.shutdown_code", self.shutdown_code),
            ("session.panic_code", self.panic_code),
            ("session.too_slow_code", self.too_slow_code),
        ];
        for (field, code) in codes {
            let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !sendable {
                return Err(ConfigError::new(
                    field,
                    "must be a close code an endpoint may send (1000-1003, 1007-1011, 3000-4999)",
                ));
            }
        }
        if self.shutdown_reason.len() > 123 {
            return Err(ConfigError::new(
                "session.shutdown_reason",
                "must fit a close frame: at most 123 bytes",
            ));
        }
        if self.linger_ms > 60_000 {
            return Err(ConfigError::new(
                "session.linger_ms",
                "at most 60,000 ms: a longer drain only holds descriptors",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unsendable_codes_are_refused() {
        assert_eq!(Config::default().validate(), Ok(()));
        for code in [999, 1004, 1005, 1006, 1015, 2000, 5000] {
            let config = Config {
                panic_code: code,
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{code} accepted");
        }
    }
}
