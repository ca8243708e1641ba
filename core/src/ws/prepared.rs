//! [`PreparedMessage`]: one data message compressed once for many connections (a broadcast).
//!
//! A side that negotiated no context takeover (RFC 7692 §7.1.1) compresses each message with a
//! fresh compressor, so the compressed bytes depend only on the message, the window size and
//! the level, never on the connection. A broadcaster compresses once with
//! [`PreparedMessage::compressed`] and gives a clone (two reference counts) to each connection
//! in [`Event::SendPrepared`](super::Event::SendPrepared). A connection whose agreed parameters
//! fit ([`PreparedMessage::fits`]) sends those very bytes: a server's frame is a 2 to 10 byte
//! header and the shared body, with no copy and no zlib state. Any other connection sends the
//! message as [`Event::Send`](super::Event::Send) would: compressed by itself, or plain.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::connection::Role;
use super::deflate::{DeflateParams, Deflater};
use super::event::Message;

/// A message and, if it was prepared compressed, its permessage-deflate payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedMessage {
    message: Message,
    #[serde(default)]
    deflated: Option<Deflated>,
}

/// A compressed payload and the window it was made with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Deflated {
    /// The compressor's window, log2 bytes (8 to 15).
    window_bits: u8,
    /// The message compressed by a fresh compressor, trailing `00 00 ff ff` removed (§7.2.1).
    #[serde(with = "crate::b64")]
    payload: Bytes,
}

impl PreparedMessage {
    /// A message with no compressed form: every connection sends it as `Event::Send` would.
    pub fn new(message: Message) -> PreparedMessage {
        PreparedMessage {
            message,
            deflated: None,
        }
    }

    /// A data message compressed once, by a fresh compressor with a `window_bits` window (8 to
    /// 15; out-of-range values are clamped) at zlib `level` (0 to 9, clamped). Pings and pongs
    /// are never compressed (RFC 7692 §6.1).
    ///
    /// Use the window and level the connections' [`DeflateConfig`](super::DeflateConfig) has:
    /// a smaller window than a connection agreed on still fits it, a larger one does not.
    pub fn compressed(message: Message, window_bits: u8, level: u32) -> PreparedMessage {
        let payload = match &message {
            Message::Text(t) => Some(&t.as_bytes()[..]),
            Message::Binary(b) => Some(&b[..]),
            Message::Ping(_) | Message::Pong(_) => None,
        };
        let window_bits = window_bits.clamp(8, 15);
        let deflated = payload.map(|p| Deflated {
            window_bits,
            payload: Bytes::from(Deflater::new(level.min(9), window_bits, true).compress(p)),
        });
        PreparedMessage { message, deflated }
    }

    /// The message itself.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message itself, by value.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The compressed payload, if prepared compressed.
    pub fn deflated(&self) -> Option<&Bytes> {
        self.deflated.as_ref().map(|d| &d.payload)
    }

    /// Whether a connection in `role` that agreed on `params` can send the compressed payload
    /// as it is: its own side has no context takeover (so its peer expects no reference to
    /// earlier messages, and its own compressor keeps nothing the shared bytes would skip), and
    /// its window is no smaller than the one the payload was made with.
    pub fn fits(&self, role: Role, params: &DeflateParams) -> bool {
        let Some(d) = &self.deflated else {
            return false;
        };
        let (no_context_takeover, bits) = match role {
            Role::Server => (
                params.server_no_context_takeover,
                params.server_max_window_bits,
            ),
            Role::Client => (
                params.client_no_context_takeover,
                params.client_max_window_bits,
            ),
        };
        // zlib raises an 8-bit window to 9 yet keeps distances within 250 bytes (see
        // `Deflater::new`), so 8 and 9 are interchangeable here.
        no_context_takeover && d.window_bits.max(9) <= bits.max(9)
    }
}
