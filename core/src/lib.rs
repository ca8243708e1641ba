//! spool-core: the protocol logic of spool as pure, deterministic state machines.
//!
//! No I/O, no clock, no threads, no randomness: each machine takes events (bytes that arrived,
//! the time, what the application wants) and returns outbounds (bytes to write, messages to
//! deliver, a connection to close). Shells (`spool-smol`, `spool-std`, or your own event loop)
//! do the I/O. Same events in, same outbounds out, so every run can be logged and replayed.
//!
//! # The driving loop
//!
//! 1. Turn what happened into an [`ws::Event`] stamped with your clock's `now_ms`.
//! 2. Call `handle(event)`; carry out every [`ws::Outbound`] in order, writing all
//!    `Transmit`s of one call with one (vectored) write.
//! 3. Arm one timer at `next_deadline()` and send `Tick` when it fires.
//!
//! ```
//! use spool_core::ws::{Config, Connection, Event, Message, Outbound};
//!
//! let mut ws = Connection::server(Config::default()).unwrap();
//! ws.handle(Event::Open { now_ms: 0 });
//!
//! // An upgrade request arrives (in any number of pieces).
//! let request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
//!                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!                Sec-WebSocket-Version: 13\r\n\r\n";
//! for out in ws.handle(Event::Receive { now_ms: 1, bytes: request.into() }) {
//!     // The application may look at the path and the Origin before accepting.
//!     assert!(matches!(out, Outbound::Upgrade(ref r) if r.path() == "/echo"));
//! }
//! let out = ws.handle(Event::Accept { now_ms: 2 });
//! assert!(matches!(&out[0], Outbound::Transmit(b) if b.starts_with(b"HTTP/1.1 101")));
//!
//! // A masked text frame "hi" from the client.
//! let frame = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
//! let out = ws.handle(Event::Receive { now_ms: 3, bytes: frame.into() });
//! assert_eq!(out, [Outbound::Deliver(Message::text("hi"))]);
//!
//! // Echo it: the server's frame is unmasked.
//! let out = ws.handle(Event::Send { now_ms: 4, message: Message::text("hi") });
//! assert_eq!(out, [Outbound::Transmit(vec![0x81, 2, b'h', b'i'].into())]);
//!
//! // Keep-alive: after 30 s of silence it pings, and gives up 30 s after an unanswered ping.
//! assert_eq!(ws.next_deadline(), Some(30_003));
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod b64;
pub mod cassette;
pub mod channel;
pub mod client;
pub mod cluster;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hash;
pub mod presence;
pub mod rand;
pub mod replay;
pub mod session;
pub mod view;
pub mod ws;
