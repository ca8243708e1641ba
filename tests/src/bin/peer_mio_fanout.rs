//! Benchmark peer, the fan-out floor: a bare mio loop, one thread, on 127.0.0.1:PORT, speaking
//! the fan-out peers' mini Phoenix protocol (`spool_tests::peer::channel_message`): a
//! `phx_join` is answered `ok` and subscribes the connection; the shouts of one read are
//! framed once and written to every subscriber straight from the loop, one `write` a
//! subscriber for all of them, the rest of a short write kept for the socket's next writable
//! edge. No library, no mailbox, no hand-off
//! between threads: what is left of a delivery's cost is the kernel's send (on loopback, with
//! the receiver's wake-up). A subscriber more than 16 MiB behind is dropped, and the load
//! generator counts what it then misses.

use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use spool_tests::peer::{
    Channel, Upgrade, channel_message, client_frame, port_arg, push_server_head, unmask,
    upgrade_response,
};

const LISTENER: Token = Token(usize::MAX);
/// A client frame's largest payload (the suite's are under 100 bytes).
const MAX_FRAME: usize = 64 * 1024;
/// Bytes a subscriber may have waiting before it is dropped.
const MAX_BEHIND: usize = 16 << 20;

struct Conn {
    stream: TcpStream,
    open: bool,
    subscribed: bool,
    /// Bytes read but not yet a whole frame (or head).
    input: Vec<u8>,
    /// Bytes not yet written (the socket was full).
    output: Vec<u8>,
    closing: bool,
}

impl Conn {
    /// Writes `bytes` now if nothing is waiting, keeps what the socket did not take; false
    /// when the connection failed or fell too far behind.
    fn send(&mut self, bytes: &[u8]) -> bool {
        if !self.output.is_empty() {
            self.output.extend_from_slice(bytes);
            return self.output.len() <= MAX_BEHIND;
        }
        match self.stream.write(bytes) {
            Ok(n) => self.output.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.output.extend_from_slice(bytes),
            Err(_) => return false,
        }
        true
    }

    /// Writes what is waiting as far as the socket takes it; false when the connection failed.
    fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.output = Vec::new();
        true
    }
}

/// Reads what there is: answers handshakes, joins and pings into `out`, appends shouts (as
/// server frames, ready to write) to `shouts`. False when the connection is over.
fn readable(conn: &mut Conn, buf: &mut [u8], out: &mut Vec<u8>, shouts: &mut Vec<u8>) -> bool {
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        conn.input.extend_from_slice(&buf[..n]);
        let mut at = 0;
        if !conn.open {
            match upgrade_response(&conn.input) {
                Upgrade::Partial => continue,
                Upgrade::Bad => return false,
                Upgrade::Accept(response, len) => {
                    out.extend_from_slice(&response);
                    conn.open = true;
                    at = len;
                }
            }
        }
        while let Some(frame) = client_frame(&conn.input[at..], MAX_FRAME) {
            let Ok((fin_op, head, len, key)) = frame else {
                return false;
            };
            let payload = &mut conn.input[at + head..at + head + len];
            unmask(payload, key);
            match fin_op & 0x0f {
                0x1 => match std::str::from_utf8(payload).map(channel_message) {
                    Ok(Channel::Join(reply)) => {
                        conn.subscribed = true;
                        push_server_head(out, 0x81, reply.len());
                        out.extend_from_slice(reply.as_bytes());
                    }
                    Ok(Channel::Broadcast(shout)) => {
                        push_server_head(shouts, 0x81, shout.len());
                        shouts.extend_from_slice(shout.as_bytes());
                    }
                    Ok(Channel::Ignore) | Err(_) => {}
                },
                0x9 => {
                    push_server_head(out, 0x8A, len);
                    out.extend_from_slice(payload);
                }
                0x8 => {
                    push_server_head(out, 0x88, 0);
                    conn.closing = true;
                }
                _ => {}
            }
            at += head + len;
        }
        conn.input.drain(..at);
        if n < buf.len() || conn.closing {
            break;
        }
    }
    if conn.input.is_empty() {
        conn.input = Vec::new();
    }
    let sent = out.is_empty() || conn.send(out);
    out.clear();
    sent && conn.flush() && !(conn.closing && conn.output.is_empty())
}

fn main() -> std::io::Result<()> {
    let port = port_arg("peer_mio_fanout");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut subscribers: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut shouts: Vec<u8> = Vec::new();
    let mut gone: Vec<usize> = Vec::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut stream,
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[i] = Some(Conn {
                                stream,
                                open: false,
                                subscribed: false,
                                input: Vec::new(),
                                output: Vec::new(),
                                closing: false,
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // Out of descriptors, or a connection reset before its accept.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let was_subscribed = conn.subscribed;
            let mut alive = true;
            if event.is_writable() && !conn.output.is_empty() {
                alive = conn.flush() && !(conn.closing && conn.output.is_empty());
            }
            if alive && (event.is_readable() || event.is_read_closed()) {
                alive = readable(conn, &mut buf, &mut out, &mut shouts);
            }
            if alive && conn.subscribed && !was_subscribed {
                subscribers.push(i);
            }
            if !alive {
                gone.push(i);
            }
            // This read's shouts, framed once, written to every subscriber in turn.
            if !shouts.is_empty() {
                for &s in &subscribers {
                    if let Some(c) = conns[s].as_mut()
                        && !c.send(&shouts)
                    {
                        gone.push(s);
                    }
                }
                shouts.clear();
            }
            for g in gone.drain(..) {
                if let Some(mut conn) = conns[g].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                    if conn.subscribed
                        && let Some(at) = subscribers.iter().position(|&s| s == g)
                    {
                        subscribers.swap_remove(at);
                    }
                    free.push(g);
                }
            }
        }
    }
}
