//! spool-smol: spool's WebSocket server and client on smol.
//!
//! A thin shell around [`spool_core::ws::Connection`]: it accepts and connects, does TLS, reads
//! into a per-thread scratch buffer, stamps each event with its monotonic clock, draws client
//! keys and mask seeds, writes everything one call produced with one vectored write, arms one
//! timer at the next deadline (on its server thread's own timer heap), and can record every event it gives the core. The protocol
//! itself (frames, handshakes, close codes, timeouts) is the core's.
//!
//! - [`TcpServer`]: glisten-shaped, an acceptor pool over executor threads, each thread running
//!   its connections on a run queue of its own that sleeps in the thread's own
//!   edge-triggered poller, where its connection sockets sit, for any protocol
//!   over TCP or TLS ([`tcp::Handler`]); bounded send queues and mailboxes, a connection limit
//!   ([`ServerLimits`]).
//! - [`Server`]: the WebSocket server, which is [`TcpServer`] running [`WsProtocol`]:
//!   per-connection [`Handler::on_init`], [`Handler::handle`], [`Handler::on_close`];
//!   [`Mailbox`]es for user messages.
//! - [`Client`]: `connect`, `send`, `recv`, `close`, usable from any executor.
//!
//! The handler surfaces, the WebSocket session machine, the limits and TLS set-up are shared
//! with `spool-std` and re-exported here: a handler behaves the same on either shell.
#![warn(missing_docs)]

pub mod chat;
pub mod cli_client;
mod client;
pub mod cluster_bus;
mod edge;
mod inbox;
mod io;
pub mod live_demo;
pub mod phoenix;
pub mod reconnecting;
mod runner;
mod server;
mod tcp_server;
mod timers;
pub mod transport;

pub use client::{Client, ClientOptions};
pub use server::{Server, ServerHandle};
pub use spool_core::ws;
pub use spool_std::handler::{
    Action, ClientError, Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxError, MailboxSink,
    Next, Rejection, StartError,
};
pub use spool_std::{ServerLimits, WsProtocol, tcp, tls};
pub use tcp_server::{TcpServer, TcpServerHandle};

/// The README's Rust examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
