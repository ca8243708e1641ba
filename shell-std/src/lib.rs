//! spool-std: spool's WebSocket server and client on plain std threads.
#![warn(missing_docs)]

pub mod handler;
pub mod tls;

pub use handler::{Action, ClientError, Conn, Gone, Handler, Incoming, Mailbox, MailboxSink, Next, Rejection, StartError};
