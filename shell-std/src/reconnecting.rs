//! A reconnecting client on std threads, driven by spool-core's [`client::Client`] session
//! machine and calling a Late-shaped [`Handler`].
//!
//! One driver thread owns the machine and the handler and waits on one channel, with a timeout
//! at the machine's next deadline; a short-lived thread per attempt opens the TCP connection,
//! and a reader thread per connection turns reads into messages on that channel. `ws://` and
//! `wss://`, through a proxy too: TLS (rustls) runs on the driver thread as a byte-in,
//! byte-out machine of its own, fed by the reader thread's raw reads, so that the socket is
//! never shared behind a lock. [`connect`] trusts the Mozilla roots; [`connect_with_tls`]
//! takes a rustls configuration of your own (a test CA, a company root).

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use spool_core::client::{self, CallError, Event, StopReason};
use spool_core::ws::{ConfigError, Message};

use crate::late::Handler;
use crate::late_session::{Io, LateSession, Transport};

enum Input<H: Handler> {
    Send(Message),
    Call {
        call: H::Call,
        id: u64,
        timeout_ms: u64,
        answer: mpsc::SyncSender<Result<H::Reply, CallError>>,
    },
    Info(H::Info),
    Close,
    Finish(u64),
    Reply(u64, H::Reply),
    Connected(u64, io::Result<TcpStream>),
    Bytes(u64, Bytes),
    Closed(u64),
}

/// What the caller of [`connect`] keeps.
pub struct ClientHandle<H: Handler> {
    inputs: Sender<Input<H>>,
    next_call: std::sync::atomic::AtomicU64,
    thread: thread::JoinHandle<StopReason>,
}

impl<H: Handler> ClientHandle<H> {
    /// Sends a text or binary message: at once when connected, else queued (dropped, with
    /// `handle_dropped`, when the queue is full). Returns false once the client has stopped.
    pub fn send(&self, message: Message) -> bool {
        self.inputs.send(Input::Send(message)).is_ok()
    }

    /// Calls the handler and waits for its reply, at most `timeout`.
    ///
    /// # Errors
    /// [`CallError`]: timed out, too many waiting, or the client stopped.
    pub fn call(&self, call: H::Call, timeout: Duration) -> Result<H::Reply, CallError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let id = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let call = Input::Call {
            call,
            id,
            timeout_ms,
            answer,
        };
        self.inputs.send(call).map_err(|_| CallError::Stopped)?;
        answered.recv().unwrap_or(Err(CallError::Stopped))
    }

    /// Gives the handler a message (`handle_info`).
    pub fn info(&self, info: H::Info) -> bool {
        self.inputs.send(Input::Info(info)).is_ok()
    }

    /// Closes now (1000) and stops reconnecting.
    pub fn close(&self) {
        let _ = self.inputs.send(Input::Close);
    }

    /// Closes once everything queued is sent and confirmed, `linger` later.
    pub fn finish(&self, linger: Duration) {
        let linger_ms = u64::try_from(linger.as_millis()).unwrap_or(u64::MAX);
        let _ = self.inputs.send(Input::Finish(linger_ms));
    }

    /// Waits until the client stops.
    pub fn wait(self) -> StopReason {
        drop(self.inputs);
        self.thread.join().unwrap_or(StopReason::Closed)
    }
}

/// Starts a reconnecting client for `config` with `handler` on a thread of its own.
///
/// # Errors
/// [`ConfigError`] when the configuration makes no sense.
pub fn connect<H: Handler>(
    config: client::Config,
    handler: H,
) -> Result<ClientHandle<H>, ConfigError> {
    connect_inner(config, handler, None)
}

/// [`connect`], with `tls` for `wss://` URLs instead of a configuration trusting the Mozilla
/// roots (`spool_std::tls::client_config(Some(ca))` makes one that also trusts a CA file).
///
/// # Errors
/// [`ConfigError`] when the configuration makes no sense.
pub fn connect_with_tls<H: Handler>(
    config: client::Config,
    handler: H,
    tls: Arc<rustls::ClientConfig>,
) -> Result<ClientHandle<H>, ConfigError> {
    connect_inner(config, handler, Some(tls))
}

fn connect_inner<H: Handler>(
    mut config: client::Config,
    handler: H,
    tls_config: Option<Arc<rustls::ClientConfig>>,
) -> Result<ClientHandle<H>, ConfigError> {
    if config.jitter_seed == 0 {
        let mut seed = [0u8; 8];
        crate::random::fill(&mut seed);
        config.jitter_seed = u64::from_le_bytes(seed);
    }
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let core = client::Client::new(config)?;
    let (inputs, rx) = mpsc::channel();
    let driver = Driver {
        session: LateSession::new(core, handler, None),
        io: StdIo {
            inputs: inputs.clone(),
            stream: None,
            tls: None,
            tls_config,
            attempt: 0,
            connect_timeout,
        },
    };
    let thread = thread::Builder::new()
        .name("spool-client".into())
        .spawn(move || driver.run(rx))
        .map_err(|_| ConfigError {
            field: "thread",
            why: "cannot start the client's thread",
        })?;
    Ok(ClientHandle {
        inputs,
        next_call: std::sync::atomic::AtomicU64::new(1),
        thread,
    })
}

struct Driver<H: Handler> {
    session: LateSession<H>,
    io: StdIo<H>,
}

impl<H: Handler> Driver<H> {
    fn run(mut self, rx: Receiver<Input<H>>) -> StopReason {
        self.session.start(&mut self.io);
        while self.session.stopped().is_none() {
            let input = match self.session.next_deadline() {
                Some(at) => rx.recv_timeout(self.session.clock().until(at)),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match input {
                Err(RecvTimeoutError::Timeout) => self.session.on_timer(&mut self.io),
                // Not reached while the driver holds a sender of its own.
                Err(RecvTimeoutError::Disconnected) => self.session.close(&mut self.io),
                Ok(input) => self.input(input),
            }
        }
        if let Some(stream) = self.io.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.session.stopped().unwrap_or(StopReason::Closed)
    }

    fn input(&mut self, input: Input<H>) {
        let (session, io) = (&mut self.session, &mut self.io);
        let now_ms = session.now_ms();
        match input {
            Input::Send(message) => session.send(message, io),
            Input::Call {
                call,
                id,
                timeout_ms,
                answer,
            } => {
                let inputs = io.inputs.clone();
                let answer = Box::new(move |result| {
                    let _ = answer.try_send(result);
                });
                let deliver = move |id, value| {
                    let _ = inputs.send(Input::Reply(id, value));
                };
                session.call(call, id, Some(timeout_ms), answer, deliver, io);
            }
            Input::Info(info) => session.info(info, io),
            Input::Close => session.close(io),
            Input::Finish(linger_ms) => session.finish(linger_ms),
            Input::Reply(id, value) => session.reply(id, value, io),
            Input::Connected(attempt, result) if attempt == io.attempt => {
                let event = match result {
                    Ok(stream) => io.connected(stream, now_ms),
                    Err(e) => Event::ConnectFailed {
                        now_ms,
                        reason: e.to_string(),
                    },
                };
                session.step(event, io);
            }
            Input::Bytes(attempt, bytes) if attempt == io.attempt => {
                if io.tls.is_some() {
                    for event in io.tls_received(&bytes, now_ms) {
                        session.step(event, io);
                    }
                } else {
                    session.step(Event::Receive { now_ms, bytes }, io);
                }
            }
            Input::Closed(attempt) if attempt == io.attempt && io.stream.is_some() => {
                io.stream = None;
                io.tls = None;
                session.step(Event::TransportClosed { now_ms }, io);
            }
            // From an attempt given up already.
            Input::Connected(..) | Input::Bytes(..) | Input::Closed(_) => {}
        }
    }
}

/// The driver's sockets: one TCP connection at a time, TLS over it when asked, a reader thread
/// per connection, a thread per attempt to open one.
struct StdIo<H: Handler> {
    inputs: Sender<Input<H>>,
    stream: Option<TcpStream>,
    /// TLS over `stream`, once the machine asked for it.
    tls: Option<Tls>,
    /// What `wss://` trusts; `None`: the Mozilla roots, made at the first TLS attempt.
    tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Counts attempts, so that a late message from an abandoned one is ignored.
    attempt: u64,
    connect_timeout: Duration,
}

impl<H: Handler> Transport for StdIo<H> {
    fn carry(&mut self, io: Io, now_ms: u64, events: &mut Vec<Event>) {
        match io {
            Io::Connect { host, port } => {
                self.attempt += 1;
                let (attempt, inputs) = (self.attempt, self.inputs.clone());
                let timeout = self.connect_timeout;
                thread::spawn(move || {
                    let result = open(&host, port, timeout);
                    let _ = inputs.send(Input::Connected(attempt, result));
                });
            }
            Io::StartTls { host } => {
                if let Err(reason) = self.start_tls(&host) {
                    tracing::debug!("TLS failed: {reason}");
                    events.push(Event::TlsFailed { now_ms, reason });
                }
            }
            Io::Transmit(t) => {
                let [head, body] = t.slices();
                let written = self.write(head).and_then(|()| self.write(body));
                if written.is_err() && self.stream.take().is_some() {
                    tracing::debug!("write failed: the connection is gone");
                    self.tls = None;
                    events.push(Event::TransportClosed { now_ms });
                }
            }
            Io::Disconnect => {
                self.attempt += 1; // whatever the old connection still says is stale
                if let Some(mut tls) = self.tls.take() {
                    // A polite close_notify; the shutdown below ends it either way.
                    tls.conn.send_close_notify();
                    if let Some(stream) = self.stream.as_mut() {
                        let _ = tls.flush(stream);
                    }
                }
                if let Some(stream) = self.stream.take() {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

impl<H: Handler> StdIo<H> {
    /// The TCP connection is up: a reader thread for it, and the machine's event (with a
    /// fresh key and mask seed) or why it cannot be used.
    fn connected(&mut self, stream: TcpStream, now_ms: u64) -> Event {
        let _ = stream.set_nodelay(true);
        // A peer that stops reading cannot hold a write for longer than an attempt may take;
        // the failed write ends the connection like any other.
        let _ = stream.set_write_timeout(Some(self.connect_timeout));
        let Ok(mut reader) = stream.try_clone() else {
            let reason = "cannot share the socket with a reader thread".to_string();
            return Event::ConnectFailed { now_ms, reason };
        };
        let (attempt, inputs) = (self.attempt, self.inputs.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let bytes = Bytes::copy_from_slice(&buf[..n]);
                        if inputs.send(Input::Bytes(attempt, bytes)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = inputs.send(Input::Closed(attempt));
        });
        self.stream = Some(stream);
        let mut key = [0u8; 16];
        crate::random::fill(&mut key);
        let mut seed = [0u8; 8];
        crate::random::fill(&mut seed);
        Event::Connected {
            now_ms,
            key,
            mask_seed: u64::from_le_bytes(seed),
        }
    }

    /// Writes `bytes` to the connection, through TLS when it has some.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        match self.tls.as_mut() {
            Some(tls) => {
                tls.conn.writer().write_all(bytes)?;
                tls.flush(stream)
            }
            None => stream.write_all(bytes),
        }
    }

    /// Begins TLS for `host` over the open connection: the ClientHello goes out now, the
    /// answer comes through the reader thread into [`StdIo::tls_received`].
    fn start_tls(&mut self, host: &str) -> Result<(), String> {
        let config = match &self.tls_config {
            Some(config) => config.clone(),
            None => {
                let config = crate::tls::client_config(None)?;
                self.tls_config = Some(config.clone());
                config
            }
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let stream = self
            .stream
            .as_mut()
            .ok_or("no connection to start TLS on")?;
        let mut tls = Tls {
            conn,
            secured: false,
        };
        tls.flush(stream).map_err(|e| format!("{host}: {e}"))?;
        self.tls = Some(tls);
        Ok(())
    }

    /// Bytes read from a TLS connection: decrypt, send what TLS wants sent; the machine's
    /// events, in order (the handshake done, the plaintext; or the failure).
    fn tls_received(&mut self, mut bytes: &[u8], now_ms: u64) -> Vec<Event> {
        let (Some(tls), Some(stream)) = (self.tls.as_mut(), self.stream.as_mut()) else {
            return Vec::new();
        };
        let mut plain = Vec::new();
        let mut failure = None;
        while !bytes.is_empty() && failure.is_none() {
            match tls.conn.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => failure = Some(e.to_string()),
            }
            if let Err(e) = tls.conn.process_new_packets() {
                failure = Some(e.to_string());
            }
            // Drain the plaintext after every record batch, so rustls's buffer never fills.
            let mut buf = [0u8; 16 * 1024];
            loop {
                match tls.conn.reader().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                }
            }
        }
        let flushed = tls.flush(stream);
        let just_secured = !tls.secured && !tls.conn.is_handshaking();
        if just_secured && failure.is_none() {
            tls.secured = true;
        }
        let was_secured = tls.secured;
        if let Some(reason) = failure.or_else(|| flushed.err().map(|e| e.to_string())) {
            tracing::debug!("TLS failed: {reason}");
            self.tls = None;
            if let Some(stream) = self.stream.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            self.attempt += 1;
            return vec![match was_secured {
                true => Event::TransportClosed { now_ms },
                false => Event::TlsFailed { now_ms, reason },
            }];
        }
        let mut events = Vec::new();
        if just_secured {
            events.push(Event::Secured { now_ms });
        }
        if !plain.is_empty() {
            let bytes = Bytes::from(plain);
            events.push(Event::Receive { now_ms, bytes });
        }
        events
    }
}

/// A rustls client connection over the driver's socket: records in through
/// [`StdIo::tls_received`], out through [`Tls::flush`].
struct Tls {
    conn: rustls::ClientConnection,
    /// The handshake is done and the machine was told.
    secured: bool,
}

impl Tls {
    /// Writes every TLS record waiting to go out.
    fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(stream)?;
        }
        Ok(())
    }
}

/// Resolves and connects, each address within `timeout`.
fn open(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}
