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
//! use spool_core::ws::{ClientRequest, Config, Connection, Event, Message, Outbound, Url};
//!
//! // Two connections wired back to back: no sockets needed.
//! let mut server = Connection::server(Config::default()).unwrap();
//! let request = ClientRequest {
//!     url: Url::parse("ws://localhost/echo").unwrap(),
//!     key: [7; 16],
//!     mask_seed: 42,
//!     headers: vec![],
//! };
//! let mut client = Connection::client(Config::default(), request).unwrap();
//!
//! let mut to_server = client.handle(Event::Open { now_ms: 0 });
//! server.handle(Event::Open { now_ms: 0 });
//! let mut delivered = Vec::new();
//! for now_ms in 1..10 {
//!     let mut to_client = Vec::new();
//!     for out in to_server.drain(..) {
//!         if let Outbound::Transmit(bytes) = out {
//!             for o in server.handle(Event::Receive { now_ms, bytes }) {
//!                 match o {
//!                     Outbound::Upgrade(_) => to_client.extend(server.handle(Event::Accept { now_ms })),
//!                     other => to_client.push(other),
//!                 }
//!             }
//!         }
//!     }
//!     for out in to_client {
//!         if let Outbound::Transmit(bytes) = out {
//!             for o in client.handle(Event::Receive { now_ms, bytes }) {
//!                 match o {
//!                     Outbound::Opened(_) => to_server.extend(client.handle(Event::Send {
//!                         now_ms,
//!                         message: Message::text("hello"),
//!                     })),
//!                     Outbound::Deliver(m) => delivered.push(m),
//!                     _ => {}
//!                 }
//!             }
//!         }
//!     }
//! }
//! assert!(client.is_open() && server.is_open());
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod b64;
pub mod rand;
pub mod replay;
pub mod ws;
