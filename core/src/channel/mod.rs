//! Channels: Phoenix-compatible topic routing, pubsub and presence (PROTOCOLS.md §1).
//!
//! [`Runtime`] holds every socket's joined channels and every topic's subscribers. Sockets speak
//! the Phoenix V2 protocol ([`protocol`]); applications supply a [`ChannelHandler`] per route
//! (`join`, `handle_in`, `handle_out`, `terminate`), and what they ask of their [`Socket`]
//! (push, broadcast, track a presence) the runtime carries out. Presence lives in
//! [`crate::presence`]. The runtime descends from lightspeed's channel model: its events, its
//! outbounds and its queries keep the seed's names.
//!
//! What it leaves out: the WebSocket (the `ws` module), sockets and threads (the shells).

mod clustering;
mod config;
pub mod demo;
mod event;
mod heartbeat;
mod membership;
mod outbox;
mod payload;
pub mod protocol;
mod router;
mod runtime;
mod subscribers;

pub use config::Config;
pub use event::{ClientId, Event, Frame, Outbound, Recipients};
pub use payload::{JsonText, Payload};
pub use router::{ChannelHandler, HandleIn, Router, Socket, SocketAction};
pub use runtime::{Adapter, Runtime, object};

#[cfg(test)]
mod tests;
