//! The per-connection handler, shaped after glisten: `on_init` makes the connection's state,
//! `handle` runs for every message and every user message, `on_close` runs however the
//! connection ends. Shared by both shells: `spool-smol` re-exports these types.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use spool_core::ws::{CloseInfo, Message, Request};

/// What a handler receives.
#[derive(Debug)]
pub enum Incoming<U> {
    /// A message from the peer (pings and pongs included; pings are already answered).
    Message(Message),
    /// A message sent into this connection through its [`Mailbox`].
    User(U),
}

/// What a handler wants after `handle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep the connection open.
    Continue,
    /// Close it with 1000 (normal closure).
    Stop,
}

/// An upgrade refused by [`Handler::on_upgrade`]: the HTTP status and a short body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status, 400 to 599 (403 for a refused origin).
    pub status: u16,
    /// Plain-text body.
    pub reason: String,
}

impl Rejection {
    /// A refusal with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
        }
    }
}

/// An answer to a plain HTTP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: bytes::Bytes,
}

impl HttpResponse {
    /// An answer with `status`, `content_type` and `body`.
    pub fn new(
        status: u16,
        content_type: impl Into<String>,
        body: impl Into<bytes::Bytes>,
    ) -> HttpResponse {
        HttpResponse {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }
}

/// The application's side of a server connection. Only `on_init` and `handle` are required.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state, made by `on_init`.
    type State: Send + 'static;
    /// Messages other parts of the program send into a connection.
    type User: Send + 'static;

    /// Decides an upgrade request before it is answered: check the `Origin`, a token, the path.
    /// The default accepts everything.
    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        let _ = request;
        Ok(())
    }

    /// Answers a plain HTTP GET (one that is not an upgrade), when the server's config has
    /// `plain_http` on: a page, a script. The default answers 404.
    fn on_request(&self, request: &Request) -> HttpResponse {
        let _ = request;
        HttpResponse::new(404, "text/plain; charset=utf-8", "not found\n")
    }

    /// Runs once the WebSocket is open; returns the connection's state.
    fn on_init(&self, conn: &mut Conn<Self::User>) -> Self::State;

    /// Runs for each message from the peer and each user message.
    fn handle(
        &self,
        state: &mut Self::State,
        incoming: Incoming<Self::User>,
        conn: &mut Conn<Self::User>,
    ) -> Next;

    /// Runs exactly once for every connection whose `on_init` ran, however it ended.
    fn on_close(&self, state: Self::State, info: &CloseInfo) {
        let _ = (state, info);
    }
}

/// What a shell does with a user message: queue it (within a bound) and wake the connection.
pub trait MailboxSink<U>: Send + Sync {
    /// Delivers `message`, or gives it back with why it could not be.
    ///
    /// # Errors
    /// [`MailboxError::Full`] when the connection's mailbox holds as many messages as it may,
    /// [`MailboxError::Gone`] when the connection has ended.
    fn deliver(&self, message: U) -> Result<(), MailboxError<U>>;

    /// Refuses every later message: the connection has ended.
    fn close(&self);
}

/// A handle for sending user messages into one connection, from any thread. Cheap to clone.
///
/// Each mailbox is bounded (the server's `mailbox_capacity`, default 1,024 messages): a sender
/// that outruns its connection is told [`MailboxError::Full`] rather than growing memory.
pub struct Mailbox<U> {
    sink: Arc<dyn MailboxSink<U>>,
}

impl<U> Clone for Mailbox<U> {
    fn clone(&self) -> Self {
        Mailbox {
            sink: self.sink.clone(),
        }
    }
}

impl<U> fmt::Debug for Mailbox<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mailbox")
    }
}

impl<U> Mailbox<U> {
    /// A mailbox over a shell's sink.
    pub fn new(sink: Arc<dyn MailboxSink<U>>) -> Mailbox<U> {
        Mailbox { sink }
    }

    /// Sends `message` into the connection; it arrives in `handle` as [`Incoming::User`].
    ///
    /// # Errors
    /// [`MailboxError`] with the message when the mailbox is full or the connection has ended.
    pub fn send(&self, message: U) -> Result<(), MailboxError<U>> {
        self.sink.deliver(message)
    }

    /// Refuses every later message. Shells call it when the connection ends.
    pub fn close(&self) {
        self.sink.close();
    }
}

/// Why a message could not be put in a [`Mailbox`]; the message comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum MailboxError<U> {
    /// The mailbox holds as many messages as it may: the connection is not keeping up.
    Full(U),
    /// The connection has ended.
    Gone(U),
}

impl<U> MailboxError<U> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> U {
        match self {
            MailboxError::Full(m) | MailboxError::Gone(m) => m,
        }
    }
}

impl<U> fmt::Display for MailboxError<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MailboxError::Full(_) => "mailbox full: the connection is not keeping up",
            MailboxError::Gone(_) => "connection is gone",
        })
    }
}

impl<U: fmt::Debug> std::error::Error for MailboxError<U> {}

/// An action a handler asked for, carried out by the shell after the callback returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send(Message),
    /// Start the close handshake.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// The connection as a handler sees it: who is on the other end, and a queue of what to send.
pub struct Conn<U> {
    peer: SocketAddr,
    request: Request,
    protocol: Option<String>,
    mailbox: Mailbox<U>,
    actions: Vec<Action>,
}

impl<U> Conn<U> {
    /// Made by a shell when a connection opens.
    pub fn new(
        peer: SocketAddr,
        request: Request,
        protocol: Option<String>,
        mailbox: Mailbox<U>,
    ) -> Conn<U> {
        Conn {
            peer,
            request,
            protocol,
            mailbox,
            actions: Vec::new(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The upgrade request this connection came from (path, headers, origin), whole during
    /// `on_init`. After `on_init` the shell keeps only its target (path and query), so that an
    /// idle connection does not hold its headers: copy what `handle` needs into the state.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Drops all of the request but its target, once `on_init` has seen it.
    pub fn keep_only_target(&mut self) {
        let target = std::mem::take(&mut self.request.target);
        self.request = Request {
            target,
            ..Request::default()
        };
    }

    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// A mailbox for sending user messages into this connection from elsewhere.
    pub fn mailbox(&self) -> Mailbox<U> {
        self.mailbox.clone()
    }

    /// Queues a message to the peer; it is written when the callback returns.
    pub fn send(&mut self, message: Message) {
        self.actions.push(Action::Send(message));
    }

    /// Queues the close handshake.
    pub fn close(&mut self, code: u16, reason: impl Into<String>) {
        self.actions.push(Action::Close {
            code,
            reason: reason.into(),
        });
    }

    /// Takes the queued actions, for the shell.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Gives the connection an empty list (with capacity) to queue its actions in, for the
    /// shell: a list lent for each callback spares an allocation per callback that sends,
    /// and an idle connection keeps none. A list that is not empty is left alone.
    pub(crate) fn lend_actions(&mut self, list: Vec<Action>) {
        if self.actions.is_empty() && list.is_empty() {
            self.actions = list;
        }
    }

    /// Passes this connection's lent list, if it is empty, on to `inner`, a connection
    /// wrapped in this one (see [`crate::live::Site`]): the inner handler's sends then need no
    /// list of their own. [`Conn::append_actions`] brings the list back.
    pub(crate) fn lend_actions_to<V>(&mut self, inner: &mut Conn<V>) {
        if self.actions.is_empty() {
            inner.lend_actions(std::mem::take(&mut self.actions));
        }
    }

    /// Queues `actions` after this connection's own, keeping the list (and its capacity)
    /// when this connection has none queued.
    pub(crate) fn append_actions(&mut self, mut actions: Vec<Action>) {
        if self.actions.is_empty() {
            std::mem::swap(&mut self.actions, &mut actions);
        } else {
            self.actions.append(&mut actions);
        }
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listener closed before the acceptors were running.
    ListenerClosed,
    /// Binding the listener took too long.
    ListenerTimeout,
    /// An acceptor did not report ready in time.
    AcceptorTimeout,
    /// An acceptor could not start.
    AcceptorFailed(String),
    /// The TLS certificate or key could not be loaded.
    Tls(String),
    /// The WebSocket configuration is invalid.
    Config(spool_core::ws::ConfigError),
    /// The operating system refused (bind, listen, spawning a thread).
    SystemError(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::ListenerClosed => f.write_str("listener closed before the server started"),
            StartError::ListenerTimeout => f.write_str("timed out binding the listener"),
            StartError::AcceptorTimeout => f.write_str("timed out starting the acceptors"),
            StartError::AcceptorFailed(why) => write!(f, "acceptor failed: {why}"),
            StartError::Tls(why) => write!(f, "tls: {why}"),
            StartError::Config(e) => write!(f, "{e}"),
            StartError::SystemError(e) => write!(f, "system error: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::SystemError(e) => Some(e),
            StartError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::SystemError(e)
    }
}

/// Why a client connection failed or ended.
#[derive(Debug)]
pub enum ClientError {
    /// The URL could not be parsed.
    Url(spool_core::ws::UrlError),
    /// The WebSocket configuration is invalid.
    Config(spool_core::ws::ConfigError),
    /// Connecting, reading or writing failed.
    Io(std::io::Error),
    /// TLS could not be set up (bad server name, bad CA file).
    Tls(String),
    /// The opening handshake failed; the text says why (status, accept key, ...).
    Handshake(String),
    /// The connection is closed; this says how.
    Closed(CloseInfo),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Url(e) => write!(f, "{e}"),
            ClientError::Config(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "io: {e}"),
            ClientError::Tls(why) => write!(f, "tls: {why}"),
            ClientError::Handshake(why) => write!(f, "handshake failed: {why}"),
            ClientError::Closed(info) => {
                write!(f, "connection closed with {} {:?}", info.code, info.reason)
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Url(e) => Some(e),
            ClientError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoMail;

    impl<U: Send> MailboxSink<U> for NoMail {
        fn deliver(&self, message: U) -> Result<(), MailboxError<U>> {
            Err(MailboxError::Gone(message))
        }
        fn close(&self) {}
    }

    fn conn() -> Conn<()> {
        let peer = "127.0.0.1:1".parse().unwrap();
        Conn::new(
            peer,
            Request::default(),
            None,
            Mailbox::new(Arc::new(NoMail)),
        )
    }

    fn sent(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Send(Message::Text(t)) => t.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_wrapped_connection_borrows_the_lent_list_and_gives_it_back_in_order() {
        let (mut outer, mut inner) = (conn(), conn());
        outer.lend_actions(Vec::with_capacity(8));
        outer.lend_actions_to(&mut inner);
        assert_eq!((outer.actions.capacity(), inner.actions.capacity()), (0, 8));
        inner.send(Message::text("a"));
        inner.send(Message::text("b"));
        outer.append_actions(inner.take_actions());
        // The same list came back: no allocation, and the inner connection keeps none.
        assert_eq!(outer.actions.capacity(), 8);
        assert_eq!(inner.actions.capacity(), 0);
        assert_eq!(sent(&outer.take_actions()), ["a", "b"]);

        // With actions of its own queued, the outer list is not lent; the inner ones follow.
        let (mut outer, mut inner) = (conn(), conn());
        outer.send(Message::text("own"));
        outer.lend_actions_to(&mut inner);
        assert_eq!(inner.actions.capacity(), 0);
        inner.send(Message::text("c"));
        outer.append_actions(inner.take_actions());
        assert_eq!(sent(&outer.take_actions()), ["own", "c"]);
    }
}
