//! A reconnecting WebSocket client session (the Late and WebsockexNova seeds), sans-IO.
//!
//! [`Client`] owns everything between "I want to talk to this URL" and the WebSocket
//! connection itself, which it delegates to a [`ws::Connection`](crate::ws::Connection):
//!
//! - connecting: it asks the shell to open a TCP connection ([`Outbound::Connect`]), bounded by
//!   `connect_timeout_ms` from that request until the WebSocket handshake completes;
//! - an HTTP `CONNECT` proxy (RFC 9110 §9.3.6), with Basic credentials, spoken by this machine
//!   so that the exchange is recorded and replayed like the rest; a refusal (407, 403, 502, any
//!   other status) is a typed [`ProxyError`];
//! - TLS: the shell does it when asked ([`Outbound::StartTls`]), after the proxy's tunnel;
//! - heartbeats: the WebSocket connection's keep-alive (`ws.ping_interval_ms`,
//!   `ws.pong_timeout_ms`) pings a quiet peer and declares it dead when no answer comes;
//! - reconnecting with exponential backoff and jitter drawn from `jitter_seed` ([`Backoff`]);
//! - a bounded queue of outgoing messages that survives reconnects, with drop-newest when
//!   full and a running `dropped` count ([`Outbound::Dropped`]);
//! - delivery confirmation: a message stays queued until the peer answers a ping sent after it
//!   (TCP delivers in order and a peer reads its frames in order, so the pong proves every
//!   earlier frame was read); on a lost connection the unconfirmed ones are sent again, first.
//!   Nothing is lost or reordered; a message whose pong was lost with the connection may arrive
//!   twice (at-least-once; `resend_unconfirmed: false` makes it at-most-once). Exactly-once
//!   needs the receiver's help: an idempotency key in each message and a receiver that drops
//!   repeats (`spool client --phoenix` and `spool serve`'s demo channel do this). With
//!   `confirm_by_reply` the application confirms messages by its protocol's replies
//!   ([`Event::Confirmed`]) instead, and [`Event::Rewind`] sends again what a crashed channel
//!   lost;
//! - calls correlated with replies, each with a timeout ([`Event::Call`], [`Event::Reply`]);
//! - a token-bucket rate limit on sends ([`RateLimit`]).
//!
//! What it leaves out: sockets, TLS, clocks and random numbers (the shells draw WebSocket keys
//! and mask seeds per attempt and hand them in with [`Event::Connected`]), and what messages
//! mean (a Phoenix client sits on top).
//!
//! States: `Idle` until [`Event::Start`]; `Connecting` (TCP), `Proxying` (the `CONNECT`
//! exchange), `Securing` (TLS), `Upgrading` (the WebSocket handshake), `Open`, `Closing` (the
//! application asked to close), `Waiting` (backoff before the next attempt), `Stopped`.

mod backoff;
mod calls;
mod config;
mod error;
mod event;
mod machine;
pub mod phoenix;
mod proxy;
mod queue;
mod rate;

pub use backoff::Backoff;
pub use config::{Config, RateLimit};
pub use error::{CallError, Error, ProxyError};
pub use event::{Event, Outbound, State, StopReason};
pub use machine::Client;
pub use proxy::{Proxy, proxy_from_env};

#[cfg(test)]
mod tests;
