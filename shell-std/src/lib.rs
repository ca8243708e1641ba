//! spool-std: spool's WebSocket server and client on plain std threads.
//!
//! A shell around `spool_core::ws`: it owns sockets, TLS, threads and the clock, turns what
//! arrives into events for the core and carries out what the core returns. It holds no
//! protocol logic: it never reads a frame or a header, never picks a close code or a timeout.
//!
//! - [`Server`]: an acceptor pool and two threads per connection (a reader, and a driver that
//!   runs the [`Handler`]).
//! - [`Client`]: a blocking client that does its I/O on the caller's thread.
//!
//! Both can record every event given to the core as an event log (`spool_core::replay`).
#![warn(missing_docs)]

pub mod channels;
mod client;
pub mod clock;
pub mod handler;
mod random;
mod record;
mod server;
mod session;
pub mod tls;
mod transport;

pub use client::{Client, ClientOptions};
pub use handler::{
    Action, ClientError, Conn, Gone, Handler, HttpResponse, Incoming, Mailbox, MailboxSink, Next,
    Rejection, StartError,
};
pub use server::{Server, ServerHandle};
