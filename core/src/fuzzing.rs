//! Bodies of the cargo-fuzz targets in `fuzz/`, kept here so that `cargo test` can replay their
//! corpora through the same code (`core/tests/fuzz_corpus.rs`). Not part of the API.

use bytes::Bytes;

use crate::ws::{ClientRequest, Config, Connection, DeflateConfig, Event, Outbound, Url};

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// Splits fuzz input into chunks: each chunk is preceded by one byte giving its length, so the
/// fuzzer controls where reads end, as a real socket would.
fn chunks(data: &[u8]) -> impl Iterator<Item = Bytes> + '_ {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let n = (len as usize).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        Some(Bytes::copy_from_slice(chunk))
    })
}

/// Checks what must hold for any input: one `Closed` at most, nothing delivered after it, and
/// nothing at all after `Disconnect`.
fn check(out: &[Outbound], closed: &mut bool, disconnected: &mut bool) {
    for o in out {
        assert!(!*disconnected, "outbound after disconnect: {o:?}");
        match o {
            Outbound::Closed(_) => {
                assert!(!*closed, "closed reported twice");
                *closed = true;
            }
            Outbound::Deliver(_) => assert!(!*closed, "delivered after close"),
            Outbound::Disconnect => *disconnected = true,
            _ => {}
        }
    }
}

/// Frames into an open server connection. The first byte picks the configuration (compression
/// on or off, small limits or default ones) so the fuzzer reaches the inflater and the limits.
pub fn ws_frames(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut config = Config::default();
    if flags & 1 == 0 {
        config.deflate = None;
    } else {
        config.deflate = Some(DeflateConfig {
            client_no_context_takeover: flags & 4 != 0,
            ..DeflateConfig::default()
        });
    }
    if flags & 2 != 0 {
        config.limits.max_frame_len = 64;
        config.limits.max_message_len = 256;
    }
    let Ok(mut ws) = Connection::server(config) else {
        return;
    };
    ws.handle(Event::Open { now_ms: 0 });
    ws.handle(Event::Receive {
        now_ms: 0,
        bytes: Bytes::from_static(REQUEST),
    });
    ws.handle(Event::Accept { now_ms: 0 });
    let (mut closed, mut disconnected) = (false, false);
    for (i, bytes) in chunks(data).enumerate() {
        let out = ws.handle(Event::Receive {
            now_ms: i as u64,
            bytes,
        });
        check(&out, &mut closed, &mut disconnected);
    }
    let out = ws.handle(Event::TransportClosed { now_ms: u64::MAX });
    check(&out, &mut closed, &mut disconnected);
    assert!(closed, "every connection reports its end");
}

/// Arbitrary bytes as an upgrade request.
pub fn ws_server_handshake(data: &[u8]) {
    let Ok(mut ws) = Connection::server(Config::default()) else {
        return;
    };
    let (mut closed, mut disconnected) = (false, false);
    ws.handle(Event::Open { now_ms: 0 });
    for bytes in chunks(data) {
        let out = ws.handle(Event::Receive { now_ms: 1, bytes });
        check(&out, &mut closed, &mut disconnected);
        if out.iter().any(|o| matches!(o, Outbound::Upgrade(_))) {
            let out = ws.handle(Event::Accept { now_ms: 2 });
            check(&out, &mut closed, &mut disconnected);
        }
    }
    let out = ws.handle(Event::Tick { now_ms: u64::MAX });
    check(&out, &mut closed, &mut disconnected);
}

/// Arbitrary bytes as the answer to a client's upgrade request.
pub fn ws_client_handshake(data: &[u8]) {
    let request = ClientRequest {
        url: Url {
            secure: false,
            host: "h".into(),
            port: 80,
            target: "/".into(),
        },
        key: *b"the sample nonce",
        mask_seed: 0,
        headers: Vec::new(),
    };
    let config = Config {
        protocols: vec!["chat".into()],
        ..Config::default()
    };
    let Ok(mut ws) = Connection::client(config, request) else {
        return;
    };
    let (mut closed, mut disconnected) = (false, false);
    ws.handle(Event::Open { now_ms: 0 });
    for bytes in chunks(data) {
        let out = ws.handle(Event::Receive { now_ms: 1, bytes });
        check(&out, &mut closed, &mut disconnected);
    }
    let out = ws.handle(Event::TransportClosed { now_ms: 2 });
    check(&out, &mut closed, &mut disconnected);
}
