//! Event logs: recorded connections replay to the same outbounds.

use std::path::Path;

use spool_core::replay::{self, ChannelLine, Line, Setup};
use spool_core::ws::{self, Message, Outbound};
use spool_tests::{Echo, tests_dir};

/// Renders a replay as text: each event, then what it produced.
fn render(log: &str) -> String {
    let steps = replay::replay_ws(log).unwrap();
    let mut s = String::new();
    for (event, out) in steps {
        let mut event_json = serde_json::to_value(&event).unwrap();
        if let Some(bytes) = event_json.get_mut("bytes") {
            // Show received bytes readably rather than as base64.
            if let ws::Event::Receive { bytes: b, .. } = &event {
                *bytes = replay::render_bytes(b).into();
            }
        }
        s.push_str(&format!("> {event_json}\n"));
        s.push_str(&replay::render_outbounds(&out));
    }
    s
}

/// Every log under `tests/logs/` replays to its snapshot, and twice to the same result.
#[test]
fn recorded_logs_replay_to_their_snapshots() {
    let dir = tests_dir().join("logs");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut count = 0;
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && !is_channel_log(p))
    {
        let log = std::fs::read_to_string(path).unwrap();
        let first = render(&log);
        assert_eq!(first, render(&log), "replay is deterministic");
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(name, first);
        count += 1;
    }
    assert!(count > 0, "no logs in {}", dir.display());
}

/// A connection recorded by the smol shell, live, replays to what the live run did: the same
/// messages delivered and the same close.
#[test]
fn a_live_recording_replays_to_the_live_outcome() {
    let dir = std::env::temp_dir().join(format!("spool-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = spool_smol::Server::new(Echo)
        .bind("127.0.0.1:0")
        .pool_size(1)
        .record(&dir)
        .start()
        .unwrap();
    let url = format!("ws://{}/recorded", server.local_addr());
    let sent = [
        Message::text("one"),
        Message::binary(vec![2u8; 3000]),
        Message::text("three ".repeat(50)),
    ];
    smol::block_on(async {
        let mut c = spool_smol::Client::connect(&url, ws::Config::default())
            .await
            .unwrap();
        for m in &sent {
            c.send(m.clone()).await.unwrap();
            assert_eq!(&c.recv().await.unwrap(), m);
        }
        c.close(1000, "bye").await.unwrap();
    });
    server.shutdown();

    let logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "one connection, one log: {logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    let first: Line = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(matches!(first, Line::Setup(Setup::Server { .. })));
    let outbounds: Vec<Outbound> = replay::replay_ws(&log)
        .unwrap()
        .into_iter()
        .flat_map(|(_, o)| o)
        .collect();
    let delivered: Vec<Message> = outbounds
        .iter()
        .filter_map(|o| match o {
            Outbound::Deliver(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, sent);
    let closed = outbounds.iter().find_map(|o| match o {
        Outbound::Closed(c) => Some(c.clone()),
        _ => None,
    });
    let closed = closed.expect("the close is in the log");
    assert_eq!(
        (closed.code, closed.reason.as_str(), closed.clean),
        (1000, "bye", true)
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

fn is_channel_log(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("channel_"))
}

/// A channel log replayed from its setup line, as text: each event's label, then each outbound's
/// label, recipients and frame. Rendered from a fresh run, so the snapshot shows what the code
/// does now; `replay_channel` separately checks that this equals the recording.
fn render_channel(log: &str) -> String {
    use spool_core::channel::{Frame, Recipients, Runtime};
    let mut lines = log.lines();
    let ChannelLine::Setup(setup) = serde_json::from_str(lines.next().unwrap()).unwrap() else {
        panic!("a channel log starts with its setup")
    };
    let mut rt = Runtime::new_single_node(spool_smol::chat::router(), setup.config);
    let mut out = String::new();
    for line in lines {
        let ChannelLine::Step { event, .. } = serde_json::from_str(line).unwrap() else {
            panic!("a second setup line")
        };
        out.push_str(&format!("> {}\n", Runtime::event_label(&event)));
        for o in rt.handle(event) {
            let (to, frame) = o.delivery();
            let to = match to {
                Recipients::None => "-".to_string(),
                Recipients::One(c) => c.0.to_string(),
                Recipients::Many(cs) => cs
                    .iter()
                    .map(|c| c.0.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let body = match frame {
                Some(Frame::Text(t)) => t.to_string(),
                Some(Frame::Binary(b)) => format!("binary {} bytes", b.len()),
                None => serde_json::to_string(&o).unwrap(),
            };
            out.push_str(&format!(
                "  {} to {to}: {body}\n",
                Runtime::outbound_label(&o)
            ));
        }
    }
    let replay = replay::replay_channel(log, spool_smol::chat::router_for).unwrap();
    assert_eq!(
        replay.mismatches,
        [],
        "the log replays to what was recorded"
    );
    out
}

/// Channel logs recorded by `spool serve --record` (phoenix.js sessions) replay with no
/// difference from the recording, and to their snapshots.
#[test]
fn channel_logs_replay_exactly_and_to_their_snapshots() {
    let dir = tests_dir().join("logs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_channel_log(p))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no channel logs in {}", dir.display());
    for path in paths {
        let log = std::fs::read_to_string(&path).unwrap();
        let rendered = render_channel(&log);
        insta::assert_snapshot!(
            path.file_stem().unwrap().to_string_lossy().to_string(),
            rendered
        );
    }
}

/// The replayer notices a log whose recorded outbounds the code no longer produces.
#[test]
fn a_tampered_channel_log_is_reported() {
    let log =
        std::fs::read_to_string(tests_dir().join("logs/channel_phoenix_js_session.jsonl")).unwrap();
    let tampered = log.replacen(r#"\"status\":\"ok\""#, r#"\"status\":\"ko\""#, 1);
    assert_ne!(tampered, log, "the log has an ok reply to tamper with");
    let report = replay::replay_channel(&tampered, spool_smol::chat::router_for).unwrap();
    assert_eq!(report.mismatches.len(), 1);
    assert!(report.events > 10);
}
