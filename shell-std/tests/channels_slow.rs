//! A channel subscriber that stops reading while broadcasts flow: it is closed with 1008, the
//! healthy subscribers get every message, and the server's memory stays bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_core::channel::{self, Runtime, demo};
use spool_core::ws::{Config, Message};
use spool_std::channels::{ChannelSocket, Hub};
use spool_std::{Client, ClientError, Server};

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn join(client: &mut Client, user: &str) {
    let join = format!(r#"["1","1","room:slow","phx_join",{{"user":"{user}"}}]"#);
    client.send(Message::text(join)).unwrap();
    // The join reply, then presence_state (and diffs): wait for the reply.
    loop {
        let Message::Text(t) = client.recv().unwrap() else {
            continue;
        };
        if t.contains("phx_reply") {
            assert!(t.contains(r#""status":"ok""#), "{t}");
            return;
        }
    }
}

#[test]
fn a_stalled_subscriber_is_closed_with_1008_and_the_healthy_ones_get_everything() {
    const HEALTHY: usize = 5;
    const BROADCASTS: usize = 4_000; // 32 MB each: far more than loopback buffers hold
    let runtime = Runtime::new_single_node(demo::router(), channel::Config::with_seed(7));
    let hub = Arc::new(Hub::start(runtime, demo::APP, None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    // 4 MiB of backlog: a healthy debug-build reader on a busy 2-core machine may fall 1 MiB
    // behind for a moment; the stalled one falls 32 MB behind.
    let server = Server::new(socket)
        .config(ChannelSocket::ws_config())
        .max_unsent_bytes(4 << 20)
        .start()
        .unwrap();
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.local_addr());
    let options = Config {
        deflate: None,
        ..Config::default()
    };

    let mut stalled = Client::connect(&url, options.clone()).unwrap();
    join(&mut stalled, "stalled");
    let mut readers = Vec::new();
    for i in 0..HEALTHY {
        let mut client = Client::connect(&url, options.clone()).unwrap();
        join(&mut client, &format!("healthy{i}"));
        readers.push(std::thread::spawn(move || {
            let mut next = 0usize;
            while next < BROADCASTS {
                let Message::Text(t) = client.recv().unwrap() else {
                    continue;
                };
                if !t.contains(r#""shout""#) {
                    continue; // presence diffs
                }
                let tag = format!(r#""n":{next}}}"#);
                assert!(
                    t.contains(&tag),
                    "expected broadcast {next}, got {}",
                    &t[..80]
                );
                next += 1;
            }
            (next, client)
        }));
    }
    let before = resident_kib();
    let body = "x".repeat(8 << 10);
    let start = Instant::now();
    for n in 0..BROADCASTS {
        // The application broadcasts (as a pubsub publisher would), encoded once for all.
        hub.event(channel::Event::Broadcast {
            now_ms: 0,
            except: None,
            topic: "room:slow".into(),
            event: "shout".into(),
            payload: channel::Payload::from(serde_json::json!({"n": n, "body": body})),
        })
        .expect("the hub keeps up with 1,000 events a second");
        // 1,000 a second (the issue asks 500/s for 15 s; this is the same bytes sooner).
        if n % 10 == 9 {
            let due = start + Duration::from_millis(n as u64 + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    let mut peak = 0;
    let mut results = Vec::new();
    for reader in readers {
        peak = peak.max(resident_kib());
        results.push(reader.join().unwrap());
    }
    for (got, _) in &results {
        assert_eq!(*got, BROADCASTS);
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("resident memory grew by {grown_mib} MiB while {BROADCASTS} 8 KiB broadcasts flowed");
    assert!(grown_mib < 32, "resident memory grew by {grown_mib} MiB");
    // The stalled socket was cut off with 1008: what it reads now ends in that close.
    let mut shouts = 0;
    let code = loop {
        match stalled.recv() {
            Ok(Message::Text(t)) if t.contains(r#""shout""#) => {
                shouts += 1;
                // Had it never been cut, it would read every broadcast (and then wait forever).
                assert!(
                    shouts < BROADCASTS,
                    "the stalled subscriber was never cut off"
                );
            }
            Ok(_) => continue,
            Err(ClientError::Closed(info)) => break info.code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 1008);
    drop(results);
    server.shutdown();
    drop(hub);
}
