//! A reconnecting client in the shape of Late: a [`Handler`] with every callback defaulted,
//! driven by spool-core's [`client::Client`] session machine (backoff, heartbeats, the
//! bounded queue, calls with timeouts, rate limits, the `CONNECT` proxy exchange), with
//! [`ClientHandle::call`] from outside the connection.
//!
//! This shell only moves bytes and time: it opens TCP connections and TLS when the machine
//! asks, reads into the shared scratch buffer, writes what the machine produced, arms one timer
//! at the machine's next deadline and calls the handler on what it reports. It never decides
//! when to retry.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_lite::{FutureExt as _, Stream as _, future};
use futures_rustls::TlsConnector;
use futures_rustls::pki_types::ServerName;
use smol::Async;
use smol::channel::{Receiver, Sender, TrySendError};
use spool_core::client::{self, CallError, Event, Outbound, StopReason};
use spool_core::replay::ClientLine;
use spool_core::ws::Message;

use crate::client::{Transport, connect_tcp};
use crate::io::{Clock, Deadline, Outgoing, hang_up, poll_read, poll_write, random_bytes};

pub use spool_std::late::{From, Handler, Next, reply};

enum Command<H: Handler> {
    Send(Message),
    Call {
        call: H::Call,
        id: u64,
        timeout_ms: Option<u64>,
        answer: Sender<Result<H::Reply, CallError>>,
    },
    Info(H::Info),
    Close,
    Finish {
        linger_ms: u64,
    },
}

/// What the caller of [`connect`] keeps: send, call, inform, close, wait.
pub struct ClientHandle<H: Handler> {
    commands: Sender<Command<H>>,
    next_call: Arc<AtomicU64>,
    task: smol::Task<StopReason>,
}

/// The client stopped; nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client has stopped")
    }
}

impl std::error::Error for Stopped {}

impl<H: Handler> ClientHandle<H> {
    /// Sends a text or binary message: at once when connected, else queued (and dropped, with
    /// `handle_dropped`, when the queue is full). Waits while the client is connected and its
    /// queue full (backpressure), never while it is disconnected.
    ///
    /// # Errors
    /// [`Stopped`] once the client has stopped.
    pub async fn send(&self, message: Message) -> Result<(), Stopped> {
        self.commands
            .send(Command::Send(message))
            .await
            .map_err(|_| Stopped)
    }

    /// [`ClientHandle::send`] for threads outside any executor (a stdin reader).
    ///
    /// # Errors
    /// [`Stopped`] once the client has stopped.
    pub fn send_blocking(&self, message: Message) -> Result<(), Stopped> {
        self.commands
            .send_blocking(Command::Send(message))
            .map_err(|_| Stopped)
    }

    /// Calls the handler (Late's `call/3`) and waits for its [`reply`], at most `timeout`.
    ///
    /// # Errors
    /// [`CallError`]: timed out, too many calls waiting, or the client stopped.
    pub async fn call(&self, call: H::Call, timeout: Duration) -> Result<H::Reply, CallError> {
        let (answer, answered) = smol::channel::bounded(1);
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let command = Command::Call {
            call,
            id,
            timeout_ms,
            answer,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| CallError::Stopped)?;
        answered.recv().await.unwrap_or(Err(CallError::Stopped))
    }

    /// Gives the handler a message (`handle_info`).
    ///
    /// # Errors
    /// [`Stopped`] once the client has stopped.
    pub async fn info(&self, info: H::Info) -> Result<(), Stopped> {
        self.commands
            .send(Command::Info(info))
            .await
            .map_err(|_| Stopped)
    }

    /// Closes now (1000) and stops reconnecting.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    /// Closes once everything queued is sent and confirmed, and `linger` later (for answers
    /// still on their way).
    pub async fn finish(&self, linger: Duration) {
        let linger_ms = u64::try_from(linger.as_millis()).unwrap_or(u64::MAX);
        let _ = self.commands.send(Command::Finish { linger_ms }).await;
    }

    /// A second handle on the same client, for another task or thread (without `wait`).
    pub fn sender(&self) -> ClientSender<H> {
        ClientSender {
            commands: self.commands.clone(),
        }
    }

    /// Waits until the client stops, and says why.
    pub async fn wait(self) -> StopReason {
        self.task.await
    }
}

/// Sends into a client from anywhere: see [`ClientHandle::sender`].
pub struct ClientSender<H: Handler> {
    commands: Sender<Command<H>>,
}

impl<H: Handler> Clone for ClientSender<H> {
    fn clone(&self) -> Self {
        ClientSender {
            commands: self.commands.clone(),
        }
    }
}

impl<H: Handler> ClientSender<H> {
    /// See [`ClientHandle::send_blocking`].
    ///
    /// # Errors
    /// [`Stopped`] once the client has stopped.
    pub fn send_blocking(&self, message: Message) -> Result<(), Stopped> {
        self.commands
            .send_blocking(Command::Send(message))
            .map_err(|_| Stopped)
    }

    /// [`ClientHandle::finish`] from a thread outside any executor.
    pub fn finish_blocking(&self, linger: Duration) {
        let linger_ms = u64::try_from(linger.as_millis()).unwrap_or(u64::MAX);
        let _ = self.commands.send_blocking(Command::Finish { linger_ms });
    }

    /// Gives the handler a message (`handle_info`), waiting while the client is busy.
    ///
    /// # Errors
    /// [`Stopped`] once the client has stopped.
    pub async fn info(&self, info: H::Info) -> Result<(), Stopped> {
        self.commands
            .send(Command::Info(info))
            .await
            .map_err(|_| Stopped)
    }

    /// Asks the client to close (1000) and stop reconnecting, without waiting; false when the
    /// client is stopped or too busy to take the request.
    pub fn try_close(&self) -> bool {
        self.commands.try_send(Command::Close).is_ok()
    }

    /// Gives the handler a message (`handle_info`), unless the client is stopped or busy.
    pub fn try_info(&self, info: H::Info) -> bool {
        !matches!(
            self.commands.try_send(Command::Info(info)),
            Err(TrySendError::Closed(_) | TrySendError::Full(_))
        )
    }
}

/// Starts a reconnecting client for `config` with `handler`, on smol's global executor.
///
/// # Errors
/// [`spool_core::ws::ConfigError`] when the configuration makes no sense.
pub fn connect<H: Handler>(
    config: client::Config,
    handler: H,
) -> Result<ClientHandle<H>, ConnectError> {
    connect_recorded(config, handler, None)
}

/// Why a client could not start.
#[derive(Debug)]
pub enum ConnectError {
    /// The configuration makes no sense.
    Config(spool_core::ws::ConfigError),
    /// The record file could not be written.
    Record(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Config(e) => write!(f, "{e}"),
            ConnectError::Record(e) => write!(f, "cannot write the record file: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// [`connect`], writing the session's event log (`spool_core::replay::ClientLine`, one JSON
/// object a line) to `record`: replaying it with `spool_core::replay::replay_client` gives the
/// same outbounds, proxy exchange and reconnects included. The log's first line is the
/// configuration, proxy credentials included: keep it as secret as they are.
///
/// # Errors
/// [`ConnectError`].
pub fn connect_recorded<H: Handler>(
    mut config: client::Config,
    handler: H,
    record: Option<&std::path::Path>,
) -> Result<ClientHandle<H>, ConnectError> {
    if config.jitter_seed == 0 {
        config.jitter_seed = u64::from_le_bytes(random_bytes());
    }
    let recorder = match record {
        Some(path) => {
            let mut file =
                std::io::BufWriter::new(std::fs::File::create(path).map_err(ConnectError::Record)?);
            let setup = ClientLine::ClientSetup(Box::new(config.clone()));
            write_line(&mut file, &setup).map_err(ConnectError::Record)?;
            Some(file)
        }
        None => None,
    };
    let core = client::Client::new(config).map_err(ConnectError::Config)?;
    let (commands, inbox) = smol::channel::bounded(64);
    let (replies, reply_inbox) = smol::channel::unbounded();
    let driver = Driver {
        core,
        clock: Clock::new(),
        handler,
        stream: None,
        connecting: None,
        securing: None,
        outgoing: Outgoing::default(),
        deadline: Deadline::new(),
        waiters: HashMap::new(),
        values: HashMap::new(),
        replies,
        finishing: None,
        close_at: None,
        stopped: None,
        hang_ups: Vec::new(),
        pending: Vec::new(),
        recorder,
    };
    let task = smol::spawn(driver.run(inbox, reply_inbox));
    Ok(ClientHandle {
        commands,
        next_call: Arc::new(AtomicU64::new(1)),
        task,
    })
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Async<TcpStream>>> + Send>>;
type Securing = Pin<Box<dyn Future<Output = Result<Transport, String>> + Send>>;

struct Driver<H: Handler> {
    core: client::Client,
    clock: Clock,
    handler: H,
    stream: Option<Transport>,
    connecting: Option<Connecting>,
    securing: Option<Securing>,
    outgoing: Outgoing,
    deadline: Deadline,
    waiters: HashMap<u64, Sender<Result<H::Reply, CallError>>>,
    values: HashMap<u64, H::Reply>,
    replies: Sender<(u64, H::Reply)>,
    /// Finishing: close this long after the queue drains.
    finishing: Option<u64>,
    /// When to close, once drained while finishing.
    close_at: Option<u64>,
    stopped: Option<StopReason>,
    hang_ups: Vec<smol::Task<()>>,
    /// Events the handler's answers produced, given to the machine after the current ones.
    pending: Vec<Event>,
    recorder: Option<std::io::BufWriter<std::fs::File>>,
}

enum Wake<H: Handler> {
    Tick,
    Connected(io::Result<Async<TcpStream>>),
    Secured(Result<Transport, String>),
    WriteFailed,
    Read(io::Result<bytes::Bytes>),
    Reply(u64, H::Reply),
    Command(Option<Command<H>>),
}

impl<H: Handler> Driver<H> {
    async fn run(
        mut self,
        inbox: Receiver<Command<H>>,
        reply_inbox: Receiver<(u64, H::Reply)>,
    ) -> StopReason {
        let mut inbox = std::pin::pin!(inbox);
        let mut reply_inbox = std::pin::pin!(reply_inbox);
        let next = self.handler.init();
        self.apply(next, false);
        self.step(Event::Start { now_ms: 0 });
        while self.stopped.is_none() {
            let next = match (self.core.next_deadline(), self.close_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.deadline.arm(next, &self.clock);
            // Backpressure only while connected: disconnected, the queue's own bound drops.
            let take_commands = !(self.core.is_open() && self.core.is_full());
            let wake = future::poll_fn(|cx| {
                if self.deadline.poll_fired(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                if let Some(f) = self.connecting.as_mut()
                    && let Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    self.connecting = None;
                    return Poll::Ready(Wake::Connected(r));
                }
                if let Some(f) = self.securing.as_mut()
                    && let Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    self.securing = None;
                    return Poll::Ready(Wake::Secured(r));
                }
                if let Some(stream) = self.stream.as_mut() {
                    if !self.outgoing.is_empty()
                        && let Poll::Ready(Err(_)) = poll_write(&mut self.outgoing, stream, cx)
                    {
                        return Poll::Ready(Wake::WriteFailed);
                    }
                    if let Poll::Ready(r) = poll_read(stream, cx) {
                        return Poll::Ready(Wake::Read(r));
                    }
                }
                if let Poll::Ready(Some((id, value))) = reply_inbox.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Reply(id, value));
                }
                if take_commands && let Poll::Ready(c) = inbox.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Command(c));
                }
                // Every source that is not ready registered this task's waker.
                Poll::Pending
            })
            .await;
            let now_ms = self.clock.now_ms();
            match wake {
                Wake::Tick if self.close_at.is_some_and(|t| now_ms >= t) => {
                    self.close_at = None;
                    self.step(Event::Close {
                        now_ms,
                        code: 1000,
                        reason: String::new(),
                    });
                }
                Wake::Tick => self.step(Event::Tick { now_ms }),
                Wake::Connected(Ok(tcp)) => {
                    let _ = tcp.get_ref().set_nodelay(true);
                    self.stream = Some(Transport::Plain(tcp));
                    self.step(Event::Connected {
                        now_ms,
                        key: random_bytes(),
                        mask_seed: u64::from_le_bytes(random_bytes()),
                    });
                }
                Wake::Connected(Err(e)) => self.step(Event::ConnectFailed {
                    now_ms,
                    reason: e.to_string(),
                }),
                Wake::Secured(Ok(tls)) => {
                    self.stream = Some(tls);
                    self.step(Event::Secured { now_ms });
                }
                Wake::Secured(Err(reason)) => self.step(Event::TlsFailed { now_ms, reason }),
                Wake::WriteFailed => self.transport_gone(now_ms),
                Wake::Read(Ok(bytes)) if !bytes.is_empty() => {
                    self.step(Event::Receive { now_ms, bytes });
                }
                Wake::Read(_) => self.transport_gone(now_ms),
                Wake::Reply(id, value) => {
                    self.values.insert(id, value);
                    self.step(Event::Reply { now_ms, id });
                    // Not waited for (timed out): forget it.
                    self.values.remove(&id);
                }
                Wake::Command(Some(command)) => self.command(command, now_ms),
                // Every handle is gone: nobody can send, call or wait any more.
                Wake::Command(None) => self.step(Event::Close {
                    now_ms,
                    code: 1000,
                    reason: String::new(),
                }),
            }
        }
        // Let the last close frames go out before the caller exits.
        for hang_up in self.hang_ups.drain(..) {
            hang_up.await;
        }
        self.stopped.unwrap_or(StopReason::Closed)
    }

    fn transport_gone(&mut self, now_ms: u64) {
        self.stream = None;
        self.outgoing.clear();
        self.step(Event::TransportClosed { now_ms });
    }

    fn command(&mut self, command: Command<H>, now_ms: u64) {
        match command {
            Command::Send(message) => self.step(Event::Send { now_ms, message }),
            Command::Call {
                call,
                id,
                timeout_ms,
                answer,
            } => {
                self.waiters.insert(id, answer);
                self.step(Event::Call {
                    now_ms,
                    id,
                    timeout_ms,
                });
                if self.waiters.contains_key(&id) {
                    let replies = self.replies.clone();
                    let from = From::new(id, move |id, value| {
                        // The driver may be gone (stopped); then nobody waits.
                        let _ = replies.try_send((id, value));
                    });
                    let next = self.handler.handle_call(call, from);
                    self.apply(next, false);
                    self.run_pending();
                }
            }
            Command::Info(info) => {
                let next = self.handler.handle_info(info);
                self.apply(next, true);
                self.run_pending();
            }
            Command::Close => self.step(Event::Close {
                now_ms,
                code: 1000,
                reason: String::new(),
            }),
            Command::Finish { linger_ms } => {
                self.finishing = Some(linger_ms);
                if self.core.queued() == 0 {
                    self.close_at = Some(now_ms.saturating_add(linger_ms));
                }
            }
        }
    }

    /// Turns a callback's answer into events for the machine.
    fn apply(&mut self, next: Next, this_connection: bool) {
        let now_ms = self.clock.now_ms();
        next.into_events(this_connection, now_ms, &mut self.pending);
    }

    fn run_pending(&mut self) {
        while !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            for event in events {
                self.step_one(event);
            }
        }
    }

    fn step(&mut self, event: Event) {
        self.step_one(event);
        self.run_pending();
    }

    fn step_one(&mut self, event: Event) {
        tracing::trace!(?event, "client event");
        if let Some(file) = self.recorder.as_mut()
            && let Err(e) = write_line(file, &ClientLine::Event(event.clone()))
        {
            tracing::warn!("recording stopped: {e}");
            self.recorder = None;
        }
        for outbound in self.core.handle(event) {
            tracing::trace!(?outbound, "client outbound");
            match outbound {
                Outbound::Connect { host, port } => {
                    self.connecting = Some(Box::pin(async move { connect_tcp(&host, port).await }));
                }
                Outbound::StartTls { host } => match self.stream.take() {
                    Some(Transport::Plain(tcp)) => {
                        self.securing = Some(Box::pin(start_tls(tcp, host)));
                    }
                    other => {
                        self.stream = other;
                        let now_ms = self.clock.now_ms();
                        let reason = "no plain connection to start TLS on".to_string();
                        self.pending.push(Event::TlsFailed { now_ms, reason });
                    }
                },
                Outbound::Transmit(t) => self.outgoing.push(t),
                Outbound::Disconnect => {
                    self.connecting = None;
                    self.securing = None;
                    if let Some(mut stream) = self.stream.take() {
                        let mut outgoing = std::mem::take(&mut self.outgoing);
                        self.hang_ups.retain(|t| !t.is_finished());
                        self.hang_ups.push(smol::spawn(async move {
                            hang_up(&mut stream, &mut outgoing, Duration::from_millis(500)).await;
                        }));
                    }
                    self.outgoing.clear();
                }
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
                    let next = self.handler.handle_disconnect(code, &reason);
                    self.apply(next, false);
                }
                Outbound::Retrying {
                    attempt, delay_ms, ..
                } => tracing::debug!("attempt {attempt} in {delay_ms} ms"),
                Outbound::Dropped { dropped } => self.handler.handle_dropped(dropped),
                Outbound::Drained => {
                    if let (Some(linger_ms), None) = (self.finishing, self.close_at) {
                        self.close_at = Some(self.clock.now_ms().saturating_add(linger_ms));
                    }
                }
                Outbound::Reply { id } => {
                    if let (Some(answer), Some(value)) =
                        (self.waiters.remove(&id), self.values.remove(&id))
                    {
                        let _ = answer.try_send(Ok(value));
                    }
                }
                Outbound::CallFailed { id, error } => {
                    if let Some(answer) = self.waiters.remove(&id) {
                        let _ = answer.try_send(Err(error));
                    }
                }
                Outbound::Stopped { reason } => self.stopped = Some(reason),
            }
        }
    }
}

fn write_line(file: &mut std::io::BufWriter<std::fs::File>, line: &ClientLine) -> io::Result<()> {
    use std::io::Write as _;
    serde_json::to_writer(&mut *file, line)?;
    file.write_all(b"\n")?;
    file.flush()
}

async fn start_tls(tcp: Async<TcpStream>, host: String) -> Result<Transport, String> {
    let config = spool_std::tls::client_config(None)?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .or(async {
            // The machine's connect timeout ends a stuck handshake; this only bounds the task.
            smol::Timer::after(Duration::from_secs(3600)).await;
            Err(io::ErrorKind::TimedOut.into())
        })
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    Ok(Transport::Tls(Box::new(tls)))
}
