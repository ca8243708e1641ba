//! The `spool` binary on SIGTERM and SIGINT: it stops accepting, closes every connection with
//! 1001, finishes its recordings and exits 0 within `--grace-ms`.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Spool, run, temp_dir};
use spool_core::ws::{Config, Message};
use spool_std::{Client, ClientError};

/// How long a test lets the process take to exit after the signal: well inside the default
/// grace, and far above what a clean stop takes on loopback.
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// A connected echo client that has had one message echoed (so its `on_init` has run).
fn echo_client(spool: &Spool, n: usize) -> Client {
    let url = format!("ws://{}/", spool.addr);
    let mut client = Client::connect(&url, Config::default()).unwrap();
    let text = format!("hello {n}");
    client.send(Message::text(text.as_str())).unwrap();
    assert_eq!(client.recv().unwrap(), Message::text(text.as_str()));
    client
}

/// Reads until the connection ends and returns its close code.
fn close_code(client: &mut Client) -> u16 {
    loop {
        match client.recv() {
            Ok(_) => {}
            Err(ClientError::Closed(info)) => return info.code,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

fn assert_exits_0(spool: &mut Spool, signal: &str) {
    let status = spool.wait_for(EXIT_BOUND);
    let stderr = spool.stderr();
    let status = status.unwrap_or_else(|| panic!("still running after SIG{signal}:\n{stderr}"));
    assert!(status.success(), "{status} after SIG{signal}:\n{stderr}");
    assert!(
        stderr.contains(&format!("SIG{signal}: stopping")) && stderr.contains("stopped in"),
        "the stop is logged:\n{stderr}"
    );
}

fn echo_closes_every_connection_with_1001(shell: &str, signal: &str) {
    let dir = temp_dir(&format!("signal-echo-{shell}"));
    let record = dir.to_str().unwrap();
    let mut spool = Spool::start(&["echo", "--port", "0", "--shell", shell, "--record", record]);
    let mut clients: Vec<Client> = (0..3).map(|n| echo_client(&spool, n)).collect();
    spool.signal(signal);
    for client in &mut clients {
        assert_eq!(close_code(client), 1001);
    }
    assert_exits_0(&mut spool, signal);
    assert!(
        TcpStream::connect(spool.addr).is_err(),
        "nothing listens after the exit"
    );
    // Every connection's log is complete: it replays, through to the 1001 close.
    let (status, stdout, stderr) = run(&["replay", record]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.matches("replayed websocket log").count(),
        3,
        "{stdout}"
    );
    assert_eq!(stdout.matches("closed with 1001").count(), 3, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn echo_smol_closes_every_connection_with_1001_on_sigterm() {
    echo_closes_every_connection_with_1001("smol", "TERM");
}

#[test]
fn echo_std_closes_every_connection_with_1001_on_sigterm() {
    echo_closes_every_connection_with_1001("std", "TERM");
}

#[test]
fn echo_std_stops_on_sigint_too() {
    echo_closes_every_connection_with_1001("std", "INT");
}

/// `spool serve --record`: members of a room are closed with 1001, and the channel log ends
/// with each one's disconnect and replays clean.
fn serve_closes_sockets_and_completes_its_recording(signal: &str) {
    let dir = temp_dir("signal-serve");
    let log = dir.join("channels.jsonl");
    let mut spool = Spool::start(&["serve", "--port", "0", "--record", log.to_str().unwrap()]);
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", spool.addr);
    let mut clients = Vec::new();
    for n in 0..2 {
        let mut client = Client::connect(&url, Config::default()).unwrap();
        let join = format!(r#"["{n}","{n}","room:lobby","phx_join",{{"user":"u{n}"}}]"#);
        client.send(Message::text(join.as_str())).unwrap();
        // The join's reply (after any presence traffic) says the hub has the member.
        loop {
            match client.recv().unwrap() {
                Message::Text(t) if t.contains("phx_reply") => {
                    assert!(t.contains(r#""status":"ok""#), "{t}");
                    break;
                }
                _ => {}
            }
        }
        clients.push(client);
    }
    spool.signal(signal);
    for client in &mut clients {
        assert_eq!(close_code(client), 1001);
    }
    assert_exits_0(&mut spool, signal);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is whole JSON"))
        .collect();
    let event_type = |l: &serde_json::Value| l["step"]["event"]["type"].as_str().map(String::from);
    let last = lines.last().expect("a recording");
    assert_eq!(event_type(last).as_deref(), Some("disconnect"), "{text}");
    let disconnects = lines
        .iter()
        .filter(|l| event_type(l).as_deref() == Some("disconnect"))
        .count();
    assert_eq!(disconnects, 2, "{text}");
    let (status, stdout, stderr) = run(&["replay", log.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("replayed channel log"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn serve_closes_sockets_and_completes_its_recording_on_sigterm() {
    serve_closes_sockets_and_completes_its_recording("TERM");
}

#[test]
fn serve_stops_on_sigint_too() {
    serve_closes_sockets_and_completes_its_recording("INT");
}

/// A peer that never answers the close cannot hold the process past `--grace-ms`: it exits 0
/// and logs what it cut off.
#[test]
fn a_silent_peer_is_cut_off_after_the_grace_period() {
    let mut spool = Spool::start(&["echo", "--port", "0", "--grace-ms", "300"]);
    // Completes the opening handshake, then never reads again nor answers the close.
    let mut silent = TcpStream::connect(spool.addr).unwrap();
    silent
        .write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                spool.addr
            )
            .as_bytes(),
        )
        .unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        silent.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"));
    // A second, well-behaved client proves the handshake above has been served by now.
    let mut polite = echo_client(&spool, 0);
    let signalled = Instant::now();
    spool.signal("TERM");
    assert_eq!(close_code(&mut polite), 1001);
    let status = spool.wait_for(EXIT_BOUND);
    let took = signalled.elapsed();
    let stderr = spool.stderr();
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}:\n{stderr}");
    assert!(
        stderr.contains("grace period of 300 ms is over") && stderr.contains("cutting off 1 "),
        "{stderr}"
    );
    drop(silent);
}
