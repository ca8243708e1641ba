//! spool-std: spool's WebSocket server and client on plain std threads.
//!
//! A shell around `spool_core::ws`: it owns sockets, TLS, threads and the clock, turns what
//! arrives into events for the core and carries out what the core returns. It holds no
//! protocol logic: it never reads a frame or a header, never picks a close code or a timeout.
//!
//! - [`Server`]: WebSocket connections on a fixed set of event-loop threads (one per core)
//!   over a readiness poller; [`TcpServer`] is the same server for any protocol over TCP or
//!   TLS ([`tcp::Handler`]), and the WebSocket server is one such handler ([`WsProtocol`]).
//! - [`Client`]: a blocking client that does its I/O on the caller's thread.
//!
//! Both can record every event given to the core as an event log (`spool_core::replay`).
#![warn(missing_docs)]

pub mod channels;
mod client;
pub mod clock;
pub mod cluster;
pub mod direct;
mod event_loop;
pub mod handler;
pub mod late;
pub mod late_session;
pub mod live;
pub mod outgoing;
mod random;
pub mod reconnecting;
pub mod record;
mod server;
pub mod tcp;
pub mod tls;
mod transport;
mod ws_session;

pub use client::{Client, ClientOptions};
pub use event_loop::{ServerLimits, TcpServer, TcpServerHandle, default_max_connections};
pub use handler::{
    Action, ClientError, Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxError, MailboxSink,
    Next, Rejection, StartError,
};
pub use server::{Server, ServerHandle};
pub use ws_session::{WsProtocol, WsSession};
