//! Event logs: how a run is recorded and replayed, for WebSocket connections and for channel
//! runtimes.
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
        /// The session policy the shell ran it with (close codes, linger). Logs written before
        /// it was recorded read as the defaults.
        #[serde(default)]
        session: crate::session::Config,
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
            Setup::Server { config, .. } => ws::Connection::server(config.clone()),
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
    /// The log names an application this replayer does not know.
    UnknownApp(String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Parse(line, e) => write!(f, "line {line}: {e}"),
            ReplayError::Setup(line) => {
                write!(f, "line {line}: a log has exactly one setup line, first")
            }
            ReplayError::Config(e) => write!(f, "{e}"),
            ReplayError::UnknownApp(app) => write!(f, "unknown application {app:?}"),
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

/// One line of a client session's log ([`crate::client::Client`]): its configuration first,
/// then every event it was given. The proxy exchange, the handshakes and every reconnect are
/// events like the rest, so a log replays a whole session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientLine {
    /// The first line: the configuration the client was made with.
    ClientSetup(Box<crate::client::Config>),
    /// Every later line.
    Event(crate::client::Event),
}

/// Replays a client session's log: each event with the outbounds it produces.
///
/// # Errors
/// [`ReplayError`] for a malformed log or an invalid configuration.
pub fn replay_client(
    log: &str,
) -> Result<Vec<(crate::client::Event, Vec<crate::client::Outbound>)>, ReplayError> {
    let mut client = None;
    let mut steps = Vec::new();
    for (i, text) in log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: ClientLine =
            serde_json::from_str(text).map_err(|e| ReplayError::Parse(i + 1, e))?;
        match (line, client.as_mut()) {
            (ClientLine::ClientSetup(config), None) => {
                client = Some(crate::client::Client::new(*config).map_err(ReplayError::Config)?);
            }
            (ClientLine::Event(event), Some(c)) => {
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

/// How a channel runtime was made: the application (named, since handlers are code, not data)
/// and the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSetup {
    /// The application's name; the replayer must know it (`spool replay` knows `demo`).
    pub app: String,
    /// The adapter's label: `single_node`, or `<transport>:<node>@<cluster>`.
    pub adapter: String,
    /// The runtime's configuration.
    pub config: crate::channel::Config,
    /// In cluster mode, the node's cluster options (its replica included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::Options>,
}

/// One line of a channel event log: the setup first, then each event with the outbounds it
/// produced when recorded, so a replay can say exactly where it differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelLine {
    /// The first line.
    Setup(ChannelSetup),
    /// An event and what it produced.
    Step {
        /// The event.
        event: crate::channel::Event,
        /// The outbounds recorded for it.
        outbounds: Vec<crate::channel::Outbound>,
    },
}

/// Where a channel replay differed from its recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// 1-based line of the log.
    pub line: usize,
    /// What the recording says.
    pub recorded: Vec<crate::channel::Outbound>,
    /// What the replay produced.
    pub replayed: Vec<crate::channel::Outbound>,
}

/// The result of replaying a channel log.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelReplay {
    /// The setup line.
    pub setup: ChannelSetup,
    /// How many events were replayed.
    pub events: usize,
    /// Every step whose outbounds differ.
    pub mismatches: Vec<Mismatch>,
}

/// Replays a channel log; `router` builds the application the setup names (or `None` if the
/// replayer does not know it).
///
/// # Errors
/// [`ReplayError`] for a malformed log or an unknown application.
pub fn replay_channel(
    log: &str,
    router: impl Fn(&str) -> Option<crate::channel::Router>,
) -> Result<ChannelReplay, ReplayError> {
    use crate::channel::Runtime;
    let mut runtime: Option<(Runtime, ChannelSetup)> = None;
    let mut events = 0;
    let mut mismatches = Vec::new();
    for (i, text) in log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: ChannelLine =
            serde_json::from_str(text).map_err(|e| ReplayError::Parse(i + 1, e))?;
        match (line, runtime.as_mut()) {
            (ChannelLine::Setup(setup), None) => {
                let r = router(&setup.app).ok_or(ReplayError::UnknownApp(setup.app.clone()))?;
                let rt = match &setup.cluster {
                    Some(options) => {
                        Runtime::new_cluster_ready(options.clone(), r, setup.config.clone())
                            .map_err(|_| ReplayError::Setup(i + 1))?
                    }
                    None => Runtime::new_single_node(r, setup.config.clone()),
                };
                runtime = Some((rt, setup));
            }
            (ChannelLine::Step { event, outbounds }, Some((rt, _))) => {
                events += 1;
                let replayed = rt.handle(event);
                if replayed != outbounds {
                    mismatches.push(Mismatch {
                        line: i + 1,
                        recorded: outbounds,
                        replayed,
                    });
                }
            }
            _ => return Err(ReplayError::Setup(i + 1)),
        }
    }
    let Some((_, setup)) = runtime else {
        return Err(ReplayError::Setup(1));
    };
    Ok(ChannelReplay {
        setup,
        events,
        mismatches,
    })
}
