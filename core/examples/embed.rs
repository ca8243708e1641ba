//! Embedding spool-core in an event loop of your own, with neither shell.
//!
//! One thread, non-blocking std sockets, no async runtime: an echo server and a client that
//! talks to it, both driven by `ws::Connection`. The loop is the whole integration:
//! read -> `handle(Receive)`, carry out the outbounds, `handle(Tick)` at `next_deadline()`.
//!
//! ```text
//! cargo run -p spool-core --example embed            # client and server talk, then exit
//! cargo run -p spool-core --example embed -- --serve # keep serving ws://127.0.0.1:9002
//! ```

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_core::ws::{ClientRequest, Config, Connection, Event, Message, Outbound, Transmit, Url};

/// One socket and the machine that speaks for it.
struct Peer {
    name: &'static str,
    stream: TcpStream,
    ws: Connection,
    gone: bool,
}

impl Peer {
    /// Feeds one event and carries out what comes back. Returns the messages delivered.
    fn drive(&mut self, event: Event, now_ms: u64) -> Vec<Message> {
        let mut delivered = Vec::new();
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            let out = self.ws.handle(event);
            let transmits: Vec<Transmit> = out
                .iter()
                .filter_map(|o| match o {
                    Outbound::Transmit(b) => Some(b.clone()),
                    _ => None,
                })
                .collect();
            write_all(&mut self.stream, &transmits);
            for o in out {
                match o {
                    Outbound::Transmit(_) => {} // written above, all in one vectored write
                    Outbound::Upgrade(request) => {
                        println!("{}: upgrade request for {}", self.name, request.target);
                        pending.push(Event::Accept { now_ms });
                    }
                    Outbound::HttpRequest(request) => {
                        // Only with `Config::plain_http`; this example leaves it off.
                        println!("{}: plain GET {}", self.name, request.target);
                    }
                    Outbound::Opened(h) => {
                        println!("{}: open, compression {:?}", self.name, h.deflate.is_some())
                    }
                    Outbound::Deliver(m) => delivered.push(m),
                    Outbound::Closed(info) => {
                        println!("{}: closed {} {:?}", self.name, info.code, info.reason)
                    }
                    Outbound::Disconnect => {
                        let _ = self.stream.shutdown(std::net::Shutdown::Both);
                        self.gone = true;
                    }
                }
            }
        }
        delivered
    }

    /// Reads what the socket has; `None` when nothing is there yet.
    fn poll_read(&mut self, scratch: &mut [u8], now_ms: u64) -> Option<Vec<Message>> {
        match self.stream.read(scratch) {
            Ok(0) => {
                self.gone = true;
                Some(self.drive(Event::TransportClosed { now_ms }, now_ms))
            }
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(&scratch[..n]);
                Some(self.drive(Event::Receive { now_ms, bytes }, now_ms))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => {
                self.gone = true;
                Some(self.drive(Event::TransportClosed { now_ms }, now_ms))
            }
        }
    }
}

/// Writes every transmit (each a header and a payload) with vectored writes, retrying on
/// WouldBlock: an example may block briefly; a real loop would keep the rest and wait for
/// writability.
fn write_all(stream: &mut TcpStream, transmits: &[Transmit]) {
    let mut slices: Vec<&[u8]> = transmits
        .iter()
        .flat_map(|t| t.slices())
        .filter(|b| !b.is_empty())
        .collect();
    while !slices.is_empty() {
        let io: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
        match stream.write_vectored(&io) {
            Ok(mut n) => {
                while n > 0 {
                    if n >= slices[0].len() {
                        n -= slices[0].len();
                        slices.remove(0);
                    } else {
                        slices[0] = &slices[0][n..];
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return,
        }
    }
}

fn main() -> std::io::Result<()> {
    let serve = std::env::args().any(|a| a == "--serve");
    let listener = TcpListener::bind(if serve {
        "127.0.0.1:9002"
    } else {
        "127.0.0.1:0"
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut servers: Vec<Peer> = Vec::new();

    let mut client = if serve {
        println!("serving ws://{addr}");
        None
    } else {
        let stream = TcpStream::connect(addr)?;
        stream.set_nonblocking(true)?;
        let request = ClientRequest {
            url: Url::parse(&format!("ws://{addr}/echo")).expect("a valid URL"),
            key: *b"an example nonce", // a real client draws these from the OS
            mask_seed: 0x5eed,
            headers: vec![],
        };
        let ws =
            Connection::client(Config::default(), request).expect("the default config is valid");
        let mut peer = Peer {
            name: "client",
            stream,
            ws,
            gone: false,
        };
        peer.drive(Event::Open { now_ms: now() }, now());
        Some(peer)
    };
    let mut to_send = vec!["hello", "from", "an embedded loop"];
    let mut echoed = 0;

    loop {
        let mut busy = false;
        if let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            // The defaults: no compression, a ping after 30 s of silence, and the peer taken for
            // dead (1001) when nothing answers it within 30 s more; the Tick below drives both.
            let ws = Connection::server(Config::default()).expect("the default config is valid");
            let mut peer = Peer {
                name: "server",
                stream,
                ws,
                gone: false,
            };
            peer.drive(Event::Open { now_ms: now() }, now());
            servers.push(peer);
            busy = true;
        }
        for s in servers.iter_mut() {
            if let Some(messages) = s.poll_read(&mut scratch, now()) {
                busy = true;
                for m in messages.into_iter().filter(|m| !m.is_control()) {
                    s.drive(
                        Event::Send {
                            now_ms: now(),
                            message: m,
                        },
                        now(),
                    );
                }
            }
            if s.ws.next_deadline().is_some_and(|d| d <= now()) {
                s.drive(Event::Tick { now_ms: now() }, now());
            }
        }
        servers.retain(|s| !s.gone);

        if let Some(c) = client.as_mut() {
            if c.ws.is_open() && echoed == 0 && !to_send.is_empty() {
                for text in to_send.drain(..) {
                    c.drive(
                        Event::Send {
                            now_ms: now(),
                            message: Message::text(text),
                        },
                        now(),
                    );
                }
            }
            if let Some(messages) = c.poll_read(&mut scratch, now()) {
                busy = true;
                for m in messages {
                    println!("client: echoed {m:?}");
                    echoed += 1;
                    if echoed == 3 {
                        c.drive(
                            Event::Close {
                                now_ms: now(),
                                code: 1000,
                                reason: "done".into(),
                            },
                            now(),
                        );
                    }
                }
            }
            if c.ws.next_deadline().is_some_and(|d| d <= now()) {
                c.drive(Event::Tick { now_ms: now() }, now());
            }
            if c.gone || c.ws.is_done() {
                println!("client: finished after {echoed} echoes");
                client = None;
                if !serve {
                    return if echoed == 3 {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("echo failed"))
                    };
                }
            }
        }
        if now() > 10_000 && !serve {
            return Err(std::io::Error::other("timed out"));
        }
        if !busy {
            // A real loop waits in epoll/kqueue until readable or next_deadline(); std has no
            // portable poll, so this example naps.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
