//! spool's Rust Phoenix channels client (`spool_smol::phoenix`) against the demo channel server
//! of `spool serve`, in-process: joins with params, pushes with replies and timeouts,
//! broadcasts, presence, heartbeats, and rejoining every topic after the server restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;
use serde_json::{Value, json};
use spool_core::client::Backoff;
use spool_smol::chat::{self, ChatOptions, ChatServer};
use spool_smol::phoenix::{Channel, PhoenixClient, PhoenixOptions, PushError};

fn serve(bind: &str) -> ChatServer {
    chat::serve(ChatOptions {
        bind: bind.into(),
        ..ChatOptions::default()
    })
    .unwrap()
}

/// Small timers, so each test takes a few seconds at most.
fn options() -> PhoenixOptions {
    PhoenixOptions {
        timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(200),
        rejoin_after: Arc::new(|_| Duration::from_millis(100)),
        backoff: Backoff {
            initial_ms: 50,
            max_ms: 200,
            ..Backoff::default()
        },
        connect_timeout: Duration::from_secs(2),
        ..PhoenixOptions::default()
    }
}

fn connect(server: &ChatServer) -> PhoenixClient {
    let url = format!("ws://{}/socket", server.local_addr());
    PhoenixClient::connect(&url, options()).unwrap()
}

/// The next message with `event` (others skipped), within `timeout`.
async fn next_event(channel: &Channel, event: &str, timeout: Duration) -> Option<Value> {
    let wanted = async {
        while let Some(message) = channel.recv().await {
            if message.event == event {
                return Some(message.payload);
            }
        }
        None
    };
    wanted
        .or(async {
            smol::Timer::after(timeout).await;
            None
        })
        .await
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

fn keys(channel: &Channel) -> Vec<String> {
    channel.presence().keys().cloned().collect()
}

#[test]
fn joins_with_params_and_a_ping_push_gets_its_pong_reply() {
    let server = serve("127.0.0.1:0");
    let client = connect(&server);
    smol::block_on(async {
        let room = client.channel("room:ping", json!({"user": "alice", "name": "Alice"}));
        assert_eq!(room.join().await, Ok(json!({})));
        let reply = room.push("ping", json!({"n": 1})).await;
        assert_eq!(reply, Ok(json!({"pong": {"n": 1}})));
        // The join params reached the channel: it tracks alice with her name.
        eventually("alice's presence", Duration::from_secs(3), || {
            room.presence()
                .get("alice")
                .is_some_and(|p| p["metas"][0]["name"] == "Alice")
        })
        .await;
        room.leave().await;
        assert_eq!(room.push("ping", json!({})).await, Err(PushError::Closed));
        client.close().await;
    });
    server.shutdown();
}

#[test]
fn a_push_the_server_never_answers_times_out() {
    let server = serve("127.0.0.1:0");
    let client = connect(&server);
    smol::block_on(async {
        let room = client.channel("room:quiet", json!({}));
        room.join().await.unwrap();
        let start = Instant::now();
        let reply = room
            .push_with_timeout("no_such_event", json!({}), Duration::from_millis(300))
            .await;
        let waited = start.elapsed();
        assert_eq!(reply, Err(PushError::Timeout));
        // The core counts whole milliseconds: a push sent 0.6 ms into a millisecond times out
        // 300 of them later, 299.4 ms of wall time after it was sent (a CI run saw 299.54).
        assert!(
            waited >= Duration::from_millis(299) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // The channel still works after a timeout.
        assert_eq!(room.push("ping", json!(2)).await, Ok(json!({"pong": 2})));
        client.close().await;
    });
    server.shutdown();
}

#[test]
fn a_broadcast_reaches_a_second_client() {
    let server = serve("127.0.0.1:0");
    let (a, b) = (connect(&server), connect(&server));
    smol::block_on(async {
        let talker = a.channel("room:shout", json!({}));
        let listener = b.channel("room:shout", json!({}));
        talker.join().await.unwrap();
        listener.join().await.unwrap();
        // `shout` has no reply: the push times out, the broadcast goes out.
        let push =
            talker.push_with_timeout("shout", json!({"body": "hi"}), Duration::from_millis(100));
        let _ = push.await;
        let heard = next_event(&listener, "shout", Duration::from_secs(3)).await;
        assert_eq!(heard, Some(json!({"body": "hi"})));
        let echoed = next_event(&talker, "shout", Duration::from_secs(3)).await;
        assert_eq!(echoed, Some(json!({"body": "hi"})));
        a.close().await;
        b.close().await;
    });
    server.shutdown();
}

#[test]
fn the_presence_of_two_clients_converges_and_a_leave_is_seen() {
    let server = serve("127.0.0.1:0");
    let (a, b) = (connect(&server), connect(&server));
    smol::block_on(async {
        let alice = a.channel("room:presence", json!({"user": "alice"}));
        let bob = b.channel("room:presence", json!({"user": "bob"}));
        alice.join().await.unwrap();
        bob.join().await.unwrap();
        let both = vec!["alice".to_string(), "bob".to_string()];
        eventually(
            "both replicas to hold alice and bob",
            Duration::from_secs(3),
            || keys(&alice) == both && keys(&bob) == both,
        )
        .await;
        bob.leave().await;
        eventually("alice to see bob leave", Duration::from_secs(3), || {
            keys(&alice) == ["alice"]
        })
        .await;
        a.close().await;
        b.close().await;
    });
    server.shutdown();
}

#[test]
fn after_the_server_restarts_every_topic_is_rejoined_and_keeps_receiving() {
    let server = serve("127.0.0.1:0");
    let addr = server.local_addr();
    let client = connect(&server);
    smol::block_on(async {
        let one = client.channel("room:one", json!({"user": "u1"}));
        let two = client.channel("room:two", json!({"user": "u1"}));
        one.join().await.unwrap();
        two.join().await.unwrap();
        assert_eq!(one.push("ping", json!(1)).await, Ok(json!({"pong": 1})));

        server.shutdown();
        smol::Timer::after(Duration::from_millis(300)).await;
        let server = serve(&addr.to_string());

        // Back within the backoff cap: both topics rejoined (their presence is tracked again
        // on the new server) and both receive broadcasts.
        let other = connect(&server);
        let one_b = other.channel("room:one", json!({}));
        let two_b = other.channel("room:two", json!({}));
        one_b.join().await.unwrap();
        two_b.join().await.unwrap();
        eventually("u1 back in both rooms", Duration::from_secs(5), || {
            keys(&one_b) == ["u1"] && keys(&two_b) == ["u1"]
        })
        .await;
        for (from, to, body) in [(&one_b, &one, "one"), (&two_b, &two, "two")] {
            let _ = from
                .push_with_timeout("shout", json!({"body": body}), Duration::from_millis(50))
                .await;
            let heard = next_event(to, "shout", Duration::from_secs(3)).await;
            assert_eq!(heard, Some(json!({"body": body})));
        }
        assert_eq!(two.push("ping", json!(2)).await, Ok(json!({"pong": 2})));
        // The client's own replicas followed the new server's state too.
        eventually("the rejoined replica", Duration::from_secs(3), || {
            keys(&one) == ["u1"]
        })
        .await;
        client.close().await;
        other.close().await;
        server.shutdown();
    });
}

#[test]
fn a_crashed_channel_rejoins_on_the_rejoin_schedule_with_a_new_join() {
    let server = serve("127.0.0.1:0");
    let url = format!("ws://{}/socket", server.local_addr());
    // The schedule is read when the client is made (the core machine takes it as data); only
    // the first try's delay is short, so the wait below shows which one the rejoin used.
    let client = PhoenixClient::connect(
        &url,
        PhoenixOptions {
            rejoin_after: Arc::new(|n| match n {
                1 => Duration::from_millis(400),
                _ => Duration::from_secs(10),
            }),
            ..options()
        },
    )
    .unwrap();
    smol::block_on(async {
        let room = client.channel("room:crash", json!({"user": "c"}));
        room.join().await.unwrap();
        // `crash` crashes the channel: the server sends phx_error, the client waits
        // rejoin_after(1) and joins again; a push made meanwhile is held until then.
        let _ = room
            .push_with_timeout("crash", json!({}), Duration::from_millis(50))
            .await;
        let start = Instant::now();
        assert_eq!(room.push("ping", json!(3)).await, Ok(json!({"pong": 3})));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        client.close().await;
    });
    server.shutdown();
}

#[test]
fn a_reader_that_falls_behind_loses_the_newest_messages_counted() {
    let server = serve("127.0.0.1:0");
    let talker = connect(&server);
    let url = format!("ws://{}/socket", server.local_addr());
    let slow = PhoenixClient::connect(
        &url,
        PhoenixOptions {
            channel_buffer: 3,
            ..options()
        },
    )
    .unwrap();
    smol::block_on(async {
        let mouth = talker.channel("room:buffer", json!({}));
        let ear = slow.channel("room:buffer", json!({}));
        mouth.join().await.unwrap();
        ear.join().await.unwrap();
        // presence_state after the join takes one place; then five shouts, unread.
        for n in 0..5 {
            let push = mouth.push_with_timeout("shout", json!({"n": n}), Duration::from_millis(50));
            let _ = push.await;
        }
        // The talker hears its own five: every broadcast has reached the slow client too.
        for n in 0..5 {
            assert_eq!(
                next_event(&mouth, "shout", Duration::from_secs(3)).await,
                Some(json!({"n": n}))
            );
        }
        eventually(
            "the slow client drops what does not fit",
            Duration::from_secs(3),
            || ear.dropped() == 3,
        )
        .await;
        // What was kept is the oldest, in order.
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(ear.recv().await.unwrap());
        }
        assert_eq!(kept[0].event, "presence_state");
        assert_eq!(kept[1].payload, json!({"n": 0}));
        assert_eq!(kept[2].payload, json!({"n": 1}));
        talker.close().await;
        slow.close().await;
    });
    server.shutdown();
}

#[test]
fn pushes_awaiting_replies_are_bounded_and_one_past_the_bound_is_refused_at_once() {
    let server = serve("127.0.0.1:0");
    let url = format!("ws://{}/socket", server.local_addr());
    let client = PhoenixClient::connect(
        &url,
        PhoenixOptions {
            max_pending: 4,
            ..options()
        },
    )
    .unwrap();
    smol::block_on(async {
        let room = client.channel("room:bound", json!({}));
        assert_eq!(room.join().await, Ok(json!({})));
        // The demo channel never answers `silence`: four pushes wait for their timeouts.
        let timeout = Duration::from_millis(1_500);
        let mut waiting: Vec<_> = (0..4)
            .map(|n| Box::pin(room.push_with_timeout("silence", json!({ "n": n }), timeout)))
            .collect();
        for push in &mut waiting {
            // The first poll hands the push to the client (in order); no reply comes.
            assert!(futures_lite::future::poll_once(push).await.is_none());
        }
        let started = Instant::now();
        assert_eq!(
            room.push("ping", json!({})).await,
            Err(PushError::TooMany),
            "the fifth push is refused"
        );
        assert!(
            started.elapsed() < timeout,
            "refused at once, not timed out"
        );
        // push_once counts too, and is refused the same way.
        assert_eq!(
            room.push_once("shout", json!({ "body": "x" })).await,
            Err(PushError::TooMany)
        );
        for push in waiting {
            assert_eq!(push.await, Err(PushError::Timeout));
        }
        // Their callers gave up, so they no longer count: pushes go through again.
        let reply = room.push("ping", json!({"n": 5})).await;
        assert_eq!(reply, Ok(json!({"pong": {"n": 5}})));
    });
    smol::block_on(client.close());
}

#[test]
fn push_once_adds_a_key_and_a_repeat_of_it_is_answered_but_not_broadcast() {
    let server = serve("127.0.0.1:0");
    let client = connect(&server);
    smol::block_on(async {
        let room = client.channel("room:once", json!({}));
        assert_eq!(room.join().await, Ok(json!({})));
        assert_eq!(
            room.push_once("shout", json!({"body": "a"})).await,
            Ok(json!({}))
        );
        let heard = next_event(&room, "shout", Duration::from_secs(3))
            .await
            .unwrap();
        let key = heard["client_msg_id"].as_str().unwrap().to_string();
        assert_eq!(heard["body"], "a");
        // The same key again, as a resend after a lost reply would carry it.
        let repeat = json!({"body": "a", "client_msg_id": key});
        assert_eq!(
            room.push("shout", repeat).await,
            Ok(json!({"duplicate": true}))
        );
        assert_eq!(
            room.push_once("shout", json!({"body": "b"})).await,
            Ok(json!({}))
        );
        let next = next_event(&room, "shout", Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(next["body"], "b", "the repeat was not broadcast");
        assert_ne!(next["client_msg_id"], key.as_str());
        assert_eq!(
            room.push_once("shout", json!("not an object")).await,
            Err(spool_smol::phoenix::PushError::NotAnObject)
        );
    });
    smol::block_on(client.close());
}

#[test]
fn a_recorded_session_of_the_channels_machine_replays_to_the_same_outbounds() {
    use spool_core::client::phoenix::{Outbound, replay};
    let server = serve("127.0.0.1:0");
    let dir = std::env::temp_dir().join(format!("spool-phoenix-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("channels.jsonl");
    let url = format!("ws://{}/socket", server.local_addr());
    let client = PhoenixClient::connect(
        &url,
        PhoenixOptions {
            record: Some(log.clone()),
            ..options()
        },
    )
    .unwrap();
    smol::block_on(async {
        let room = client.channel("room:rec", json!({"user": "r"}));
        assert_eq!(room.join().await, Ok(json!({})));
        let reply = room.push_once("shout", json!({"body": "logged"})).await;
        assert_eq!(reply, Ok(json!({})));
        room.leave().await;
    });
    smol::block_on(client.close());
    let text = std::fs::read_to_string(&log).unwrap();
    let first = replay(&text).unwrap();
    assert_eq!(first, replay(&text).unwrap(), "replays are deterministic");
    let outbounds: Vec<Outbound> = first.into_iter().flat_map(|(_, out)| out).collect();
    let sent: Vec<&str> = outbounds
        .iter()
        .filter_map(|o| match o {
            Outbound::Send { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(sent[0].contains("phx_join"), "{sent:?}");
    assert!(sent.iter().any(|t| t.contains("client_msg_id")), "{sent:?}");
    assert!(
        outbounds
            .iter()
            .any(|o| matches!(o, Outbound::PushDone { result: Ok(_), .. }))
    );
    assert!(
        outbounds
            .iter()
            .any(|o| matches!(o, Outbound::LeaveDone { .. }))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
