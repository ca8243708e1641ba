//! The WebSocket session: one machine, shared by both shells, between a connection's bytes and
//! the application's [`Handler`]. It is a raw-layer handler ([`tcp::Handler`]), so a WebSocket
//! server is the raw server running it.
//!
//! It owns the connection's `ws::Connection` and the handler's state. Bytes, time and mailbox
//! messages come in; it gives them to the core as events, calls the handler for what the core
//! reports (`on_upgrade`, `on_request`, `on_init`, `handle`, `on_close`), turns the handler's
//! requests into events again, and hands the core's bytes to the raw connection. Every way a
//! connection can end reaches `on_close` once, with the close code the session policy
//! ([`session::Config`]) names: 1000 for `Next::Stop`, 1001 for shutdown, 1011 for a panicking
//! handler, 1008 for a peer that reads too slowly. No I/O happens here.

use std::cell::Cell;
use std::collections::VecDeque;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use spool_core::replay::Setup;
use spool_core::session;
use spool_core::ws::{self, CloseInfo, Connection, Event, Initiator, Outbound, Request};

use crate::handler::{Action, Conn, Handler, HttpResponse, Incoming, Next, Rejection, StartError};
use crate::record::Recorder;
use crate::tcp::{self, End, Hangup, Packet};

thread_local! {
    /// The queues every session of this thread works in while it runs, so that an idle
    /// session holds none: thousands of idle connections would otherwise each keep the
    /// capacity their busiest moment left behind. Boxed in a `Cell`, so that lending them is
    /// one pointer taken and put back: a `RefCell<Work>` moved ten words each way and dropped
    /// the empty stand-in (with the send list's `RefCell`, which `tcp` dropped too, about 220
    /// instructions an echo round trip).
    static SCRATCH: Cell<Option<Box<Work>>> = const { Cell::new(None) };
}

/// A session's queues while it runs: lent from the thread's scratch by [`lend_scratch`], so a
/// session keeps none between calls.
#[derive(Default)]
struct Work {
    /// Events waiting for the core: the handler's requests, in the order made.
    pending: VecDeque<Event>,
    /// What the core returns.
    out: Vec<Outbound>,
    /// Lent to the handler's connection for each callback to queue its sends in, so that a
    /// callback that sends does not allocate a list each time.
    actions: Vec<Action>,
}

/// Runs `f` with the thread's scratch queues, then gives them back (empty: `run` drains them).
fn lend_scratch<R>(f: impl FnOnce(&mut Work) -> R) -> R {
    // Taken, not borrowed: were a callback to run another session here, it would get fresh
    // queues rather than a double borrow.
    let mut work = SCRATCH.take().unwrap_or_default();
    let result = f(&mut work);
    work.pending.clear();
    work.out.clear();
    work.actions.clear();
    // A burst may have grown the scratch; a thread keeps at most a modest one.
    if work.out.capacity() > SCRATCH_KEEP {
        work.out = Vec::new();
    }
    if work.actions.capacity() > SCRATCH_KEEP {
        work.actions = Vec::new();
    }
    if work.pending.capacity() > SCRATCH_KEEP {
        work.pending = VecDeque::new();
    }
    SCRATCH.set(Some(work));
    result
}

/// The most entries a thread's scratch queues keep between calls (a few dozen KiB).
const SCRATCH_KEEP: usize = 256;

/// A WebSocket [`Handler`] as a raw-layer handler: what both shells' WebSocket servers run.
pub struct WsProtocol<H: Handler> {
    handler: H,
    /// Shared by every connection's core machine.
    config: Arc<ws::Config>,
    session: session::Config,
    max_unsent: usize,
    record: Option<PathBuf>,
    recorded: AtomicU64,
}

impl<H: Handler> WsProtocol<H> {
    /// A session machine for `handler`, after checking the configurations. `max_unsent` is the
    /// raw server's bound on a connection's unsent bytes (named in the too-slow close reason);
    /// with `record`, every connection's event log is written to `record/<n>.jsonl`.
    ///
    /// # Errors
    /// [`StartError::Config`] for an invalid configuration, [`StartError::SystemError`] when
    /// the record directory cannot be created.
    pub fn new(
        handler: H,
        config: ws::Config,
        session: session::Config,
        max_unsent: usize,
        record: Option<PathBuf>,
    ) -> Result<WsProtocol<H>, StartError> {
        config.validate().map_err(StartError::Config)?;
        session.validate().map_err(StartError::Config)?;
        if let Some(dir) = &record {
            std::fs::create_dir_all(dir).map_err(|e| {
                StartError::SystemError(std::io::Error::new(
                    e.kind(),
                    format!("cannot create the record directory {}: {e}", dir.display()),
                ))
            })?;
        }
        Ok(WsProtocol {
            handler,
            config: Arc::new(config),
            session,
            max_unsent,
            record,
            recorded: AtomicU64::new(0),
        })
    }

    /// The application's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The WebSocket configuration.
    pub fn config(&self) -> &ws::Config {
        &self.config
    }

    /// The session policy.
    pub fn session(&self) -> &session::Config {
        &self.session
    }

    fn recorder(&self) -> Option<Recorder> {
        let dir = self.record.as_ref()?;
        let n = self.recorded.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{n}.jsonl"));
        let setup = Setup::Server {
            config: (*self.config).clone(),
            session: self.session.clone(),
        };
        Recorder::create(&path, setup)
            .map_err(|e| tracing::warn!(path = %path.display(), "not recording: {e}"))
            .ok()
    }
}

/// One WebSocket connection's session. What it works in while it runs (events for the core,
/// what the core returns) is the thread's, lent for the call: an idle session holds only what
/// it must remember. (The peer and the mailbox are the raw connection's, and the handler's
/// connection's once it is open.)
pub struct WsSession<H: Handler> {
    ws: Connection,
    /// The upgrade request, kept from `Upgrade` until `Opened` hands it to the handler.
    request: Option<Box<Request>>,
    /// The handler's state and connection, from `on_init` until `on_close`.
    user: Option<(H::State, Conn<H::User>)>,
    /// Boxed: most servers do not record.
    recorder: Option<Box<Recorder>>,
}

impl<H: Handler> tcp::Handler for WsProtocol<H> {
    type State = WsSession<H>;
    type User = H::User;

    fn on_init(&self, conn: &mut tcp::Conn<H::User>) -> WsSession<H> {
        // Validated in `new`, so this does not fail; were it to, the connection is refused.
        let ws = Connection::server_shared(self.config.clone()).unwrap_or_else(|e| {
            tracing::error!("invalid websocket config: {e}");
            panic!("invalid websocket config: {e}")
        });
        let mut session = WsSession {
            ws,
            request: None,
            user: None,
            recorder: self.recorder().map(Box::new),
        };
        let now_ms = conn.now_ms();
        self.feed(&mut session, Event::Open { now_ms }, conn);
        session
    }

    fn handle(&self, s: &mut WsSession<H>, packet: Packet<H::User>, conn: &mut tcp::Conn<H::User>) {
        let now_ms = conn.now_ms();
        match packet {
            Packet::Data(bytes) => self.feed(s, Event::Receive { now_ms, bytes }, conn),
            Packet::User(message) => lend_scratch(|work| {
                self.call(s, work, now_ms, |h, state, c| {
                    h.handle(state, Incoming::User(message), c)
                });
                self.run(s, work, conn);
            }),
        }
    }

    fn handle_read(&self, s: &mut WsSession<H>, bytes: &[u8], conn: &mut tcp::Conn<H::User>) {
        let now_ms = conn.now_ms();
        if s.recorder.is_some() {
            // The recording holds the event the slice stands for.
            let bytes = Bytes::copy_from_slice(bytes);
            return self.feed(s, Event::Receive { now_ms, bytes }, conn);
        }
        lend_scratch(|work| {
            let mut out = mem::take(&mut work.out);
            s.ws.handle_read(now_ms, bytes, &mut out);
            for outbound in out.drain(..) {
                self.carry_out(s, work, outbound, conn);
            }
            work.out = out;
            // What the handler's callbacks asked for, as `feed` would have run it next.
            self.run(s, work, conn);
        });
    }

    fn deadline(&self, s: &WsSession<H>) -> Option<u64> {
        s.ws.next_deadline()
    }

    fn on_deadline(&self, s: &mut WsSession<H>, conn: &mut tcp::Conn<H::User>) {
        let now_ms = conn.now_ms();
        self.feed(s, Event::Tick { now_ms }, conn);
    }

    fn on_shutdown(&self, s: &mut WsSession<H>, conn: &mut tcp::Conn<H::User>) {
        let event = Event::Close {
            now_ms: conn.now_ms(),
            code: self.session.shutdown_code,
            reason: self.session.shutdown_reason.clone(),
        };
        self.feed(s, event, conn);
    }

    fn on_too_slow(&self, s: &mut WsSession<H>, conn: &mut tcp::Conn<H::User>) {
        // The peer is not reading: the close frame is a courtesy written if it fits; the raw
        // layer closes the connection right after.
        let event = Event::Close {
            now_ms: conn.now_ms(),
            code: self.session.too_slow_code,
            reason: self.session.too_slow_reason(self.max_unsent),
        };
        self.feed(s, event, conn);
    }

    fn on_close(&self, mut s: WsSession<H>, end: End, now_ms: u64) {
        // The transport is gone: the core reports `Closed` (to `on_close`) if it had not yet.
        if let Some(recorder) = &mut s.recorder {
            recorder.event(&Event::TransportClosed { now_ms });
        }
        lend_scratch(|work| {
            s.ws.handle_into(Event::TransportClosed { now_ms }, &mut work.out);
            for outbound in work.out.drain(..) {
                if let Outbound::Closed(info) = outbound {
                    self.closed(&mut s, info, end);
                }
            }
        });
        if let Some((state, _conn)) = s.user.take() {
            // Only if the core did not report `Closed`; kept so on_close runs exactly once.
            let info = CloseInfo {
                code: 1006,
                reason: String::new(),
                clean: false,
                initiator: Initiator::Transport,
            };
            self.handler.on_close(state, &info);
        }
        if let Some(recorder) = &mut s.recorder {
            recorder.flush();
        }
    }

    fn refusal(&self) -> Option<Bytes> {
        Some(ws::error_response(503, "too many connections").into_bytes())
    }
}

impl<H: Handler> WsProtocol<H> {
    /// Gives `event`, and every event it leads to, to the core.
    fn feed(&self, s: &mut WsSession<H>, event: Event, conn: &mut tcp::Conn<H::User>) {
        lend_scratch(|work| {
            work.pending.push_back(event);
            self.run(s, work, conn);
        });
    }

    fn run(&self, s: &mut WsSession<H>, work: &mut Work, conn: &mut tcp::Conn<H::User>) {
        let mut out = mem::take(&mut work.out);
        while let Some(event) = work.pending.pop_front() {
            if let Some(recorder) = &mut s.recorder {
                recorder.event(&event);
            }
            s.ws.handle_into(event, &mut out);
            for outbound in out.drain(..) {
                self.carry_out(s, work, outbound, conn);
            }
        }
        work.out = out;
    }

    /// Carries out one outbound. Handler callbacks run here; what they ask for is queued
    /// behind this call's outbounds, so bytes reach the wire in the order the core made them.
    fn carry_out(
        &self,
        s: &mut WsSession<H>,
        work: &mut Work,
        outbound: Outbound,
        conn: &mut tcp::Conn<H::User>,
    ) {
        let now_ms = conn.now_ms();
        let peer = conn.peer_addr();
        match outbound {
            Outbound::Transmit(bytes) => conn.send(bytes),
            Outbound::Upgrade(request) => {
                let decision = catch_unwind(AssertUnwindSafe(|| self.handler.on_upgrade(&request)))
                    .unwrap_or_else(|_| {
                        tracing::error!(%peer, "on_upgrade panicked; answering 500");
                        Err(Rejection::new(500, "internal error"))
                    });
                let event = match decision {
                    Ok(()) => Event::Accept { now_ms },
                    Err(Rejection { status, reason }) => Event::Reject {
                        now_ms,
                        status,
                        reason,
                    },
                };
                s.request = Some(request);
                work.pending.push_back(event);
            }
            Outbound::HttpRequest(request) => {
                let response = catch_unwind(AssertUnwindSafe(|| self.handler.on_request(&request)))
                    .unwrap_or_else(|_| {
                        tracing::error!(%peer, "on_request panicked; answering 500");
                        HttpResponse::new(500, "text/plain; charset=utf-8", "internal error\n")
                    });
                work.pending.push_back(Event::Respond {
                    now_ms,
                    status: response.status,
                    content_type: response.content_type,
                    body: response.body,
                });
            }
            Outbound::Opened(handshake) => {
                let request = s.request.take().map(|r| *r).unwrap_or_default();
                let mut user_conn = Conn::new(peer, request, handshake.protocol, conn.mailbox());
                match catch_unwind(AssertUnwindSafe(|| self.handler.on_init(&mut user_conn))) {
                    Ok(state) => {
                        user_conn.keep_only_target();
                        s.user = Some((state, user_conn));
                        self.after_callback(s, work, now_ms, Next::Continue);
                    }
                    Err(_) => {
                        tracing::error!(%peer, "on_init panicked; closing with {}", self.session.panic_code);
                        work.pending.push_back(self.panic_close(now_ms));
                    }
                }
            }
            Outbound::Deliver(message) => {
                self.call(s, work, now_ms, |h, state, c| {
                    h.handle(state, Incoming::Message(message), c)
                });
            }
            Outbound::Closed(info) => {
                // Nothing reaches the handler any more: senders hear `Gone`.
                conn.mailbox().close();
                self.closed(s, info, End::Closed);
            }
            Outbound::Disconnect => conn.close_with(Hangup::Linger(self.session.linger_ms)),
        }
    }

    /// Runs one handler callback behind `catch_unwind`; a panic closes with `panic_code`.
    fn call(
        &self,
        s: &mut WsSession<H>,
        work: &mut Work,
        now_ms: u64,
        f: impl FnOnce(&H, &mut H::State, &mut Conn<H::User>) -> Next,
    ) {
        let Some((state, user_conn)) = &mut s.user else {
            return;
        };
        user_conn.lend_actions(mem::take(&mut work.actions));
        match catch_unwind(AssertUnwindSafe(|| f(&self.handler, state, user_conn))) {
            Ok(next) => self.after_callback(s, work, now_ms, next),
            Err(_) => {
                tracing::error!(peer = %user_conn.peer_addr(), "handler panicked; closing with {}", self.session.panic_code);
                user_conn.take_actions();
                work.pending.push_back(self.panic_close(now_ms));
            }
        }
    }

    fn panic_close(&self, now_ms: u64) -> Event {
        Event::Close {
            now_ms,
            code: self.session.panic_code,
            reason: "internal error".into(),
        }
    }

    /// Queues what the handler asked for during its callback.
    fn after_callback(&self, s: &mut WsSession<H>, work: &mut Work, now_ms: u64, next: Next) {
        if let Some((_, user_conn)) = &mut s.user {
            let mut actions = user_conn.take_actions();
            for action in actions.drain(..) {
                work.pending.push_back(match action {
                    Action::Send(message) => Event::Send { now_ms, message },
                    Action::Close { code, reason } => Event::Close {
                        now_ms,
                        code,
                        reason,
                    },
                });
            }
            // Back to the thread's scratch, empty, for the next callback.
            if work.actions.capacity() < actions.capacity() {
                work.actions = actions;
            }
        }
        if next == Next::Stop {
            work.pending.push_back(Event::Close {
                now_ms,
                code: self.session.stop_code,
                reason: String::new(),
            });
        }
    }

    /// The core reports the end: `on_close`, once. A connection cut for reading too slowly is
    /// reported with the close it was sent, not the transport's 1006.
    fn closed(&self, s: &mut WsSession<H>, mut info: CloseInfo, end: End) {
        if let Some((state, conn)) = s.user.take() {
            conn.mailbox().close();
            if end == End::TooSlow && info.code == 1006 {
                info = CloseInfo {
                    code: self.session.too_slow_code,
                    reason: self.session.too_slow_reason(self.max_unsent),
                    clean: false,
                    initiator: Initiator::Local,
                };
            }
            if catch_unwind(AssertUnwindSafe(|| self.handler.on_close(state, &info))).is_err() {
                tracing::error!(peer = %conn.peer_addr(), "on_close panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread's scratch, looked at and put back.
    fn with_kept<R>(f: impl FnOnce(&Work) -> R) -> R {
        let work = SCRATCH.take().unwrap_or_default();
        let result = f(&work);
        SCRATCH.set(Some(work));
        result
    }

    fn kept() -> (usize, usize) {
        with_kept(|work| (work.pending.capacity(), work.out.capacity()))
    }

    #[test]
    fn the_thread_scratch_comes_back_empty_and_keeps_at_most_its_bound() {
        lend_scratch(|work| {
            work.pending
                .extend((0..10).map(|now_ms| Event::Tick { now_ms }));
            work.out.extend((0..10).map(|_| Outbound::Disconnect));
        });
        let (pending, out) = kept();
        assert!((10..=SCRATCH_KEEP).contains(&pending) && (10..=SCRATCH_KEEP).contains(&out));
        lend_scratch(|work| {
            assert!(work.pending.is_empty() && work.out.is_empty());
            work.pending
                .extend((0..=SCRATCH_KEEP as u64).map(|now_ms| Event::Tick { now_ms }));
            work.out
                .extend((0..=SCRATCH_KEEP).map(|_| Outbound::Disconnect));
        });
        // A burst's queues are freed rather than kept.
        assert_eq!(kept(), (0, 0));
    }

    #[test]
    fn the_lent_action_list_comes_back_empty_and_a_burst_sized_one_is_freed() {
        let kept_actions = || with_kept(|work| work.actions.capacity());
        let send = || Action::Send(ws::Message::text("x"));
        lend_scratch(|work| work.actions.extend((0..10).map(|_| send())));
        assert!((10..=SCRATCH_KEEP).contains(&kept_actions()));
        lend_scratch(|work| {
            assert!(work.actions.is_empty());
            work.actions.extend((0..=SCRATCH_KEEP).map(|_| send()));
        });
        assert_eq!(kept_actions(), 0);
    }
}
