//! Scripted conversations with the [`Channels`] machine: frames in as the server would send
//! them, outbounds asserted in order; and a logged session replayed to the same outbounds.

use serde_json::{Value, json};

use super::{Channels, Config, Event, JoinError, Outbound, PushError};

fn config() -> Config {
    Config {
        timeout_ms: 1_000,
        heartbeat_interval_ms: 30_000,
        rejoin_schedule_ms: vec![100, 200],
        max_pending: 8,
        run_id: "run".into(),
    }
}

/// A machine and everything it was given, for the replay test.
struct Script {
    channels: Channels,
    log: Vec<Event>,
}

impl Script {
    fn new(config: Config) -> Script {
        Script {
            channels: Channels::new(config),
            log: Vec::new(),
        }
    }

    fn step(&mut self, event: Event) -> Vec<Outbound> {
        self.log.push(event.clone());
        self.channels.handle(event)
    }

    fn open(&mut self, now_ms: u64) -> Vec<Outbound> {
        self.step(Event::Opened { now_ms })
    }

    fn close(&mut self, now_ms: u64) -> Vec<Outbound> {
        self.step(Event::Closed { now_ms })
    }

    fn receive(&mut self, now_ms: u64, text: &str) -> Vec<Outbound> {
        let text = text.to_string();
        self.step(Event::Receive { now_ms, text })
    }

    fn join(&mut self, now_ms: u64, id: u64, topic: &str) -> Vec<Outbound> {
        let (topic, params) = (topic.to_string(), json!({}));
        self.step(Event::Join {
            now_ms,
            id,
            topic,
            params,
        })
    }

    fn push(&mut self, now_ms: u64, id: u64, payload: Value, once: bool) -> Vec<Outbound> {
        self.step(Event::Push {
            now_ms,
            id,
            topic: "room:a".into(),
            event: "shout".into(),
            payload,
            timeout_ms: 1_000,
            once,
        })
    }

    fn tick(&mut self, now_ms: u64) -> Vec<Outbound> {
        self.step(Event::Tick { now_ms })
    }
}

fn send(text: &str) -> Outbound {
    Outbound::Send { text: text.into() }
}

fn sent(out: &[Outbound]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Send { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn joined(s: &mut Script) {
    s.open(0);
    s.join(0, 1, "room:a");
    let out = s.receive(
        1,
        r#"["1","1","room:a","phx_reply",{"status":"ok","response":{}}]"#,
    );
    assert_eq!(
        out,
        [Outbound::JoinDone {
            id: 1,
            result: Ok(json!({}))
        }]
    );
}

#[test]
fn a_push_gets_its_reply_and_a_broadcast_is_a_message() {
    let mut s = Script::new(config());
    joined(&mut s);
    let out = s.push(2, 10, json!({"body": "hi"}), false);
    assert_eq!(out, [send(r#"["1","2","room:a","shout",{"body":"hi"}]"#)]);
    let out = s.receive(
        3,
        r#"["1","2","room:a","phx_reply",{"status":"ok","response":{"n":1}}]"#,
    );
    assert_eq!(
        out,
        [Outbound::PushDone {
            id: 10,
            result: Ok(json!({"n": 1}))
        }]
    );
    let out = s.receive(4, r#"[null,null,"room:a","shout",{"body":"hi"}]"#);
    assert_eq!(
        out,
        [Outbound::Message {
            topic: "room:a".into(),
            event: "shout".into(),
            payload: json!({"body": "hi"})
        }]
    );
    // A message of an earlier join is dropped (phoenix.js's isMember).
    assert!(s.receive(5, r#"["0",null,"room:a","shout",{}]"#).is_empty());
}

#[test]
fn pushes_before_the_join_are_held_and_time_out_from_the_push() {
    let mut s = Script::new(config());
    s.open(0);
    s.join(0, 1, "room:a");
    assert!(s.push(50, 10, json!({}), false).is_empty(), "held");
    // No join reply within the timeout: the caller hears, the join is left and retried.
    let out = s.tick(1_000);
    assert_eq!(
        out[0],
        Outbound::JoinDone {
            id: 1,
            result: Err(JoinError::Timeout)
        }
    );
    assert_eq!(sent(&out), [r#"["1","2","room:a","phx_leave",{}]"#]);
    // Every timer that fired is gone: the next deadline is ahead, never a busy loop.
    assert_eq!(s.channels.next_deadline(), Some(1_050));
    let out = s.tick(1_050);
    assert_eq!(
        out,
        [Outbound::PushDone {
            id: 10,
            result: Err(PushError::Timeout)
        }]
    );
    let out = s.tick(1_000 + 100);
    assert_eq!(
        sent(&out),
        [r#"["3","3","room:a","phx_join",{}]"#],
        "rejoin after 100 ms"
    );
}

#[test]
fn a_dropped_socket_rejoins_on_open_and_an_error_rejoins_on_the_schedule() {
    let mut s = Script::new(config());
    joined(&mut s);
    s.close(10);
    assert!(s.tick(5_000).is_empty(), "no rejoin while closed");
    let out = s.open(5_001);
    assert_eq!(
        sent(&out),
        [r#"["2","2","room:a","phx_join",{}]"#],
        "at once"
    );
    s.receive(
        5_002,
        r#"["2","2","room:a","phx_reply",{"status":"ok","response":{}}]"#,
    );
    // The channel crashes: rejoin after 100 ms, then 200 ms if that fails.
    assert!(
        s.receive(5_010, r#"["2","2","room:a","phx_error",{}]"#)
            .is_empty()
    );
    assert!(s.tick(5_109).is_empty());
    assert_eq!(
        sent(&s.tick(5_110)),
        [r#"["3","3","room:a","phx_join",{}]"#]
    );
    let refused = r#"["3","3","room:a","phx_reply",{"status":"error","response":{}}]"#;
    assert!(s.receive(5_120, refused).is_empty());
    assert!(s.tick(5_319).is_empty());
    assert_eq!(
        sent(&s.tick(5_320)),
        [r#"["4","4","room:a","phx_join",{}]"#]
    );
}

#[test]
fn a_once_push_carries_a_key_and_is_resent_after_the_rejoin_until_its_reply() {
    let mut s = Script::new(config());
    joined(&mut s);
    let out = s.push(2, 10, json!({"body": "a"}), true);
    let a = r#"["1","2","room:a","shout",{"body":"a","client_msg_id":"run-1"}]"#;
    assert_eq!(sent(&out), [a]);
    // The socket dies before the reply: after the rejoin, the same key goes again.
    s.close(3);
    let out = s.open(4);
    assert_eq!(sent(&out), [r#"["3","3","room:a","phx_join",{}]"#]);
    let out = s.receive(
        5,
        r#"["3","3","room:a","phx_reply",{"status":"ok","response":{}}]"#,
    );
    let again = r#"["3","4","room:a","shout",{"body":"a","client_msg_id":"run-1"}]"#;
    assert_eq!(sent(&out), [again]);
    let reply = r#"["3","4","room:a","phx_reply",{"status":"ok","response":{"duplicate":true}}]"#;
    let out = s.receive(6, reply);
    assert_eq!(
        out,
        [Outbound::PushDone {
            id: 10,
            result: Ok(json!({"duplicate": true}))
        }]
    );
    let out = s.push(7, 11, json!("text"), true);
    assert_eq!(
        out,
        [Outbound::PushDone {
            id: 11,
            result: Err(PushError::NotAnObject)
        }]
    );
}

#[test]
fn past_max_pending_a_push_is_refused_at_once_and_a_timed_out_one_frees_its_place() {
    let mut s = Script::new(config());
    joined(&mut s);
    for id in 0..8 {
        s.push(2, id, json!({}), id % 2 == 0);
    }
    assert_eq!(s.channels.awaiting(), 8);
    let out = s.push(3, 99, json!({}), false);
    assert_eq!(
        out,
        [Outbound::PushDone {
            id: 99,
            result: Err(PushError::TooMany)
        }]
    );
    let out = s.tick(1_002);
    assert_eq!(out.len(), 8, "every push timed out: {out:?}");
    assert_eq!(s.channels.awaiting(), 0);
    assert_eq!(sent(&s.push(1_003, 100, json!({}), false)).len(), 1);
}

#[test]
fn leave_answers_held_pushes_closed_and_heartbeats_go_while_open() {
    let mut s = Script::new(config());
    s.open(0);
    s.join(0, 1, "room:a");
    s.push(1, 10, json!({}), false);
    let out = s.step(Event::Leave {
        now_ms: 2,
        id: 20,
        topic: "room:a".into(),
    });
    assert_eq!(
        out,
        [
            Outbound::JoinDone {
                id: 1,
                result: Err(JoinError::Closed)
            },
            Outbound::PushDone {
                id: 10,
                result: Err(PushError::Closed)
            },
            send(r#"["1","2","room:a","phx_leave",{}]"#),
        ]
    );
    let out = s.receive(
        3,
        r#"["1","2","room:a","phx_reply",{"status":"ok","response":{}}]"#,
    );
    assert_eq!(out, [Outbound::LeaveDone { id: 20 }]);
    assert_eq!(s.channels.next_deadline(), Some(30_000));
    let out = s.tick(30_000);
    assert_eq!(sent(&out), [r#"[null,"3","phoenix","heartbeat",{}]"#]);
}

#[test]
fn a_logged_session_replays_to_the_same_outbounds() {
    let mut s = Script::new(config());
    let mut first = Vec::new();
    first.extend(s.open(0));
    first.extend(s.join(0, 1, "room:a"));
    first.extend(s.push(1, 10, json!({"body": "a"}), true));
    first.extend(s.receive(
        2,
        r#"["1","1","room:a","phx_reply",{"status":"ok","response":{}}]"#,
    ));
    first.extend(s.receive(
        3,
        r#"["1","1","room:a","presence_state",{"u":{"metas":[{"phx_ref":"x"}]}}]"#,
    ));
    first.extend(s.close(4));
    first.extend(s.open(5));
    first.extend(s.tick(2_000));
    // One JSON object a line, as a shell would record it; read back and run again.
    let log: String = s
        .log
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let mut again = Channels::new(config());
    let mut second = Vec::new();
    for line in log.lines() {
        let event: Event = serde_json::from_str(line).unwrap();
        second.extend(again.handle(event));
    }
    assert_eq!(first, second);
    for o in &first {
        let json = serde_json::to_string(o).unwrap();
        assert_eq!(
            &serde_json::from_str::<Outbound>(&json).unwrap(),
            o,
            "{json}"
        );
    }
    assert!(
        first
            .iter()
            .any(|o| matches!(o, Outbound::PresenceChanged { .. }))
    );
}

#[test]
fn replay_reads_a_setup_then_events_and_names_a_bad_line() {
    use super::{Line, replay};
    let setup = serde_json::to_string(&Line::Setup(config())).unwrap();
    let opened = serde_json::to_string(&Line::Event(Event::Opened { now_ms: 0 })).unwrap();
    let join = serde_json::to_string(&Line::Event(Event::Join {
        now_ms: 1,
        id: 1,
        topic: "room:a".into(),
        params: json!({}),
    }))
    .unwrap();
    let ran = replay(&format!("{setup}\n{opened}\n{join}\n")).unwrap();
    assert_eq!(ran.len(), 2);
    assert_eq!(sent(&ran[1].1), [r#"["1","1","room:a","phx_join",{}]"#]);
    assert!(replay(&opened).unwrap_err().contains("line 1"));
    assert!(
        replay(&format!("{setup}\n{setup}"))
            .unwrap_err()
            .contains("line 2")
    );
    assert!(
        replay(&format!("{setup}\nnot json"))
            .unwrap_err()
            .contains("line 2")
    );
}
