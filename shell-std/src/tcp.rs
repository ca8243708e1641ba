//! The raw layer, shaped after glisten: a server that accepts TCP (or TLS) connections and hands
//! each one's bytes to a [`Handler`], with no protocol on top. The WebSocket server is one such
//! handler ([`crate::WsProtocol`]); a line protocol, a game protocol or a proxy can be another,
//! and gets the same acceptor pool, connection limit, send-queue bound and shutdown.
//!
//! Both shells drive the same pieces, so a raw handler behaves the same on either:
//! - [`Handler`]: `on_init` makes the connection's state, `handle` runs for every [`Packet`]
//!   (bytes from the peer, or a message sent into the connection through its [`Mailbox`]),
//!   `on_close` runs exactly once however the connection ends, a panic included.
//! - [`Conn`]: what a callback may do: send bytes, close, hand out its mailbox.
//! - [`Slot`]: one connection's handler state as a shell drives it (the callbacks, panic
//!   catching, the send-queue bound). It does no I/O.
//!
//! Handlers run on the shell's event-loop threads: they must not block. Hand blocking work to a
//! thread of your own and come back through the connection's [`Mailbox`].

use std::cell::Cell;
use std::fmt;
use std::mem;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use spool_core::ws::Transmit;

use crate::handler::Mailbox;
use crate::outgoing::Outgoing;

thread_local! {
    /// The list every connection of this thread queues its sends in during a callback, so that
    /// an idle connection holds none (it kept four transmits' room, 192 bytes, after its first
    /// send).
    static SENDS: Cell<Vec<Transmit>> = const { Cell::new(Vec::new()) };
}

/// The most transmits a thread's send list keeps room for between callbacks (12 KiB); one
/// grown past it by a burst is freed.
const SENDS_KEEP: usize = 256;

/// The thread's send list, for one callback. Taken, not borrowed: a callback that ran another
/// connection's would get an empty list of its own rather than a double borrow.
fn lend_sends() -> Vec<Transmit> {
    SENDS.take()
}

/// Gives an emptied send list back to the thread, unless a burst grew it past [`SENDS_KEEP`].
fn give_back_sends(sends: Vec<Transmit>) {
    // In place of the empty list `lend_sends` left (or, after a nested callback, of the one
    // it gave back: either is a fine list to keep).
    if sends.is_empty() && sends.capacity() <= SENDS_KEEP {
        SENDS.set(sends);
    }
}

/// What a handler receives.
#[derive(Debug)]
pub enum Packet<U> {
    /// Bytes from the peer, exactly as they arrived (decrypted, under TLS).
    Data(Bytes),
    /// A message sent into this connection through its [`Mailbox`].
    User(U),
}

/// Why a connection ended, as [`Handler::on_close`] is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The handler closed it ([`Conn::close`]).
    Closed,
    /// The peer closed its side, or reading or writing failed.
    PeerGone,
    /// More bytes waited to be written than the server's bound allows (a peer that reads too
    /// slowly); they were dropped.
    TooSlow,
    /// A callback panicked.
    Panicked,
    /// The server shut down before the connection closed by itself.
    Shutdown,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Closed => "closed by the handler",
            End::PeerGone => "the peer went away",
            End::TooSlow => "the peer read too slowly",
            End::Panicked => "a handler panicked",
            End::Shutdown => "the server shut down",
        })
    }
}

/// The application's side of a raw connection. Only `on_init` and `handle` are required.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state, made by `on_init`. It lives on one event-loop thread.
    type State: 'static;
    /// Messages other parts of the program send into a connection.
    type User: Send + 'static;

    /// Runs once the connection is accepted (after the TLS handshake, under TLS).
    fn on_init(&self, conn: &mut Conn<Self::User>) -> Self::State;

    /// Runs for each read from the peer and each user message.
    fn handle(
        &self,
        state: &mut Self::State,
        packet: Packet<Self::User>,
        conn: &mut Conn<Self::User>,
    );

    /// Runs for each read from the peer, with the bytes still in the shell's read buffer. The
    /// default hands a copy to [`handle`](Handler::handle) as [`Packet::Data`]; a handler that
    /// works from the slice (the WebSocket session unmasks messages straight out of it)
    /// overrides this and spares the copy.
    fn handle_read(&self, state: &mut Self::State, bytes: &[u8], conn: &mut Conn<Self::User>) {
        self.handle(state, Packet::Data(Bytes::copy_from_slice(bytes)), conn);
    }

    /// Runs exactly once for every connection whose `on_init` ran, however it ended. `now_ms`
    /// is the server's clock.
    fn on_close(&self, state: Self::State, end: End, now_ms: u64) {
        let _ = (state, end, now_ms);
    }

    /// When this connection next wants [`on_deadline`](Handler::on_deadline), on the server's
    /// clock ([`Conn::now_ms`]). Asked after every callback. Default: never.
    fn deadline(&self, state: &Self::State) -> Option<u64> {
        let _ = state;
        None
    }

    /// The deadline from [`deadline`](Handler::deadline) has passed.
    fn on_deadline(&self, state: &mut Self::State, conn: &mut Conn<Self::User>) {
        let _ = (state, conn);
    }

    /// The server is shutting down. The default closes at once; a protocol with a goodbye
    /// (WebSocket's close frame) sends it and closes when its peer has answered, within the
    /// server's grace period.
    fn on_shutdown(&self, state: &mut Self::State, conn: &mut Conn<Self::User>) {
        let _ = state;
        conn.close();
    }

    /// More than the server's `max_unsent_bytes` still waited to be written when more was
    /// queued: everything not yet started on the wire has been dropped. Send a last word if the protocol has one (it is
    /// written, bounded by the same limit); the connection is then closed. The default sends
    /// nothing.
    fn on_too_slow(&self, state: &mut Self::State, conn: &mut Conn<Self::User>) {
        let _ = (state, conn);
    }

    /// What a connection refused for being past the server's connection limit is sent before
    /// it is closed. Default: nothing.
    fn refusal(&self) -> Option<Bytes> {
        None
    }
}

/// How a connection is closed once its queued bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// Close the socket.
    Now,
    /// Shut down the sending side, then read and discard until the peer closes too or this
    /// many milliseconds pass, so that bytes still arriving do not turn the close into a reset
    /// that could destroy the last bytes in flight (RFC 6455 §7.1.1 asks this of a WebSocket
    /// server).
    Linger(u64),
}

/// A connection as a callback sees it: who is on the other end, the time, and what to do.
pub struct Conn<U> {
    peer: SocketAddr,
    tls: bool,
    now_ms: u64,
    mailbox: Mailbox<U>,
    out: Vec<Transmit>,
    hangup: Option<Hangup>,
}

impl<U> Conn<U> {
    /// Made by a shell when a connection is accepted.
    pub fn new(peer: SocketAddr, tls: bool, mailbox: Mailbox<U>) -> Conn<U> {
        Conn {
            peer,
            tls,
            now_ms: 0,
            mailbox,
            out: Vec::new(),
            hangup: None,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's clock, in milliseconds since it started: what [`Handler::deadline`] is
    /// measured in.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// A mailbox for sending user messages into this connection from elsewhere.
    pub fn mailbox(&self) -> Mailbox<U> {
        self.mailbox.clone()
    }

    /// Queues bytes for the peer. Everything queued by one callback is written together.
    pub fn send(&mut self, bytes: impl Into<Transmit>) {
        let transmit = bytes.into();
        if !transmit.is_empty() {
            self.out.push(transmit);
        }
    }

    /// Closes the connection once what is queued is written.
    pub fn close(&mut self) {
        self.hangup.get_or_insert(Hangup::Now);
    }

    /// Closes the connection once what is queued is written, as `hangup` says.
    pub fn close_with(&mut self, hangup: Hangup) {
        self.hangup.get_or_insert(hangup);
    }
}

/// One connection's handler side, as a shell drives it: the state from `on_init` to
/// `on_close`, every callback behind `catch_unwind`, and what the callbacks queued moved into
/// the connection's [`Outgoing`] under its bound. No I/O.
pub struct Slot<H: Handler> {
    state: Option<H::State>,
    conn: Conn<H::User>,
    max_unsent: usize,
    /// How the connection is to end, once `outgoing` is written; `None` while it runs.
    hangup: Option<(Hangup, End)>,
}

impl<H: Handler> Slot<H> {
    /// Runs `on_init`. `max_unsent` bounds the bytes waiting to be written (at least 1).
    pub fn open(
        handler: &H,
        mut conn: Conn<H::User>,
        max_unsent: usize,
        now_ms: u64,
        outgoing: &mut Outgoing,
    ) -> Slot<H> {
        conn.now_ms = now_ms;
        conn.out = lend_sends();
        let state = catch_unwind(AssertUnwindSafe(|| handler.on_init(&mut conn)));
        let mut slot = Slot {
            state: None,
            conn,
            max_unsent: max_unsent.max(1),
            hangup: None,
        };
        match state {
            Ok(state) => {
                slot.state = Some(state);
                slot.settle(handler, outgoing);
            }
            Err(_) => {
                tracing::error!(peer = %slot.conn.peer, "on_init panicked; connection dropped");
                slot.conn.out.clear();
                slot.hangup = Some((Hangup::Now, End::Panicked));
            }
        }
        give_back_sends(mem::take(&mut slot.conn.out));
        slot
    }

    /// Bytes from the peer.
    pub fn data(&mut self, handler: &H, bytes: Bytes, now_ms: u64, outgoing: &mut Outgoing) {
        self.call(handler, now_ms, outgoing, |h, s, c| {
            h.handle(s, Packet::Data(bytes), c);
        });
    }

    /// Bytes from the peer, still in the shell's read buffer ([`Handler::handle_read`]).
    pub fn read(&mut self, handler: &H, bytes: &[u8], now_ms: u64, outgoing: &mut Outgoing) {
        self.call(handler, now_ms, outgoing, |h, s, c| {
            h.handle_read(s, bytes, c)
        });
    }

    /// Bytes from the peer as a [`ReadBuffer`](crate::direct::ReadBuffer) hands them on.
    pub fn received(
        &mut self,
        handler: &H,
        read: crate::direct::Received<'_>,
        now_ms: u64,
        outgoing: &mut Outgoing,
    ) {
        match read {
            crate::direct::Received::Lent(bytes) => self.read(handler, bytes, now_ms, outgoing),
            crate::direct::Received::Given(bytes) => self.data(handler, bytes, now_ms, outgoing),
        }
    }

    /// A message from the connection's mailbox.
    pub fn user(&mut self, handler: &H, message: H::User, now_ms: u64, outgoing: &mut Outgoing) {
        self.call(handler, now_ms, outgoing, |h, s, c| {
            h.handle(s, Packet::User(message), c);
        });
    }

    /// The handler's deadline has passed.
    pub fn deadline_passed(&mut self, handler: &H, now_ms: u64, outgoing: &mut Outgoing) {
        self.call(handler, now_ms, outgoing, |h, s, c| h.on_deadline(s, c));
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self, handler: &H, now_ms: u64, outgoing: &mut Outgoing) {
        self.call(handler, now_ms, outgoing, |h, s, c| h.on_shutdown(s, c));
    }

    /// When the handler next wants [`deadline_passed`](Slot::deadline_passed).
    pub fn deadline(&self, handler: &H) -> Option<u64> {
        let state = self.state.as_ref()?;
        if self.hangup.is_some() {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| handler.deadline(state))).unwrap_or(None)
    }

    /// How the connection is to end once `outgoing` is written, if it is.
    pub fn hangup(&self) -> Option<(Hangup, End)> {
        self.hangup
    }

    /// Whether the handler still runs (its `on_close` has not).
    pub fn is_open(&self) -> bool {
        self.state.is_some() && self.hangup.is_none()
    }

    /// Ends the connection: runs `on_close` once. Later calls do nothing.
    pub fn end(&mut self, handler: &H, end: End, now_ms: u64) {
        let end = self.hangup.map_or(end, |(_, why)| why);
        if let Some(state) = self.state.take() {
            self.conn.mailbox.close();
            if catch_unwind(AssertUnwindSafe(|| handler.on_close(state, end, now_ms))).is_err() {
                tracing::error!(peer = %self.conn.peer, "on_close panicked");
            }
        }
    }

    fn call(
        &mut self,
        handler: &H,
        now_ms: u64,
        outgoing: &mut Outgoing,
        f: impl FnOnce(&H, &mut H::State, &mut Conn<H::User>),
    ) {
        if self.hangup.is_some() {
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        self.conn.now_ms = now_ms;
        self.conn.out = lend_sends();
        let conn = &mut self.conn;
        if catch_unwind(AssertUnwindSafe(|| f(handler, state, conn))).is_err() {
            tracing::error!(peer = %self.conn.peer, "a connection handler panicked; closing it");
            self.conn.out.clear();
            outgoing.drop_unstarted();
            self.hangup = Some((Hangup::Now, End::Panicked));
        } else {
            self.settle(handler, outgoing);
        }
        give_back_sends(mem::take(&mut self.conn.out));
    }

    /// Moves what the callback queued into `outgoing`, enforcing the bound: a peer that still
    /// had more than `max_unsent` bytes waiting when more were queued for it is too slow. (The
    /// bound is on the backlog, not on one callback's output, so a single message larger than
    /// the bound can still be sent to a peer that keeps up.)
    fn settle(&mut self, handler: &H, outgoing: &mut Outgoing) {
        let backlog = outgoing.unsent();
        let more = !self.conn.out.is_empty();
        for transmit in self.conn.out.drain(..) {
            outgoing.push(transmit);
        }
        if more && backlog > self.max_unsent {
            let unsent = outgoing.unsent();
            outgoing.drop_unstarted();
            tracing::warn!(
                peer = %self.conn.peer,
                unsent,
                limit = self.max_unsent,
                "closing a connection that reads too slowly"
            );
            if let Some(state) = self.state.as_mut() {
                let conn = &mut self.conn;
                let _ = catch_unwind(AssertUnwindSafe(|| handler.on_too_slow(state, conn)));
            }
            for transmit in self.conn.out.drain(..) {
                if outgoing.unsent() + transmit.len() <= self.max_unsent {
                    outgoing.push(transmit);
                }
            }
            let hangup = self.conn.hangup.take().unwrap_or(Hangup::Now);
            self.hangup = Some((hangup, End::TooSlow));
            return;
        }
        if let Some(hangup) = self.conn.hangup.take() {
            self.hangup = Some((hangup, End::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::handler::{MailboxError, MailboxSink};

    /// Sends as many one-byte transmits as each user message says.
    struct Burst;

    impl Handler for Burst {
        type State = ();
        type User = usize;
        fn on_init(&self, _conn: &mut Conn<usize>) {}
        fn handle(&self, _: &mut (), packet: Packet<usize>, conn: &mut Conn<usize>) {
            if let Packet::User(n) = packet {
                for _ in 0..n {
                    conn.send(vec![1u8]);
                }
            }
        }
    }

    struct NoMail;

    /// The room the thread's send list keeps, looked at and put back.
    fn kept_sends() -> usize {
        let sends = SENDS.take();
        let capacity = sends.capacity();
        SENDS.set(sends);
        capacity
    }

    impl MailboxSink<usize> for NoMail {
        fn deliver(&self, message: usize) -> Result<(), MailboxError<usize>> {
            Err(MailboxError::Gone(message))
        }
        fn close(&self) {}
    }

    #[test]
    fn a_slot_keeps_no_send_list_between_callbacks_and_the_thread_a_bounded_one() {
        let peer = "127.0.0.1:1".parse().unwrap();
        let conn = Conn::new(peer, false, Mailbox::new(Arc::new(NoMail)));
        let mut out = Outgoing::default();
        let mut slot = Slot::open(&Burst, conn, usize::MAX, 0, &mut out);
        slot.user(&Burst, 3, 0, &mut out);
        assert_eq!(slot.conn.out.capacity(), 0);
        assert!(kept_sends() >= 3);
        // A burst's list is freed rather than kept.
        slot.user(&Burst, SENDS_KEEP + 1, 0, &mut out);
        assert_eq!(slot.conn.out.capacity(), 0);
        assert!(kept_sends() <= SENDS_KEEP);
        assert_eq!(out.unsent(), SENDS_KEEP + 4);
    }
}
