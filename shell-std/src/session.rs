//! One server connection on two threads: a reader that blocks on the socket and forwards what
//! arrives, and a driver that owns the `ws::Connection` and the handler's state.
//!
//! Both feed one channel, which also carries mailbox messages and the server's shutdown
//! request, so the driver sleeps in a single `recv_timeout` bounded by the core's next
//! deadline: no polling, and a blocked read never holds up a timer or a user message.

use std::collections::VecDeque;
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_core::replay::Setup;
use spool_core::ws::{CloseInfo, Connection, Event, Initiator, Outbound, Request, Transmit};

use crate::handler::{
    Action, Conn, Handler, HttpResponse, Incoming, Mailbox, MailboxSink, Next, Rejection,
};
use crate::record::Recorder;
use crate::server::{Context, Registration};
use crate::transport::{Read, Transport};

/// What wakes a connection's driver.
pub(crate) enum Input<U> {
    /// Bytes from the peer.
    Bytes(Bytes),
    /// The peer closed, or reading failed.
    Eof,
    /// A message sent through the connection's [`Mailbox`].
    User(U),
    /// The server is shutting down.
    Shutdown,
}

/// Runs one accepted connection to its end, on the calling thread (its driver thread).
pub(crate) fn serve<H: Handler>(
    ctx: Arc<Context<H>>,
    registration: Registration,
    tcp: Arc<TcpStream>,
    peer: SocketAddr,
    tx: Sender<Input<H::User>>,
    rx: Receiver<Input<H::User>>,
) {
    // Each early return drops the socket (the peer sees it close) and the registration.
    let transport = match &ctx.tls {
        Some(config) => match rustls::ServerConnection::new(config.clone()) {
            Ok(tls) => Transport::tls(tcp, tls),
            Err(_) => return,
        },
        None => Transport::plain(tcp),
    };
    let read_half = transport.other_half();
    // Validated in Server::start, so this does not fail.
    let Ok(ws) = Connection::server(ctx.config.clone()) else {
        return;
    };
    let credit = Arc::new(Credit::default());
    let reader = {
        let (tx, credit) = (tx.clone(), credit.clone());
        thread::Builder::new()
            .name(format!("spool-read-{}", registration.id()))
            .stack_size(READER_STACK_LEN)
            .spawn(move || read_loop(read_half, &tx, &credit))
    };
    let Ok(reader) = reader else { return };
    // A log that cannot be created is skipped: the connection matters more than its record.
    let recorder = ctx.record.as_ref().and_then(|dir| {
        let path = dir.join(format!("{}.jsonl", registration.id()));
        Recorder::create(
            &path,
            Setup::Server {
                config: ctx.config.clone(),
            },
        )
        .ok()
    });
    let mut session = Session {
        mailbox: Mailbox::new(Arc::new(ChannelSink(tx))),
        ctx,
        ws,
        transport,
        recorder,
        peer,
        request: None,
        state: None,
        pending: VecDeque::new(),
        out: Vec::new(),
        batch: Vec::new(),
        broken: false,
        transport_closed: false,
        disconnected: false,
        credit,
        reader: Some(reader),
        rx,
        _registration: registration,
    };
    session.run();
}

/// The reader thread: socket bytes into the channel until EOF, an error, or the driver leaves.
fn read_loop<U>(mut transport: Transport, tx: &Sender<Input<U>>, credit: &Credit) {
    while credit.wait_for_room() {
        match transport.read() {
            Ok(Read::Data(bytes)) if bytes.is_empty() => {}
            Ok(Read::Data(bytes)) => {
                credit.take(bytes.len());
                if tx.send(Input::Bytes(bytes)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Read::Eof) | Err(_) => {
                let _ = tx.send(Input::Eof);
                return;
            }
        }
    }
}

/// The driver's state for one connection.
struct Session<H: Handler> {
    ctx: Arc<Context<H>>,
    ws: Connection,
    /// The writing half; the reader thread has the other.
    transport: Transport,
    recorder: Option<Recorder>,
    peer: SocketAddr,
    mailbox: Mailbox<H::User>,
    /// The upgrade request, kept from `Upgrade` until `Opened` hands it to the handler.
    request: Option<Request>,
    /// The handler's state and connection, from `on_init` until `on_close`.
    state: Option<(H::State, Conn<H::User>)>,
    /// Events waiting for the core: the handler's actions and decisions, in the order made.
    pending: VecDeque<Event>,
    /// Reused for every call to the core.
    out: Vec<Outbound>,
    /// The transmits of one call to the core, written together.
    batch: Vec<Transmit>,
    /// A write failed; `TransportClosed` is queued and nothing more is written.
    broken: bool,
    /// The core has been told the transport is gone.
    transport_closed: bool,
    /// `Disconnect` was carried out.
    disconnected: bool,
    credit: Arc<Credit>,
    reader: Option<JoinHandle<()>>,
    /// The driver's inputs. Dropped before the registration, so that once shutdown has seen
    /// every connection leave, every mailbox reports [`Gone`](crate::Gone).
    rx: Receiver<Input<H::User>>,
    /// Last, so the registry forgets this connection only after the threads are done.
    _registration: Registration,
}

impl<H: Handler> Session<H> {
    /// The driver loop: wait for input or the next deadline, turn it into an event.
    fn run(&mut self) {
        self.feed(Event::Open {
            now_ms: self.now_ms(),
        });
        while !self.ended() {
            let input = match self.ws.next_deadline() {
                Some(deadline) => match self.ctx.clock.until(deadline) {
                    wait if wait.is_zero() => Err(RecvTimeoutError::Timeout),
                    wait => self.rx.recv_timeout(wait),
                },
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let now_ms = self.now_ms();
            match input {
                Ok(Input::Bytes(bytes)) => {
                    self.credit.release(bytes.len());
                    self.feed(Event::Receive { now_ms, bytes });
                }
                // The registry holds a sender until this thread ends, so the channel cannot be
                // disconnected; were it, there would be no input ever again.
                Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    self.feed(Event::TransportClosed { now_ms });
                }
                Ok(Input::User(message)) => self.user(message),
                Ok(Input::Shutdown) => self.feed(Event::Close {
                    now_ms,
                    code: SHUTDOWN_CLOSE_CODE,
                    reason: "server shutting down".to_string(),
                }),
                Err(RecvTimeoutError::Timeout) => self.feed(Event::Tick { now_ms }),
            }
        }
        if self.disconnected && !self.broken && !self.transport_closed {
            self.linger();
        }
        if let Some((state, _conn)) = self.state.take() {
            // Unreachable while the core keeps its word (`Closed` comes before it is done);
            // kept so that `on_close` runs exactly once whatever happens.
            let info = CloseInfo {
                code: 1006,
                reason: String::new(),
                clean: false,
                initiator: Initiator::Transport,
            };
            self.ctx.handler.on_close(state, &info);
        }
    }

    /// Gives `event` and then every event it leads to (handler actions) to the core.
    fn feed(&mut self, event: Event) {
        self.pending.push_back(event);
        self.run_pending();
    }

    fn run_pending(&mut self) {
        while let Some(event) = self.pending.pop_front() {
            if self.ended() {
                self.pending.clear();
                return;
            }
            let transport_closed = matches!(event, Event::TransportClosed { .. });
            if let Some(recorder) = &mut self.recorder {
                recorder.event(&event);
            }
            let mut out = mem::take(&mut self.out);
            self.ws.handle_into(event, &mut out);
            self.transport_closed |= transport_closed;
            for outbound in out.drain(..) {
                self.carry_out(outbound);
            }
            self.out = out;
            self.flush();
        }
    }

    /// Carries out one outbound. Handler callbacks run here; what they ask for is queued
    /// behind this call's outbounds, so bytes reach the wire in the order the core made them.
    fn carry_out(&mut self, outbound: Outbound) {
        let now_ms = self.now_ms();
        match outbound {
            Outbound::Transmit(bytes) => self.batch.push(bytes),
            Outbound::Upgrade(request) => {
                let decision = match self.ctx.handler.on_upgrade(&request) {
                    Ok(()) => Event::Accept { now_ms },
                    Err(Rejection { status, reason }) => Event::Reject {
                        now_ms,
                        status,
                        reason,
                    },
                };
                self.request = Some(request);
                self.pending.push_back(decision);
            }
            Outbound::HttpRequest(request) => {
                let HttpResponse {
                    status,
                    content_type,
                    body,
                } = self.ctx.handler.on_request(&request);
                self.pending.push_back(Event::Respond {
                    now_ms,
                    status,
                    content_type,
                    body,
                });
            }
            Outbound::Opened(handshake) => {
                // A server connection reports Upgrade before it can open.
                let request = self.request.take().unwrap_or_default();
                let mut conn =
                    Conn::new(self.peer, request, handshake.protocol, self.mailbox.clone());
                let state = self.ctx.handler.on_init(&mut conn);
                self.state = Some((state, conn));
                self.after_callback(Next::Continue);
            }
            Outbound::Deliver(message) => {
                if let Some((state, conn)) = &mut self.state {
                    let next = self
                        .ctx
                        .handler
                        .handle(state, Incoming::Message(message), conn);
                    self.after_callback(next);
                }
            }
            Outbound::Closed(info) => {
                if let Some((state, _conn)) = self.state.take() {
                    self.ctx.handler.on_close(state, &info);
                }
            }
            Outbound::Disconnect => {
                self.flush();
                self.transport.shutdown_write();
                self.disconnected = true;
            }
        }
    }

    /// A mailbox message: to the handler, if the connection is (still) open to it.
    fn user(&mut self, message: H::User) {
        if let Some((state, conn)) = &mut self.state {
            let next = self
                .ctx
                .handler
                .handle(state, Incoming::User(message), conn);
            self.after_callback(next);
            self.run_pending();
        }
    }

    /// Queues what the handler asked for during its callback.
    fn after_callback(&mut self, next: Next) {
        let now_ms = self.now_ms();
        if let Some((_, conn)) = &mut self.state {
            for action in conn.take_actions() {
                self.pending.push_back(match action {
                    Action::Send(message) => Event::Send { now_ms, message },
                    Action::Close { code, reason } => Event::Close {
                        now_ms,
                        code,
                        reason,
                    },
                });
            }
        }
        if next == Next::Stop {
            self.pending.push_back(Event::Close {
                now_ms,
                code: 1000,
                reason: String::new(),
            });
        }
    }

    /// Writes the batched transmits in one vectored write.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if !(self.broken || self.transport_closed || self.disconnected)
            && self.transport.write(&self.batch).is_err()
        {
            self.broken = true;
            self.pending.push_front(Event::TransportClosed {
                now_ms: self.now_ms(),
            });
        }
        self.batch.clear();
    }

    /// After `Disconnect`: reads and discards until the peer closes too, for a bounded time, so
    /// that unread bytes do not turn our close into a reset that could destroy the close frame
    /// still in flight (RFC 6455 §7.1.1 wants the server to close TCP first, cleanly).
    fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok(Input::Bytes(bytes)) => self.credit.release(bytes.len()),
                Ok(Input::User(_) | Input::Shutdown) => {}
                Ok(Input::Eof) | Err(_) => return,
            }
        }
    }

    /// Whether the socket is finished with.
    fn ended(&self) -> bool {
        self.transport_closed || self.disconnected
    }

    fn now_ms(&self) -> u64 {
        self.ctx.clock.now_ms()
    }
}

impl<H: Handler> Drop for Session<H> {
    /// Runs however the driver ends, a handler panic included: closes the socket, which wakes
    /// the reader, and joins it.
    fn drop(&mut self) {
        self.credit.close();
        self.transport.shutdown();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A mailbox's way into the driver's channel.
struct ChannelSink<U>(Sender<Input<U>>);

impl<U: Send> MailboxSink<U> for ChannelSink<U> {
    fn deliver(&self, message: U) -> Result<(), U> {
        self.0.send(Input::User(message)).map_err(|e| match e.0 {
            Input::User(message) => message,
            // A failed send returns the input it was given, and this one was User.
            _ => unreachable!(),
        })
    }
}

/// Flow control between reader and driver: the reader stops reading once this many bytes wait
/// in the channel, so a peer that sends faster than the handler keeps up is slowed down by TCP
/// instead of growing this process's memory.
#[derive(Default)]
struct Credit {
    state: Mutex<CreditState>,
    room: Condvar,
}

#[derive(Default)]
struct CreditState {
    in_flight: usize,
    closed: bool,
}

impl Credit {
    /// Blocks while the channel is full; `false` once the driver has left.
    fn wait_for_room(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self
            .room
            .wait_while(state, |s| s.in_flight >= MAX_IN_FLIGHT_LEN && !s.closed)
            .unwrap_or_else(PoisonError::into_inner);
        !state.closed
    }

    fn take(&self, len: usize) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight += len;
    }

    fn release(&self, len: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_full = state.in_flight >= MAX_IN_FLIGHT_LEN;
        state.in_flight = state.in_flight.saturating_sub(len);
        if was_full && state.in_flight < MAX_IN_FLIGHT_LEN {
            self.room.notify_one();
        }
    }

    fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.room.notify_all();
    }
}

/// Bytes read but not yet handled, per connection, before the reader waits: four full reads.
const MAX_IN_FLIGHT_LEN: usize = 256 * 1024;

/// The reader thread's stack: its 64 KiB scratch buffer is thread-local heap, so this only
/// needs room for rustls decrypting a record and answering a handshake.
const READER_STACK_LEN: usize = 256 * 1024;

/// The close code asked for on server shutdown: 1001, going away (RFC 6455 §7.4.1).
const SHUTDOWN_CLOSE_CODE: u16 = 1001;

/// How long to drain the peer after `Disconnect` before dropping the socket.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
