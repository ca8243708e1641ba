//! Bodies of the cargo-fuzz targets in `fuzz/`, kept here so that `cargo test` can replay their
//! corpora through the same code (`core/tests/fuzz_corpus.rs`). Not part of the API: compiled
//! only with the `fuzzing` feature, which `fuzz/Cargo.toml` and spool-core's own
//! dev-dependency on itself turn on.

use bytes::Bytes;

use crate::ws::{ClientRequest, Config, Connection, DeflateConfig, Event, Outbound, Url};

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::channel::{
    self, ChannelHandler, ClientId, Frame, HandleIn, Payload, Recipients, Router, Runtime, Socket,
    protocol,
};
use crate::ws::Text;

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
/// on or off, small, default or the largest limits) so the fuzzer reaches the inflater and the
/// limits.
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
    } else if flags & 8 != 0 {
        // The largest limits Config::validate accepts: arithmetic on peer-chosen lengths
        // meets them, and must not overflow (the fuzz build checks overflow).
        config.limits.max_frame_len = isize::MAX as usize;
        config.limits.max_message_len = isize::MAX as usize;
    }
    let open = || {
        let mut ws = Connection::server(config.clone()).ok()?;
        ws.handle(Event::Open { now_ms: 0 });
        ws.handle(Event::Receive {
            now_ms: 0,
            bytes: Bytes::from_static(REQUEST),
        });
        ws.handle(Event::Accept { now_ms: 0 });
        Some(ws)
    };
    let Some(mut ws) = open() else {
        return;
    };
    let (mut closed, mut disconnected) = (false, false);
    // The same reads as slices the shell keeps (`handle_read`), on a second connection.
    let Some(mut kept) = open() else {
        return;
    };
    let mut chunked = Vec::new();
    let mut chunked_kept = Vec::new();
    let mut whole = Vec::new();
    for (i, bytes) in chunks(data).enumerate() {
        whole.extend_from_slice(&bytes);
        kept.handle_read(i as u64, &bytes, &mut chunked_kept);
        let out = ws.handle(Event::Receive {
            now_ms: i as u64,
            bytes,
        });
        check(&out, &mut closed, &mut disconnected);
        chunked.extend(out);
    }
    // A failure deferred behind delivered messages falls due at once: the shell ticks.
    let end = |ws: &mut Connection, out: &mut Vec<Outbound>| {
        out.extend(ws.handle(Event::Tick { now_ms: 1 }));
        out.extend(ws.handle(Event::TransportClosed { now_ms: u64::MAX }));
    };
    let before = chunked.len();
    end(&mut ws, &mut chunked);
    check(&chunked[before..], &mut closed, &mut disconnected);
    assert!(closed, "every connection reports its end");
    end(&mut kept, &mut chunked_kept);
    assert_eq!(chunked, chunked_kept, "a kept read and its copy differ");
    // The same bytes in one read take the receive path's run of whole messages wherever the
    // reads above took the general path: both must deliver the same and end the same way.
    let Some(mut ws) = open() else {
        return;
    };
    let Some(mut kept) = open() else {
        return;
    };
    let mut at_once_kept = Vec::new();
    kept.handle_read(1, &whole, &mut at_once_kept);
    end(&mut kept, &mut at_once_kept);
    let mut at_once = ws.handle(Event::Receive {
        now_ms: 1,
        bytes: whole.into(),
    });
    end(&mut ws, &mut at_once);
    assert_eq!(at_once, at_once_kept, "a kept read and its copy differ");
    let (delivered, code) = outcome(&chunked);
    let (delivered_at_once, code_at_once) = outcome(&at_once);
    assert_eq!(
        delivered, delivered_at_once,
        "one read and many delivered differently"
    );
    // A compressed message can be wrong twice over (text that is not UTF-8 in a stream that is
    // not deflate): which fault is found first, and so the close code, depends on where the
    // reads split it. Uncompressed, a frame has one fault at most once its header passed.
    if flags & 1 == 0 {
        assert_eq!(code, code_at_once, "one read and many closed differently");
    }
}

/// What a connection delivered, and the code it closed with.
fn outcome(out: &[Outbound]) -> (Vec<&crate::ws::Message>, Vec<u16>) {
    let delivered = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Deliver(m) => Some(m),
            _ => None,
        })
        .collect();
    let closes = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Closed(info) => Some(info.code),
            _ => None,
        })
        .collect();
    (delivered, closes)
}

/// Arbitrary bytes as an upgrade request.
pub fn ws_server_handshake(data: &[u8]) {
    let config = Config {
        deflate: Some(DeflateConfig::default()), // so that offers are negotiated
        ..Config::default()
    };
    let Ok(mut ws) = Connection::server(config) else {
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
        deflate: Some(DeflateConfig::default()), // so that answers are checked
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

/// A channel like the demo's `room:*`, with more to reach: presence tracked, updated and
/// untracked on request, a stop, an intercepted event, and a broadcast from `terminate`. Every
/// meta carries its owner, so the fuzz targets can check that presences belong to subscribers.
struct FuzzRoom;

impl FuzzRoom {
    fn meta(socket: &Socket) -> Map<String, Value> {
        let mut meta = Map::new();
        meta.insert("owner".into(), json!(socket.client_id().0));
        meta
    }

    fn key(payload: &Payload) -> String {
        let payload = payload.to_value();
        let key = payload
            .as_ref()
            .and_then(|v| v.get("key"))
            .and_then(Value::as_str);
        key.unwrap_or("k").to_string()
    }
}

impl ChannelHandler for FuzzRoom {
    fn join(&self, _topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        let params = params.to_value().unwrap_or(Value::Null);
        if params.get("token").and_then(Value::as_str) == Some("bad") {
            return Err(json!({"reason": "unauthorized"}));
        }
        if let Some(user) = params
            .get("user")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            let meta = FuzzRoom::meta(socket);
            socket.track(user, meta);
        }
        Ok(json!({}))
    }

    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        match event {
            "shout" => {
                socket.broadcast("shout", payload.clone());
                HandleIn::NoReply
            }
            "shout_from" => {
                socket.broadcast_from("shout", payload.clone());
                HandleIn::NoReply
            }
            "secret" => {
                socket.broadcast("secret", payload.clone());
                HandleIn::NoReply
            }
            "ping" => HandleIn::ok(json!({"pong": payload.to_value().unwrap_or(Value::Null)})),
            "echo" => {
                socket.push("echo", payload.clone());
                HandleIn::ok(payload.clone())
            }
            "crash" => HandleIn::Crash {
                reason: "crash requested by the client".into(),
            },
            "bye" => HandleIn::Stop {
                reason: "bye".into(),
                reply: Some(("ok".into(), Payload::empty())),
            },
            "track" => {
                let meta = FuzzRoom::meta(socket);
                socket.track(FuzzRoom::key(payload), meta);
                HandleIn::NoReply
            }
            "update" => {
                let meta = FuzzRoom::meta(socket);
                socket.update_presence(FuzzRoom::key(payload), meta);
                HandleIn::NoReply
            }
            "untrack" => {
                socket.untrack(FuzzRoom::key(payload));
                HandleIn::NoReply
            }
            _ => HandleIn::NoReply,
        }
    }

    fn intercepts(&self) -> &[&str] {
        &["secret"]
    }

    fn handle_out(&self, _event: &str, payload: &Payload, socket: &mut Socket) -> Option<Payload> {
        socket
            .client_id()
            .0
            .is_multiple_of(2)
            .then(|| payload.clone())
    }

    fn terminate(&self, reason: &str, socket: &mut Socket) {
        // Only broadcasts survive terminate; the rest must be ignored.
        socket.broadcast_from("gone", json!({ "reason": reason }));
        socket.push("never", Payload::empty());
        let meta = FuzzRoom::meta(socket);
        socket.track("late", meta);
    }
}

fn fuzz_router() -> Router {
    Router::new().route("room:*", FuzzRoom)
}

/// `kind | one length byte per field | the fields | payload`, built by hand.
fn binary_wire(kind: u8, fields: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(fields.iter().map(|f| f.len() as u8));
    for f in fields {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// What the encoders make of a decoded message: JSON pushes and broadcasts decode back to the
/// same fields, binary ones have the serializer's layout (every field came from a length byte,
/// so every field fits one).
fn check_encodes(m: &protocol::Message) {
    let (jr, mr) = (m.join_ref.as_deref(), m.msg_ref.as_deref());
    let push = protocol::encode_push(jr, mr, &m.topic, &m.event, &m.payload);
    let reply = protocol::encode_reply(jr, mr, &m.topic, &m.event, &m.payload);
    let broadcast = protocol::encode_broadcast(&m.topic, &m.event, &m.payload);
    match &m.payload {
        Payload::Json(_) => {
            let push = push.expect("a JSON push always encodes");
            assert!(reply.is_some(), "a JSON reply always encodes");
            let broadcast = broadcast.expect("a JSON broadcast always encodes");
            let config = channel::Config::with_seed(0);
            let back = protocol::decode(&push, &config).expect("an encoded push decodes");
            assert_eq!(
                (&back.join_ref, &back.msg_ref, &back.topic, &back.event),
                (&m.join_ref, &m.msg_ref, &m.topic, &m.event)
            );
            // The payload's text is copied as it came, floats and all.
            assert_eq!(back.payload.json_text(), m.payload.json_text());
            let back = protocol::decode(&broadcast, &config).expect("an encoded broadcast decodes");
            assert_eq!((back.join_ref, back.msg_ref), (None, None));
            assert_eq!((&back.topic, &back.event), (&m.topic, &m.event));
        }
        Payload::Binary(b) => {
            let (jr, mr) = (jr.unwrap_or(""), mr.unwrap_or(""));
            let wire = |f: Option<Frame>| match f {
                Some(Frame::Binary(b)) => b.to_vec(),
                other => panic!("a binary payload encodes to a binary frame: {other:?}"),
            };
            assert_eq!(wire(push), binary_wire(0, &[jr, &m.topic, &m.event], b));
            assert_eq!(
                wire(reply),
                binary_wire(1, &[jr, mr, &m.topic, &m.event], b)
            );
            assert_eq!(wire(broadcast), binary_wire(2, &[&m.topic, &m.event], b));
        }
    }
}

/// Every frame goes to a client in `known`, and a socket is closed only for its own frame.
fn check_recipients(out: &[channel::Outbound], known: &BTreeSet<ClientId>) {
    for o in out {
        match o.delivery() {
            (Recipients::One(c), _) => assert!(known.contains(&c), "to unknown {c:?}: {o:?}"),
            (Recipients::Many(cs), _) => {
                for c in cs {
                    assert!(known.contains(c), "to unknown {c:?}: {o:?}");
                }
            }
            (Recipients::None, _) => {}
        }
        if let channel::Outbound::CloseSocket { client_id, .. } = o {
            assert!(known.contains(client_id), "close of unknown {client_id:?}");
        }
    }
}

/// Arbitrary bytes as a client's channel frame, as text (when UTF-8) and as binary: decoded,
/// re-encoded, and received by a runtime with the demo's channel where client 1 and 2 joined
/// `room:lobby` and client 3 joined nothing.
pub fn channel_decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let mut frames = vec![Frame::Binary(bytes.clone())];
    if let Ok(text) = Text::from_utf8(bytes) {
        frames.push(Frame::Text(text));
    }
    let mut rt = Runtime::new_single_node(fuzz_router(), channel::Config::with_seed(0));
    for (client, join) in [
        (1, r#"["1","1","room:lobby","phx_join",{"user":"a"}]"#),
        (2, r#"["1","1","room:lobby","phx_join",{"user":"b"}]"#),
        (2, r#"["2","2","room:x","phx_join",{}]"#),
    ] {
        rt.handle(channel::Event::Receive {
            now_ms: 0,
            client_id: ClientId(client),
            frame: Frame::Text(Text::from_static(join)),
        });
    }
    rt.handle(channel::Event::Connect {
        now_ms: 0,
        client_id: ClientId(3),
    });
    let known: BTreeSet<ClientId> = (1..=3).map(ClientId).collect();
    for frame in frames {
        let decoded = protocol::decode(&frame, rt.config());
        if let Ok(m) = &decoded {
            check_encodes(m);
        }
        for sender in [ClientId(1), ClientId(3)] {
            let out = rt.handle(channel::Event::Receive {
                now_ms: 1,
                client_id: sender,
                frame: frame.clone(),
            });
            check_recipients(&out, &known);
            let closed = out
                .iter()
                .any(|o| matches!(o, channel::Outbound::CloseSocket { .. }));
            assert_eq!(closed, decoded.is_err(), "closed iff undecodable: {out:?}");
            if closed {
                assert!(
                    matches!(&out[..], [channel::Outbound::CloseSocket { client_id, code: 1008, .. }] if *client_id == sender),
                    "{out:?}"
                );
            }
        }
    }
}

/// The topics `channel_events` joins, broadcasts to and crashes: three routed ones, one no
/// route matches, and one longer than the short topic limit some configurations set.
const FUZZ_TOPICS: [&str; 5] = ["room:0", "room:1", "room:2", "nope", "room:long-topic"];
/// Events clients push; the handler does something with each but the last.
const FUZZ_EVENTS: [&str; 12] = [
    "ping",
    "shout",
    "shout_from",
    "secret",
    "echo",
    "crash",
    "bye",
    "track",
    "update",
    "untrack",
    "phx_leave",
    "other",
];
const FUZZ_KEYS: [&str; 3] = ["a", "b", "c"];

/// Fuzz input read a byte at a time; zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn op(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.op().unwrap_or(0)
    }

    fn client(&mut self) -> ClientId {
        ClientId(u64::from(self.byte() % 4))
    }

    fn topic(&mut self) -> &'static str {
        FUZZ_TOPICS[self.byte() as usize % FUZZ_TOPICS.len()]
    }

    fn event(&mut self) -> &'static str {
        FUZZ_EVENTS[self.byte() as usize % FUZZ_EVENTS.len()]
    }

    /// A join_ref from a small set, so current and stale ones both come up; null on the high bit.
    fn join_ref(&mut self) -> Option<String> {
        let b = self.byte();
        (b & 0x80 == 0).then(|| (b % 4).to_string())
    }

    fn payload(&mut self) -> Payload {
        let b = self.byte();
        if b & 0x80 != 0 {
            Payload::Binary(Bytes::copy_from_slice(&[b]))
        } else {
            Payload::from(json!({ "key": FUZZ_KEYS[b as usize % FUZZ_KEYS.len()] }))
        }
    }

    fn slice(&mut self) -> &[u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (chunk, rest) = self.0.split_at(n);
        self.0 = rest;
        chunk
    }
}

fn json_ref(r: Option<&str>) -> Value {
    r.map_or(Value::Null, |r| Value::String(r.into()))
}

/// What must hold between any two events: the membership count is the sum of the topics'
/// subscribers, nobody subscribes twice or past the channel limit, every presence belongs to a
/// subscriber of its topic, and a crashed runtime holds nothing.
fn check_state(rt: &Runtime, topics: &BTreeSet<String>, connected: &BTreeSet<ClientId>) {
    let mut total = 0;
    let mut per_client = std::collections::BTreeMap::<ClientId, usize>::new();
    for topic in topics {
        let subs = rt.subscribers(topic);
        let unique: BTreeSet<ClientId> = subs.iter().copied().collect();
        assert_eq!(
            unique.len(),
            subs.len(),
            "a subscriber twice on {topic}: {subs:?}"
        );
        for c in &subs {
            assert!(connected.contains(c), "{c:?} on {topic} but disconnected");
            *per_client.entry(*c).or_default() += 1;
        }
        total += subs.len();
        for entry in rt.presences(topic) {
            assert!(!entry.metas.is_empty(), "a key without metas: {entry:?}");
            for meta in &entry.metas {
                let owner = meta.fields.get("owner").and_then(Value::as_u64);
                assert!(
                    owner.is_some_and(|o| unique.contains(&ClientId(o))),
                    "presence {} on {topic} of {owner:?}, not a subscriber of {subs:?}",
                    entry.key
                );
            }
        }
        if rt.crashed() {
            assert!(subs.is_empty() && rt.presences(topic).is_empty());
        }
    }
    assert_eq!(rt.membership_count(), total, "memberships over {topics:?}");
    let limit = rt.config().max_channels_per_socket;
    assert!(per_client.values().all(|n| *n <= limit), "{per_client:?}");
    if rt.crashed() {
        assert_eq!(rt.membership_count(), 0, "memberships while crashed");
    }
}

/// A sequence of operations on a runtime with four clients, read from the bytes: joins, leaves
/// and pushes as frames (text and binary, current, stale and null join_refs), the same as direct
/// events, heartbeats, connects and disconnects, broadcasts, crashes of a channel and of the
/// whole runtime, restarts, and frames of fuzzer-chosen bytes. The first byte picks the
/// configuration, so the channel, presence and topic limits are reached. The state is checked
/// after every step, and every outbound goes to a client that is connected.
pub fn channel_events(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let mut config = channel::Config::with_seed(0);
    if flags & 1 != 0 {
        config.max_channels_per_socket = 2;
    }
    if flags & 2 != 0 {
        config.max_presences_per_topic = 2;
    }
    if flags & 4 != 0 {
        config.presence_state_on_join = false;
    }
    if flags & 8 != 0 {
        config.max_topic_len = 8;
    }
    let mut rt = Runtime::new_single_node(fuzz_router(), config);
    let mut topics: BTreeSet<String> = FUZZ_TOPICS.iter().map(|t| t.to_string()).collect();
    let mut connected = BTreeSet::new();
    let mut now_ms = 0;
    while let Some(op) = input.op() {
        now_ms += 1;
        let msg_ref = now_ms.to_string();
        let (client, event) = match op % 14 {
            0 => {
                let (c, topic) = (input.client(), input.topic());
                let jr = input.join_ref();
                let b = input.byte();
                let params = match b % 5 {
                    0 => json!({}),
                    1 => json!({"token": "bad"}),
                    k => json!({ "user": FUZZ_KEYS[k as usize - 2] }),
                };
                let text = json!([json_ref(jr.as_deref()), msg_ref, topic, "phx_join", params]);
                (Some(c), text_frame(now_ms, c, &text))
            }
            1 => {
                let (c, topic) = (input.client(), input.topic());
                let jr = input.join_ref();
                let text = json!([json_ref(jr.as_deref()), msg_ref, topic, "phx_leave", {}]);
                (Some(c), text_frame(now_ms, c, &text))
            }
            2 => {
                let (c, topic, event) = (input.client(), input.topic(), input.event());
                let jr = input.join_ref();
                let key = FUZZ_KEYS[input.byte() as usize % FUZZ_KEYS.len()];
                let text = json!([json_ref(jr.as_deref()), msg_ref, topic, event, {"key": key}]);
                (Some(c), text_frame(now_ms, c, &text))
            }
            3 => {
                // A binary push: phoenix.js's serializer always sends both refs.
                let (c, topic, event) = (input.client(), input.topic(), input.event());
                let jr = input.join_ref().unwrap_or_default();
                let payload = [input.byte()];
                let wire = binary_wire(0, &[&jr, &msg_ref, topic, event], &payload);
                let frame = Frame::Binary(wire.into());
                (Some(c), receive(now_ms, c, frame))
            }
            4 => {
                let c = input.client();
                let text = json!([null, msg_ref, "phoenix", "heartbeat", {}]);
                (Some(c), text_frame(now_ms, c, &text))
            }
            5 => {
                let c = input.client();
                let event = channel::Event::Connect {
                    now_ms,
                    client_id: c,
                };
                (Some(c), event)
            }
            6 => {
                let c = input.client();
                connected.remove(&c);
                let event = channel::Event::Disconnect {
                    now_ms,
                    client_id: c,
                };
                (None, event)
            }
            7 => {
                let (topic, event) = (input.topic(), input.event());
                let b = input.byte();
                let except = (b & 4 != 0).then_some(ClientId(u64::from(b % 4)));
                let event = channel::Event::Broadcast {
                    now_ms,
                    except,
                    topic: topic.into(),
                    event: event.into(),
                    payload: input.payload(),
                };
                (None, event)
            }
            8 => {
                let (c, topic) = (input.client(), input.topic());
                let event = channel::Event::Crash {
                    now_ms,
                    client_id: Some(c),
                    topic: Some(topic.into()),
                    reason: "fuzz".into(),
                };
                (None, event)
            }
            9 => {
                let event = channel::Event::Crash {
                    now_ms,
                    client_id: None,
                    topic: None,
                    reason: "fuzz".into(),
                };
                (None, event)
            }
            10 => (None, channel::Event::Restart { now_ms }),
            11 => {
                let (c, kind) = (input.client(), input.byte());
                let raw = Bytes::copy_from_slice(input.slice());
                let frame = match Text::from_utf8(raw) {
                    Ok(text) if kind & 1 == 0 => Frame::Text(text),
                    Ok(text) => Frame::Binary(text.into_bytes()),
                    Err(raw) => Frame::Binary(raw),
                };
                if let Ok(m) = protocol::decode(&frame, rt.config()) {
                    topics.insert(m.topic);
                }
                (Some(c), receive(now_ms, c, frame))
            }
            12 => {
                let (c, topic) = (input.client(), input.topic());
                let join_ref = input.join_ref().unwrap_or_default();
                let b = input.byte();
                let params = json!({ "user": FUZZ_KEYS[b as usize % FUZZ_KEYS.len()] });
                let msg_ref = Some(msg_ref);
                // A rejoin is a join (phoenix.js sends phx_join both times).
                let event = channel::Event::Join {
                    now_ms,
                    client_id: c,
                    topic: topic.into(),
                    join_ref,
                    msg_ref,
                    params,
                };
                (Some(c), event)
            }
            _ => {
                let (c, topic) = (input.client(), input.topic());
                let join_ref = input.join_ref();
                let b = input.byte();
                let event = if b & 0x80 == 0 {
                    channel::Event::Leave {
                        now_ms,
                        client_id: c,
                        topic: topic.into(),
                        join_ref,
                        msg_ref: Some(msg_ref),
                    }
                } else {
                    channel::Event::Push {
                        now_ms,
                        client_id: c,
                        topic: topic.into(),
                        event: FUZZ_EVENTS[b as usize % FUZZ_EVENTS.len()].into(),
                        join_ref,
                        msg_ref: Some(msg_ref),
                        payload: input.payload(),
                    }
                };
                (Some(c), event)
            }
        };
        if let Some(c) = client {
            connected.insert(c);
        }
        let out = rt.handle(event);
        check_recipients(&out, &connected);
        check_state(&rt, &topics, &connected);
    }
}

fn receive(now_ms: u64, client_id: ClientId, frame: Frame) -> channel::Event {
    channel::Event::Receive {
        now_ms,
        client_id,
        frame,
    }
}

fn text_frame(now_ms: u64, client_id: ClientId, message: &Value) -> channel::Event {
    receive(now_ms, client_id, Frame::Text(message.to_string().into()))
}

/// `cluster_receive`: lines of bytes, each one bus message from some other node, fed to a
/// cluster node that has a subscriber watching the topic of the demo's room, with time moving
/// on between them (so replicas go down and are forgotten too). Checks: nothing panics; every
/// message that decodes encodes back to itself; and the presence diffs the node sent its
/// subscriber add up to the presences it holds.
pub fn cluster_receive(data: &[u8]) {
    use crate::channel::{self, ClientId, Event, Frame, Outbound, Runtime};
    use crate::cluster::{Options, wire};
    use std::collections::{BTreeMap, BTreeSet};

    let options = Options {
        heartbeat_interval_ms: 10,
        down_after_ms: 100,
        permdown_after_ms: 1_000,
        max_replicas: 8,
        max_out_of_order: 16,
        max_message_len: 1 << 16,
        ..Options::new("fuzz", "me", 1)
    };
    // The watcher says nothing while the fuzzer's clock runs: it must not be dropped as silent.
    let config = channel::Config {
        heartbeat_timeout_ms: None,
        ..channel::Config::with_seed(3)
    };
    let Ok(mut rt) = Runtime::new_cluster_ready(options, channel::demo::router(), config) else {
        return;
    };
    let watcher = ClientId(1);
    let mut view: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let apply = |view: &mut BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
                 out: Vec<Outbound>| {
        for o in out {
            if let Outbound::PresenceDiff {
                topic,
                diff,
                recipients,
                ..
            } = o
            {
                if !recipients.contains(&watcher) {
                    continue;
                }
                let t = view.entry(topic).or_default();
                for e in diff.joins {
                    let refs = t.entry(e.key).or_default();
                    refs.extend(e.metas.into_iter().map(|m| m.phx_ref));
                }
                for e in diff.leaves {
                    if let Some(refs) = t.get_mut(&e.key) {
                        for m in e.metas {
                            refs.remove(&m.phx_ref);
                        }
                        if refs.is_empty() {
                            t.remove(&e.key);
                        }
                    }
                }
            }
        }
    };
    let mut topics = BTreeSet::new();
    let mut now_ms = 0;
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line).into_owned();
        if let Ok(m) = wire::decode(&text, 1 << 16) {
            let again = wire::encode(&m);
            assert_eq!(wire::decode(&again, usize::MAX).as_ref(), Ok(&m), "{again}");
            // Watch every topic the message names, so its diffs have a recipient.
            let mut named: Vec<String> = Vec::new();
            match &m.body {
                wire::Body::Delta { ops } => {
                    for op in ops {
                        if let wire::Change::Add { topic, .. } = &op.change {
                            named.push(topic.clone());
                        }
                    }
                }
                wire::Body::State { entries, .. } => {
                    named.extend(entries.iter().map(|e| e.topic.clone()));
                }
                _ => {}
            }
            for topic in named {
                if topics.len() < 8 && topics.insert(topic.clone()) {
                    let join = serde_json::json!(["1", "1", topic, "phx_join", {}]).to_string();
                    let out = rt.handle(Event::Receive {
                        now_ms,
                        client_id: watcher,
                        frame: Frame::Text(join.into()),
                    });
                    let joined = out
                        .iter()
                        .any(|o| matches!(o, Outbound::Reply { status, .. } if status == "ok"));
                    if !joined {
                        topics.remove(&topic);
                    }
                    // The join's presence_state starts the view of that topic afresh.
                    for o in &out {
                        if let Outbound::PushMessage {
                            topic,
                            event,
                            payload,
                            ..
                        } = o
                            && event == "presence_state"
                        {
                            let state: presence_state::State = payload.parse().unwrap_or_default();
                            view.insert(topic.clone(), state.refs());
                        }
                    }
                }
            }
        }
        now_ms += (i as u64 % 7) * 20;
        let out = rt.handle(Event::ClusterReceive {
            now_ms,
            data: text.into(),
        });
        apply(&mut view, out);
        let out = rt.handle(Event::Tick { now_ms });
        apply(&mut view, out);
    }
    for topic in &topics {
        let held: BTreeMap<String, BTreeSet<String>> = (rt.presences(topic).into_iter())
            .map(|e| (e.key, e.metas.into_iter().map(|m| m.phx_ref).collect()))
            .collect();
        let seen = view.get(topic).cloned().unwrap_or_default();
        assert_eq!(seen, held, "the diffs add up to the presences of {topic}");
    }
}

mod presence_state {
    use std::collections::{BTreeMap, BTreeSet};

    /// A `presence_state` payload: key -> {"metas": [{"phx_ref": ..}, ..]}.
    #[derive(Default, serde::Deserialize)]
    pub(super) struct State(BTreeMap<String, Metas>);

    #[derive(serde::Deserialize)]
    struct Metas {
        metas: Vec<Ref>,
    }

    #[derive(serde::Deserialize)]
    struct Ref {
        phx_ref: String,
    }

    impl State {
        pub(super) fn refs(self) -> BTreeMap<String, BTreeSet<String>> {
            (self.0.into_iter())
                .map(|(k, m)| (k, m.metas.into_iter().map(|r| r.phx_ref).collect()))
                .collect()
        }
    }
}
