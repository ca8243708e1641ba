//! What both shells' reconnecting drivers share (`spool_std::reconnecting` on threads,
//! `spool_smol::reconnecting` on smol): the client machine, the [`Handler`], and everything
//! between them that is not I/O: which callback an outbound calls, what a callback's answer
//! means for the machine ([`Next::into_events`]), calls waiting for replies, finishing once
//! the queue drains, the event log. A driver owns the sockets and the waiting; it hands this
//! its inputs and carries out the four outbounds that touch sockets ([`Io`]) through its
//! [`Transport`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};

use spool_core::client::{self, CallError, Event, Outbound, StopReason};
use spool_core::replay::ClientLine;
use spool_core::ws::{Message, Transmit};

use crate::clock::Clock;
use crate::late::{From, Handler, Next};

/// The outbounds a driver carries out itself: they touch sockets.
#[derive(Debug)]
pub enum Io {
    /// [`Outbound::Connect`].
    Connect {
        /// A host name or address.
        host: String,
        /// The port.
        port: u16,
    },
    /// [`Outbound::StartTls`].
    StartTls {
        /// The server name to verify.
        host: String,
    },
    /// [`Outbound::Transmit`].
    Transmit(Transmit),
    /// [`Outbound::Disconnect`].
    Disconnect,
}

/// A driver's sockets.
pub trait Transport {
    /// Carries out `io`. Events it leads to at once (a failed write: `TransportClosed`; TLS that
    /// cannot start: `TlsFailed`) go into `events`, given to the machine next.
    fn carry(&mut self, io: Io, now_ms: u64, events: &mut Vec<Event>);
}

/// Where a call's answer goes.
pub type Answer<R> = Box<dyn FnOnce(Result<R, CallError>) + Send>;

/// The machine, the handler and the bookkeeping between them. See the module doc.
pub struct LateSession<H: Handler> {
    core: client::Client,
    handler: H,
    clock: Clock,
    waiters: HashMap<u64, Answer<H::Reply>>,
    /// Replies given by the handler, until the machine says whether the call still waits.
    values: HashMap<u64, H::Reply>,
    /// Finishing: close this long after the queue drains.
    finishing: Option<u64>,
    /// When to close, once drained while finishing.
    close_at: Option<u64>,
    stopped: Option<StopReason>,
    /// Events the handler's answers produced, given to the machine after the current ones.
    pending: Vec<Event>,
    recorder: Option<BufWriter<File>>,
}

impl<H: Handler> LateSession<H> {
    /// A session for `core` and `handler`, writing every event to `recorder` if given (whose
    /// first line, the configuration, the caller wrote).
    pub fn new(core: client::Client, handler: H, recorder: Option<BufWriter<File>>) -> Self {
        LateSession {
            core,
            handler,
            clock: Clock::new(),
            waiters: HashMap::new(),
            values: HashMap::new(),
            finishing: None,
            close_at: None,
            stopped: None,
            pending: Vec::new(),
            recorder,
        }
    }

    /// The session's clock: every event's `now_ms`.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock, for arming timers.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Why the client stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// When the driver must call [`LateSession::on_timer`]: the machine's deadline or the
    /// close after finishing, whichever is first.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.core.next_deadline(), self.close_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the driver should take sends now: not while connected with the queue full
    /// (backpressure); disconnected, the queue's own bound drops.
    pub fn takes_sends(&self) -> bool {
        !(self.core.is_open() && self.core.is_full())
    }

    /// Runs `init` and starts the first attempt.
    pub fn start(&mut self, t: &mut impl Transport) {
        let next = self.handler.init();
        self.apply(next, false);
        self.step(Event::Start { now_ms: 0 }, t);
    }

    /// The deadline came: close after finishing, or tick the machine.
    pub fn on_timer(&mut self, t: &mut impl Transport) {
        let now_ms = self.clock.now_ms();
        if self.close_at.is_some_and(|at| now_ms >= at) {
            self.close_at = None;
            self.close(t);
        } else {
            self.step(Event::Tick { now_ms }, t);
        }
    }

    /// Sends a message (queued while disconnected).
    pub fn send(&mut self, message: Message, t: &mut impl Transport) {
        let now_ms = self.clock.now_ms();
        self.step(Event::Send { now_ms, message }, t);
    }

    /// A call from outside: `answer` hears the reply or the failure; `deliver` is how the
    /// handler's [`reply`](crate::late::reply) reaches the driver, which then calls
    /// [`LateSession::reply`].
    pub fn call(
        &mut self,
        call: H::Call,
        id: u64,
        timeout_ms: Option<u64>,
        answer: Answer<H::Reply>,
        deliver: impl FnOnce(u64, H::Reply) + Send + 'static,
        t: &mut impl Transport,
    ) {
        let now_ms = self.clock.now_ms();
        self.waiters.insert(id, answer);
        self.step(
            Event::Call {
                now_ms,
                id,
                timeout_ms,
            },
            t,
        );
        if self.waiters.contains_key(&id) {
            let next = self.handler.handle_call(call, From::new(id, deliver));
            self.apply(next, false);
            self.run_pending(t);
        }
    }

    /// The handler replied to call `id`.
    pub fn reply(&mut self, id: u64, value: H::Reply, t: &mut impl Transport) {
        let now_ms = self.clock.now_ms();
        self.values.insert(id, value);
        self.step(Event::Reply { now_ms, id }, t);
        // Not waited for (timed out): forget it.
        self.values.remove(&id);
    }

    /// Gives the handler a message (`handle_info`).
    pub fn info(&mut self, info: H::Info, t: &mut impl Transport) {
        let next = self.handler.handle_info(info);
        self.apply(next, true);
        self.run_pending(t);
    }

    /// Closes now (1000) and stops reconnecting.
    pub fn close(&mut self, t: &mut impl Transport) {
        let now_ms = self.clock.now_ms();
        self.step(
            Event::Close {
                now_ms,
                code: 1000,
                reason: String::new(),
            },
            t,
        );
    }

    /// Closes `linger_ms` after the queue drains.
    pub fn finish(&mut self, linger_ms: u64) {
        self.finishing = Some(linger_ms);
        if self.core.queued() == 0 {
            self.close_at = Some(self.clock.now_ms().saturating_add(linger_ms));
        }
    }

    /// Gives `event` (bytes, a connection, a transport's end) to the machine, then whatever
    /// the answers to it produced.
    pub fn step(&mut self, event: Event, t: &mut impl Transport) {
        self.step_one(event, t);
        self.run_pending(t);
    }

    fn apply(&mut self, next: Next, this_connection: bool) {
        let now_ms = self.clock.now_ms();
        next.into_events(this_connection, now_ms, &mut self.pending);
    }

    fn run_pending(&mut self, t: &mut impl Transport) {
        while !self.pending.is_empty() {
            for event in std::mem::take(&mut self.pending) {
                self.step_one(event, t);
            }
        }
    }

    fn step_one(&mut self, event: Event, t: &mut impl Transport) {
        tracing::trace!(?event, "client event");
        if let Some(file) = self.recorder.as_mut()
            && let Err(e) = write_line(file, &ClientLine::Event(event.clone()))
        {
            tracing::warn!("recording stopped: {e}");
            self.recorder = None;
        }
        for outbound in self.core.handle(event) {
            tracing::trace!(?outbound, "client outbound");
            let now_ms = self.clock.now_ms();
            match outbound {
                Outbound::Connect { host, port } => {
                    t.carry(Io::Connect { host, port }, now_ms, &mut self.pending);
                }
                Outbound::StartTls { host } => {
                    t.carry(Io::StartTls { host }, now_ms, &mut self.pending);
                }
                Outbound::Transmit(bytes) => {
                    t.carry(Io::Transmit(bytes), now_ms, &mut self.pending);
                }
                Outbound::Disconnect => t.carry(Io::Disconnect, now_ms, &mut self.pending),
                Outbound::Opened { headers, .. } => {
                    let next = self.handler.handle_connect(&headers);
                    self.apply(next, true);
                }
                Outbound::Deliver(message) => {
                    let next = self.handler.handle_in(message);
                    self.apply(next, true);
                }
                Outbound::Failed(error) => {
                    tracing::debug!("attempt failed: {error}");
                    self.handler.handle_failure(&error);
                }
                Outbound::Disconnected { code, reason } => {
                    tracing::debug!("disconnected: {code} {reason:?}");
                    let next = self.handler.handle_disconnect(code, &reason);
                    self.apply(next, false);
                }
                Outbound::Retrying {
                    attempt, delay_ms, ..
                } => tracing::debug!("attempt {attempt} in {delay_ms} ms"),
                Outbound::Dropped { dropped } => self.handler.handle_dropped(dropped),
                Outbound::Drained => {
                    if let (Some(linger_ms), None) = (self.finishing, self.close_at) {
                        self.close_at = Some(now_ms.saturating_add(linger_ms));
                    }
                }
                Outbound::Reply { id } => {
                    if let (Some(answer), Some(value)) =
                        (self.waiters.remove(&id), self.values.remove(&id))
                    {
                        answer(Ok(value));
                    }
                }
                Outbound::CallFailed { id, error } => {
                    if let Some(answer) = self.waiters.remove(&id) {
                        answer(Err(error));
                    }
                }
                Outbound::Stopped { reason } => self.stopped = Some(reason),
            }
        }
    }
}

/// Writes one line of an event log.
///
/// # Errors
/// The file's.
pub fn write_line(file: &mut BufWriter<File>, line: &ClientLine) -> io::Result<()> {
    serde_json::to_writer(&mut *file, line)?;
    file.write_all(b"\n")?;
    file.flush()
}
