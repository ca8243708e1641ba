//! Codec throughput, against tungstenite (and tokio-websockets) on the same bytes.
//!
//! `codec-decode-{16B,1KiB,64KiB}` and `codec-encode-*` (what `tests/scripts/bench.sh` reads):
//! a server reading masked binary messages, 64 KiB of frames a read (one frame at 64 KiB), and
//! a server framing binary messages, for spool, tungstenite and tokio-websockets; criterion's
//! throughput is in messages.
//!
//! `cargo bench -p spool-core --bench ws` prints messages per second for a server reading
//! masked 1 KiB binary messages (64 of them per read, as a busy socket delivers them) and for a
//! server framing 1 KiB messages, the masking rate in bytes per second, and what compressing a
//! 1 KiB text costs per message: with context takeover (one stream for life), without (a fresh
//! compressor per message, so an idle connection holds none), and as a shared
//! `PreparedMessage` (compressed once; each connection only frames it).

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{Sink, Stream};
use spool_core::ws::{
    Config, Connection, DeflateConfig, Event, Message, Outbound, PreparedMessage, apply_mask,
};

const REQUEST: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const MESSAGES_PER_READ: usize = 64;
const MESSAGE_LEN: usize = 1024;

fn open_server() -> Connection {
    open_server_with(None, REQUEST)
}

fn open_server_with(deflate: Option<DeflateConfig>, request: &str) -> Connection {
    let mut ws = Connection::server(Config {
        deflate,
        ..Config::default()
    })
    .unwrap();
    ws.handle(Event::Receive {
        now_ms: 0,
        bytes: Bytes::copy_from_slice(request.as_bytes()),
    });
    ws.handle(Event::Accept { now_ms: 0 });
    ws
}

/// 64 masked binary frames of 1 KiB, back to back.
fn masked_frames() -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut wire = Vec::new();
    for i in 0..MESSAGES_PER_READ {
        wire.extend_from_slice(&[0x82, 0x80 | 126]);
        wire.extend_from_slice(&(MESSAGE_LEN as u16).to_be_bytes());
        wire.extend_from_slice(&key);
        wire.extend((0..MESSAGE_LEN).map(|j| ((i + j) as u8) ^ key[j % 4]));
    }
    wire
}

/// A socket that yields the same bytes forever and swallows writes: tungstenite's input.
struct Replay {
    data: Vec<u8>,
    at: usize,
}

/// The simulated socket's copy, the same for every codec: in 1 KiB pieces, as
/// `tests/src/bin/bench_codec.rs` copies for callgrind. (One 64 KiB `memcpy` goes through
/// glibc's `rep movsb` path and costs a different amount than the vector loop small pieces
/// take; copying alike keeps that difference out of the codecs' figures.)
fn copy_in_pieces(to: &mut [u8], from: &[u8]) {
    for (t, f) in to.chunks_mut(1024).zip(from.chunks(1024)) {
        t.copy_from_slice(f);
    }
}

/// What spool's shells hand the core: each read as fresh `Bytes`, copied as above.
fn read_into_bytes(wire: &[u8]) -> Bytes {
    let mut read = Vec::with_capacity(wire.len());
    for piece in wire.chunks(1024) {
        read.extend_from_slice(piece);
    }
    Bytes::from(read)
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

/// `count` masked binary frames of `len` bytes, back to back.
fn masked_frames_of(len: usize, count: usize) -> Vec<u8> {
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

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (65536, "64KiB")];

/// Decode and unmask, three codecs, three sizes: 64 KiB of frames a read.
fn codec_decode(c: &mut Criterion) {
    for (len, tag) in SIZES {
        let per_read = (65536 / len).max(1);
        let wire = masked_frames_of(len, per_read);
        let mut group = c.benchmark_group(format!("codec-decode-{tag}"));
        group.throughput(Throughput::Elements(per_read as u64));
        group.bench_function("spool", |b| {
            let mut ws = open_server();
            let mut out = Vec::with_capacity(per_read + 1);
            b.iter(|| {
                out.clear();
                let bytes = read_into_bytes(&wire);
                ws.handle_into(Event::Receive { now_ms: 1, bytes }, &mut out);
                assert_eq!(out.len(), per_read);
                black_box(&out);
            })
        });
        group.bench_function("tungstenite", |b| {
            use tungstenite::protocol::{Role, WebSocket};
            let stream = Replay {
                data: wire.clone(),
                at: 0,
            };
            let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
            b.iter(|| {
                for _ in 0..per_read {
                    black_box(ws.read().unwrap());
                }
            })
        });
        group.bench_function("tokio-websockets", |b| {
            let stream = Replay {
                data: wire.clone(),
                at: 0,
            };
            let mut ws = tokio_websockets::ServerBuilder::new().serve(stream);
            let mut cx = Context::from_waker(Waker::noop());
            b.iter(|| {
                for _ in 0..per_read {
                    match Pin::new(&mut ws).poll_next(&mut cx) {
                        Poll::Ready(Some(Ok(m))) => {
                            black_box(m);
                        }
                        other => panic!("tokio-websockets: {other:?}"),
                    }
                }
            })
        });
        group.finish();
    }
}

/// Encode, three codecs, three sizes: 64 KiB of messages a flush.
fn codec_encode(c: &mut Criterion) {
    for (len, tag) in SIZES {
        let per_write = (65536 / len).max(1);
        let payload = Bytes::from(vec![7u8; len]);
        let mut group = c.benchmark_group(format!("codec-encode-{tag}"));
        group.throughput(Throughput::Elements(per_write as u64));
        group.bench_function("spool", |b| {
            let mut ws = open_server();
            let mut out: Vec<Outbound> = Vec::with_capacity(per_write);
            b.iter(|| {
                out.clear();
                for _ in 0..per_write {
                    let message = Message::Binary(payload.clone());
                    ws.handle_into(Event::Send { now_ms: 1, message }, &mut out);
                }
                black_box(&out);
            })
        });
        group.bench_function("tungstenite", |b| {
            use tungstenite::protocol::{Role, WebSocket};
            let stream = Replay {
                data: vec![0],
                at: 0,
            };
            let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
            b.iter(|| {
                for _ in 0..per_write {
                    ws.write(tungstenite::Message::Binary(payload.clone()))
                        .unwrap();
                }
                ws.flush().unwrap();
            })
        });
        group.bench_function("tokio-websockets", |b| {
            let stream = Replay {
                data: vec![0],
                at: 0,
            };
            let mut ws = tokio_websockets::ServerBuilder::new().serve(stream);
            let mut cx = Context::from_waker(Waker::noop());
            b.iter(|| {
                for _ in 0..per_write {
                    let message = tokio_websockets::Message::binary(payload.clone());
                    assert!(Pin::new(&mut ws).poll_ready(&mut cx).is_ready());
                    Pin::new(&mut ws).start_send(message).unwrap();
                }
                assert!(Pin::new(&mut ws).poll_flush(&mut cx).is_ready());
            })
        });
        group.finish();
    }
}

fn decode(c: &mut Criterion) {
    let wire = masked_frames();
    let mut group = c.benchmark_group("server reads 64 masked 1 KiB messages");
    group.throughput(Throughput::Elements(MESSAGES_PER_READ as u64));
    group.bench_function("spool", |b| {
        let mut ws = open_server();
        let mut out = Vec::with_capacity(MESSAGES_PER_READ);
        b.iter(|| {
            out.clear();
            // The shell copies each read into fresh `Bytes`; so does the benchmark.
            let bytes = Bytes::copy_from_slice(&wire);
            ws.handle_into(Event::Receive { now_ms: 1, bytes }, &mut out);
            assert_eq!(out.len(), MESSAGES_PER_READ);
            black_box(&out);
        })
    });
    group.bench_function("tungstenite", |b| {
        use tungstenite::protocol::{Role, WebSocket};
        let stream = Replay {
            data: wire.clone(),
            at: 0,
        };
        let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
        b.iter(|| {
            for _ in 0..MESSAGES_PER_READ {
                black_box(ws.read().unwrap());
            }
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; MESSAGE_LEN]);
    let mut group = c.benchmark_group("server frames 64 1 KiB messages");
    group.throughput(Throughput::Elements(MESSAGES_PER_READ as u64));
    group.bench_function("spool", |b| {
        let mut ws = open_server();
        let mut out: Vec<Outbound> = Vec::with_capacity(2 * MESSAGES_PER_READ);
        b.iter(|| {
            out.clear();
            for _ in 0..MESSAGES_PER_READ {
                let message = Message::Binary(payload.clone());
                ws.handle_into(Event::Send { now_ms: 1, message }, &mut out);
            }
            black_box(&out);
        })
    });
    group.bench_function("tungstenite", |b| {
        use tungstenite::protocol::{Role, WebSocket};
        let stream = Replay {
            data: vec![0],
            at: 0,
        };
        let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
        b.iter(|| {
            for _ in 0..MESSAGES_PER_READ {
                ws.write(tungstenite::Message::Binary(payload.clone()))
                    .unwrap();
            }
            ws.flush().unwrap();
        })
    });
    group.finish();
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_mask");
    for len in [125usize, 4096, 65536, 1 << 20] {
        let mut buf = vec![0u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{len} bytes"), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
    }
    group.finish();
}

fn deflate(c: &mut Criterion) {
    let text = "{\"topic\":\"room:lobby\",\"event\":\"shout\",\"payload\":{\"body\":\"hello\"}} "
        .repeat(MESSAGE_LEN / 64);
    let offer = |params: &str| {
        REQUEST.replace(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: permessage-deflate{params}\r\n\r\n"),
        )
    };
    let mut group = c.benchmark_group("server compresses a 1 KiB text");
    group.throughput(Throughput::Elements(1));
    for (name, params) in [
        ("context takeover", ""),
        ("no context takeover", "; server_no_context_takeover"),
    ] {
        group.bench_function(name, |b| {
            let mut ws = open_server_with(Some(DeflateConfig::default()), &offer(params));
            b.iter(|| {
                let message = Message::text(text.as_str());
                black_box(ws.handle(Event::Send { now_ms: 1, message }))
            })
        });
    }
    group.bench_function("prepared, shared", |b| {
        let request = offer("; server_no_context_takeover");
        let mut ws = open_server_with(Some(DeflateConfig::default()), &request);
        let prepared = PreparedMessage::compressed(Message::text(text.as_str()), 15, 1);
        b.iter(|| {
            let message = prepared.clone();
            black_box(ws.handle(Event::SendPrepared { now_ms: 1, message }))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    codec_decode,
    codec_encode,
    decode,
    encode,
    mask,
    deflate
);
criterion_main!(benches);
