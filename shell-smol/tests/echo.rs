//! The smol shell end to end: an echo server on 127.0.0.1:0 and the smol client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spool_smol::ws::{self, CloseInfo, Initiator, Message};
use spool_smol::{
    Client, ClientError, ClientOptions, Conn, Handler, Incoming, Mailbox, Next, Rejection, Server,
};

/// Echoes text and binary; a text "stop" answers `Next::Stop`; user messages are sent as text.
/// Reports each connection's mailbox and its `on_close`.
#[derive(Clone, Default)]
struct Echo {
    closes: Arc<Mutex<Vec<CloseInfo>>>,
    mailboxes: Arc<Mutex<Vec<Mailbox<String>>>>,
}

impl Handler for Echo {
    type State = ();
    type User = String;

    fn on_upgrade(&self, request: &ws::Request) -> Result<(), Rejection> {
        if request.path() == "/forbidden" {
            return Err(Rejection::new(403, "not here"));
        }
        Ok(())
    }

    fn on_init(&self, conn: &mut Conn<String>) {
        self.mailboxes.lock().unwrap().push(conn.mailbox());
    }

    fn handle(&self, _: &mut (), incoming: Incoming<String>, conn: &mut Conn<String>) -> Next {
        match incoming {
            Incoming::Message(Message::Text(t)) if t == "stop" => return Next::Stop,
            Incoming::Message(m @ (Message::Text(_) | Message::Binary(_))) => conn.send(m),
            Incoming::Message(_) => {}
            Incoming::User(text) => conn.send(Message::text(text)),
        }
        Next::Continue
    }

    fn on_close(&self, _: (), info: &CloseInfo) {
        self.closes.lock().unwrap().push(info.clone());
    }
}

impl Echo {
    /// Waits until `n` connections have closed, and returns how. The 20 s bound only ends a
    /// test whose close never comes; how soon a close must come is each test's own check.
    fn wait_closes(&self, n: usize) -> Vec<CloseInfo> {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let closes = self.closes.lock().unwrap().clone();
            if closes.len() >= n {
                return closes;
            }
            // The count is taken before the panic: a guard held while panicking would poison
            // the lock for the server's own `on_close`.
            assert!(
                std::time::Instant::now() < until,
                "on_close ran {} times, wanted {n}",
                closes.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn no_deflate() -> ws::Config {
    ws::Config {
        deflate: None,
        ..ws::Config::default()
    }
}

fn round_trips(config: ws::Config) {
    let echo = Echo::default();
    let server = Server::new(echo.clone())
        .config(config.clone())
        .threads(2)
        .start()
        .unwrap();
    let url = format!("ws://{}/echo", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, config).await.unwrap();
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let messages = [
            Message::text("hello"),
            Message::text(""),
            Message::text("héllo wörld ".repeat(1000)),
            Message::binary(Bytes::from_static(&[0, 1, 2, 255])),
            Message::binary(Bytes::from(big.clone())),
            Message::text(String::from_utf8(big.iter().map(|b| b'a' + b % 26).collect()).unwrap()),
        ];
        for m in &messages {
            client.send(m.clone()).await.unwrap();
            assert_eq!(&client.recv().await.unwrap(), m);
        }
        // Many at once, answered in order.
        for i in 0..200 {
            client.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(client.recv().await.unwrap(), Message::text(format!("m{i}")));
        }
        client.close(1000, "bye").await.unwrap();
        match client.recv().await {
            Err(ClientError::Closed(info)) => {
                assert_eq!(
                    (info.code, info.clean, info.initiator),
                    (1000, true, Initiator::Local)
                );
            }
            other => panic!("expected Closed, got {other:?}"),
        }
    });
    let closes = echo.wait_closes(1);
    assert_eq!(closes.len(), 1);
    assert_eq!(
        (closes[0].code, closes[0].clean, closes[0].initiator),
        (1000, true, Initiator::Remote)
    );
    server.shutdown();
}

#[test]
fn round_trips_with_compression() {
    round_trips(ws::Config::default());
}

#[test]
fn round_trips_without_compression() {
    round_trips(no_deflate());
}

#[test]
fn on_close_runs_once_when_the_client_drops_tcp() {
    let echo = Echo::default();
    let server = Server::new(echo.clone()).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        client.send(Message::text("hi")).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Message::text("hi"));
        drop(client); // no close frame
    });
    let closes = echo.wait_closes(1);
    assert_eq!(
        (closes[0].code, closes[0].clean, closes[0].initiator),
        (1006, false, Initiator::Transport)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(echo.closes.lock().unwrap().len(), 1);
    server.shutdown();
    assert_eq!(echo.closes.lock().unwrap().len(), 1);
}

#[test]
fn a_mailbox_message_arrives_as_user() {
    let echo = Echo::default();
    let server = Server::new(echo.clone()).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        // on_init has run once the first echo is back.
        client.send(Message::text("ping")).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Message::text("ping"));
        let mailbox = echo.mailboxes.lock().unwrap()[0].clone();
        std::thread::spawn(move || mailbox.send("from elsewhere".to_string()).unwrap())
            .join()
            .unwrap();
        assert_eq!(
            client.recv().await.unwrap(),
            Message::text("from elsewhere")
        );
        client.close(1000, "").await.unwrap();
    });
    echo.wait_closes(1);
    // The connection is gone: the message comes back.
    let mailbox = echo.mailboxes.lock().unwrap()[0].clone();
    assert_eq!(
        mailbox.send("late".to_string()).unwrap_err(),
        spool_smol::MailboxError::Gone("late".to_string())
    );
    server.shutdown();
}

#[test]
fn next_stop_closes_with_1000() {
    let echo = Echo::default();
    let server = Server::new(echo.clone()).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        client.send(Message::text("stop")).await.unwrap();
        match client.recv().await {
            Err(ClientError::Closed(info)) => assert_eq!((info.code, info.clean), (1000, true)),
            other => panic!("expected Closed, got {other:?}"),
        }
    });
    let closes = echo.wait_closes(1);
    assert_eq!(
        (closes[0].code, closes[0].initiator),
        (1000, Initiator::Local)
    );
    server.shutdown();
}

#[test]
fn a_rejected_upgrade_is_a_handshake_error_and_no_on_close() {
    let echo = Echo::default();
    let server = Server::new(echo.clone()).start().unwrap();
    let url = format!("ws://{}/forbidden", server.local_addr());
    let err = smol::block_on(Client::connect(&url, ws::Config::default())).unwrap_err();
    assert!(
        matches!(err, ClientError::Handshake(ref why) if why.contains("403")),
        "{err:?}"
    );
    server.shutdown();
    assert!(echo.closes.lock().unwrap().is_empty());
}

#[test]
fn shutdown_runs_on_close_for_open_connections() {
    // Clients that read nothing while the server shuts down: each close handshake ends at the
    // core's close timeout, then the hang-up's linger.
    let config = ws::Config {
        close_timeout_ms: 300,
        ..ws::Config::default()
    };
    let echo = Echo::default();
    let server = Server::new(echo.clone())
        .config(config)
        .threads(2)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut clients = Vec::new();
        for i in 0..4 {
            let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
            client.send(Message::text(format!("{i}"))).await.unwrap();
            client.recv().await.unwrap();
            clients.push(client);
        }
        let started = std::time::Instant::now();
        server.shutdown();
        let waited = started.elapsed();
        // close_timeout_ms + the 2 s linger + 1 s is the bound.
        assert!(waited < Duration::from_millis(3300), "{waited:?}");
        let closes = echo.closes.lock().unwrap().clone();
        assert_eq!(closes.len(), 4);
        assert!(
            closes
                .iter()
                .all(|c| (c.code, c.clean, c.initiator) == (1001, false, Initiator::Local)),
            "{closes:?}"
        );
        for mut client in clients {
            // The close frame waited in the socket.
            match client.recv().await {
                Err(ClientError::Closed(info)) => assert_eq!(info.code, 1001, "{info:?}"),
                other => panic!("expected Closed, got {other:?}"),
            }
        }
    });
}

#[test]
fn shutdown_closes_with_1001_and_a_clean_handshake() {
    let echo = Echo::default();
    let server = Server::new(echo.clone()).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        client.send(Message::text("hi")).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Message::text("hi"));
        let started = std::time::Instant::now();
        let shutdown = std::thread::spawn(move || server.shutdown());
        match client.recv().await {
            Err(ClientError::Closed(info)) => {
                assert_eq!(
                    (info.code, info.reason.as_str(), info.clean, info.initiator),
                    (1001, "server shutting down", true, Initiator::Remote)
                );
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        drop(client);
        shutdown.join().unwrap();
        // An answered close ends well before the core's close timeout (5 s).
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(4), "{waited:?}");
    });
    let closes = echo.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(
        (closes[0].code, closes[0].clean, closes[0].initiator),
        (1001, true, Initiator::Local)
    );
}

#[test]
fn a_recorded_connection_replays_to_the_same_outbounds() {
    let dir = temp_dir("record");
    let echo = Echo::default();
    let server = Server::new(echo.clone())
        .record(dir.join("server"))
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let client_log = dir.join("client.jsonl");
    smol::block_on(async {
        let options = ClientOptions {
            record: Some(client_log.clone()),
            ..ClientOptions::default()
        };
        let mut client = Client::connect_with(&url, options).await.unwrap();
        client.send(Message::text("recorded")).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), Message::text("recorded"));
        client.close(1000, "").await.unwrap();
    });
    echo.wait_closes(1);
    server.shutdown();
    for path in [dir.join("server/0.jsonl"), client_log] {
        let log = std::fs::read_to_string(&path).unwrap();
        let steps = spool_core::replay::replay_ws(&log).unwrap();
        let delivered: Vec<_> = steps
            .iter()
            .flat_map(|(_, out)| out)
            .filter(|o| matches!(o, ws::Outbound::Deliver(_)))
            .collect();
        assert_eq!(
            delivered,
            [&ws::Outbound::Deliver(Message::text("recorded"))],
            "{}",
            path.display()
        );
        assert!(
            steps
                .iter()
                .flat_map(|(_, out)| out)
                .any(|o| matches!(o, ws::Outbound::Closed(_)))
        );
    }
}

#[test]
fn wss_round_trip_with_a_self_signed_certificate() {
    let dir = temp_dir("tls");
    self_signed(&dir);
    let echo = Echo::default();
    let server = Server::new(echo.clone())
        .tls(dir.join("c.pem"), dir.join("k.pem"))
        .start()
        .unwrap();
    let port = server.local_addr().port();
    smol::block_on(async {
        for host in ["127.0.0.1", "localhost"] {
            let options = ClientOptions {
                ca_file: Some(dir.join("c.pem")),
                ..ClientOptions::default()
            };
            let url = format!("wss://{host}:{port}/");
            let mut client = Client::connect_with(&url, options).await.unwrap();
            let big = Message::binary(vec![7u8; 300_000]);
            for m in [Message::text("secure"), big] {
                client.send(m.clone()).await.unwrap();
                assert_eq!(client.recv().await.unwrap(), m);
            }
            client.close(1000, "").await.unwrap();
        }
        // Without the CA the certificate is refused.
        let url = format!("wss://127.0.0.1:{port}/");
        let err = Client::connect(&url, ws::Config::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    });
    let closes = echo.wait_closes(2);
    assert!(
        closes.iter().all(|c| c.code == 1000 && c.clean),
        "{closes:?}"
    );
    server.shutdown();
}

#[test]
fn start_errors_are_typed() {
    let taken = Server::new(Echo::default()).start().unwrap();
    let err = Server::new(Echo::default())
        .bind(taken.local_addr().to_string())
        .start()
        .unwrap_err();
    assert!(
        matches!(err, spool_smol::StartError::SystemError(_)),
        "{err:?}"
    );
    let err = Server::new(Echo::default())
        .tls("/nonexistent/c.pem", "/nonexistent/k.pem")
        .start()
        .unwrap_err();
    assert!(matches!(err, spool_smol::StartError::Tls(_)), "{err:?}");
    let mut config = ws::Config::default();
    config.limits.max_frame_len = 0;
    let err = Server::new(Echo::default())
        .config(config)
        .start()
        .unwrap_err();
    assert!(matches!(err, spool_smol::StartError::Config(_)), "{err:?}");
    taken.shutdown();
}

#[test]
fn the_core_handshake_deadline_ends_a_silent_connection() {
    use std::io::Read as _;
    let dir = temp_dir("silent");
    self_signed(&dir);
    let config = ws::Config {
        handshake_timeout_ms: 200,
        ..ws::Config::default()
    };
    let plain = Server::new(Echo::default())
        .config(config.clone())
        .start()
        .unwrap();
    let tls = Server::new(Echo::default())
        .config(config)
        .tls(dir.join("c.pem"), dir.join("k.pem"))
        .start()
        .unwrap();
    for addr in [plain.local_addr(), tls.local_addr()] {
        let started = std::time::Instant::now();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).unwrap(); // EOF, not a read timeout
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    plain.shutdown();
    tls.shutdown();
}

#[test]
fn a_peer_that_stops_reading_is_closed_by_the_core_timers() {
    use std::io::{Read as _, Write as _};
    let config = ws::Config {
        idle_timeout_ms: Some(300),
        close_timeout_ms: 300,
        ..ws::Config::default()
    };
    let echo = Echo::default();
    // Past the default 1 MiB of unsent bytes the server would close this peer as too slow
    // (1008, tests/faults.rs): raised here so that it is the core's timers that end it.
    let server = Server::new(echo.clone())
        .config(config)
        .max_unsent_bytes(64 << 20)
        .start()
        .unwrap();
    let mut tcp = std::net::TcpStream::connect(server.local_addr()).unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // One 16 MiB binary message (the default frame limit), masked with a zero key; its echo
    // fills every socket buffer on the way (about 10 MiB on loopback) because this peer never
    // reads again, so the server is stuck writing when its timers fire.
    let len: u64 = 16 << 20;
    let mut frame = vec![0x82, 0xff];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + len as usize, b'x');
    // A server that timed this peer out before reading it all may hang up mid-write.
    let _ = tcp.write_all(&frame);
    let closes = echo.wait_closes(1);
    // Without its timers the server would wait on this peer for ever. Which timer ends it
    // depends on how soon the server reads: on a loaded machine it may not read at all before
    // the idle timeout, so only the close itself is checked, not its time.
    assert_eq!(
        (closes[0].code, closes[0].reason.as_str()),
        (1001, "idle timeout"),
        "{closes:?}"
    );
    drop(tcp);
    server.shutdown();
}

#[test]
fn the_core_ping_interval_reaches_the_client() {
    let config = ws::Config {
        ping_interval_ms: Some(50),
        ..ws::Config::default()
    };
    let server = Server::new(Echo::default()).config(config).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        for _ in 0..3 {
            assert!(matches!(client.recv().await.unwrap(), Message::Ping(_)));
        }
        client.close(1000, "").await.unwrap();
    });
    server.shutdown();
}

#[test]
fn traffic_pushes_the_idle_deadline_later_and_the_close_still_comes_on_time() {
    // The server's connection timer only ever moves earlier: while messages keep pushing the
    // 300 ms idle deadline later, it fires early, finds nothing due and re-arms. The
    // connection must live through 900 ms of traffic, then close about 300 ms after it stops.
    let config = ws::Config {
        idle_timeout_ms: Some(300),
        ..ws::Config::default()
    };
    let echo = Echo::default();
    let server = Server::new(echo.clone()).config(config).start().unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let quiet_from = smol::block_on(async {
        let mut client = Client::connect(&url, ws::Config::default()).await.unwrap();
        for i in 0..9 {
            smol::Timer::after(Duration::from_millis(100)).await;
            client.send(Message::text(format!("{i}"))).await.unwrap();
            assert_eq!(client.recv().await.unwrap(), Message::text(format!("{i}")));
        }
        let quiet_from = std::time::Instant::now();
        // The server's close arrives, and nothing else.
        let end = client.recv().await;
        assert!(end.is_err(), "{end:?}");
        quiet_from
    });
    let closes = echo.wait_closes(1);
    assert_eq!(closes[0].code, 1001, "{closes:?}");
    let waited = quiet_from.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    server.shutdown();
}

#[test]
fn client_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Client>();
    let (tx, rx) = mpsc::channel::<Client>();
    drop((tx, rx));
}

/// A fresh directory under the target's temp space.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("spool-smol-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `c.pem` and `k.pem`, a self-signed certificate for localhost and 127.0.0.1, into `dir`.
fn self_signed(dir: &Path) {
    // CA:FALSE: `req -x509` marks the certificate a CA by default, and webpki refuses a CA
    // certificate as the server's own (CaUsedAsEndEntity).
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-days",
            "2",
        ])
        .args(["-keyout", "k.pem", "-out", "c.pem"])
        .current_dir(dir)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
