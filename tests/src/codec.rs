//! What the codec benchmarks share: the same masked bytes and the same simulated socket for
//! spool, tungstenite and tokio-websockets. Used by `benches/codec.rs` (criterion, messages a
//! second) and `src/bin/bench_codec.rs` (instructions a message under callgrind).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use spool_core::ws::{Config, Connection, Event, Outbound};
use spool_std::direct::ReadBuffer;

const REQUEST: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The message sizes every codec figure is taken at, with their tags in benchmark names.
pub const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (65536, "64KiB")];

/// How many messages of `len` bytes make one read or one flush: 64 KiB of them, at least one.
pub fn per_batch(len: usize) -> usize {
    (65536 / len).max(1)
}

/// `count` masked binary frames of `len` bytes, back to back.
pub fn masked_frames(len: usize, count: usize) -> Vec<u8> {
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

/// An open spool server connection, past its handshake.
pub fn spool_server() -> Connection {
    let mut ws = Connection::server(Config::default()).expect("config");
    ws.handle(Event::Receive {
        now_ms: 0,
        bytes: Bytes::from_static(REQUEST.as_bytes()),
    });
    ws.handle(Event::Accept { now_ms: 0 });
    ws
}

/// The simulated socket's copy, the same for every codec: in 1 KiB pieces. Callgrind counts
/// one large `memcpy` (glibc's `rep movsb`) an instruction a byte and a vectorised small one
/// about one in eight, and the two take different times too; copying alike keeps that
/// difference out of the codecs' figures.
pub fn copy_in_pieces(to: &mut [u8], from: &[u8]) {
    for (t, f) in to.chunks_mut(1024).zip(from.chunks(1024)) {
        t.copy_from_slice(f);
    }
}

/// What spool's shells do with a plain read (`spool_std::direct::ReadBuffer`): the socket's
/// bytes land in the thread's read buffer (copied in 1 KiB pieces, as the other codecs'
/// simulated socket copies them); a small read is lent to the core where it lies
/// (`Connection::handle_read`), a large one given away as the event's `Bytes`.
pub fn spool_read(
    ws: &mut Connection,
    scratch: &mut Vec<u8>,
    wire: &[u8],
    out: &mut Vec<Outbound>,
) {
    if wire.len() >= ReadBuffer::GIVE_FROM {
        let mut read = Vec::with_capacity(wire.len());
        for piece in wire.chunks(1024) {
            read.extend_from_slice(piece);
        }
        let bytes = Bytes::from(read);
        ws.handle_into(Event::Receive { now_ms: 1, bytes }, out);
    } else {
        scratch.resize(wire.len(), 0);
        copy_in_pieces(scratch, wire);
        ws.handle_read(1, scratch, out);
    }
}

/// Bytes served round and round, writes swallowed: tungstenite's and tokio-websockets' socket.
pub struct Replay {
    data: Vec<u8>,
    at: usize,
}

impl Replay {
    /// A socket that reads `data` forever.
    pub fn new(data: Vec<u8>) -> Replay {
        Replay { data, at: 0 }
    }

    /// A socket for writing only.
    pub fn sink() -> Replay {
        Replay::new(vec![0])
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
        for piece in self.data[at..at + n].chunks(1024) {
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
