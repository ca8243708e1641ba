//! The std shell end to end on loopback: an echo server and the blocking client.

mod common;

use common::temp_dir;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool_core::replay::{Line, Setup, replay_ws};
use spool_core::ws::{CloseInfo, Config, Initiator, Message, Outbound, Request};
use spool_std::{
    Client, ClientError, ClientOptions, Conn, Handler, Incoming, Mailbox, Next, Rejection, Server,
};

/// Echoes text and binary messages; counts callbacks; hands out mailboxes and close reports.
#[derive(Default)]
struct Echo {
    inits: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
    closed: Mutex<Option<Sender<CloseInfo>>>,
    mailboxes: Mutex<Option<Sender<Mailbox<String>>>>,
}

impl Handler for Echo {
    type State = ();
    type User = String;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        match request.path() {
            "/forbidden" => Err(Rejection::new(403, "not here")),
            _ => Ok(()),
        }
    }

    fn on_init(&self, conn: &mut Conn<String>) {
        self.inits.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &*self.mailboxes.lock().unwrap() {
            tx.send(conn.mailbox()).unwrap();
        }
    }

    fn handle(&self, _: &mut (), incoming: Incoming<String>, conn: &mut Conn<String>) -> Next {
        match incoming {
            Incoming::Message(Message::Text(t)) if t == "stop" => return Next::Stop,
            Incoming::Message(Message::Text(t)) if t == "flood" => {
                let mib = bytes::Bytes::from(vec![7u8; 1 << 20]);
                for _ in 0..64 {
                    conn.send(Message::Binary(mib.clone()));
                }
            }
            Incoming::Message(m) if !m.is_control() => conn.send(m),
            Incoming::Message(_) => {}
            Incoming::User(text) => conn.send(Message::text(format!("user:{text}"))),
        }
        Next::Continue
    }

    fn on_close(&self, _: (), info: &CloseInfo) {
        self.closes.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &*self.closed.lock().unwrap() {
            let _ = tx.send(info.clone());
        }
    }
}

impl Echo {
    fn reporting_closes() -> (Echo, Receiver<CloseInfo>) {
        let (tx, rx) = mpsc::channel();
        (
            Echo {
                closed: Mutex::new(Some(tx)),
                ..Echo::default()
            },
            rx,
        )
    }
}

/// Deterministic bytes that do not compress to nothing.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8 & 0x3f // six bits: some redundancy for deflate to find
        })
        .collect()
}

fn round_trip(client: &mut Client, message: Message) {
    client.send(message.clone()).unwrap();
    assert_eq!(client.recv().unwrap(), message);
}

#[test]
fn text_binary_and_a_large_message_round_trip_with_and_without_compression() {
    let plain = Config {
        deflate: None,
        ..Config::default()
    };
    for config in [Config::default(), plain] {
        let server = Server::new(Echo::default())
            .threads(2)
            .config(config.clone())
            .start()
            .unwrap();
        let url = format!("ws://{}/echo", server.local_addr());
        let mut client = Client::connect(&url, config.clone()).unwrap();
        round_trip(&mut client, Message::text("hello"));
        round_trip(&mut client, Message::text(""));
        round_trip(&mut client, Message::binary(vec![0u8, 1, 2, 255]));
        let big = noise(1 << 20);
        round_trip(&mut client, Message::binary(big.clone()));
        let big_text: String = big.iter().map(|b| char::from(b'a' + b % 26)).collect();
        round_trip(&mut client, Message::text(big_text));
        // Several messages in flight at once come back in order.
        for i in 0..50 {
            client.send(Message::text(format!("m{i}"))).unwrap();
        }
        for i in 0..50 {
            assert_eq!(client.recv().unwrap(), Message::text(format!("m{i}")));
        }
        client.close(1000, "done").unwrap();
        assert!(
            matches!(client.recv(), Err(ClientError::Closed(info)) if info.code == 1000 && info.clean)
        );
        assert!(matches!(
            client.send(Message::text("late")),
            Err(ClientError::Closed(_))
        ));
        server.shutdown();
    }
}

#[test]
fn subprotocol_is_negotiated_and_stop_closes_with_1000() {
    let server_config = Config {
        protocols: vec!["chat".into()],
        ..Config::default()
    };
    let server = Server::new(Echo::default())
        .threads(2)
        .config(server_config)
        .start()
        .unwrap();
    let client_config = Config {
        protocols: vec!["other".into(), "chat".into()],
        ..Config::default()
    };
    let url = format!("ws://{}/", server.local_addr());
    let mut client = Client::connect(&url, client_config).unwrap();
    assert_eq!(client.protocol(), Some("chat"));
    client.send(Message::text("stop")).unwrap();
    match client.recv() {
        Err(ClientError::Closed(info)) => {
            assert_eq!(
                (info.code, info.initiator, info.clean),
                (1000, Initiator::Remote, true)
            );
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    server.shutdown();
}

#[test]
fn timers_fire_on_both_sides() {
    let server_config = Config {
        idle_timeout_ms: Some(300),
        ..Config::default()
    };
    let server = Server::new(Echo::default())
        .threads(2)
        .config(server_config)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    // A client that pings every 50 ms keeps the server's idle timer from firing; the pongs
    // come back through recv.
    let pinging = Config {
        ping_interval_ms: Some(50),
        ..Config::default()
    };
    let mut client = Client::connect(&url, pinging).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert!(matches!(client.recv().unwrap(), Message::Pong(_)));
    }
    assert!(
        started.elapsed() > Duration::from_millis(400),
        "pings came too fast"
    );
    round_trip(&mut client, Message::text("still open"));
    client.close(1000, "").unwrap();
    // A silent client is closed by the server's idle timer, with 1001.
    let mut silent = Client::connect(&url, Config::default()).unwrap();
    match silent.recv() {
        Err(ClientError::Closed(info)) => {
            assert_eq!((info.code, info.initiator), (1001, Initiator::Remote))
        }
        other => panic!("expected the idle timeout, got {other:?}"),
    }
    server.shutdown();
}

#[test]
fn a_rejected_upgrade_fails_the_handshake() {
    let server = Server::new(Echo::default()).threads(2).start().unwrap();
    let url = format!("ws://{}/forbidden", server.local_addr());
    match Client::connect(&url, Config::default()) {
        Err(ClientError::Handshake(reason)) => assert!(!reason.is_empty()),
        Err(e) => panic!("expected a handshake error, got {e}"),
        Ok(_) => panic!("expected a handshake error, got a connection"),
    }
    server.shutdown();
}

#[test]
fn on_close_runs_once_when_the_client_drops_the_tcp_connection() {
    let (echo, closed) = Echo::reporting_closes();
    let (inits, closes) = (echo.inits.clone(), echo.closes.clone());
    let server = Server::new(echo).threads(2).start().unwrap();
    let mut client =
        Client::connect(&format!("ws://{}/", server.local_addr()), Config::default()).unwrap();
    round_trip(&mut client, Message::text("hi"));
    drop(client); // no close frame: the server sees EOF
    let info = closed
        .recv_timeout(Duration::from_secs(5))
        .expect("on_close within 5 s");
    assert_eq!(
        (info.code, info.clean, info.initiator),
        (1006, false, Initiator::Transport)
    );
    server.shutdown(); // joins every connection thread: no second on_close can be pending
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    assert_eq!(closes.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_closes_live_connections_with_1001() {
    let (echo, closed) = Echo::reporting_closes();
    let closes = echo.closes.clone();
    let server = Server::new(echo).threads(2).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::connect(&url, Config::default()).unwrap())
        .collect();
    for client in &mut clients {
        round_trip(client, Message::text("up"));
    }
    // Each client answers the server's close frame from inside recv, on its own thread.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| std::thread::spawn(move || client.recv()))
        .collect();
    server.shutdown();
    assert_eq!(closes.load(Ordering::SeqCst), 3);
    for _ in 0..3 {
        let info = closed.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!((info.code, info.clean), (1001, true));
    }
    for reader in readers {
        match reader.join().unwrap() {
            Err(ClientError::Closed(info)) => {
                assert_eq!((info.code, info.initiator), (1001, Initiator::Remote))
            }
            other => panic!("expected the server's close, got {other:?}"),
        }
    }
}

#[test]
fn shutdown_does_not_hang_on_a_peer_that_stopped_reading() {
    let (echo, closed) = Echo::reporting_closes();
    let config = Config {
        deflate: None,
        close_timeout_ms: 100,
        ..Config::default()
    };
    let server = Server::new(echo)
        .threads(2)
        .config(config.clone())
        .start()
        .unwrap();
    let mut client = Client::connect(&format!("ws://{}/", server.local_addr()), config).unwrap();
    round_trip(&mut client, Message::text("up"));
    // 64 MiB toward a client that never reads again: the server's writes block once the
    // socket buffers are full.
    client.send(Message::text("flood")).unwrap();
    let started = std::time::Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let info = closed.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(!info.clean);
    drop(client);
}

#[test]
fn a_mailbox_message_reaches_handle_as_user() {
    let (tx, mailboxes) = mpsc::channel();
    let echo = Echo {
        mailboxes: Mutex::new(Some(tx)),
        ..Echo::default()
    };
    let server = Server::new(echo).threads(2).start().unwrap();
    let mut client =
        Client::connect(&format!("ws://{}/", server.local_addr()), Config::default()).unwrap();
    let mailbox = mailboxes.recv_timeout(Duration::from_secs(5)).unwrap();
    mailbox.send("hello".to_string()).unwrap();
    assert_eq!(client.recv().unwrap(), Message::text("user:hello"));
    // From another thread too, while the client sends its own.
    let from_thread = mailbox.clone();
    std::thread::spawn(move || from_thread.send("again".to_string()).unwrap())
        .join()
        .unwrap();
    assert_eq!(client.recv().unwrap(), Message::text("user:again"));
    client.close(1000, "").unwrap();
    server.shutdown();
    // The connection is gone: the message comes back.
    assert_eq!(
        mailbox.send("late".to_string()).unwrap_err(),
        spool_std::MailboxError::Gone("late".to_string())
    );
}

#[test]
fn interleaved_mailbox_messages_to_several_connections_all_arrive_in_order() {
    // One thread sends round after round to every connection, as a broadcast hub does: the
    // event loop finds them interleaved in its inbox, writes a connection at once when its
    // last message of the batch is handled and the others at the batch's end. Every message
    // must come out, in order, on each connection.
    const CONNECTIONS: usize = 4;
    const ROUNDS: usize = 200;
    let (tx, mailboxes) = mpsc::channel();
    let echo = Echo {
        mailboxes: Mutex::new(Some(tx)),
        ..Echo::default()
    };
    let server = Server::new(echo).threads(1).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::connect(&url, Config::default()).unwrap())
        .collect();
    let boxes: Vec<Mailbox<String>> = (0..CONNECTIONS)
        .map(|_| mailboxes.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    std::thread::spawn(move || {
        for round in 0..ROUNDS {
            for mailbox in &boxes {
                mailbox.send(round.to_string()).unwrap();
            }
        }
    })
    .join()
    .unwrap();
    // A lost write leaves a client waiting for good: it reads on a thread of its own, and the
    // test waits a bounded time for the verdict.
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        for client in &mut clients {
            for round in 0..ROUNDS {
                let got = client.recv().map_err(|e| e.to_string());
                if got != Ok(Message::text(format!("user:{round}"))) {
                    let _ = done_tx.send(Err(format!("round {round}: {got:?}")));
                    return;
                }
            }
            let _ = client.close(1000, "");
        }
        let _ = done_tx.send(Ok(()));
    });
    let verdict = done
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| Err("messages still missing after 20 s".to_string()));
    assert_eq!(verdict, Ok(()));
    server.shutdown();
}

#[test]
fn wss_round_trip_with_a_self_signed_certificate() {
    let (dir, cert, key) = common::self_signed_cert("tls");

    let server = Server::new(Echo::default())
        .threads(2)
        .tls(&cert, &key)
        .start()
        .unwrap();
    let port = server.local_addr().port();
    for host in ["127.0.0.1", "localhost"] {
        let options = ClientOptions {
            ca_file: Some(cert.clone()),
            ..ClientOptions::default()
        };
        let mut client = Client::connect_with(&format!("wss://{host}:{port}/"), options).unwrap();
        round_trip(&mut client, Message::text("secret"));
        round_trip(&mut client, Message::binary(noise(1 << 20)));
        client.close(1000, "").unwrap();
    }
    // Without the CA the certificate is refused.
    let refused = Client::connect(&format!("wss://127.0.0.1:{port}/"), Config::default());
    assert!(
        matches!(refused, Err(ClientError::Tls(_))),
        "{:?}",
        refused.err()
    );
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn both_sides_record_logs_that_replay() {
    let dir = temp_dir("record");
    let server = Server::new(Echo::default())
        .threads(2)
        .record(dir.join("server"))
        .start()
        .unwrap();
    let client_log = dir.join("client.jsonl");
    let options = ClientOptions {
        record: Some(client_log.clone()),
        ..ClientOptions::default()
    };
    let mut client =
        Client::connect_with(&format!("ws://{}/", server.local_addr()), options).unwrap();
    round_trip(&mut client, Message::text("on the record"));
    client.close(1000, "").unwrap();
    drop(client);
    server.shutdown();

    for (path, server_side) in [
        (dir.join("server").join("0.jsonl"), true),
        (client_log, false),
    ] {
        let log = std::fs::read_to_string(&path).unwrap();
        let first: Line = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert_eq!(
            matches!(first, Line::Setup(Setup::Server { .. })),
            server_side,
            "{}",
            path.display()
        );
        let steps = replay_ws(&log).unwrap();
        let outbounds: Vec<&Outbound> = steps.iter().flat_map(|(_, out)| out).collect();
        assert!(outbounds.contains(&&Outbound::Deliver(Message::text("on the record"))));
        assert!(
            outbounds
                .iter()
                .any(|o| matches!(o, Outbound::Closed(info) if info.clean))
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
