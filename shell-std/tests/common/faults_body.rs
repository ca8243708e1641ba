// The fault tests both shells run: their raw layer and its bounds, on loopback, through the
// blocking client (the server under test is the including file's `shell`, spool_std or
// spool_smol): a line protocol over TCP and TLS, the connection limit, a panicking handler, a
// peer that stops reading, timers while it does not, a full mailbox. Included with
// `include!` by shell-std/tests/faults.rs and shell-smol/tests/faults.rs, after
// `use <crate> as shell;` and the `common` and `lines` modules.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faulty::Faulty;
use spool_core::ws::{Config, Message};
use spool_std::{Client, ClientError, ClientOptions, MailboxError};

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// The line protocol's conversation, over any stream.
fn converse(stream: impl Read + Write) {
    let mut reader = BufReader::new(stream);
    assert_eq!(read_line(&mut reader), "HELLO\n");
    reader.get_mut().write_all(b"hello\nwor").unwrap();
    assert_eq!(read_line(&mut reader), "HELLO\n");
    reader.get_mut().write_all(b"ld\r\nTIME\n").unwrap();
    assert_eq!(read_line(&mut reader), "WORLD\n");
    assert!(read_line(&mut reader).ends_with(" ms\n"));
    reader.get_mut().write_all(b"QUIT\n").unwrap();
    assert_eq!(read_line(&mut reader), "BYE\n");
    assert_eq!(read_line(&mut reader), "", "closed after BYE");
}

#[test]
fn a_line_protocol_runs_on_the_raw_layer_over_tcp() {
    let server = shell::TcpServer::new(lines::Lines).start().unwrap();
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    converse(stream);

    // A line past the bound is refused and the connection closed.
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_line(&mut reader), "HELLO\n");
    let long = vec![b'x'; lines::MAX_LINE + 10];
    reader.get_mut().write_all(&long).unwrap();
    assert_eq!(read_line(&mut reader), "ERR line too long\n");
    assert_eq!(read_line(&mut reader), "");
    server.shutdown();
}

#[test]
fn a_line_protocol_runs_on_the_raw_layer_over_tls() {
    let (dir, cert, key) = common::self_signed_cert("lines-tls");
    let server = shell::TcpServer::new(lines::Lines)
        .tls(&cert, &key)
        .start()
        .unwrap();
    let config = spool_std::tls::client_config(Some(&cert)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    converse(rustls::StreamOwned::new(tls, tcp));
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_panicking_handler_closes_its_connection_with_1011_and_on_close_runs() {
    let (tx, closes) = mpsc::channel();
    // One thread: the bystander shares it with the connection that panics.
    let server = shell::Server::new(Faulty::reporting(tx))
        .threads(1)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let mut client = Client::connect(&url, Config::default()).unwrap();
    let mut bystander = Client::connect(&url, Config::default()).unwrap();
    client.send(Message::text("panic")).unwrap();
    match client.recv() {
        Err(ClientError::Closed(info)) => assert_eq!(info.code, 1011),
        other => panic!("expected a 1011 close, got {other:?}"),
    }
    let info = closes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(info.code, 1011);
    // The other connection on the same loop is untouched.
    bystander.send(Message::text("still here")).unwrap();
    assert_eq!(bystander.recv().unwrap(), Message::text("still here"));
    server.shutdown();
}

#[test]
fn past_the_connection_limit_new_connections_get_503() {
    let server = shell::Server::new(Faulty::default())
        .max_connections(1)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let mut first = Client::connect(&url, Config::default()).unwrap();
    let mut refused = TcpStream::connect(server.local_addr()).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    refused.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    // The held connection keeps working, and its slot frees when it goes.
    first.send(Message::text("ok")).unwrap();
    assert_eq!(first.recv().unwrap(), Message::text("ok"));
    first.close(1000, "").unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.connections(), 0);
    assert!(Client::connect(&url, Config::default()).is_ok());
    server.shutdown();
}

#[test]
fn a_peer_that_stops_reading_is_closed_with_1008_and_others_keep_their_data() {
    let (tx, closes) = mpsc::channel();
    let (mtx, mailboxes) = mpsc::channel();
    let handler = Faulty {
        closes: Mutex::new(Some(tx)),
        mailboxes: Mutex::new(Some(mtx)),
    };
    // Uncompressed, so that 8 KiB messages are 8 KiB on the wire.
    let plain = Config {
        deflate: None,
        ..Config::default()
    };
    let server = shell::Server::new(handler)
        .config(plain)
        .max_unsent_bytes(256 << 10)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    // The stalled peer: handshake done, then never reads again.
    let stalled = Client::connect(&url, Config::default()).unwrap();
    let stalled_box = mailboxes.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut healthy = Client::connect(&url, Config::default()).unwrap();
    let healthy_box = mailboxes.recv_timeout(Duration::from_secs(5)).unwrap();

    const COUNT: usize = 3000; // 24 MB: more than loopback's socket buffers hold
    let reader = std::thread::spawn(move || {
        let mut got = 0usize;
        while got < COUNT {
            match healthy.recv() {
                Ok(Message::Binary(b)) => {
                    assert_eq!(b.len(), 8 << 10);
                    assert_eq!(b[0], (got % 251) as u8, "message {got} out of order");
                    got += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("healthy peer lost its connection after {got}: {e}"),
            }
        }
        (got, healthy)
    });
    let mut stalled_refused = false;
    for i in 0..COUNT {
        let message = vec![(i % 251) as u8; 8 << 10];
        healthy_box.send(message.clone()).unwrap();
        match stalled_box.send(message) {
            Ok(()) | Err(MailboxError::Full(_)) => {}
            Err(MailboxError::Gone(_)) => stalled_refused = true,
        }
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let (got, healthy) = reader.join().unwrap();
    assert_eq!(got, COUNT);
    let info = closes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(info.code, 1008, "{info:?}");
    assert!(info.reason.starts_with("too slow"), "{info:?}");
    assert!(
        stalled_refused,
        "the stalled peer's mailbox still took messages"
    );
    drop((stalled, healthy));
    server.shutdown();
}

/// Timers fire while the peer reads nothing and the server has bytes queued for it.
fn timers_fire_while_the_peer_does_not_read(tls: bool) {
    let (tx, closes) = mpsc::channel();
    let handler = Faulty {
        closes: Mutex::new(Some(tx)),
        ..Faulty::default()
    };
    let config = Config {
        idle_timeout_ms: Some(400),
        close_timeout_ms: 300,
        ..Config::default()
    };
    let mut server = shell::Server::new(handler).config(config);
    let mut options = ClientOptions::default();
    let mut dir = None;
    if tls {
        let (d, cert, key) = common::self_signed_cert("timers-tls");
        server = server.tls(&cert, &key);
        options.ca_file = Some(cert);
        dir = Some(d);
    }
    let server = server.start().unwrap();
    let scheme = if tls { "wss" } else { "ws" };
    let url = format!("{scheme}://localhost:{}/", server.local_addr().port());
    let mut client = Client::connect_with(&url, options).unwrap();
    let start = Instant::now();
    client.send(Message::text("half")).unwrap();
    // The client never reads again: the server's 512 KiB stay queued, and its idle timer
    // (400 ms) and then its close timer (300 ms) must still fire.
    let info = closes.recv_timeout(Duration::from_secs(5)).unwrap();
    let took = start.elapsed();
    assert_eq!(info.code, 1001, "{info:?}");
    assert!(
        took < Duration::from_millis(2500),
        "closed after {took:?}, timers late"
    );
    drop(client);
    server.shutdown();
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn timers_fire_while_the_peer_does_not_read_plain() {
    timers_fire_while_the_peer_does_not_read(false);
}

#[test]
fn timers_fire_while_the_peer_does_not_read_tls() {
    timers_fire_while_the_peer_does_not_read(true);
}

#[test]
fn a_full_mailbox_says_full() {
    let (mtx, mailboxes) = mpsc::channel();
    let handler = Faulty {
        mailboxes: Mutex::new(Some(mtx)),
        ..Faulty::default()
    };
    let server = shell::Server::new(handler)
        .limits(shell::ServerLimits {
            mailbox_capacity: 4,
            ..shell::ServerLimits::default()
        })
        .threads(1)
        .start()
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let _client = Client::connect(&url, Config::default()).unwrap();
    let mailbox = mailboxes.recv_timeout(Duration::from_secs(5)).unwrap();
    // From this thread, faster than one loop drains: some sends must come back Full, and
    // every one that was taken is counted against the bound until it is handled.
    let full = Arc::new(AtomicUsize::new(0));
    for _ in 0..10_000 {
        if let Err(MailboxError::Full(_)) = mailbox.send(vec![0u8; 16]) {
            full.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert!(
        full.load(Ordering::Relaxed) > 0,
        "a 4-message mailbox never filled"
    );
    server.shutdown();
}

#[test]
fn a_panic_in_on_init_or_on_close_does_not_take_the_thread_down() {
    /// A raw handler whose every callback panics when the peer's first byte says so.
    struct Brittle;
    impl shell::tcp::Handler for Brittle {
        type State = ();
        type User = ();
        fn on_init(&self, conn: &mut shell::tcp::Conn<()>) {
            conn.send(bytes::Bytes::from_static(b"hi\n"));
        }
        fn handle(
            &self,
            _: &mut (),
            packet: shell::tcp::Packet<()>,
            conn: &mut shell::tcp::Conn<()>,
        ) {
            if let shell::tcp::Packet::Data(d) = packet {
                if d.starts_with(b"panic") {
                    panic!("asked to");
                }
                conn.send(d);
            }
        }
        fn on_close(&self, _: (), _: shell::tcp::End, _: u64) {
            panic!("on_close too");
        }
    }
    let server = shell::TcpServer::new(Brittle).threads(1).start().unwrap();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert_eq!(read_line(&mut reader), "hi\n");
        stream.write_all(b"echo\n").unwrap();
        assert_eq!(read_line(&mut reader), "echo\n");
        stream.write_all(b"panic\n").unwrap();
        assert_eq!(read_line(&mut reader), "", "closed after the panic");
    }
    server.shutdown();
}
