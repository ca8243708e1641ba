//! Event logs: how a run is recorded and replayed.
//!
//! A log is JSON lines. The first line says how the machine was made ([`Setup`]); every other
//! line is one event it was given, in order. Because the core is deterministic, feeding the
//! same lines to a fresh machine yields the same outbounds, byte for byte: a log attached to a
//! bug report reproduces the bug, and a log under `tests/` is a regression test.

use serde::{Deserialize, Serialize};

use crate::ws;

/// How a WebSocket connection was made: its role, configuration and, for a client, its request
/// (which carries the key and mask seed the shell drew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Setup {
    /// [`ws::Connection::server`].
    Server {
        /// The configuration.
        config: ws::Config,
    },
    /// [`ws::Connection::client`].
    Client {
        /// The configuration.
        config: ws::Config,
        /// The request: URL, key, mask seed, headers.
        request: ws::ClientRequest,
    },
}

impl Setup {
    /// Makes the connection this setup describes.
    ///
    /// # Errors
    /// [`ws::ConfigError`] when the logged configuration is invalid.
    pub fn connection(&self) -> Result<ws::Connection, ws::ConfigError> {
        match self {
            Setup::Server { config } => ws::Connection::server(config.clone()),
            Setup::Client { config, request } => {
                ws::Connection::client(config.clone(), request.clone())
            }
        }
    }
}

/// One line of a WebSocket event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    Setup(Setup),
    /// Every later line.
    Event(ws::Event),
}

/// Why a log could not be replayed.
#[derive(Debug)]
pub enum ReplayError {
    /// A line is not JSON of the expected shape (1-based line number).
    Parse(usize, serde_json::Error),
    /// The log does not start with a setup line, or has a second one.
    Setup(usize),
    /// The logged configuration is invalid.
    Config(ws::ConfigError),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Parse(line, e) => write!(f, "line {line}: {e}"),
            ReplayError::Setup(line) => {
                write!(f, "line {line}: a log has exactly one setup line, first")
            }
            ReplayError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Replays a WebSocket event log, returning each event with the outbounds it produced.
///
/// # Errors
/// [`ReplayError`] for a malformed log.
pub fn replay_ws(log: &str) -> Result<Vec<(ws::Event, Vec<ws::Outbound>)>, ReplayError> {
    let mut conn = None;
    let mut steps = Vec::new();
    for (i, text) in log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: Line = serde_json::from_str(text).map_err(|e| ReplayError::Parse(i + 1, e))?;
        match (line, conn.as_mut()) {
            (Line::Setup(setup), None) => {
                conn = Some(setup.connection().map_err(ReplayError::Config)?)
            }
            (Line::Event(event), Some(c)) => {
                let out = c.handle(event.clone());
                steps.push((event, out));
            }
            _ => return Err(ReplayError::Setup(i + 1)),
        }
    }
    Ok(steps)
}

/// A readable rendering of outbounds, one a line, bytes as hex (text when printable): what the
/// insta snapshots of replayed logs hold.
pub fn render_outbounds(out: &[ws::Outbound]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for o in out {
        match o {
            ws::Outbound::Transmit(t) => {
                let _ = writeln!(s, "transmit {}", render_bytes(&t.to_vec()));
            }
            other => {
                let json = serde_json::to_string(other).unwrap_or_default();
                let _ = writeln!(s, "{json}");
            }
        }
    }
    s
}

/// Printable ASCII as a quoted string; anything else as hex.
pub fn render_bytes(b: &[u8]) -> String {
    if !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_graphic() || matches!(c, b' ' | b'\r' | b'\n'))
    {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        b.iter()
            .map(|c| format!("{c:02x}"))
            .collect::<Vec<_>>()
            .join("")
    }
}
