//! Scripted conversations: events in, outbounds rendered one a line, snapshotted with insta.
//! The "server" is hand-built bytes; every state of the machine is visited.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;

use super::*;
use crate::ws::{self, Message, Url};

const KEY: [u8; 16] = [7; 16];

fn config(url: &str) -> Config {
    let mut config = Config::new(Url::parse(url).unwrap());
    config.ws.ping_interval_ms = Some(1_000);
    config.ws.pong_timeout_ms = Some(500);
    config.connect_timeout_ms = 2_000;
    config.jitter_seed = 42;
    config
}

/// A client and the transcript of everything it was given and answered.
struct Script {
    client: Client,
    log: String,
}

impl Script {
    fn new(config: Config) -> Script {
        Script {
            client: Client::new(config).unwrap(),
            log: String::new(),
        }
    }

    #[track_caller]
    fn step(&mut self, event: Event) -> Vec<Outbound> {
        let _ = writeln!(self.log, "> {}", render_event(&event));
        let out = self.client.handle(event);
        for o in &out {
            let _ = writeln!(self.log, "  {}", render_outbound(o));
        }
        let _ = writeln!(
            self.log,
            "  [{}; queued {}; next deadline {:?}]",
            self.client.state().name(),
            self.client.queued(),
            self.client.next_deadline()
        );
        out
    }

    fn at(&mut self, now_ms: u64, event: impl FnOnce(u64) -> Event) -> Vec<Outbound> {
        self.step(event(now_ms))
    }

    /// Connect (no proxy, no TLS) and complete the handshake at `now_ms`.
    fn open(&mut self, now_ms: u64) {
        self.step(Event::Connected {
            now_ms,
            key: KEY,
            mask_seed: 1,
        });
        self.step(Event::Receive {
            now_ms,
            bytes: answer_101(),
        });
        assert!(self.client.is_open(), "{}", self.log);
    }
}

fn answer_101() -> Bytes {
    let key = base64::engine::general_purpose::STANDARD.encode(KEY);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nX-Served-By: test\r\n\r\n",
        ws::accept_key(&key)
    )
    .into()
}

/// An unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, payload.len() as u8];
    f.extend_from_slice(payload);
    f.into()
}

fn text(s: &str) -> Message {
    Message::text(s)
}

fn render_event(event: &Event) -> String {
    match event {
        Event::Receive { now_ms, bytes } => format!("{now_ms} receive {}", render_bytes(bytes)),
        Event::Send { now_ms, message } => format!("{now_ms} send {}", render_message(message)),
        other => {
            let json = serde_json::to_string(other).unwrap();
            format!("{} {json}", other.now_ms())
        }
    }
}

fn render_outbound(o: &Outbound) -> String {
    match o {
        Outbound::Transmit(t) => {
            let mut bytes = t.head().to_vec();
            bytes.extend_from_slice(t.body());
            format!("transmit {}", render_bytes(&bytes))
        }
        Outbound::Deliver(m) => format!("deliver {}", render_message(m)),
        other => serde_json::to_string(other).unwrap(),
    }
}

fn render_message(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("text {:?}", t.as_str()),
        Message::Binary(b) => format!("binary {b:?}"),
        Message::Ping(b) => format!("ping {b:?}"),
        Message::Pong(b) => format!("pong {b:?}"),
    }
}

/// HTTP heads as escaped text; frames decoded (client frames unmasked).
fn render_bytes(bytes: &[u8]) -> String {
    if bytes.first().is_some_and(u8::is_ascii_alphabetic) {
        return format!("{:?}", String::from_utf8_lossy(bytes));
    }
    let mut rendered = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let masked = rest[1] & 0x80 != 0;
        let len = usize::from(rest[1] & 0x7f);
        assert!(len < 126, "test frames are short");
        let start = 2 + if masked { 4 } else { 0 };
        let mut payload = rest[start..start + len].to_vec();
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= rest[2 + i % 4];
            }
        }
        let name = match opcode {
            1 => "text",
            2 => "binary",
            8 => "close",
            9 => "ping",
            10 => "pong",
            _ => "frame",
        };
        let mask = if masked { "masked " } else { "" };
        rendered.push(format!(
            "{mask}{name} {:?}",
            String::from_utf8_lossy(&payload)
        ));
        rest = &rest[start + len..];
    }
    rendered.join(", ")
}

#[test]
fn connects_sends_receives_and_closes() {
    let mut s = Script::new(config("ws://example.com:8080/chat?x=1"));
    s.at(0, |now_ms| Event::Send {
        now_ms,
        message: text("queued before start"),
    });
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(10);
    s.at(20, |now_ms| Event::Receive {
        now_ms,
        bytes: frame(10, b"spool\0\0\0\0\0\0\0\0"),
    });
    s.at(30, |now_ms| Event::Send {
        now_ms,
        message: text("hello"),
    });
    s.at(40, |now_ms| Event::Receive {
        now_ms,
        bytes: frame(1, b"hi back"),
    });
    s.at(50, |now_ms| Event::Close {
        now_ms,
        code: 1000,
        reason: "bye".into(),
    });
    s.at(60, |now_ms| Event::Send {
        now_ms,
        message: text("too late"),
    });
    s.at(70, |now_ms| Event::Receive {
        now_ms,
        bytes: frame(8, &[0x03, 0xe8]),
    });
    insta::assert_snapshot!(s.log);
}

#[test]
fn refused_attempts_back_off_then_give_up() {
    let mut c = config("ws://127.0.0.1:9/");
    c.backoff = Backoff {
        initial_ms: 100,
        max_ms: 300,
        factor: 2,
        jitter_percent: 20,
        max_attempts: Some(4),
    };
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    for _ in 0..4 {
        let now_ms = s.client.next_deadline().unwrap_or(0);
        s.step(Event::Tick { now_ms: now_ms - 1 }); // early: nothing
        s.step(Event::ConnectFailed {
            now_ms,
            reason: "connection refused".into(),
        });
        if let Some(at) = s.client.next_deadline() {
            s.step(Event::Tick { now_ms: at });
        }
    }
    assert_eq!(s.client.state(), State::Stopped);
    insta::assert_snapshot!(s.log);
}

#[test]
fn each_phase_of_an_attempt_times_out() {
    let mut c = config("wss://secure.example/");
    c.proxy = Some(Proxy::parse("http://proxy.local:3128").unwrap());
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    s.at(2_000, |now_ms| Event::Tick { now_ms }); // connecting
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.at(at, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(at + 2_000, |now_ms| Event::Tick { now_ms }); // proxying
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.at(at, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(at, |now_ms| Event::Receive {
        now_ms,
        bytes: "HTTP/1.1 200 Connection established\r\n\r\n".into(),
    });
    s.at(at + 2_000, |now_ms| Event::Tick { now_ms }); // securing
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.at(at, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(at, |now_ms| Event::Receive {
        now_ms,
        bytes: "HTTP/1.1 200 OK\r\n\r\n".into(),
    });
    s.at(at + 1, |now_ms| Event::Secured { now_ms });
    s.at(at + 2_000, |now_ms| Event::Tick { now_ms }); // upgrading
    insta::assert_snapshot!(s.log);
}

#[test]
fn proxy_refusals_are_typed_and_retried() {
    let mut c = config("ws://example.com/");
    c.proxy = Some(Proxy::parse("http://user:pw@proxy.local:3128").unwrap());
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    for answer in [
        "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
        "HTTP/1.1 403 Forbidden\r\n\r\n",
        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.0 503 Unavailable\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        s.at(s.client.now(), |now_ms| Event::Connected {
            now_ms,
            key: KEY,
            mask_seed: 1,
        });
        s.at(s.client.now(), |now_ms| Event::Receive {
            now_ms,
            bytes: answer.into(),
        });
        let now_ms = s.client.next_deadline().unwrap();
        s.step(Event::Tick { now_ms });
    }
    // Then the tunnel opens, its answer in two pieces.
    let now_ms = s.client.now();
    s.step(Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.step(Event::Receive {
        now_ms,
        bytes: "HTTP/1.1 200 Conn".into(),
    });
    s.step(Event::Receive {
        now_ms,
        bytes: "ection established\r\n\r\n".into(),
    });
    s.step(Event::Receive {
        now_ms,
        bytes: answer_101(),
    });
    assert!(s.client.is_open());
    insta::assert_snapshot!(s.log);
}

#[test]
fn tls_after_the_tunnel_and_a_tls_failure() {
    let mut s = Script::new(config("wss://secure.example:8443/"));
    s.at(0, |now_ms| Event::Start { now_ms });
    s.at(1, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(2, |now_ms| Event::TlsFailed {
        now_ms,
        reason: "invalid peer certificate".into(),
    });
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.at(at + 1, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(at + 2, |now_ms| Event::Secured { now_ms });
    s.at(at + 3, |now_ms| Event::Receive {
        now_ms,
        bytes: answer_101(),
    });
    insta::assert_snapshot!(s.log);
}

#[test]
fn a_silent_peer_is_declared_dead_at_the_pong_deadline() {
    let mut s = Script::new(config("ws://example.com/"));
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(0);
    s.at(999, |now_ms| Event::Tick { now_ms }); // early
    s.at(1_000, |now_ms| Event::Tick { now_ms }); // ping
    s.at(1_200, |now_ms| Event::Send {
        now_ms,
        message: text("into the void"),
    });
    s.at(1_500, |now_ms| Event::Tick { now_ms }); // pong deadline
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.open(at + 5);
    insta::assert_snapshot!(s.log);
}

#[test]
fn the_queue_drops_newest_when_full_and_survives_reconnects_in_order() {
    let mut c = config("ws://example.com/");
    c.queue_max = 3;
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(0);
    for (now_ms, line) in [(10, "a"), (11, "b")] {
        s.step(Event::Send {
            now_ms,
            message: text(line),
        });
    }
    // The connection resets before the pong: a and b are unconfirmed.
    s.at(20, |now_ms| Event::TransportClosed { now_ms });
    for (now_ms, line) in [(30, "c"), (31, "d"), (32, "e")] {
        s.step(Event::Send {
            now_ms,
            message: text(line),
        });
    }
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    s.open(at + 1);
    s.at(at + 2, |now_ms| Event::Receive {
        now_ms,
        bytes: frame(10, b"spool\0\0\0\0\0\0\0\x01"),
    });
    assert_eq!(s.client.dropped(), 2);
    insta::assert_snapshot!(s.log);
}

#[test]
fn server_close_reconnects_and_calls_time_out_or_reply_once() {
    let mut s = Script::new(config("ws://example.com/"));
    s.at(0, |now_ms| Event::Call {
        now_ms,
        id: 1,
        timeout_ms: Some(100),
    });
    s.at(0, |now_ms| Event::Call {
        now_ms,
        id: 2,
        timeout_ms: None,
    });
    s.at(0, |now_ms| Event::Call {
        now_ms,
        id: 2,
        timeout_ms: None,
    });
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(0);
    s.at(50, |now_ms| Event::Reply { now_ms, id: 2 });
    s.at(100, |now_ms| Event::Tick { now_ms });
    s.at(101, |now_ms| Event::Reply { now_ms, id: 1 });
    s.at(200, |now_ms| Event::Receive {
        now_ms,
        bytes: frame(8, b"\x03\xe9restart"),
    });
    s.at(210, |now_ms| Event::Call {
        now_ms,
        id: 3,
        timeout_ms: None,
    });
    s.at(220, |now_ms| Event::Close {
        now_ms,
        code: 1000,
        reason: String::new(),
    });
    insta::assert_snapshot!(s.log);
}

#[test]
fn the_rate_limit_spaces_sends() {
    let mut c = config("ws://example.com/");
    c.rate_limit = Some(RateLimit {
        burst: 2,
        per_second: 10,
    });
    c.resend_unconfirmed = false;
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(0);
    for (i, line) in ["1", "2", "3", "4"].into_iter().enumerate() {
        s.step(Event::Send {
            now_ms: i as u64,
            message: text(line),
        });
    }
    s.at(50, |now_ms| Event::Tick { now_ms });
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    let at = s.client.next_deadline().unwrap();
    s.at(at, |now_ms| Event::Tick { now_ms });
    insta::assert_snapshot!(s.log);
}

#[test]
fn a_refused_handshake_is_a_failure_and_close_while_waiting_stops() {
    let mut s = Script::new(config("ws://example.com/"));
    s.at(0, |now_ms| Event::Start { now_ms });
    s.at(1, |now_ms| Event::Connected {
        now_ms,
        key: KEY,
        mask_seed: 1,
    });
    s.at(2, |now_ms| Event::Receive {
        now_ms,
        bytes: "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into(),
    });
    s.at(3, |now_ms| Event::Close {
        now_ms,
        code: 1000,
        reason: String::new(),
    });
    s.at(4, |now_ms| Event::Start { now_ms });
    insta::assert_snapshot!(s.log);
}

#[test]
fn hold_until_ready_sends_the_join_first_then_the_queue() {
    let mut c = config("ws://example.com/socket/websocket");
    c.hold_until_ready = true;
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::SendNow {
        now_ms,
        message: text("not connected: nowhere"),
    });
    s.at(0, |now_ms| Event::Send {
        now_ms,
        message: text("queued"),
    });
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(1);
    s.at(2, |now_ms| Event::SendNow {
        now_ms,
        message: text("join"),
    });
    s.at(3, |now_ms| Event::Ready { now_ms });
    insta::assert_snapshot!(s.log);
}

#[test]
fn replies_confirm_with_confirm_by_reply_and_a_rewind_sends_the_unanswered_again() {
    let mut c = config("ws://example.com/socket/websocket");
    c.hold_until_ready = true;
    c.confirm_by_reply = true;
    c.ws.ping_interval_ms = None; // only confirming pings could appear: there must be none
    let mut s = Script::new(c);
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(1);
    s.at(2, |now_ms| Event::Ready { now_ms });
    let transmits = |out: &[Outbound]| {
        out.iter()
            .filter(|o| matches!(o, Outbound::Transmit(_)))
            .count()
    };
    let mut sent = 0;
    for m in ["a", "b", "c"] {
        sent += transmits(&s.at(3, |now_ms| Event::Send {
            now_ms,
            message: text(m),
        }));
    }
    assert_eq!((sent, s.client.queued()), (3, 3), "sent, no ping, all held");
    s.at(4, |now_ms| Event::Confirmed { now_ms, count: 1 });
    assert_eq!(s.client.queued(), 2, "a answered");
    // The channel crashed: b and c wait for the rejoin, behind nothing, ahead of d.
    s.at(5, |now_ms| Event::Rewind { now_ms });
    let held = s.at(5, |now_ms| Event::Send {
        now_ms,
        message: text("d"),
    });
    assert_eq!(transmits(&held), 0, "held until ready");
    let resent = s.at(6, |now_ms| Event::Ready { now_ms });
    assert_eq!(transmits(&resent), 3, "b, c, d");
    let out = s.at(7, |now_ms| Event::Confirmed { now_ms, count: 9 });
    assert_eq!(out, [Outbound::Drained]);
    insta::assert_snapshot!(s.log);
}

#[test]
fn without_confirm_by_reply_a_confirmed_event_changes_nothing() {
    let mut s = Script::new(config("ws://example.com/"));
    s.at(0, |now_ms| Event::Start { now_ms });
    s.open(1);
    s.at(2, |now_ms| Event::Send {
        now_ms,
        message: text("a"),
    });
    s.at(3, |now_ms| Event::Confirmed { now_ms, count: 1 });
    assert_eq!(s.client.queued(), 1, "only the pong confirms");
}

#[test]
fn events_and_outbounds_round_trip_through_json() {
    let events = [
        Event::Connected {
            now_ms: 1,
            key: KEY,
            mask_seed: 9,
        },
        Event::Receive {
            now_ms: 2,
            bytes: Bytes::from_static(b"\x81\x01a"),
        },
        Event::Send {
            now_ms: 3,
            message: text("x"),
        },
    ];
    for e in events {
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
    let o = Outbound::Failed(Error::Proxy {
        proxy: ProxyError::AuthRequired,
    });
    let json = serde_json::to_string(&o).unwrap();
    assert_eq!(serde_json::from_str::<Outbound>(&json).unwrap(), o);
    let c = config("ws://example.com/");
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
}
