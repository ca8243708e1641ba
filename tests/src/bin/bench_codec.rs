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
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use spool_core::ws::{Event, Message, Outbound};
use spool_tests::codec::{Replay, masked_frames, per_batch, spool_read, spool_server};

#[inline(never)]
fn decode(codec: &str, len: usize, n: usize) {
    let per_read = per_batch(len);
    let wire = masked_frames(len, per_read);
    let frame = wire.len() / per_read;
    match codec {
        "spool" => {
            let mut ws = spool_server();
            let mut out = Vec::with_capacity(per_read + 1);
            let mut scratch = Vec::new();
            let mut left = n;
            while left > 0 {
                let m = left.min(per_read);
                out.clear();
                spool_read(&mut ws, &mut scratch, &wire[..m * frame], &mut out);
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
            let mut ws = WebSocket::from_raw_socket(Replay::new(wire), Role::Server, None);
            for _ in 0..n {
                black_box(ws.read().expect("a message"));
            }
        }
        "tokio-websockets" => {
            let mut ws = tokio_websockets::ServerBuilder::new().serve(Replay::new(wire));
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
    let per_write = per_batch(len);
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
            let sink = Replay::sink();
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
            let sink = Replay::sink();
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
