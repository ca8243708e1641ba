//! The body of the `live_decode` cargo-fuzz target (`fuzz/fuzz_targets/live_decode.rs`), kept
//! here so `cargo test` replays its corpus (`core/tests/fuzz_corpus.rs`). Not part of the API.

use serde_json::Value;

use super::protocol::{self, ClientMessage};
use super::{Cassette, Config, ConnId, Event, Outbound, Views};
use crate::view::{Element, View, el};

/// A view with a handler, an input and a hook, so decoded events reach the view.
struct Probe(u64, String);

impl View for Probe {
    fn render(&self) -> Element {
        el("div")
            .child(el("button").on_click("inc").text(self.0.to_string()))
            .child(el("input").on_input("draft").attr("value", self.1.clone()))
            .child(el("div").hook("H", "h1"))
    }
    fn handle_event(&mut self, handler: &str, value: Option<&str>) {
        match handler {
            "inc" => self.0 += 1,
            _ => self.1 = value.unwrap_or_default().chars().take(64).collect(),
        }
    }
}

/// Decodes the input as one client message (lossy UTF-8), checks a decoded message means what
/// it says, then feeds the input, split at `\n`, to a joined session: no panic, every reply a
/// JSON array, the session still there and at most one reply a message.
pub fn live_decode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = protocol::decode(&text, 4096) {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let tag = match m {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Event { .. } => "event",
            ClientMessage::HookEvent { .. } => "hook:event",
        };
        assert_eq!(v[0], Value::String(tag.into()));
    }
    let mut views = Views::new();
    views.register("probe", || Box::new(Probe(0, String::new())));
    let mut c = Cassette::new(
        views,
        Config {
            max_message_len: 4096,
            ..Config::default()
        },
    );
    let (id, csrf) = ("p".repeat(32), "t".repeat(32));
    c.handle(Event::PushPreflight {
        now_ms: 0,
        id: id.clone(),
        csrf_token: csrf.clone(),
        view: "probe".into(),
    });
    let join = format!(r#"["join",{{"id":"{id}","csrf":"{csrf}"}}]"#);
    let conn = ConnId(1);
    c.handle(Event::Receive {
        now_ms: 1,
        conn,
        text: join,
    });
    for (i, line) in text.split('\n').enumerate() {
        let out = c.handle(Event::Receive {
            now_ms: 2 + i as u64,
            conn,
            text: line.to_string(),
        });
        assert!(out.len() <= 2, "too many replies: {out:?}");
        for o in &out {
            match o {
                Outbound::Transmit { text, .. } => {
                    let v: Value = serde_json::from_str(text).expect("replies are JSON");
                    assert!(v.is_array());
                }
                other => panic!("unexpected outbound {other:?}"),
            }
        }
        assert_eq!(c.sprocket_count(), 1);
    }
}
