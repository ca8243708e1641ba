//! The cassette's events and outbounds: serde data, so a run can be logged and replayed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A live socket, as the shell numbers its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// What the shell tells the cassette.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A page was asked for: store a preflight for view `view` and render the page. `id` and
    /// `csrf_token` come from the shell's OS randomness (128 bits or more each).
    PushPreflight {
        /// The shell's clock.
        now_ms: u64,
        /// The preflight id put in the page.
        id: String,
        /// The CSRF token put in the page.
        csrf_token: String,
        /// The registered view's name.
        view: String,
    },
    /// Removes a preflight (the seed's `PopPreflight`); answered [`Outbound::Popped`].
    PopPreflight {
        /// The shell's clock.
        now_ms: u64,
        /// The preflight id.
        id: String,
    },
    /// A text message from a live socket.
    Receive {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        conn: ConnId,
        /// The message.
        text: String,
    },
    /// A socket ended, however it ended: its sprocket goes.
    Disconnect {
        /// The shell's clock.
        now_ms: u64,
        /// The socket.
        conn: ConnId,
    },
    /// Time passed: expired preflights are swept (the seed's `CleanupPreflights`).
    Tick {
        /// The shell's clock.
        now_ms: u64,
    },
    /// A message from the application to every sprocket of view `view` (in connection order),
    /// each re-rendered after it.
    Info {
        /// The shell's clock.
        now_ms: u64,
        /// The view's registered name.
        view: String,
        /// What the views' `handle_info` receives.
        message: Value,
    },
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    /// Answer the page request with this HTML (`status` 200, or 404 for an unknown view).
    Page {
        /// HTTP status.
        status: u16,
        /// The document.
        html: String,
    },
    /// Send `text` to socket `conn` as a text message.
    Transmit {
        /// The socket.
        conn: ConnId,
        /// The message.
        text: String,
    },
    /// Close socket `conn` (its view failed); its sprocket is gone already.
    Close {
        /// The socket.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The answer to [`Event::PopPreflight`].
    Popped {
        /// The preflight id.
        id: String,
        /// Whether it was there.
        found: bool,
    },
}
