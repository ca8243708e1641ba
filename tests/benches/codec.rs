//! Codec throughput, spool against tungstenite and tokio-websockets on the same bytes and the
//! same simulated socket (`spool_tests::codec`): `codec-decode-{16B,1KiB,64KiB}`, a server
//! reading masked binary messages, 64 KiB of frames a read (one frame at 64 KiB), and
//! `codec-encode-*`, a server framing binary messages, 64 KiB of them a flush. Criterion's
//! throughput is in messages; `tests/scripts/bench.sh` reads these groups into its table.
//!
//! ```text
//! cargo bench -p spool-tests --bench codec
//! ```

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{Sink, Stream};
use spool_core::ws::{Event, Message, Outbound};
use spool_tests::codec::{Replay, SIZES, masked_frames, per_batch, spool_read, spool_server};

/// Decode and unmask, three codecs, three sizes: 64 KiB of frames a read.
fn codec_decode(c: &mut Criterion) {
    for (len, tag) in SIZES {
        let per_read = per_batch(len);
        let wire = masked_frames(len, per_read);
        let mut group = c.benchmark_group(format!("codec-decode-{tag}"));
        group.throughput(Throughput::Elements(per_read as u64));
        group.bench_function("spool", |b| {
            let mut ws = spool_server();
            let mut out = Vec::with_capacity(per_read + 1);
            let mut scratch = Vec::new();
            b.iter(|| {
                out.clear();
                spool_read(&mut ws, &mut scratch, &wire, &mut out);
                assert_eq!(out.len(), per_read);
                black_box(&out);
            })
        });
        group.bench_function("tungstenite", |b| {
            use tungstenite::protocol::{Role, WebSocket};
            let stream = Replay::new(wire.clone());
            let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
            b.iter(|| {
                for _ in 0..per_read {
                    black_box(ws.read().unwrap());
                }
            })
        });
        group.bench_function("tokio-websockets", |b| {
            let stream = Replay::new(wire.clone());
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
        let per_write = per_batch(len);
        let payload = Bytes::from(vec![7u8; len]);
        let mut group = c.benchmark_group(format!("codec-encode-{tag}"));
        group.throughput(Throughput::Elements(per_write as u64));
        group.bench_function("spool", |b| {
            let mut ws = spool_server();
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
            let stream = Replay::sink();
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
            let stream = Replay::sink();
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

criterion_group!(benches, codec_decode, codec_encode);
criterion_main!(benches);
