//! `spool serve` as a browser meets it: the origin check on the socket (Phoenix's
//! `check_origin`), TLS, and error messages that name what failed.

mod common;

use common::{Spool, get_status, run, self_signed, temp_dir, upgrade_status};
use spool_core::ws::{Config, Message};
use spool_std::{Client, ClientOptions};

const SOCKET: &str = "/socket/websocket?vsn=2.0.0";

#[test]
fn the_socket_takes_its_own_host_and_no_origin_and_refuses_others_with_403() {
    let spool = Spool::start(&["serve", "--port", "0"]);
    let own = format!("http://{}", spool.addr);
    let other_port = format!("http://127.0.0.1:{}", spool.addr.port() + 1);
    assert_eq!(upgrade_status(spool.addr, SOCKET, &[("Origin", &own)]), 101);
    // Phoenix compares hosts only, so another port on the same host passes.
    assert_eq!(
        upgrade_status(spool.addr, SOCKET, &[("Origin", &other_port)]),
        101
    );
    // No Origin: not a browser, so no visitor's cookies to ride on.
    assert_eq!(upgrade_status(spool.addr, SOCKET, &[]), 101);
    for foreign in [
        "http://evil.example",
        "https://127.0.0.1.evil.example",
        "null",
    ] {
        assert_eq!(
            upgrade_status(spool.addr, SOCKET, &[("Origin", foreign)]),
            403,
            "{foreign}"
        );
    }
    // The chat page is still served, and a socket elsewhere is still not found.
    assert_eq!(get_status(spool.addr, "/"), 200);
    assert_eq!(
        upgrade_status(spool.addr, "/nowhere", &[("Origin", &own)]),
        404
    );
}

#[test]
fn allow_origin_adds_origins_in_phoenix_forms() {
    let spool = Spool::start(&[
        "serve",
        "--port",
        "0",
        "--allow-origin",
        "https://app.example",
        "--allow-origin",
        "//*.partner.example",
    ]);
    let status = |origin: &str| upgrade_status(spool.addr, SOCKET, &[("Origin", origin)]);
    assert_eq!(status("https://app.example"), 101);
    assert_eq!(
        status("http://app.example"),
        403,
        "the scheme is part of it"
    );
    assert_eq!(status("http://eu.partner.example:8080"), 101);
    assert_eq!(status("https://partner.example.evil"), 403);
    assert_eq!(status(&format!("http://{}", spool.addr)), 101, "own host");
    assert_eq!(status("https://elsewhere.example"), 403);
    // The live views' socket follows the same policy.
    let live = |origin: &str| upgrade_status(spool.addr, "/live", &[("Origin", origin)]);
    assert_eq!(live("https://app.example"), 101);
    assert_eq!(live("http://eu.partner.example:8080"), 101);
    assert_eq!(live("https://elsewhere.example"), 403);
}

#[test]
fn a_bad_allow_origin_is_refused_at_start() {
    let (status, _, stderr) = run(&["serve", "--port", "0", "--allow-origin", "app.example"]);
    assert!(!status.success());
    assert!(stderr.contains("app.example"), "{stderr}");
}

/// phoenix.js's join, over wss:// through a rustls client trusting a throwaway certificate.
#[test]
fn serve_with_tls_certificate_takes_a_join_over_wss() {
    let dir = temp_dir("serve-tls");
    let (cert, key) = self_signed(&dir);
    let spool = Spool::start(&[
        "serve",
        "--port",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("wss://localhost:{}{SOCKET}", spool.addr.port());
    let options = ClientOptions {
        ca_file: Some(cert.clone()),
        headers: vec![(
            "Origin".into(),
            format!("https://localhost:{}", spool.addr.port()),
        )],
        config: Config::default(),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(&url, options).unwrap();
    client
        .send(Message::text(
            r#"["1","1","room:lobby","phx_join",{"user":"tls"}]"#,
        ))
        .unwrap();
    let reply = loop {
        match client.recv().unwrap() {
            Message::Text(t) if t.contains("phx_reply") => break t,
            _ => {}
        }
    };
    assert!(reply.contains(r#""status":"ok""#), "{reply}");
    client.close(1000, "").unwrap();
    // Plain ws:// to a TLS port gets nowhere.
    let plain = format!("ws://127.0.0.1:{}{SOCKET}", spool.addr.port());
    assert!(Client::connect(&plain, Config::default()).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_record_file_that_cannot_be_created_is_named() {
    let (status, _, stderr) = run(&["serve", "--port", "0", "--record", "/no/such/dir/x"]);
    assert!(!status.success());
    assert!(
        stderr.contains("cannot create the record file /no/such/dir/x"),
        "{stderr}"
    );
}

#[test]
fn a_record_directory_that_cannot_be_created_is_named() {
    let (status, _, stderr) = run(&["echo", "--port", "0", "--record", "/proc/no/such/dir"]);
    assert!(!status.success());
    assert!(
        stderr.contains("cannot create the record directory /proc/no/such/dir"),
        "{stderr}"
    );
}

#[test]
fn an_address_in_use_is_named() {
    let spool = Spool::start(&["serve", "--port", "0"]);
    let port = spool.addr.port().to_string();
    let (status, _, stderr) = run(&["serve", "--port", &port]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot start the server on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// Notes what spool-std's reconnecting client hears: texts and failed attempts.
struct StdNotes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl spool_std::late::Handler for StdNotes {
    type Call = ();
    type Reply = ();
    type Info = ();

    fn handle_in(&mut self, frame: Message) -> spool_std::late::Next {
        if let Some(text) = frame.as_text() {
            self.0.lock().unwrap().push(format!("text {text}"));
        }
        spool_std::late::Next::Ok
    }

    fn handle_failure(&mut self, error: &spool_core::client::Error) {
        self.0.lock().unwrap().push(format!("failed {error}"));
    }
}

#[track_caller]
fn wait_for_note(notes: &std::sync::Mutex<Vec<String>>, what: &str) {
    let start = std::time::Instant::now();
    while !notes.lock().unwrap().iter().any(|n| n.contains(what)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no {what:?} in {:?}",
            notes.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// spool-std's reconnecting driver over wss://: TLS trusting a test CA, echoes through it, a
/// reconnect after the server restarts (TLS again), and a client that does not trust the
/// certificate failing each attempt with a TLS error rather than hanging.
#[test]
fn the_std_reconnecting_client_speaks_wss_and_reconnects_over_tls() {
    use spool_core::client::{self, Backoff};
    use spool_core::ws::Url;
    let dir = temp_dir("std-wss");
    let (cert, key) = self_signed(&dir);
    let args = |port: &str| {
        [
            "echo",
            "--port",
            port,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]
        .map(str::to_string)
    };
    let start = |port: &str| {
        let args = args(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Spool::start(&args)
    };
    let mut echo = start("0");
    let port = echo.addr.port();
    let url = Url::parse(&format!("wss://localhost:{port}/")).unwrap();
    let mut config = client::Config::new(url);
    config.backoff = Backoff {
        initial_ms: 50,
        max_ms: 200,
        ..Backoff::default()
    };
    let notes = std::sync::Arc::default();
    let tls = spool_std::tls::client_config(Some(&cert)).unwrap();
    let handle = spool_std::reconnecting::connect_with_tls(
        config.clone(),
        StdNotes(std::sync::Arc::clone(&notes)),
        tls,
    )
    .unwrap();
    handle.send(Message::text("one"));
    wait_for_note(&notes, "text one");

    // The server goes away and comes back on the same port: the client reconnects, over TLS
    // again, and what was sent meanwhile arrives.
    drop(echo.stderr());
    drop(echo);
    handle.send(Message::text("two"));
    echo = start(&port.to_string());
    wait_for_note(&notes, "text two");

    // Trusting only the Mozilla roots, the throwaway certificate is refused: a TLS failure
    // each attempt, retried on the backoff.
    let strangers = std::sync::Arc::default();
    let stranger =
        spool_std::reconnecting::connect(config, StdNotes(std::sync::Arc::clone(&strangers)))
            .unwrap();
    stranger.send(Message::text("never"));
    wait_for_note(&strangers, "failed");
    let failures = strangers.lock().unwrap().clone();
    assert!(
        failures
            .iter()
            .all(|n| n.starts_with("failed") && n.contains("certificate")),
        "{failures:?}"
    );
    stranger.close();
    assert_eq!(stranger.wait(), client::StopReason::Closed);
    handle.close();
    assert_eq!(handle.wait(), client::StopReason::Closed);
    drop(echo);
}

#[test]
fn serve_on_the_std_shell_joins_broadcasts_and_stops_on_sigterm() {
    let mut spool = Spool::start(&["serve", "--port", "0", "--shell", "std"]);
    let url = format!("ws://127.0.0.1:{}{SOCKET}", spool.addr.port());
    let join = |user: &str| {
        let mut c = Client::connect(&url, Config::default()).unwrap();
        let text = format!(r#"["1","1","room:std","phx_join",{{"user":"{user}"}}]"#);
        c.send(Message::text(text)).unwrap();
        loop {
            match c.recv().unwrap() {
                Message::Text(t) if t.contains("phx_reply") => {
                    assert!(t.contains(r#""status":"ok""#), "{t}");
                    break c;
                }
                _ => {}
            }
        }
    };
    let (mut a, mut b) = (join("a"), join("b"));
    a.send(Message::text(
        r#"["1","2","room:std","shout",{"body":"over epoll"}]"#,
    ))
    .unwrap();
    let heard = loop {
        match b.recv().unwrap() {
            Message::Text(t) if t.contains("\"shout\"") => break t,
            _ => {}
        }
    };
    assert!(heard.contains("over epoll"), "{heard}");
    spool.signal("TERM");
    let stopped = spool.wait_for(std::time::Duration::from_secs(15));
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
}
