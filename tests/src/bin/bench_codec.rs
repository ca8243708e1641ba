//! Runs one codec over the same bytes N times, for `valgrind --tool=callgrind` (whose
//! instruction counts repeat exactly on a busy machine):
//!
//! ```text
//! bench_codec decode|encode spool|tungstenite|tokio-websockets LEN N
//! ```
//! `decode` reads N masked binary messages of LEN bytes as a server would, 64 KiB of frames a
//! read (at least one frame); `encode` frames N binary messages of LEN bytes. The suite runs
//! N and 2N and takes the difference, so start-up costs cancel out.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use spool_core::ws::{Config, Connection, Event, Message, Outbound};

const REQUEST: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// `count` masked binary frames of `len` bytes, back to back.
fn masked_frames(len: usize, count: usize) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut wire = Vec::new();
    for i in 0..count {
        wire.push(0x82);
        match len {
            0..=125 => wire.push(0x80 | len as u8),
            126..=65535 => {
                wire.push(0x80 | 126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                wire.push(0x80 | 127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(&key);
        wire.extend((0..len).map(|j| ((i + j) as u8) ^ key[j % 4]));
    }
    wire
}

/// Bytes served round and round, writes swallowed: the codecs' socket.
struct Replay {
    data: Vec<u8>,
    at: usize,
}

/// Copies in 1 KiB pieces, as spool's harness does: the simulated socket copy then costs every
/// codec the same instructions a byte under callgrind, whatever size its reader asks for.
fn copy_in_pieces(to: &mut [u8], from: &[u8]) {
    for (t, f) in to.chunks_mut(1024).zip(from.chunks(1024)) {
        t.copy_from_slice(f);
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at);
        copy_in_pieces(&mut buf[..n], &self.data[self.at..self.at + n]);
        self.at = (self.at + n) % self.data.len();
        Ok(n)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.data.len() - self.at);
        let at = self.at;
        let data = &self.data[at..at + n];
        for piece in data.chunks(1024) {
            buf.put_slice(piece);
        }
        self.at = (at + n) % self.data.len();
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn spool_server() -> Connection {
    let mut ws = Connection::server(Config::default()).expect("config");
    ws.handle(Event::Receive {
        now_ms: 0,
        bytes: Bytes::from_static(REQUEST.as_bytes()),
    });
    ws.handle(Event::Accept { now_ms: 0 });
    ws
}

#[inline(never)]
fn decode(codec: &str, len: usize, n: usize) {
    let per_read = (65536 / len).max(1);
    let wire = masked_frames(len, per_read);
    let frame = wire.len() / per_read;
    match codec {
        "spool" => {
            let mut ws = spool_server();
            let mut out = Vec::with_capacity(per_read + 1);
            let mut left = n;
            while left > 0 {
                let m = left.min(per_read);
                out.clear();
                // The shell copies each read into fresh `Bytes`; so does this, in 1 KiB pieces
                // as the other codecs' readers copy: callgrind counts one large memcpy (rep
                // movsb) an instruction a byte, a vectorised small one about one in eight.
                let mut read = Vec::with_capacity(m * frame);
                for piece in wire[..m * frame].chunks(1024) {
                    read.extend_from_slice(piece);
                }
                let bytes = Bytes::from(read);
                ws.handle_into(Event::Receive { now_ms: 1, bytes }, &mut out);
                let delivered = out
                    .iter()
                    .filter(|o| matches!(o, Outbound::Deliver(_)))
                    .count();
                assert_eq!(delivered, m);
                black_box(&out);
                left -= m;
            }
        }
        "tungstenite" => {
            use tungstenite::protocol::{Role, WebSocket};
            let mut ws =
                WebSocket::from_raw_socket(Replay { data: wire, at: 0 }, Role::Server, None);
            for _ in 0..n {
                black_box(ws.read().expect("a message"));
            }
        }
        "tokio-websockets" => {
            let mut ws = tokio_websockets::ServerBuilder::new().serve(Replay { data: wire, at: 0 });
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..n {
                match Pin::new(&mut ws).poll_next(&mut cx) {
                    Poll::Ready(Some(Ok(m))) => {
                        black_box(m);
                    }
                    other => panic!("tokio-websockets: {other:?}"),
                }
            }
        }
        other => panic!("unknown codec {other}"),
    }
}

#[inline(never)]
fn encode(codec: &str, len: usize, n: usize) {
    let per_write = (65536 / len).max(1);
    let payload = Bytes::from(vec![7u8; len]);
    match codec {
        "spool" => {
            let mut ws = spool_server();
            let mut out: Vec<Outbound> = Vec::with_capacity(per_write);
            for i in 0..n {
                let message = Message::Binary(payload.clone());
                ws.handle_into(Event::Send { now_ms: 1, message }, &mut out);
                if (i + 1) % per_write == 0 {
                    black_box(&out);
                    out.clear();
                }
            }
            black_box(&out);
        }
        "tungstenite" => {
            use tungstenite::protocol::{Role, WebSocket};
            let sink = Replay {
                data: vec![0],
                at: 0,
            };
            let mut ws = WebSocket::from_raw_socket(sink, Role::Server, None);
            for i in 0..n {
                ws.write(tungstenite::Message::Binary(payload.clone()))
                    .expect("write");
                if (i + 1) % per_write == 0 {
                    ws.flush().expect("flush");
                }
            }
            ws.flush().expect("flush");
        }
        "tokio-websockets" => {
            let sink = Replay {
                data: vec![0],
                at: 0,
            };
            let mut ws = tokio_websockets::ServerBuilder::new().serve(sink);
            let mut cx = Context::from_waker(Waker::noop());
            for i in 0..n {
                let message = tokio_websockets::Message::binary(payload.clone());
                assert!(Pin::new(&mut ws).poll_ready(&mut cx).is_ready());
                Pin::new(&mut ws).start_send(message).expect("send");
                if (i + 1) % per_write == 0 {
                    assert!(Pin::new(&mut ws).poll_flush(&mut cx).is_ready());
                }
            }
            assert!(Pin::new(&mut ws).poll_flush(&mut cx).is_ready());
        }
        other => panic!("unknown codec {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(op), Some(codec), Some(len), Some(n)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|v| v.parse::<usize>().ok()),
        args.get(3).and_then(|v| v.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: bench_codec decode|encode spool|tungstenite|tokio-websockets LEN N");
        std::process::exit(2);
    };
    match op.as_str() {
        "decode" => decode(codec, len.max(1), n),
        "encode" => encode(codec, len.max(1), n),
        _ => {
            eprintln!("decode or encode");
            std::process::exit(2);
        }
    }
}
