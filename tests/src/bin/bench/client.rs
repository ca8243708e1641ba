//! A WebSocket client connection for the load generators: a non-blocking mio socket driven by
//! spool-core's client [`Connection`]. Bytes the socket does not take wait in `pending`; what
//! the core delivers (the handshake's end, messages, the close) goes back to the caller.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use spool_core::ws::{ClientRequest, Config, Connection, Event, Message, Outbound, Url};

/// One client connection.
pub struct Client {
    pub stream: TcpStream,
    ws: Connection,
    pending: Vec<u8>,
    started: bool,
    pub open: bool,
    pub ended: bool,
}

/// The source address of connection `i` of load process `process`: 250 connections a
/// source address, spread over 127.0.0.0/8, far from the ~28,000 ephemeral ports each
/// address has towards one server port. `process` (below 250) keeps runs and processes apart.
pub fn source_addr(process: u32, i: usize) -> Ipv4Addr {
    let n = (i / 250) as u32;
    Ipv4Addr::new(
        127,
        (process % 250 + 1) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 2) as u8,
    )
}

/// The core's client configuration: no compression, no timers of its own.
pub fn config() -> Config {
    Config {
        deflate: None,
        ping_interval_ms: None,
        pong_timeout_ms: None,
        ..Config::default()
    }
}

impl Client {
    /// Starts a non-blocking connect from `source` to `server` and registers the socket.
    /// The socket closes with a reset (SO_LINGER 0), so that runs leave no TIME_WAIT behind.
    pub fn connect(
        registry: &Registry,
        token: Token,
        source: Ipv4Addr,
        server: SocketAddr,
        url: &Url,
        seed: u64,
    ) -> io::Result<Client> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_linger(Some(std::time::Duration::ZERO))?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
        socket.set_nonblocking(true)?;
        match socket.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let request = ClientRequest {
            url: url.clone(),
            key,
            mask_seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            headers: Vec::new(),
        };
        let ws = Connection::client(config(), request)
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Client {
            stream,
            ws,
            pending: Vec::new(),
            started: false,
            open: false,
            ended: false,
        })
    }

    /// Gives the core one event; writes what it transmits, hands the rest to `app`.
    pub fn handle(
        &mut self,
        event: Event,
        scratch: &mut Vec<Outbound>,
        app: &mut Vec<Outbound>,
    ) -> io::Result<()> {
        scratch.clear();
        self.ws.handle_into(event, scratch);
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        let mut total = 0;
        for o in scratch.iter() {
            if let Outbound::Transmit(t) = o {
                for s in t.slices() {
                    if !s.is_empty() {
                        total += s.len();
                        slices.push(IoSlice::new(s));
                    }
                }
            }
        }
        if total > 0 {
            if self.pending.is_empty() {
                let written = match self.stream.write_vectored(&slices) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == ErrorKind::NotConnected => 0,
                    Err(e) => return Err(e),
                };
                let mut skip = written;
                for s in &slices {
                    if skip >= s.len() {
                        skip -= s.len();
                    } else {
                        self.pending.extend_from_slice(&s[skip..]);
                        skip = 0;
                    }
                }
            } else {
                for s in &slices {
                    self.pending.extend_from_slice(s);
                }
            }
        }
        drop(slices);
        for o in scratch.drain(..) {
            match o {
                Outbound::Transmit(_) => {}
                Outbound::Opened(_) => {
                    self.open = true;
                    app.push(o);
                }
                Outbound::Closed(_) | Outbound::Disconnect => {
                    self.ended = true;
                    app.push(o);
                }
                other => app.push(other),
            }
        }
        Ok(())
    }

    /// Sends a message.
    pub fn send(
        &mut self,
        now_ms: u64,
        message: Message,
        scratch: &mut Vec<Outbound>,
        app: &mut Vec<Outbound>,
    ) -> io::Result<()> {
        self.handle(Event::Send { now_ms, message }, scratch, app)
    }

    /// Writes what waits; call on a writable event.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending = Vec::new();
        Ok(())
    }

    /// Reads until the socket is empty, feeding each read to the core.
    /// Returns false when the peer closed the connection.
    pub fn readable(
        &mut self,
        now_ms: u64,
        buf: &mut [u8],
        scratch: &mut Vec<Outbound>,
        app: &mut Vec<Outbound>,
    ) -> io::Result<bool> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.handle(Event::TransportClosed { now_ms }, scratch, app)?;
                    self.ended = true;
                    return Ok(false);
                }
                Ok(n) => {
                    let bytes = Bytes::copy_from_slice(&buf[..n]);
                    self.handle(Event::Receive { now_ms, bytes }, scratch, app)?;
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Carries out a readiness event: the upgrade request once the TCP connect completed,
    /// then writes and reads. Returns false when the connection is over.
    pub fn ready(
        &mut self,
        event: &mio::event::Event,
        now_ms: u64,
        buf: &mut [u8],
        scratch: &mut Vec<Outbound>,
        app: &mut Vec<Outbound>,
    ) -> io::Result<bool> {
        if !self.started {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(true),
                Err(e) => return Err(e),
            }
            self.started = true;
            self.handle(Event::Open { now_ms }, scratch, app)?;
        }
        if event.is_writable() {
            self.flush()?;
        }
        if event.is_readable() || event.is_read_closed() {
            return self.readable(now_ms, buf, scratch, app);
        }
        Ok(!self.ended)
    }
}
