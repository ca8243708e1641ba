//! The WebSocket protocol, both roles: RFC 6455 with permessage-deflate (RFC 7692).
//!
//! [`Connection`] is the state machine. It owns the opening handshake (a server parses the
//! upgrade request and answers 101, 400 or 426; a client writes its request and checks the
//! answer), the frame codec, masking, reassembly of fragmented messages, streaming UTF-8
//! validation, the close handshake, ping and pong, compression and every size limit. It does
//! no I/O: bytes and time go in as [`Event`]s, bytes to write and messages to deliver come out
//! as [`Outbound`]s.
//!
//! What it leaves out: sockets, TLS and clocks (the shells), and what messages mean (the
//! `channel` module and applications).
//!
//! Files, leaves first: `frame` (headers), `mask`, `utf8`, `deflate`, `handshake`; then
//! `connection`, the only one that holds state across events: its `mod.rs` has the machine and
//! the opening handshake, `receive` the frames coming in, `send` the frames going out, `close`
//! how a connection ends, and `timers` what time does.

mod config;
mod connection;
mod deflate;
mod error;
mod event;
mod frame;
mod handshake;
mod mask;
mod prepared;
mod text;
mod transmit;
mod url;
mod utf8;

pub use config::{Config, Limits};
pub use connection::{ClientRequest, Connection, Role};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ConfigError, HandshakeError, ProtocolError};
pub use event::{CloseInfo, Event, Handshake, Initiator, Message, Outbound, Request};
pub use frame::{FrameHeader, Opcode, is_valid_close_code};
pub use handshake::{accept_key, error_response};
pub use mask::apply_mask;
pub use prepared::PreparedMessage;
pub use text::Text;
pub use transmit::Transmit;
pub use url::{Url, UrlError};
pub use utf8::{InvalidUtf8, Utf8Validator};

#[cfg(test)]
mod tests;
