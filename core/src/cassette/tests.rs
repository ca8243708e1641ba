//! Scripted tests of the cassette: preflights, joins, events, bounds.

use serde_json::json;

use super::*;
use crate::view::{Element, View, el};

struct Counter(i64);

impl View for Counter {
    fn render(&self) -> Element {
        let mut root = el("div")
            .child(el("button").on_click("inc").text("+"))
            .child(el("span").text(self.0.to_string()));
        if self.0 < 2 {
            root = root.child(el("button").on_click("dec").text("-"));
        }
        root
    }
    fn handle_event(&mut self, handler: &str, _value: Option<&str>) {
        match handler {
            "inc" => self.0 += 1,
            "dec" => self.0 -= 1,
            "boom" => panic!("boom"),
            _ => {}
        }
    }
    fn handle_info(&mut self, message: &serde_json::Value) {
        if let Some(n) = message.as_i64() {
            self.0 = n;
        }
    }
}

fn cassette(config: Config) -> Cassette {
    let mut views = Views::new();
    views.register("counter", || Box::new(Counter(0)));
    Cassette::new(views, config)
}

fn push(c: &mut Cassette, now_ms: u64, id: &str) {
    let out = c.handle(Event::PushPreflight {
        now_ms,
        id: id.into(),
        csrf_token: format!("{id}-token"),
        view: "counter".into(),
    });
    assert!(matches!(&out[..], [Outbound::Page { status: 200, .. }]));
}

#[track_caller]
fn recv(c: &mut Cassette, now_ms: u64, conn: u64, text: &str) -> Vec<String> {
    c.handle(Event::Receive {
        now_ms,
        conn: ConnId(conn),
        text: text.into(),
    })
    .into_iter()
    .map(|o| match o {
        Outbound::Transmit { conn: to, text } => {
            assert_eq!(to, ConnId(conn));
            text
        }
        other => format!("{other:?}"),
    })
    .collect()
}

fn join(id: &str, csrf: &str) -> String {
    json!(["join", {"id": id, "csrf": csrf}]).to_string()
}

const ERR_CSRF: &str = r#"["error",{"code":"invalid_csrf_token","msg":"Invalid CSRF token"}]"#;
const ERR_NOT_FOUND: &str =
    r#"["error",{"code":"preflight_not_found","msg":"No preflight found"}]"#;

#[test]
fn good_token_joins_and_consumes_the_preflight() {
    let mut c = cassette(Config::default());
    push(&mut c, 0, "p1");
    let out = recv(&mut c, 1, 1, &join("p1", "p1-token"));
    assert_eq!(out.len(), 1);
    assert!(out[0].starts_with(r#"["ok",{"#), "{}", out[0]);
    assert_eq!((c.preflight_count(), c.sprocket_count()), (0, 1));
    // Used once: a second socket with the same preflight is refused.
    assert_eq!(recv(&mut c, 2, 2, &join("p1", "p1-token")), [ERR_NOT_FOUND]);
}

#[test]
fn wrong_token_leaves_the_preflight_for_a_retry() {
    let mut c = cassette(Config::default());
    push(&mut c, 0, "p1");
    assert_eq!(recv(&mut c, 1, 1, &join("p1", "p1-tokeN")), [ERR_CSRF]);
    assert_eq!(recv(&mut c, 1, 1, &join("p1", "short")), [ERR_CSRF]);
    assert_eq!(c.preflight_count(), 1);
    assert!(recv(&mut c, 2, 1, &join("p1", "p1-token"))[0].starts_with(r#"["ok""#));
}

#[test]
fn expired_preflight_is_not_found_and_swept() {
    let mut c = cassette(Config::default());
    push(&mut c, 1_000, "p1");
    assert_eq!(c.next_deadline(), Some(61_000));
    c.handle(Event::Tick { now_ms: 60_999 });
    assert_eq!(c.preflight_count(), 1);
    c.handle(Event::Tick { now_ms: 61_000 });
    assert_eq!(c.preflight_count(), 0);
    assert_eq!(c.next_deadline(), None);
    assert_eq!(
        recv(&mut c, 61_001, 1, &join("p1", "p1-token")),
        [ERR_NOT_FOUND]
    );
}

#[test]
fn events_patch_and_noop_renders_send_nothing() {
    let mut c = cassette(Config::default());
    push(&mut c, 0, "p1");
    recv(&mut c, 1, 1, &join("p1", "p1-token"));
    let click = |id: &str| json!(["event", {"kind": "click", "id": id}]).to_string();
    assert_eq!(
        recv(&mut c, 2, 1, &click("inc")),
        [r#"["update",["1",null,{"1":["1",null,{"0":["5","1"]}]}],{"debug":false}]"#]
    );
    assert_eq!(
        recv(&mut c, 3, 1, &click("inc")),
        [r#"["update",["1",null,{"1":["1",null,{"0":["5","2"]}],"2":["4"]}],{"debug":false}]"#]
    );
    // "dec" is gone from the render: stale, dropped before the view.
    assert!(recv(&mut c, 4, 1, &click("dec")).is_empty());
    // An id the view never offered, and a handler that changes nothing.
    assert!(recv(&mut c, 5, 1, &click("boom")).is_empty());
    assert!(
        recv(
            &mut c,
            5,
            1,
            &json!(["event", {"kind": "dblclick", "id": "inc"}]).to_string()
        )
        .is_empty()
    );
}

#[test]
fn debug_names_ops() {
    let mut c = cassette(Config {
        debug: true,
        ..Config::default()
    });
    push(&mut c, 0, "p1");
    recv(&mut c, 1, 1, &join("p1", "p1-token"));
    let out = recv(&mut c, 2, 1, r#"["event",{"kind":"click","id":"inc"}]"#);
    assert_eq!(
        out,
        [r#"["update",["Update",null,{"1":["Update",null,{"0":["Change","1"]}]}],{"debug":true}]"#]
    );
}

#[test]
fn the_preflight_store_is_bounded_oldest_first() {
    let mut c = cassette(Config {
        max_preflights: 3,
        ..Config::default()
    });
    for i in 0..10 {
        push(&mut c, i, &format!("p{i}"));
    }
    let ids: Vec<_> = c.state().preflights.into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["p7", "p8", "p9"]);
}

#[test]
fn sprockets_are_bounded_and_end_on_disconnect() {
    let mut c = cassette(Config {
        max_sprockets: 1,
        ..Config::default()
    });
    push(&mut c, 0, "a");
    push(&mut c, 0, "b");
    recv(&mut c, 1, 1, &join("a", "a-token"));
    let out = recv(&mut c, 1, 2, &join("b", "b-token"));
    assert!(out[0].contains("too many live sessions"));
    assert_eq!(c.preflight_count(), 1);
    c.handle(Event::Disconnect {
        now_ms: 2,
        conn: ConnId(1),
    });
    assert_eq!(c.sprocket_count(), 0);
    assert!(recv(&mut c, 3, 2, &join("b", "b-token"))[0].starts_with(r#"["ok""#));
}

#[test]
fn info_rerenders_every_sprocket_of_a_view() {
    let mut c = cassette(Config::default());
    for (i, id) in ["a", "b"].iter().enumerate() {
        push(&mut c, 0, id);
        recv(&mut c, 1, i as u64 + 1, &join(id, &format!("{id}-token")));
    }
    let out = c.handle(Event::Info {
        now_ms: 2,
        view: "counter".into(),
        message: json!(1),
    });
    assert_eq!(out.len(), 2);
    assert!(
        c.handle(Event::Info {
            now_ms: 3,
            view: "counter".into(),
            message: json!(1),
        })
        .is_empty()
    );
}

#[test]
fn a_panicking_view_ends_its_own_session() {
    struct Bomb;
    impl View for Bomb {
        fn render(&self) -> Element {
            el("b").on_click("boom")
        }
        fn handle_event(&mut self, _: &str, _: Option<&str>) {
            panic!("a bug in the view");
        }
    }
    let mut views = Views::new();
    views.register("bomb", || Box::new(Bomb));
    let mut c = Cassette::new(views, Config::default());
    c.handle(Event::PushPreflight {
        now_ms: 0,
        id: "x".into(),
        csrf_token: "t".into(),
        view: "bomb".into(),
    });
    recv(&mut c, 1, 1, &join("x", "t"));
    let out = c.handle(Event::Receive {
        now_ms: 2,
        conn: ConnId(1),
        text: r#"["event",{"kind":"click","id":"boom"}]"#.into(),
    });
    assert!(matches!(&out[..], [Outbound::Close { code: 1011, .. }]));
    assert_eq!(c.sprocket_count(), 0);
}

#[test]
fn malformed_and_unjoined_messages_get_errors() {
    let mut c = cassette(Config::default());
    assert!(recv(&mut c, 0, 1, "nonsense")[0].contains("connect_error"));
    assert!(
        recv(&mut c, 0, 1, r#"["event",{"kind":"click","id":"inc"}]"#)[0].contains("not joined")
    );
    assert_eq!(c.state().sprockets, []);
}

#[test]
fn events_and_outbounds_round_trip_through_serde() {
    let e = Event::Receive {
        now_ms: 1,
        conn: ConnId(2),
        text: "x".into(),
    };
    let s = serde_json::to_string(&e).unwrap();
    assert_eq!(s, r#"{"type":"receive","now_ms":1,"conn":2,"text":"x"}"#);
    assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
    let o = Outbound::Transmit {
        conn: ConnId(2),
        text: "y".into(),
    };
    let s = serde_json::to_string(&o).unwrap();
    assert_eq!(serde_json::from_str::<Outbound>(&s).unwrap(), o);
}

#[test]
fn constant_time_eq_compares() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}

#[test]
fn hook_events_reach_the_view_and_its_replies_go_out() {
    struct Hooked(u32);
    impl View for Hooked {
        fn render(&self) -> Element {
            el("div").hook("Clock", "h1").text(self.0.to_string())
        }
        fn handle_hook(
            &mut self,
            hook: &str,
            name: &str,
            payload: &serde_json::Value,
        ) -> Vec<crate::view::HookEvent> {
            self.0 += 1;
            vec![crate::view::HookEvent {
                id: hook.into(),
                kind: format!("{name}-ack"),
                value: payload.clone(),
            }]
        }
    }
    let mut views = Views::new();
    views.register("hooked", || Box::new(Hooked(0)));
    let mut c = Cassette::new(views, Config::default());
    c.handle(Event::PushPreflight {
        now_ms: 0,
        id: "x".into(),
        csrf_token: "t".into(),
        view: "hooked".into(),
    });
    recv(&mut c, 1, 1, &join("x", "t"));
    let out = recv(
        &mut c,
        2,
        1,
        r#"["hook:event",{"id":"h1","name":"tick","payload":{"n":1}}]"#,
    );
    assert_eq!(
        out,
        [
            r#"["event",{"id":"h1","kind":"tick-ack","value":{"n":1}}]"#,
            r#"["update",["1",null,{"0":["5","1"]}],{"debug":false}]"#,
        ]
    );
    // A hook id the render does not show is stale.
    assert!(recv(&mut c, 3, 1, r#"["hook:event",{"id":"h2","name":"tick"}]"#).is_empty());
}

#[test]
fn pop_preflight_answers_whether_it_was_there() {
    let mut c = cassette(Config::default());
    push(&mut c, 0, "p1");
    let pop = |c: &mut Cassette| {
        c.handle(Event::PopPreflight {
            now_ms: 1,
            id: "p1".into(),
        })
    };
    assert_eq!(
        pop(&mut c),
        [Outbound::Popped {
            id: "p1".into(),
            found: true
        }]
    );
    assert_eq!(
        pop(&mut c),
        [Outbound::Popped {
            id: "p1".into(),
            found: false
        }]
    );
}

#[test]
fn a_logged_run_replays_to_the_same_outbounds() {
    use crate::view::demo::Demo;
    let views = || {
        let mut v = Views::new();
        v.register("demo", || Box::new(Demo::default()));
        v
    };
    let events = vec![
        Event::PushPreflight {
            now_ms: 0,
            id: "p".into(),
            csrf_token: "t".into(),
            view: "demo".into(),
        },
        Event::Receive {
            now_ms: 5,
            conn: ConnId(3),
            text: join("p", "t"),
        },
        Event::Receive {
            now_ms: 6,
            conn: ConnId(3),
            text: r#"["event",{"kind":"submit","id":"todo:add","value":"milk"}]"#.into(),
        },
        Event::Receive {
            now_ms: 7,
            conn: ConnId(3),
            text: r#"["event",{"kind":"click","id":"counter:inc"}]"#.into(),
        },
        Event::Tick { now_ms: 70_000 },
        Event::Disconnect {
            now_ms: 71_000,
            conn: ConnId(3),
        },
    ];
    // Record: one JSON line per event with what it produced.
    let mut c = Cassette::new(views(), Config::default());
    let log: Vec<String> = events
        .into_iter()
        .map(|e| {
            let out = c.handle(e.clone());
            json!({"event": e, "outbounds": out}).to_string()
        })
        .collect();
    // Replay into a fresh cassette: byte for byte the same.
    let mut r = Cassette::new(views(), Config::default());
    for line in &log {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let e: Event = serde_json::from_value(v["event"].clone()).unwrap();
        let want: Vec<Outbound> = serde_json::from_value(v["outbounds"].clone()).unwrap();
        assert_eq!(r.handle(e), want, "{line}");
    }
    assert_eq!((r.preflight_count(), r.sprocket_count()), (0, 0));
}
