//! A reconnecting client in the shape of Late: a [`Handler`] with every callback defaulted,
//! driven by spool-core's [`client::Client`] session machine (backoff, heartbeats, the
//! bounded queue, calls with timeouts, rate limits, the `CONNECT` proxy exchange), with
//! [`ClientHandle::call`] from outside the connection.
//!
//! This shell only moves bytes and time: it opens TCP connections and TLS when the machine
//! asks, reads into the shared scratch buffer, writes what the machine produced, arms one timer
//! at the machine's next deadline and calls the handler on what it reports. It never decides
//! when to retry.

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
use spool_core::client::{self, CallError, Event, StopReason};
use spool_core::replay::ClientLine;
use spool_core::ws::Message;

use crate::client::{Transport, connect_tcp};
use crate::io::{Deadline, Outgoing, hang_up, poll_read, poll_write, random_bytes};

pub use spool_std::late::{From, Handler, Next, reply};
use spool_std::late_session::{Io, LateSession, Transport as LateTransport, write_line};

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
        session: LateSession::new(core, handler, recorder),
        io: SmolIo {
            stream: None,
            connecting: None,
            securing: None,
            outgoing: Outgoing::default(),
            hang_ups: Vec::new(),
        },
        deadline: Deadline::new(),
        replies,
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
    session: LateSession<H>,
    io: SmolIo,
    deadline: Deadline,
    replies: Sender<(u64, H::Reply)>,
}

/// The driver's sockets: the attempt's TCP connect and TLS handshake in progress, the
/// connection, what waits to be written, connections closing in the background.
struct SmolIo {
    stream: Option<Transport>,
    connecting: Option<Connecting>,
    securing: Option<Securing>,
    outgoing: Outgoing,
    hang_ups: Vec<smol::Task<()>>,
}

impl LateTransport for SmolIo {
    fn carry(&mut self, io: Io, now_ms: u64, events: &mut Vec<Event>) {
        match io {
            Io::Connect { host, port } => {
                self.connecting = Some(Box::pin(async move { connect_tcp(&host, port).await }));
            }
            Io::StartTls { host } => match self.stream.take() {
                Some(Transport::Plain(tcp)) => {
                    self.securing = Some(Box::pin(start_tls(tcp, host)));
                }
                other => {
                    self.stream = other;
                    let reason = "no plain connection to start TLS on".to_string();
                    events.push(Event::TlsFailed { now_ms, reason });
                }
            },
            Io::Transmit(t) => self.outgoing.push(t),
            Io::Disconnect => {
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
        }
    }
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
        self.session.start(&mut self.io);
        while self.session.stopped().is_none() {
            let next = self.session.next_deadline();
            self.deadline.arm(next, self.session.clock());
            // Backpressure only while connected: disconnected, the queue's own bound drops.
            let take_commands = self.session.takes_sends();
            let (deadline, io) = (&mut self.deadline, &mut self.io);
            let wake = future::poll_fn(|cx| {
                if deadline.poll_fired(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                if let Some(f) = io.connecting.as_mut()
                    && let Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    io.connecting = None;
                    return Poll::Ready(Wake::Connected(r));
                }
                if let Some(f) = io.securing.as_mut()
                    && let Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    io.securing = None;
                    return Poll::Ready(Wake::Secured(r));
                }
                if let Some(stream) = io.stream.as_mut() {
                    if !io.outgoing.is_empty()
                        && let Poll::Ready(Err(_)) = poll_write(&mut io.outgoing, stream, cx)
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
            let (session, io) = (&mut self.session, &mut self.io);
            let now_ms = session.now_ms();
            match wake {
                Wake::Tick => session.on_timer(io),
                Wake::Connected(Ok(tcp)) => {
                    let _ = tcp.get_ref().set_nodelay(true);
                    io.stream = Some(Transport::Plain(tcp));
                    let event = Event::Connected {
                        now_ms,
                        key: random_bytes(),
                        mask_seed: u64::from_le_bytes(random_bytes()),
                    };
                    session.step(event, io);
                }
                Wake::Connected(Err(e)) => {
                    let reason = e.to_string();
                    session.step(Event::ConnectFailed { now_ms, reason }, io);
                }
                Wake::Secured(Ok(tls)) => {
                    io.stream = Some(tls);
                    session.step(Event::Secured { now_ms }, io);
                }
                Wake::Secured(Err(reason)) => session.step(Event::TlsFailed { now_ms, reason }, io),
                Wake::Read(Ok(bytes)) if !bytes.is_empty() => {
                    session.step(Event::Receive { now_ms, bytes }, io);
                }
                Wake::WriteFailed | Wake::Read(_) => {
                    io.stream = None;
                    io.outgoing.clear();
                    session.step(Event::TransportClosed { now_ms }, io);
                }
                Wake::Reply(id, value) => session.reply(id, value, io),
                Wake::Command(Some(command)) => self.command(command),
                // Every handle is gone: nobody can send, call or wait any more.
                Wake::Command(None) => session.close(io),
            }
        }
        // Let the last close frames go out before the caller exits.
        for hang_up in self.io.hang_ups.drain(..) {
            hang_up.await;
        }
        self.session.stopped().unwrap_or(StopReason::Closed)
    }

    fn command(&mut self, command: Command<H>) {
        let (session, io) = (&mut self.session, &mut self.io);
        match command {
            Command::Send(message) => session.send(message, io),
            Command::Call {
                call,
                id,
                timeout_ms,
                answer,
            } => {
                let replies = self.replies.clone();
                let answer = Box::new(move |result| {
                    let _ = answer.try_send(result);
                });
                let deliver = move |id, value| {
                    // The driver may be gone (stopped); then nobody waits.
                    let _ = replies.try_send((id, value));
                };
                session.call(call, id, timeout_ms, answer, deliver, io);
            }
            Command::Info(info) => session.info(info, io),
            Command::Close => session.close(io),
            Command::Finish { linger_ms } => session.finish(linger_ms),
        }
    }
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
