//! Scripted tests of the connection machine: hand-built bytes in, outbounds asserted.
//! Frames are built by `test_frame`, never by the encoder under test.

use bytes::Bytes;

use super::*;

mod deflate;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request_with(extra: &str) -> String {
    format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A frame as the RFC draws it, built byte by byte.
fn test_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut v = vec![(fin as u8) << 7 | (rsv1 as u8) << 6 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n < 65536 => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            v.extend_from_slice(&key);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    Bytes::from(v)
}

const M: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn client_frame(opcode: u8, payload: &[u8]) -> Bytes {
    test_frame(true, false, opcode, payload, M)
}

fn receive(ws: &mut Connection, now_ms: u64, bytes: impl Into<Bytes>) -> Vec<Outbound> {
    ws.handle(Event::Receive {
        now_ms,
        bytes: bytes.into(),
    })
}

/// A server whose handshake completed at now_ms = 0.
fn open_server(config: Config) -> Connection {
    let mut ws = Connection::server(config).unwrap();
    ws.handle(Event::Open { now_ms: 0 });
    let out = receive(&mut ws, 0, request_with(""));
    assert!(matches!(&out[..], [Outbound::Upgrade(_)]), "{out:?}");
    let out = ws.handle(Event::Accept { now_ms: 0 });
    assert!(matches!(out.last(), Some(Outbound::Opened(_))), "{out:?}");
    ws
}

fn no_deflate() -> Config {
    Config {
        deflate: None,
        ..Config::default()
    }
}

fn transmits(out: &[Outbound]) -> Vec<u8> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Transmit(b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn closed(out: &[Outbound]) -> Option<&CloseInfo> {
    out.iter().find_map(|o| match o {
        Outbound::Closed(info) => Some(info),
        _ => None,
    })
}

#[track_caller]
fn assert_fails_with(out: &[Outbound], code: u16) {
    let sent = transmits(out);
    assert_eq!(&sent[..2], &[0x88, sent[1]], "a close frame first: {out:?}");
    assert_eq!(u16::from_be_bytes([sent[2], sent[3]]), code, "{out:?}");
    assert_eq!(closed(out).map(|c| (c.code, c.clean)), Some((code, false)));
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

// ---- opening handshake, server ----

#[test]
fn upgrade_request_is_reported_then_answered_101() {
    let mut ws = Connection::server(no_deflate()).unwrap();
    ws.handle(Event::Open { now_ms: 0 });
    let out = receive(&mut ws, 1, request_with("Origin: https://example.com\r\n"));
    let [Outbound::Upgrade(req)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((req.path(), req.query()), ("/chat", Some("room=1")));
    assert_eq!(req.origin.as_deref(), Some("https://example.com"));
    let out = ws.handle(Event::Accept { now_ms: 2 });
    let head = String::from_utf8(transmits(&out)).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(ws.is_open());
}

#[test]
fn request_split_at_every_byte_is_parsed_once() {
    let req = request_with("");
    for cut in 0..=req.len() {
        let mut ws = Connection::server(no_deflate()).unwrap();
        let mut out = receive(&mut ws, 0, req[..cut].to_string());
        out.extend(receive(&mut ws, 0, req[cut..].to_string()));
        assert!(
            matches!(&out[..], [Outbound::Upgrade(_)]),
            "cut {cut}: {out:?}"
        );
    }
}

#[track_caller]
fn assert_refused(request: &str, status: u16, says: &str) {
    let mut ws = Connection::server(no_deflate()).unwrap();
    let out = receive(&mut ws, 0, request.to_string());
    let answer = String::from_utf8(transmits(&out)).unwrap();
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    assert!(answer.contains(says), "{answer}");
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

#[test]
fn bad_requests_are_answered_with_what_was_wrong() {
    let good = request_with("");
    assert_refused(&good.replace("Version: 13", "Version: 8"), 426, "version");
    assert_refused(&good.replace("Upgrade: websocket\r\n", ""), 400, "upgrade");
    assert_refused(
        &good.replace("keep-alive, Upgrade", "keep-alive"),
        400,
        "connection",
    );
    assert_refused(&good.replace(KEY, "short"), 400, "sec-websocket-key");
    assert_refused(&good.replace("Host: example.com\r\n", ""), 400, "host");
    assert_refused(&good.replace("GET", "POST"), 405, "GET");
    assert_refused("GARBAGE\0\r\n\r\n", 400, "malformed");
    let huge = request_with(&format!("X-Big: {}\r\n", "a".repeat(9000)));
    assert_refused(&huge, 431, "too large");
    // Too large is noticed before the head ends, too.
    assert_refused(
        &format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000)),
        431,
        "too large",
    );
}

#[test]
fn subprotocol_is_the_servers_first_choice_the_client_offered() {
    let config = Config {
        protocols: vec!["v2".into(), "v1".into()],
        ..no_deflate()
    };
    let mut ws = Connection::server(config).unwrap();
    let out = receive(
        &mut ws,
        0,
        request_with("Sec-WebSocket-Protocol: v1, v2\r\n"),
    );
    let [Outbound::Upgrade(req)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(req.offered_protocols, ["v1", "v2"]);
    assert_eq!(req.protocol.as_deref(), Some("v2"));
    let out = ws.handle(Event::Accept { now_ms: 0 });
    assert!(
        String::from_utf8(transmits(&out))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: v2\r\n")
    );
}

#[test]
fn rejected_upgrade_gets_the_applications_status() {
    let mut ws = Connection::server(no_deflate()).unwrap();
    receive(&mut ws, 0, request_with("Origin: https://evil.example\r\n"));
    let out = ws.handle(Event::Reject {
        now_ms: 1,
        status: 403,
        reason: "origin not allowed".into(),
    });
    let answer = String::from_utf8(transmits(&out)).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 403 Forbidden\r\n")
            && answer.ends_with("origin not allowed\n")
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

#[test]
fn handshake_times_out() {
    let mut ws = Connection::server(no_deflate()).unwrap();
    ws.handle(Event::Open { now_ms: 100 });
    assert_eq!(ws.next_deadline(), Some(10_100));
    assert!(
        ws.handle(Event::Tick { now_ms: 10_099 }).is_empty(),
        "an early tick does nothing"
    );
    let out = ws.handle(Event::Tick { now_ms: 10_100 });
    assert!(
        String::from_utf8(transmits(&out))
            .unwrap()
            .starts_with("HTTP/1.1 408")
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
    assert!(ws.is_done());
}

// ---- frames ----

#[test]
fn masked_text_split_anywhere_is_delivered_once() {
    let wire = client_frame(1, b"hello");
    for cut in 0..=wire.len() {
        let mut ws = open_server(no_deflate());
        let mut out = receive(&mut ws, 1, wire.slice(..cut));
        out.extend(receive(&mut ws, 2, wire.slice(cut..)));
        assert_eq!(
            out,
            [Outbound::Deliver(Message::text("hello"))],
            "cut at {cut}"
        );
    }
}

#[test]
fn a_read_of_more_whole_messages_than_one_run_takes_delivers_them_all_in_order() {
    // The receive path takes at most WHOLE_RUN (64) whole messages a run; past that it starts
    // another run on the same read. 200 messages, and a ping in the middle of the third run.
    let mut ws = open_server(no_deflate());
    let mut wire = Vec::new();
    for i in 0..200u32 {
        if i == 150 {
            wire.extend_from_slice(&client_frame(9, b"p"));
        }
        wire.extend_from_slice(&client_frame(1, i.to_string().as_bytes()));
    }
    let out = receive(&mut ws, 1, wire);
    let delivered: Vec<Message> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Deliver(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let mut expected: Vec<Message> = (0..200u32).map(|i| Message::text(i.to_string())).collect();
    expected.insert(150, Message::Ping(Bytes::from_static(b"p")));
    assert_eq!(delivered, expected);
    assert_eq!(transmits(&out), [0x8A, 1, b'p']);
}

#[test]
fn a_read_that_is_one_message_delivers_it_in_the_read_buffer_itself() {
    // The single-message path gives the read's buffer up whole: the message is the read's
    // bytes, unmasked in place, past the header; no copy and no split.
    let mut ws = open_server(no_deflate());
    let wire = client_frame(2, b"payload");
    let header_len = wire.len() - b"payload".len();
    let read_at = wire.as_ptr() as usize;
    let out = receive(&mut ws, 1, wire);
    let [Outbound::Deliver(Message::Binary(got))] = &out[..] else {
        panic!("one message: {out:?}");
    };
    assert_eq!(&got[..], b"payload");
    assert_eq!(got.as_ptr() as usize, read_at + header_len);
    // Bad UTF-8 in a lone text message still fails, through the general path.
    let mut ws = open_server(no_deflate());
    assert_fails_with(&receive(&mut ws, 1, client_frame(1, &[0xff, 0xfe])), 1007);
    // The next read starts from an empty buffer: a second lone message is delivered too.
    let mut ws = open_server(no_deflate());
    receive(&mut ws, 1, client_frame(1, b"one"));
    let out = receive(&mut ws, 2, client_frame(1, b"two"));
    assert_eq!(out, [Outbound::Deliver(Message::text("two"))]);
}

#[test]
fn fragments_with_a_ping_between_them_reassemble() {
    let mut ws = open_server(no_deflate());
    let mut wire = test_frame(false, false, 1, "κό".as_bytes(), M).to_vec();
    wire.extend_from_slice(&client_frame(9, b"p"));
    wire.extend_from_slice(&test_frame(false, false, 0, &"σμε".as_bytes()[..3], M));
    wire.extend_from_slice(&test_frame(true, false, 0, &"σμε".as_bytes()[3..], M));
    for chunk in wire.chunks(3) {
        for o in receive(&mut ws, 1, Bytes::copy_from_slice(chunk)) {
            match o {
                Outbound::Deliver(Message::Ping(p)) => assert_eq!(&p[..], b"p"),
                Outbound::Deliver(m) => assert_eq!(m, Message::text("κόσμε")),
                Outbound::Transmit(pong) => assert_eq!(pong.to_vec(), [0x8a, 1, b'p']),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn invalid_utf8_fails_before_the_frame_ends() {
    let mut ws = open_server(no_deflate());
    let frame = client_frame(1, &[b'a', 0xff, b'b', b'c', b'd', b'e']);
    // Header (6 bytes) and the first two payload bytes only.
    let out = receive(&mut ws, 1, frame.slice(..8));
    assert_fails_with(&out, 1007);
}

#[test]
fn protocol_violations_close_with_1002() {
    let cases: Vec<(&str, Bytes)> = vec![
        ("unmasked", test_frame(true, false, 1, b"x", None)),
        ("rsv1 without deflate", test_frame(true, true, 1, b"x", M)),
        ("reserved opcode", client_frame(3, b"")),
        ("continuation first", test_frame(true, false, 0, b"x", M)),
        ("fragmented ping", test_frame(false, false, 9, b"", M)),
        ("close of one byte", client_frame(8, &[3])),
        ("close code 1005", client_frame(8, &1005u16.to_be_bytes())),
    ];
    for (name, wire) in cases {
        let mut ws = open_server(no_deflate());
        let out = receive(&mut ws, 1, wire);
        assert_eq!(closed(&out).map(|c| c.code), Some(1002), "{name}: {out:?}");
    }
    let mut ws = open_server(no_deflate());
    let mut wire = test_frame(false, false, 1, b"a", M).to_vec();
    wire.extend_from_slice(&client_frame(1, b"b"));
    assert_fails_with(&receive(&mut ws, 1, wire), 1002);
}

#[test]
fn size_limits_close_with_1009_from_the_header() {
    let config = Config {
        limits: Limits {
            max_frame_len: 100,
            max_message_len: 150,
            ..Limits::default()
        },
        ..no_deflate()
    };
    let mut ws = open_server(config.clone());
    let big = client_frame(2, &[0; 101]);
    assert_fails_with(&receive(&mut ws, 1, big.slice(..8)), 1009);

    let mut ws = open_server(config);
    let mut wire = test_frame(false, false, 2, &[0; 100], M).to_vec();
    wire.extend_from_slice(&test_frame(true, false, 0, &[0; 51], M)[..8]);
    assert_fails_with(&receive(&mut ws, 1, wire), 1009);
}

#[test]
fn config_refuses_limits_no_buffer_can_reach() {
    let config = Config {
        limits: Limits {
            max_message_len: usize::MAX,
            ..Limits::default()
        },
        ..Config::default()
    };
    assert!(config.validate().is_err());
    assert!(Connection::server(config).is_err());
    // The largest that can work is accepted; so are the defaults.
    let largest = Config {
        limits: Limits {
            max_handshake_len: isize::MAX as usize,
            max_frame_len: isize::MAX as usize,
            max_message_len: isize::MAX as usize,
        },
        ..Config::default()
    };
    assert_eq!(largest.validate(), Ok(()));
    assert_eq!(Config::default().validate(), Ok(()));
    // Timers that would fire at once, forever.
    for config in [
        Config {
            ping_interval_ms: Some(0),
            ..Config::default()
        },
        Config {
            idle_timeout_ms: Some(0),
            ..Config::default()
        },
        Config {
            handshake_timeout_ms: 0,
            ..Config::default()
        },
    ] {
        assert!(config.validate().is_err(), "{config:?}");
    }
}

// ---- close handshake ----

#[test]
fn peer_close_is_echoed_and_the_server_hangs_up() {
    let mut ws = open_server(no_deflate());
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let out = receive(&mut ws, 5, client_frame(8, &payload));
    assert_eq!(transmits(&out), [0x88, 2, 0x03, 0xe8]);
    let info = closed(&out).unwrap();
    assert_eq!(
        (info.code, info.reason.as_str(), info.clean, info.initiator),
        (1000, "bye", true, Initiator::Remote)
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
    assert!(
        ws.handle(Event::TransportClosed { now_ms: 6 }).is_empty(),
        "closed is reported once"
    );
}

#[test]
fn local_close_waits_for_the_answer_then_times_out() {
    let mut ws = open_server(no_deflate());
    let out = ws.handle(Event::Close {
        now_ms: 10,
        code: 4000,
        reason: "done".into(),
    });
    assert_eq!(
        transmits(&out),
        [0x88, 6, 0x0f, 0xa0, b'd', b'o', b'n', b'e']
    );
    assert!(!ws.is_open());
    assert!(
        ws.handle(Event::Send {
            now_ms: 11,
            message: Message::text("late")
        })
        .is_empty()
    );
    assert_eq!(ws.next_deadline(), Some(5_010));
    let out = ws.handle(Event::Tick { now_ms: 5_010 });
    assert_eq!(closed(&out).map(|c| (c.code, c.clean)), Some((4000, false)));
    assert_eq!(out.last(), Some(&Outbound::Disconnect));

    let mut ws = open_server(no_deflate());
    ws.handle(Event::Close {
        now_ms: 10,
        code: 1000,
        reason: String::new(),
    });
    let out = receive(&mut ws, 20, client_frame(8, &1000u16.to_be_bytes()));
    assert_eq!(
        closed(&out).map(|c| (c.code, c.clean, c.initiator)),
        Some((1000, true, Initiator::Local))
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

#[test]
fn transport_loss_is_an_unclean_1006() {
    let mut ws = open_server(no_deflate());
    let out = ws.handle(Event::TransportClosed { now_ms: 3 });
    assert_eq!(
        closed(&out).map(|c| (c.code, c.clean, c.initiator)),
        Some((1006, false, Initiator::Transport))
    );
}

// ---- timers ----

#[test]
fn idle_connections_are_pinged_then_closed() {
    let config = Config {
        idle_timeout_ms: Some(1000),
        ping_interval_ms: Some(400),
        pong_timeout_ms: None, // keep pinging; the idle timeout decides
        ..no_deflate()
    };
    let mut ws = open_server(config);
    assert_eq!(ws.next_deadline(), Some(400));
    assert_eq!(
        transmits(&ws.handle(Event::Tick { now_ms: 400 })),
        [0x89, 0]
    );
    assert_eq!(ws.next_deadline(), Some(800));
    receive(&mut ws, 700, client_frame(10, b""));
    assert_eq!(ws.next_deadline(), Some(1100));
    ws.handle(Event::Tick { now_ms: 1100 });
    ws.handle(Event::Tick { now_ms: 1500 });
    let out = ws.handle(Event::Tick { now_ms: 1700 });
    assert_eq!(&transmits(&out)[..4], &[0x88, 14, 0x03, 0xe9]);
}

#[test]
fn time_going_backwards_counts_as_the_last_time_seen() {
    let mut ws = open_server(Config {
        idle_timeout_ms: Some(1000),
        ..no_deflate()
    });
    receive(&mut ws, 500, client_frame(10, b""));
    receive(&mut ws, 100, client_frame(10, b""));
    assert_eq!(ws.next_deadline(), Some(1500));
}

#[test]
fn a_server_finds_a_dead_peer_with_the_default_config() {
    let defaults = Config::default();
    assert_eq!(defaults.ping_interval_ms, Some(30_000));
    let mut ws = open_server(no_deflate()); // opened at now_ms = 0
    assert_eq!(ws.next_deadline(), Some(30_000));
    assert_eq!(ws.handle(Event::Tick { now_ms: 29_999 }), []);
    assert_eq!(
        transmits(&ws.handle(Event::Tick { now_ms: 30_000 })),
        [0x89, 0],
        "a ping after 30 s of silence"
    );
    // No answer: the pong deadline is 30 s after the ping; a tick before it does nothing.
    assert_eq!(ws.next_deadline(), Some(60_000));
    assert_eq!(ws.handle(Event::Tick { now_ms: 59_999 }), []);
    let out = ws.handle(Event::Tick { now_ms: 60_000 });
    assert_eq!(
        &transmits(&out)[..4],
        &[0x88, 14, 0x03, 0xe9],
        "close frame 1001 \"pong timeout\""
    );
    assert_eq!(
        closed(&out),
        Some(&CloseInfo {
            code: 1001,
            reason: "pong timeout".into(),
            clean: false,
            initiator: Initiator::Local,
        })
    );
    assert_eq!(
        out.last(),
        Some(&Outbound::Disconnect),
        "no wait for a dead peer"
    );
    assert!(ws.is_done());
    assert_eq!(ws.next_deadline(), None);
}

#[test]
fn an_answered_ping_rearms_the_interval() {
    let mut ws = open_server(no_deflate());
    assert_eq!(
        transmits(&ws.handle(Event::Tick { now_ms: 30_000 })),
        [0x89, 0]
    );
    // The pong (or any frame) at 45 s answers it; the next ping is due 30 s later.
    assert_eq!(
        receive(&mut ws, 45_000, client_frame(10, b"")),
        [Outbound::Deliver(Message::Pong(Bytes::new()))]
    );
    assert_eq!(ws.next_deadline(), Some(75_000));
    assert_eq!(
        ws.handle(Event::Tick { now_ms: 60_000 }),
        [],
        "the old pong deadline is gone"
    );
    assert_eq!(
        transmits(&ws.handle(Event::Tick { now_ms: 75_000 })),
        [0x89, 0]
    );
    // Any data answers too, even arriving in the same millisecond as the ping.
    receive(&mut ws, 75_000, client_frame(1, b"still here"));
    assert_eq!(ws.next_deadline(), Some(105_000));
    // A client pings and gives up the same way.
    let mut p = Pair::new(no_deflate(), no_deflate());
    let opened_at = p.now_ms;
    assert_eq!(p.client.next_deadline(), Some(opened_at + 30_000));
    let out = p.client.handle(Event::Tick {
        now_ms: opened_at + 30_000,
    });
    assert_eq!(transmits(&out)[..2], [0x89, 0x80], "a masked ping");
    let out = p.client.handle(Event::Tick {
        now_ms: opened_at + 60_000,
    });
    assert_eq!(closed(&out).map(|c| c.code), Some(1001));
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

// ---- both ends together ----

/// Two connections joined by in-memory pipes, with one clock (quinn's `Pair`).
struct Pair {
    client: Connection,
    server: Connection,
    now_ms: u64,
    to_client: Vec<Bytes>,
    to_server: Vec<Bytes>,
    client_got: Vec<Outbound>,
    server_got: Vec<Outbound>,
}

impl Pair {
    fn new(client_config: Config, server_config: Config) -> Pair {
        let request = ClientRequest {
            url: Url::parse("ws://localhost:9000/x").unwrap(),
            key: [3; 16],
            mask_seed: 7,
            headers: vec![],
        };
        let mut pair = Pair {
            client: Connection::client(client_config, request).unwrap(),
            server: Connection::server(server_config).unwrap(),
            now_ms: 0,
            to_client: vec![],
            to_server: vec![],
            client_got: vec![],
            server_got: vec![],
        };
        let out = pair.server.handle(Event::Open { now_ms: 0 });
        pair.absorb(out, false);
        let out = pair.client.handle(Event::Open { now_ms: 0 });
        pair.absorb(out, true);
        pair.drive();
        pair
    }

    fn absorb(&mut self, out: Vec<Outbound>, from_client: bool) {
        for o in out {
            match (o, from_client) {
                (Outbound::Transmit(b), true) => self.to_server.push(b.into_bytes()),
                (Outbound::Transmit(b), false) => self.to_client.push(b.into_bytes()),
                (Outbound::Upgrade(_), false) => {
                    let out = self.server.handle(Event::Accept {
                        now_ms: self.now_ms,
                    });
                    self.absorb(out, false);
                }
                (other, true) => self.client_got.push(other),
                (other, false) => self.server_got.push(other),
            }
        }
    }

    fn drive(&mut self) {
        while !self.to_client.is_empty() || !self.to_server.is_empty() {
            self.now_ms += 1;
            for bytes in std::mem::take(&mut self.to_server) {
                let out = self.server.handle(Event::Receive {
                    now_ms: self.now_ms,
                    bytes,
                });
                self.absorb(out, false);
            }
            for bytes in std::mem::take(&mut self.to_client) {
                let out = self.client.handle(Event::Receive {
                    now_ms: self.now_ms,
                    bytes,
                });
                self.absorb(out, true);
            }
        }
    }

    fn client_sends(&mut self, message: Message) {
        let out = self.client.handle(Event::Send {
            now_ms: self.now_ms,
            message,
        });
        self.absorb(out, true);
        self.drive();
    }

    fn server_sends(&mut self, message: Message) {
        let out = self.server.handle(Event::Send {
            now_ms: self.now_ms,
            message,
        });
        self.absorb(out, false);
        self.drive();
    }
}

fn delivered(got: &mut Vec<Outbound>) -> Vec<Message> {
    got.drain(..)
        .filter_map(|o| match o {
            Outbound::Deliver(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn client_and_server_agree_on_deflate_and_exchange_messages() {
    for (client_deflate, server_deflate) in [
        (
            Some(DeflateConfig::default()),
            Some(DeflateConfig::default()),
        ),
        (
            Some(DeflateConfig {
                server_max_window_bits: 9,
                client_no_context_takeover: true,
                ..DeflateConfig::default()
            }),
            Some(DeflateConfig {
                server_no_context_takeover: true,
                ..DeflateConfig::default()
            }),
        ),
        (None, Some(DeflateConfig::default())),
        (Some(DeflateConfig::default()), None),
    ] {
        let mut p = Pair::new(
            Config {
                deflate: client_deflate,
                ..Config::default()
            },
            Config {
                deflate: server_deflate,
                ..Config::default()
            },
        );
        let opened = p.client_got.iter().find_map(|o| match o {
            Outbound::Opened(h) => Some(h.clone()),
            _ => None,
        });
        let expect_deflate = client_deflate.is_some() && server_deflate.is_some();
        assert_eq!(opened.unwrap().deflate.is_some(), expect_deflate);
        p.client_got.clear();
        p.server_got.clear();
        let long = "all work and no play ".repeat(500);
        for text in ["hi", long.as_str(), "", long.as_str()] {
            p.client_sends(Message::text(text));
            assert_eq!(delivered(&mut p.server_got), [Message::text(text)]);
            p.server_sends(Message::binary(text.as_bytes().to_vec()));
            assert_eq!(
                delivered(&mut p.client_got),
                [Message::binary(text.as_bytes().to_vec())]
            );
        }
        if expect_deflate {
            // A repeated 10 KB text must have gone out compressed.
            let wire = p.client.handle(Event::Send {
                now_ms: p.now_ms,
                message: Message::text(long.clone()),
            });
            assert!(
                transmits(&wire).len() < 1000,
                "{} bytes on the wire",
                transmits(&wire).len()
            );
        }
    }
}

#[test]
fn client_rejects_a_wrong_accept_key() {
    let request = ClientRequest {
        url: Url::parse("ws://h/").unwrap(),
        key: [1; 16],
        mask_seed: 1,
        headers: vec![],
    };
    let mut ws = Connection::client(no_deflate(), request).unwrap();
    let out = ws.handle(Event::Open { now_ms: 0 });
    let req = String::from_utf8(transmits(&out)).unwrap();
    assert!(req.starts_with("GET / HTTP/1.1\r\nHost: h\r\n"), "{req}");
    let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let out = receive(&mut ws, 1, answer);
    assert_eq!(
        closed(&out).map(|c| c.reason.as_str()),
        Some("sec-websocket-accept does not match the key")
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
    let out = receive(
        &mut Connection::client(
            no_deflate(),
            ClientRequest {
                url: Url::parse("ws://h/").unwrap(),
                key: [1; 16],
                mask_seed: 1,
                headers: vec![],
            },
        )
        .unwrap(),
        1,
        "HTTP/1.1 404 Not Found\r\n\r\n",
    );
    assert_eq!(
        closed(&out).map(|c| c.reason.as_str()),
        Some("server answered 404, not 101")
    );
}

#[test]
fn client_waits_for_the_server_to_hang_up_after_closing() {
    let mut p = Pair::new(no_deflate(), no_deflate());
    let out = p.client.handle(Event::Close {
        now_ms: p.now_ms,
        code: 1000,
        reason: String::new(),
    });
    p.absorb(out, true);
    p.drive();
    assert!(p.server_got.contains(&Outbound::Disconnect));
    assert!(closed(&p.client_got).is_some_and(|c| c.clean));
    assert!(
        !p.client_got.contains(&Outbound::Disconnect),
        "the server closes TCP first"
    );
    let deadline = p.client.next_deadline().unwrap();
    assert_eq!(
        p.client.handle(Event::Tick { now_ms: deadline }),
        [Outbound::Disconnect]
    );
}

#[test]
fn client_frames_are_masked_with_the_seeded_generator() {
    let mut p = Pair::new(no_deflate(), no_deflate());
    let wire = p.client.handle(Event::Send {
        now_ms: 1,
        message: Message::text("abc"),
    });
    let wire = transmits(&wire);
    assert_eq!(wire[1], 0x80 | 3, "mask bit set");
    let mut again = Pair::new(no_deflate(), no_deflate());
    let same = transmits(&again.client.handle(Event::Send {
        now_ms: 1,
        message: Message::text("abc"),
    }));
    assert_eq!(wire, same, "same seed, same bytes");
}

#[test]
fn a_bad_frame_after_a_message_in_the_same_read_waits_for_the_answer() {
    // Autobahn 3.2: a text frame then a frame with RSV bits, in one read. A peer that read them
    // one at a time would have echoed the text before failing; so do we.
    let mut ws = open_server(no_deflate());
    let mut wire = client_frame(1, b"echo me").to_vec();
    wire.extend_from_slice(&test_frame(true, true, 1, b"bad", M));
    let out = receive(&mut ws, 5, wire);
    assert_eq!(out, [Outbound::Deliver(Message::text("echo me"))]);
    assert_eq!(ws.next_deadline(), Some(5), "the failure is due at once");
    let out = ws.handle(Event::Send {
        now_ms: 6,
        message: Message::text("echo me"),
    });
    assert_eq!(
        &transmits(&out)[..9],
        &[0x81, 7, b'e', b'c', b'h', b'o', b' ', b'm', b'e']
    );
    assert_fails_with(&out[1..], 1002);

    // With nothing to answer, the tick at the deadline fails it.
    let mut ws = open_server(no_deflate());
    let mut wire = client_frame(1, b"x").to_vec();
    wire.extend_from_slice(&client_frame(3, b""));
    receive(&mut ws, 5, wire);
    assert_fails_with(&ws.handle(Event::Tick { now_ms: 5 }), 1002);
}

#[test]
fn plain_http_requests_go_to_the_application_when_asked() {
    let page = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Off (the default): a GET that is not an upgrade is refused.
    assert_refused(page, 400, "upgrade");
    // On: reported, answered with the application's page, then closed.
    let mut ws = Connection::server(Config {
        plain_http: true,
        ..no_deflate()
    })
    .unwrap();
    let out = receive(&mut ws, 0, page);
    let [Outbound::HttpRequest(req)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(req.path(), "/");
    let out = ws.handle(Event::Respond {
        now_ms: 1,
        status: 200,
        content_type: "text/html".into(),
        body: Bytes::from_static(b"<p>hi</p>"),
    });
    let answer = String::from_utf8(transmits(&out)).unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 9\r\nConnection: close\r\n\r\n<p>hi</p>"
    );
    assert_eq!(out.last(), Some(&Outbound::Disconnect));
}

#[test]
fn the_outcome_does_not_depend_on_what_the_callers_vector_held() {
    // A bad frame alone in a read fails at once, whatever the caller left in its vector:
    // a stale Deliver from an earlier call must not postpone the failure.
    let bad = test_frame(true, true, 1, b"bad", M);
    let mut fresh = open_server(no_deflate());
    let expected = receive(&mut fresh, 5, bad.clone());
    assert_fails_with(&expected, 1002);

    let mut ws = open_server(no_deflate());
    let stale = vec![
        Outbound::Deliver(Message::text("left over")),
        Outbound::Transmit(Transmit::from(vec![1, 2, 3])),
    ];
    let mut out = stale.clone();
    ws.handle_into(
        Event::Receive {
            now_ms: 5,
            bytes: bad,
        },
        &mut out,
    );
    assert_eq!(&out[..stale.len()], &stale[..], "the caller's entries stay");
    assert_eq!(&out[stale.len()..], &expected[..]);
    assert_eq!(ws.next_deadline(), None, "nothing deferred");
}

#[test]
fn a_client_refuses_urls_that_would_inject_into_its_request() {
    for bad in [
        "ws://h/a b",
        "ws://h/x\r\nX-Evil: 1",
        "ws://h\r\nX-Evil: 1/",
    ] {
        assert!(Url::parse(bad).is_err(), "{bad:?}");
    }
    let request = ClientRequest {
        url: Url {
            secure: false,
            host: "h".into(),
            port: 80,
            target: "/ HTTP/1.1\r\nX-Evil: 1\r\n".into(),
        },
        key: [1; 16],
        mask_seed: 1,
        headers: vec![],
    };
    assert!(Connection::client(no_deflate(), request).is_err());
}

#[test]
fn compression_is_off_by_default() {
    assert_eq!(Config::default().deflate, None);
}
