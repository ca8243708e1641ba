//! Scripted tests of the channel runtime over the wire format phoenix.js speaks.

use serde_json::{Value, json};

use super::*;

/// The demo channel of `spool serve`, plus two things the tests need: a refused join
/// (`token: "bad"`) and a graceful stop (`bye`).
struct Room;

impl ChannelHandler for Room {
    fn join(&self, topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        #[derive(serde::Deserialize)]
        struct Params {
            token: Option<String>,
        }
        if params
            .parse::<Params>()
            .is_ok_and(|p| p.token.as_deref() == Some("bad"))
        {
            return Err(json!({"reason": "unauthorized"}));
        }
        demo::Room.join(topic, params, socket)
    }

    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        match event {
            "bye" => HandleIn::Stop {
                reason: "bye".into(),
                reply: Some(("ok".into(), Payload::empty())),
            },
            _ => demo::Room.handle_in(event, payload, socket),
        }
    }
}

fn runtime() -> Runtime {
    Runtime::new_single_node(Router::new().route("room:*", Room), Config::with_seed(1))
}

fn send(rt: &mut Runtime, client: u64, text: &str) -> Vec<Outbound> {
    rt.handle(Event::Receive {
        now_ms: 0,
        client_id: ClientId(client),
        frame: Frame::Text(text.into()),
    })
}

/// Every outbound as `to <clients>: <frame text>`, or its label: easy to assert in order.
fn wire(out: &[Outbound]) -> Vec<String> {
    out.iter()
        .map(|o| match o.delivery() {
            (Recipients::One(c), Some(Frame::Text(t))) => format!("to {}: {t}", c.0),
            (Recipients::Many(cs), Some(Frame::Text(t))) => {
                let ids: Vec<String> = cs.iter().map(|c| c.0.to_string()).collect();
                format!("to {}: {t}", ids.join(","))
            }
            _ => format!(
                "{} {}",
                Runtime::outbound_label(o),
                serde_json::to_string(o).unwrap()
            ),
        })
        .collect()
}

#[test]
fn join_replies_then_pushes_presence_state_then_broadcasts_the_diff() {
    let mut rt = runtime();
    let out = send(
        &mut rt,
        1,
        r#"["1","1","room:lobby","phx_join",{"user":"alice","name":"Alice"}]"#,
    );
    assert_eq!(
        wire(&out),
        [
            r#"to 1: ["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            r#"to 1: [null,null,"room:lobby","presence_diff",{"joins":{"alice":{"metas":[{"name":"Alice","phx_ref":"spool-1"}]}},"leaves":{}}]"#,
            r#"to 1: ["1",null,"room:lobby","presence_state",{"alice":{"metas":[{"name":"Alice","phx_ref":"spool-1"}]}}]"#,
        ]
    );
    assert_eq!(
        (rt.membership_count(), rt.subscribers("room:lobby")),
        (1, vec![ClientId(1)])
    );
}

#[test]
fn push_reply_broadcast_heartbeat_and_unmatched_topics() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:a","phx_join",{}]"#);
    send(&mut rt, 2, r#"["7","7","room:a","phx_join",{}]"#);
    assert_eq!(
        wire(&send(&mut rt, 1, r#"["1","2","room:a","ping",{"n":1}]"#)),
        [r#"to 1: ["1","2","room:a","phx_reply",{"status":"ok","response":{"pong":{"n":1}}}]"#]
    );
    let out = send(&mut rt, 2, r#"["7","8","room:a","shout",{"body":"hi"}]"#);
    assert_eq!(
        wire(&out),
        [r#"to 1,2: [null,null,"room:a","shout",{"body":"hi"}]"#]
    );
    assert_eq!(
        wire(&send(&mut rt, 1, r#"[null,"3","phoenix","heartbeat",{}]"#)),
        [r#"to 1: [null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]"#]
    );
    assert_eq!(
        wire(&send(&mut rt, 1, r#"["4","4","nope:1","phx_join",{}]"#)),
        [
            r#"to 1: [null,"4","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ]
    );
    assert_eq!(
        wire(&send(&mut rt, 1, r#"["9","5","room:other","ping",{}]"#)),
        [
            r#"to 1: [null,"5","room:other","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ]
    );
}

#[test]
fn a_broadcast_is_encoded_once_for_all_subscribers() {
    let mut rt = runtime();
    for c in 0..100 {
        send(&mut rt, c, r#"["1","1","room:big","phx_join",{}]"#);
    }
    let out = rt.handle(Event::Broadcast {
        now_ms: 0,
        except: Some(ClientId(5)),
        topic: "room:big".into(),
        event: "news".into(),
        payload: json!({"x": 1}).into(),
    });
    let [Outbound::BroadcastMessage { recipients, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(recipients.len(), 99);
    assert!(!recipients.contains(&ClientId(5)));
}

#[test]
fn leave_acks_then_closes_and_presence_leaves() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:l","phx_join",{"user":"a"}]"#);
    send(&mut rt, 2, r#"["1","1","room:l","phx_join",{"user":"b"}]"#);
    let out = send(&mut rt, 1, r#"["1","2","room:l","phx_leave",{}]"#);
    assert_eq!(
        wire(&out),
        [
            r#"to 1: ["1","2","room:l","phx_reply",{"status":"ok","response":{}}]"#,
            r#"to 1: ["1","1","room:l","phx_close",{}]"#,
            r#"to 2: [null,null,"room:l","presence_diff",{"joins":{},"leaves":{"a":{"metas":[{"phx_ref":"spool-1"}]}}}]"#,
        ]
    );
    // Leaving again, or leaving a topic never joined: ok, as Phoenix answers.
    assert_eq!(
        wire(&send(&mut rt, 1, r#"["1","3","room:l","phx_leave",{}]"#)),
        [r#"to 1: ["1","3","room:l","phx_reply",{"status":"ok","response":{}}]"#]
    );
    assert_eq!(rt.presences("room:l").len(), 1);
}

#[test]
fn duplicate_join_closes_the_old_channel_and_stale_refs_are_dropped() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:d","phx_join",{"user":"a"}]"#);
    let out = send(&mut rt, 1, r#"["5","5","room:d","phx_join",{"user":"a"}]"#);
    assert_eq!(wire(&out)[0], r#"to 1: ["1","1","room:d","phx_close",{}]"#);
    assert!(
        wire(&out)[1].starts_with(r#"to 1: ["5","5","room:d","phx_reply",{"status":"ok""#),
        "{out:?}"
    );
    assert_eq!(
        (rt.membership_count(), rt.presences("room:d")[0].metas.len()),
        (1, 1)
    );
    let out = send(&mut rt, 1, r#"["1","6","room:d","ping",{}]"#);
    assert_eq!(
        wire(&out),
        [r#"system {"outbound":"system","label":"stale message dropped: room:d ping"}"#]
    );
    // A null join_ref is accepted (phoenix 1.8.12 does the same).
    let out = send(&mut rt, 1, r#"[null,"7","room:d","ping",{}]"#);
    assert!(wire(&out)[0].contains(r#""status":"ok""#));
}

#[test]
fn crash_sends_phx_error_and_the_client_can_rejoin() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:c","phx_join",{"user":"c"}]"#);
    let out = send(&mut rt, 1, r#"["1","2","room:c","crash",{}]"#);
    let w = wire(&out);
    assert_eq!(
        w[0],
        r#"to 1: ["1","1","room:c","phx_error",{"reason":"channel_crash"}]"#
    );
    assert_eq!(
        (rt.membership_count(), rt.presences("room:c").len()),
        (0, 0)
    );
    let out = send(&mut rt, 1, r#"["3","3","room:c","phx_join",{"user":"c"}]"#);
    assert!(wire(&out)[0].contains(r#""status":"ok""#));
    assert_eq!(rt.presences("room:c").len(), 1);
}

#[test]
fn the_whole_runtime_crashes_and_restarts() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:x","phx_join",{}]"#);
    send(&mut rt, 2, r#"["1","1","room:y","phx_join",{}]"#);
    let out = rt.handle(Event::Crash {
        now_ms: 0,
        client_id: None,
        topic: None,
        reason: "boom".into(),
    });
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Outbound::PushMessage { event, .. } if event == "phx_error"))
            .count(),
        2
    );
    assert!(rt.crashed());
    assert!(
        wire(&send(&mut rt, 1, r#"["2","2","room:x","phx_join",{}]"#))[0]
            .contains(r#""reason":"crashed""#)
    );
    rt.handle(Event::Restart { now_ms: 1 });
    assert!(!rt.crashed());
    assert!(
        wire(&send(&mut rt, 1, r#"["3","3","room:x","phx_join",{}]"#))[0]
            .contains(r#""status":"ok""#)
    );
}

#[test]
fn stop_replies_then_closes() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:s","phx_join",{}]"#);
    let w = wire(&send(&mut rt, 1, r#"["1","2","room:s","bye",{}]"#));
    assert_eq!(
        w[0],
        r#"to 1: ["1","2","room:s","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(w[1], r#"to 1: ["1","1","room:s","phx_close",{}]"#);
    assert_eq!(rt.membership_count(), 0);
}

#[test]
fn refused_joins_and_the_channel_limit() {
    let mut rt = Runtime::new_single_node(
        Router::new().route("room:*", Room),
        Config {
            max_channels_per_socket: 2,
            ..Config::with_seed(1)
        },
    );
    assert_eq!(
        wire(&send(
            &mut rt,
            1,
            r#"["1","1","room:a","phx_join",{"token":"bad"}]"#
        )),
        [
            r#"to 1: ["1","1","room:a","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#
        ]
    );
    send(&mut rt, 1, r#"["2","2","room:a","phx_join",{}]"#);
    send(&mut rt, 1, r#"["3","3","room:b","phx_join",{}]"#);
    assert_eq!(
        wire(&send(&mut rt, 1, r#"["4","4","room:c","phx_join",{}]"#)),
        [
            r#"to 1: ["4","4","room:c","phx_reply",{"status":"error","response":{"reason":"too many channels joined"}}]"#
        ]
    );
}

#[test]
fn disconnect_ends_every_channel_and_presence() {
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:a","phx_join",{"user":"u"}]"#);
    send(&mut rt, 1, r#"["2","2","room:b","phx_join",{"user":"u"}]"#);
    send(&mut rt, 2, r#"["1","1","room:a","phx_join",{"user":"v"}]"#);
    let out = rt.handle(Event::Disconnect {
        now_ms: 0,
        client_id: ClientId(1),
    });
    assert_eq!(
        out.len(),
        1,
        "one diff to the one remaining subscriber: {out:?}"
    );
    assert_eq!(
        (rt.membership_count(), rt.subscribers("room:b").len()),
        (1, 0)
    );
    assert_eq!(rt.presences("room:a")[0].key, "v");
}

#[test]
fn malformed_frames_close_the_socket() {
    let mut rt = runtime();
    let out = send(&mut rt, 1, "{not json");
    assert!(
        matches!(&out[..], [Outbound::CloseSocket { code: 1008, .. }]),
        "{out:?}"
    );
}

#[test]
fn binary_pushes_get_binary_replies() {
    struct Echo;
    impl ChannelHandler for Echo {
        fn handle_in(&self, _event: &str, payload: &Payload, _socket: &mut Socket) -> HandleIn {
            HandleIn::ok(payload.clone())
        }
    }
    let mut rt = Runtime::new_single_node(Router::new().route("bin", Echo), Config::with_seed(1));
    send(&mut rt, 1, r#"["1","1","bin","phx_join",{}]"#);
    let push = bytes::Bytes::from_static(b"\x00\x01\x01\x03\x02" as &[u8]);
    let mut wire = push.to_vec();
    wire.extend_from_slice(b"12binev\xff");
    let out = rt.handle(Event::Receive {
        now_ms: 0,
        client_id: ClientId(1),
        frame: Frame::Binary(wire.into()),
    });
    let [
        Outbound::Reply {
            frame: Frame::Binary(b),
            ..
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(&b[..], b"\x01\x01\x01\x03\x0212binok\xff");
}

#[test]
fn intercepted_broadcasts_go_through_handle_out_per_subscriber() {
    struct Filter;
    impl ChannelHandler for Filter {
        fn intercepts(&self) -> &[&str] {
            &["secret"]
        }
        fn handle_out(
            &self,
            _event: &str,
            payload: &Payload,
            socket: &mut Socket,
        ) -> Option<Payload> {
            (socket.client_id() != ClientId(2)).then(|| payload.clone())
        }
    }
    let mut rt = Runtime::new_single_node(Router::new().route("t", Filter), Config::with_seed(1));
    for c in 1..=3 {
        send(&mut rt, c, r#"["1","1","t","phx_join",{}]"#);
    }
    let out = rt.handle(Event::Broadcast {
        now_ms: 0,
        except: None,
        topic: "t".into(),
        event: "secret".into(),
        payload: json!({}).into(),
    });
    assert_eq!(
        wire(&out),
        [
            r#"to 1: ["1",null,"t","secret",{}]"#,
            r#"to 3: ["1",null,"t","secret",{}]"#
        ]
    );
}

#[test]
fn labels_and_adapters() {
    let options = crate::cluster::Options::new("prod", "n1", 7).transport("redis");
    let rt = Runtime::new_cluster_ready(options, Router::new(), Config::with_seed(1)).unwrap();
    assert_eq!(rt.adapter_label(), "redis:n1@prod");
    let bad = crate::cluster::Options::new("prod", "", 7);
    assert!(Runtime::new_cluster_ready(bad, Router::new(), Config::with_seed(1)).is_err());
    assert_eq!(runtime().adapter_label(), "single_node");
    assert_eq!(
        Runtime::event_label(&Event::Restart { now_ms: 0 }),
        "restart"
    );
    assert_eq!(
        Runtime::outbound_label(&Outbound::System {
            label: String::new()
        }),
        "system"
    );
}

#[test]
fn a_config_names_its_hash_seed() {
    assert!(
        serde_json::from_str::<Config>(r#"{"node":"n"}"#).is_err(),
        "a config without a seed is refused, not seeded with 0"
    );
    let logged: Config = serde_json::from_str(r#"{"hash_seed":42}"#).unwrap();
    assert_eq!((logged.hash_seed, logged.max_topic_len), (42, 255));
}

#[test]
fn a_logged_rejoin_is_a_join() {
    let line = r#"{"type":"rejoin","now_ms":1,"client_id":1,"topic":"room:a","join_ref":"2","ref":"2","params":{}}"#;
    let event: Event = serde_json::from_str(line).unwrap();
    assert!(matches!(event, Event::Join { .. }), "{event:?}");
}

#[test]
fn a_message_over_the_limit_closes_the_socket_with_1009() {
    let mut rt = runtime();
    let body = "x".repeat(2 << 20);
    let out = send(
        &mut rt,
        3,
        &format!(r#"["1","1","room:a","shout",{{"body":"{body}"}}]"#),
    );
    assert!(
        matches!(
            &out[..],
            [Outbound::CloseSocket { client_id: ClientId(3), code: 1009, reason }]
                if reason == "message too big"
        ),
        "{:?}",
        out.iter().map(Runtime::outbound_label).collect::<Vec<_>>()
    );
}

/// Every outbound, serialized, is short: nothing a peer sent came back whole.
#[track_caller]
fn assert_nothing_echoed(out: &[Outbound], what: &str) {
    for o in out {
        let json = serde_json::to_string(o).unwrap();
        assert!(
            json.len() < 1024,
            "{what}: {} bytes in a {}",
            json.len(),
            Runtime::outbound_label(o)
        );
    }
    assert!(
        out.iter()
            .any(|o| matches!(o, Outbound::CloseSocket { code: 1008, .. })),
        "{what}: refused with 1008: {out:?}"
    );
}

#[test]
fn long_topics_refs_and_event_names_are_refused_on_every_event_never_echoed() {
    let long = "x".repeat(10_000);
    let mut rt = runtime();
    send(&mut rt, 1, r#"["1","1","room:a","phx_join",{}]"#);
    send(&mut rt, 1, r#"["2","2","room:a","phx_join",{}]"#);
    let frames = [
        (
            "a push to an unjoined long topic",
            format!(r#"["1","2","room:{long}","ping",{{}}]"#),
        ),
        (
            "a leave of an unjoined long topic",
            format!(r#"["1","2","room:{long}","phx_leave",{{}}]"#),
        ),
        (
            "a join of a long topic",
            format!(r#"["3","3","room:{long}","phx_join",{{}}]"#),
        ),
        (
            "a heartbeat with a long ref",
            format!(r#"[null,"{long}","phoenix","heartbeat",{{}}]"#),
        ),
        (
            "a push with a long join_ref",
            format!(r#"["{long}","5","room:a","ping",{{}}]"#),
        ),
        (
            "a stale push with a long event name",
            format!(r#"["1","6","room:a","{long}",{{}}]"#),
        ),
        (
            "a stale leave of a long topic",
            format!(r#"["1","7","room:{long}","phx_leave",{{}}]"#),
        ),
    ];
    for (what, frame) in frames {
        assert_nothing_echoed(&send(&mut rt, 1, &frame), what);
    }
    let events = [
        Event::Leave {
            now_ms: 0,
            client_id: ClientId(1),
            topic: format!("room:{long}"),
            join_ref: None,
            msg_ref: Some("8".into()),
        },
        Event::Push {
            now_ms: 0,
            client_id: ClientId(1),
            topic: format!("room:{long}"),
            event: "ping".into(),
            join_ref: None,
            msg_ref: Some("9".into()),
            payload: Payload::empty(),
        },
    ];
    for event in events {
        let what = Runtime::event_label(&event);
        assert_nothing_echoed(&rt.handle(event), what);
    }
    assert_eq!(rt.subscribers("room:a"), [ClientId(1)], "still joined");
}

#[test]
fn notices_quote_at_most_64_bytes_cut_between_characters() {
    let mut rt = Runtime::new_single_node(
        Router::new().route("room:*", Room),
        Config {
            max_topic_len: 1000,
            ..Config::with_seed(1)
        },
    );
    let topic = format!("room:{}", "é".repeat(400));
    send(
        &mut rt,
        1,
        &format!(r#"["1","1","{topic}","phx_join",{{}}]"#),
    );
    send(
        &mut rt,
        1,
        &format!(r#"["2","2","{topic}","phx_join",{{}}]"#),
    );
    let out = send(
        &mut rt,
        1,
        &format!(r#"["1","3","{topic}","phx_leave",{{}}]"#),
    );
    let [Outbound::System { label }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        label,
        &format!("stale leave dropped: room:{}", "é".repeat(29))
    );
}

fn send_at(rt: &mut Runtime, now_ms: u64, client: u64, text: &str) -> Vec<Outbound> {
    rt.handle(Event::Receive {
        now_ms,
        client_id: ClientId(client),
        frame: Frame::Text(text.into()),
    })
}

#[test]
fn a_silent_socket_is_dropped_after_the_heartbeat_timeout_and_its_presences_leave() {
    let mut rt = runtime();
    assert_eq!(rt.next_deadline(), None, "no sockets, no deadline");
    send_at(
        &mut rt,
        0,
        1,
        r#"["1","1","room:h","phx_join",{"user":"a"}]"#,
    );
    send_at(
        &mut rt,
        10,
        2,
        r#"["1","1","room:h","phx_join",{"user":"b"}]"#,
    );
    rt.handle(Event::Connect {
        now_ms: 20,
        client_id: ClientId(3),
    });
    // Client 2 heartbeats; clients 1 and 3 (which joined nothing) go silent.
    for now_ms in [30_000, 59_000] {
        send_at(&mut rt, now_ms, 2, r#"[null,"9","phoenix","heartbeat",{}]"#);
    }
    assert_eq!(rt.next_deadline(), Some(60_000));
    assert_eq!(rt.handle(Event::Tick { now_ms: 59_999 }), []);
    let out = rt.handle(Event::Tick { now_ms: 60_020 });
    assert_eq!(
        wire(&out),
        [
            r#"close_socket {"outbound":"close_socket","client_id":1,"code":1001,"reason":"heartbeat timeout"}"#,
            r#"to 2: [null,null,"room:h","presence_diff",{"joins":{},"leaves":{"a":{"metas":[{"phx_ref":"spool-1"}]}}}]"#,
            r#"close_socket {"outbound":"close_socket","client_id":3,"code":1001,"reason":"heartbeat timeout"}"#,
        ]
    );
    assert_eq!(rt.subscribers("room:h"), [ClientId(2)]);
    assert_eq!(rt.presences("room:h")[0].key, "b");
    // Client 2's deadline is 60 s after its last heartbeat.
    assert_eq!(rt.next_deadline(), Some(119_000));
    // A message stamped earlier than the runtime's clock counts at the clock (60,020): time
    // never runs backwards. The deadline asked for is then early, and its tick does nothing.
    send_at(&mut rt, 5, 2, r#"["1","2","room:h","ping",{}]"#);
    assert_eq!(rt.handle(Event::Tick { now_ms: 119_000 }), []);
    assert_eq!(rt.next_deadline(), Some(120_020));
    let out = rt.handle(Event::Tick { now_ms: 120_020 });
    assert!(
        matches!(
            &out[..],
            [Outbound::CloseSocket {
                client_id: ClientId(2),
                code: 1001,
                ..
            }]
        ),
        "{out:?}"
    );
    assert_eq!(
        (rt.membership_count(), rt.presences("room:h").len()),
        (0, 0)
    );
    assert_eq!(rt.next_deadline(), None);
}

#[test]
fn heartbeat_deadlines_stay_bounded_and_can_be_turned_off() {
    // Sockets come and go under the same ids: the deadlines keep one entry per live socket.
    let mut rt = runtime();
    for round in 0..50 {
        for c in 0..100 {
            let now_ms = round * 100 + c;
            send_at(&mut rt, now_ms, c, r#"[null,"1","phoenix","heartbeat",{}]"#);
            rt.handle(Event::Disconnect {
                now_ms,
                client_id: ClientId(c),
            });
        }
    }
    assert!(rt.deadlines.len() <= 2 * 100 + 64, "{}", rt.deadlines.len());
    let mut off = Runtime::new_single_node(
        Router::new().route("room:*", Room),
        Config {
            heartbeat_timeout_ms: None,
            ..Config::with_seed(1)
        },
    );
    send_at(&mut off, 0, 1, r#"["1","1","room:h","phx_join",{}]"#);
    assert_eq!(off.next_deadline(), None);
    assert_eq!(off.handle(Event::Tick { now_ms: u64::MAX }), []);
    assert_eq!(off.subscribers("room:h"), [ClientId(1)]);
}

/// A channel whose handler panics where it is told to: in `join` for `{"panic": true}`, in
/// `handle_in` for `boom`, in `handle_out` for an intercepted `boom` broadcast.
struct Panicky;

impl ChannelHandler for Panicky {
    fn join(&self, topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        if params.json_text().is_some_and(|t| t.contains("panic")) {
            panic!("join asked to panic");
        }
        demo::Room.join(topic, params, socket)
    }

    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        match event {
            "boom" => panic!("handle_in asked to panic"),
            "shout_boom" => {
                socket.broadcast("boom", Payload::empty());
                HandleIn::NoReply
            }
            _ => demo::Room.handle_in(event, payload, socket),
        }
    }

    fn intercepts(&self) -> &[&str] {
        &["boom"]
    }

    fn handle_out(&self, _event: &str, _payload: &Payload, socket: &mut Socket) -> Option<Payload> {
        if socket.join_ref() == "7" {
            panic!("handle_out asked to panic");
        }
        Some(Payload::empty())
    }
}

#[test]
fn a_panicking_handler_crashes_its_channel_never_the_runtime() {
    let mut rt = Runtime::new_single_node(
        Router::new()
            .route("room:*", Room)
            .route("panic:*", Panicky),
        Config::with_seed(1),
    );
    send(&mut rt, 1, r#"["1","1","panic:a","phx_join",{"user":"p"}]"#);
    send(&mut rt, 1, r#"["2","2","room:b","phx_join",{"user":"p"}]"#);

    // handle_in panics: that channel crashes (phx_error, presence gone), the other lives.
    let out = send(&mut rt, 1, r#"["1","3","panic:a","boom",{}]"#);
    assert_eq!(
        wire(&out)[0],
        r#"to 1: ["1","1","panic:a","phx_error",{"reason":"channel_crash"}]"#
    );
    assert!(!rt.crashed());
    assert_eq!(rt.presences("panic:a").len(), 0);
    let out = send(&mut rt, 1, r#"["2","4","room:b","ping",{"n":1}]"#);
    assert!(
        wire(&out)[0].contains(r#"{"pong":{"n":1}}"#),
        "{:?}",
        wire(&out)
    );

    // join panics: an error reply, nothing joined.
    let out = send(
        &mut rt,
        2,
        r#"["5","5","panic:a","phx_join",{"panic":true}]"#,
    );
    let w = wire(&out);
    assert_eq!(
        w[0],
        r#"system {"outbound":"system","label":"join crashed: panic:a"}"#
    );
    assert_eq!(
        w[1],
        r#"to 2: ["5","5","panic:a","phx_reply",{"status":"error","response":{"reason":"join crashed"}}]"#
    );
    assert_eq!(rt.subscribers("panic:a").len(), 0);

    // handle_out panics for one subscriber: its channel crashes, the other still gets the push.
    send(&mut rt, 3, r#"["6","6","panic:c","phx_join",{}]"#);
    send(&mut rt, 4, r#"["7","7","panic:c","phx_join",{}]"#);
    let out = send(&mut rt, 3, r#"["6","8","panic:c","shout_boom",{}]"#);
    let w = wire(&out);
    assert!(
        w.iter()
            .any(|l| l == r#"to 3: ["6",null,"panic:c","boom",{}]"#),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|l| l == r#"to 4: ["7","7","panic:c","phx_error",{"reason":"channel_crash"}]"#),
        "{w:?}"
    );
    assert_eq!(rt.subscribers("panic:c"), vec![ClientId(3)]);
}
