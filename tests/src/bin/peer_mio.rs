//! Benchmark peer, the floor: a bare WebSocket echo loop on mio, one thread, on
//! 127.0.0.1:PORT. It reads the opening handshake, unmasks each frame into its answer and
//! writes everything a read produced in one call; no library, no extension, no UTF-8 check,
//! no limits beyond 16 MiB a frame. A connection holds no buffer while it is idle.

use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use spool_tests::peer::{
    Upgrade, client_frame, port_arg, push_server_head, unmask, upgrade_response,
};

const LISTENER: Token = Token(usize::MAX);
const MAX_FRAME: usize = 16 << 20;

struct Conn {
    stream: TcpStream,
    open: bool,
    /// Bytes read but not yet a whole frame (or head).
    input: Vec<u8>,
    /// Bytes not yet written (the socket was full).
    output: Vec<u8>,
    closing: bool,
}

/// Turns whole client frames at the start of `input` into server frames appended to `out`;
/// returns how many bytes it consumed and whether a close was seen (or the input is bad).
fn echo_frames(input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut at = 0;
    loop {
        let b = &input[at..];
        let (fin_op, head, len, key) = match client_frame(b, MAX_FRAME) {
            None => return (at, false),
            Some(Err(())) => return (at, true),
            Some(Ok(frame)) => frame,
        };
        let opcode = fin_op & 0x0f;
        let reply = if opcode == 0x9 { 0xA } else { opcode };
        if opcode != 0xA {
            push_server_head(out, (fin_op & 0xf0) | reply, len);
            let start = out.len();
            out.extend_from_slice(&b[head..head + len]);
            unmask(&mut out[start..], key);
        }
        at += head + len;
        if opcode == 0x8 {
            return (at, true);
        }
    }
}

/// Writes `output` as far as the socket takes it; false when the connection failed.
fn flush(conn: &mut Conn) -> bool {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return false,
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.output = Vec::new();
    true
}

/// Reads what there is and answers it; false when the connection is over.
fn readable(conn: &mut Conn, buf: &mut [u8], out: &mut Vec<u8>) -> bool {
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let mut data: &[u8] = &buf[..n];
        let joined;
        if !conn.input.is_empty() {
            conn.input.extend_from_slice(data);
            joined = std::mem::take(&mut conn.input);
            data = &joined;
        } else {
            joined = Vec::new();
        }
        let consumed = if conn.open {
            let (consumed, close) = echo_frames(data, out);
            conn.closing |= close;
            consumed
        } else {
            match upgrade_response(data) {
                Upgrade::Partial => 0,
                Upgrade::Bad => return false,
                Upgrade::Accept(response, len) => {
                    out.extend_from_slice(&response);
                    conn.open = true;
                    let (consumed, close) = echo_frames(&data[len..], out);
                    conn.closing |= close;
                    len + consumed
                }
            }
        };
        if consumed < data.len() {
            conn.input = data[consumed..].to_vec();
        }
        drop(joined);
        if n < buf.len() || conn.closing {
            break;
        }
    }
    if !out.is_empty() {
        if conn.output.is_empty() {
            match conn.stream.write(out) {
                Ok(n) => conn.output.extend_from_slice(&out[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => conn.output.extend_from_slice(out),
                Err(_) => return false,
            }
        } else {
            conn.output.extend_from_slice(out);
        }
        out.clear();
    }
    flush(conn) && !(conn.closing && conn.output.is_empty())
}

fn main() -> std::io::Result<()> {
    let port = port_arg("peer_mio");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
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
            let mut alive = true;
            if event.is_writable() && !conn.output.is_empty() {
                alive = flush(conn) && !(conn.closing && conn.output.is_empty());
            }
            if alive && (event.is_readable() || event.is_read_closed()) {
                alive = readable(conn, &mut buf, &mut out);
                out.clear();
            }
            if !alive && let Some(mut conn) = conns[i].take() {
                let _ = poll.registry().deregister(&mut conn.stream);
                free.push(i);
            }
        }
    }
}
