//! Event logs: recorded connections replay to the same outbounds.

use std::path::Path;

use spool_core::replay::{self, Line, Setup};
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
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
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
