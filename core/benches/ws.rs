//! What the core's WebSocket machine costs beside framing: the masking rate in bytes per
//! second, and what compressing a 1 KiB text costs per message: with context takeover (one
//! stream for life), without (a fresh compressor per message, so an idle connection holds
//! none), and as a shared `PreparedMessage` (compressed once; each connection only frames it).
//!
//! ```text
//! cargo bench -p spool-core --bench ws
//! ```
//! Codec throughput against tungstenite and tokio-websockets is `spool-tests`' `codec` bench.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spool_core::ws::{
    Config, Connection, DeflateConfig, Event, Message, PreparedMessage, apply_mask,
};

const REQUEST: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const MESSAGE_LEN: usize = 1024;

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

criterion_group!(benches, mask, deflate);
criterion_main!(benches);
