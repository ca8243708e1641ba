//! The live-view protocol (PROTOCOLS.md §2) over real sockets: pages from an HTTP GET, joins
//! and events from a WebSocket client, the exact messages the server answers with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool_core::cassette;
use spool_core::ws::{self, Message};
use spool_smol::chat::ChatOptions;
use spool_smol::live_demo;
use spool_std::live::{Live, LiveSocket};
use spool_std::{Client, ServerHandle};

struct Server {
    handle: Option<ServerHandle>,
    live: Arc<Live>,
}

impl Server {
    fn start(config: cassette::Config) -> Server {
        let live = Arc::new(live_demo::live(config));
        let handle = spool_std::Server::new(LiveSocket::new(live.clone()))
            .bind("127.0.0.1:0")
            .threads(2)
            .config(ws::Config {
                plain_http: true,
                ..ws::Config::default()
            })
            .start()
            .unwrap();
        Server {
            handle: Some(handle),
            live,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }

    /// GETs `path`; returns the status and the body.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr(), path)
    }

    /// GETs a live page; returns its preflight id and CSRF token.
    fn preflight(&self, path: &str) -> (String, String) {
        let (status, html) = self.get(path);
        assert_eq!(status, 200, "{html}");
        (
            meta(&html, "spkt-preflight-id"),
            meta(&html, "spkt-csrf-token"),
        )
    }

    fn socket(&self) -> Client {
        Client::connect(&format!("ws://{}/live", self.addr()), ws::Config::default()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn meta(html: &str, name: &str) -> String {
    let tag = format!("<meta name=\"{name}\" content=\"");
    let start = html
        .find(&tag)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + tag.len();
    html[start..].split('"').next().unwrap().to_string()
}

fn send(c: &mut Client, v: Value) {
    c.send(Message::text(v.to_string())).unwrap();
}

fn recv(c: &mut Client) -> String {
    loop {
        match c.recv().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn join(c: &mut Client, id: &str, csrf: &str) -> String {
    send(c, json!(["join", {"id": id, "csrf": csrf}]));
    recv(c)
}

fn event(c: &mut Client, kind: &str, id: &str, value: Option<&str>) {
    let mut body = json!({"kind": kind, "id": id});
    if let Some(v) = value {
        body["value"] = json!(v);
    }
    send(c, json!(["event", body]));
}

const INVALID_CSRF: &str = r#"["error",{"code":"invalid_csrf_token","msg":"Invalid CSRF token"}]"#;
const NOT_FOUND: &str = r#"["error",{"code":"preflight_not_found","msg":"No preflight found"}]"#;

#[test]
fn page_has_preflight_tags_script_and_escaped_view() {
    let server = Server::start(cassette::Config::default());
    let (status, html) = server.get("/live-demo");
    assert_eq!(status, 200);
    let (id, csrf) = (
        meta(&html, "spkt-preflight-id"),
        meta(&html, "spkt-csrf-token"),
    );
    // 128 and 256 bits from the OS, as hex.
    assert_eq!((id.len(), csrf.len()), (32, 64));
    assert!(html.contains("<script src=\"/spool.js\"></script></body>"));
    let (status, js) = server.get("/spool.js");
    assert_eq!(status, 200);
    assert!(js.contains("spkt-event-"));
    assert_eq!(server.get("/nothing").0, 404);
    assert_eq!(server.live.counts(), (1, 0));
}

#[test]
fn join_with_the_right_token_renders_ok() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut c = server.socket();
    let ok = join(&mut c, &id, &csrf);
    insta::assert_snapshot!("live_demo_ok", ok);
    assert_eq!(server.live.counts(), (0, 1));
}

#[test]
fn a_wrong_token_is_refused_and_the_preflight_stays_for_a_retry() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut c = server.socket();
    let mut wrong = csrf.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        join(&mut c, &id, std::str::from_utf8(&wrong).unwrap()),
        INVALID_CSRF
    );
    assert_eq!(join(&mut c, &id, ""), INVALID_CSRF);
    assert_eq!(server.live.counts(), (1, 0));
    // A retry with the right token, on another socket, within the TTL.
    let mut d = server.socket();
    assert!(join(&mut d, &id, &csrf).starts_with(r#"["ok","#));
    assert_eq!(server.live.counts(), (0, 1));
}

#[test]
fn an_expired_preflight_is_not_found() {
    let server = Server::start(cassette::Config {
        preflight_ttl_ms: 200,
        ..cassette::Config::default()
    });
    let (id, csrf) = server.preflight("/live-demo");
    std::thread::sleep(Duration::from_millis(300));
    let mut c = server.socket();
    assert_eq!(join(&mut c, &id, &csrf), NOT_FOUND);
    assert_eq!(server.live.counts(), (0, 0));
}

#[test]
fn a_preflight_is_used_once() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut a = server.socket();
    assert!(join(&mut a, &id, &csrf).starts_with(r#"["ok","#));
    let mut b = server.socket();
    assert_eq!(join(&mut b, &id, &csrf), NOT_FOUND);
    assert_eq!(join(&mut b, "no-such-preflight", &csrf), NOT_FOUND);
}

#[test]
fn events_change_the_view_with_these_exact_patches() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut c = server.socket();
    join(&mut c, &id, &csrf);
    let mut log = Vec::new();
    let mut step = |c: &mut Client, kind: &str, handler: &str, value: Option<&str>| {
        event(c, kind, handler, value);
        let reply = recv(c);
        log.push(format!("{kind} {handler} {value:?}\n  {reply}"));
    };
    step(&mut c, "click", "counter:inc", None);
    step(&mut c, "click", "counter:inc", None);
    step(&mut c, "click", "counter:dec", None);
    step(&mut c, "input", "todo:draft", Some("milk"));
    step(&mut c, "submit", "todo:add", Some("milk"));
    step(&mut c, "submit", "todo:add", Some("eggs <b>&</b>"));
    step(&mut c, "submit", "todo:add", Some("bread"));
    step(&mut c, "change", "todo:toggle:1", Some("true"));
    step(&mut c, "click", "todo:remove:0", None);
    insta::assert_snapshot!("live_demo_patches", log.join("\n"));
}

#[test]
fn events_for_stale_handler_ids_change_nothing_and_send_nothing() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut c = server.socket();
    join(&mut c, &id, &csrf);
    event(&mut c, "submit", "todo:add", Some("milk"));
    recv(&mut c);
    event(&mut c, "click", "todo:remove:0", None);
    recv(&mut c);
    // The todo is gone, and with it its handlers; an id never offered; a kind not offered.
    event(&mut c, "change", "todo:toggle:0", Some("true"));
    event(&mut c, "click", "todo:remove:0", None);
    event(&mut c, "click", "no-such-handler", None);
    event(&mut c, "dblclick", "counter:inc", None);
    // The next message is the answer to this click: nothing was sent for the four above.
    event(&mut c, "click", "counter:inc", None);
    assert_eq!(
        recv(&mut c),
        r#"["update",["1",null,{"1":["1",null,{"0":["1",null,{"2":["1",null,{"0":["5","1"]}]}]}]}],{"debug":false}]"#
    );
    // And an event that changes nothing (an empty todo) sends nothing either.
    event(&mut c, "submit", "todo:add", Some("   "));
    event(&mut c, "click", "counter:inc", None);
    assert!(recv(&mut c).contains(r#"["5","2"]"#));
}

#[test]
fn malformed_messages_are_answered_and_the_session_goes_on() {
    let server = Server::start(cassette::Config::default());
    let (id, csrf) = server.preflight("/live-demo");
    let mut c = server.socket();
    c.send(Message::text(
        r#"["event",{"kind":"click","id":"counter:inc"}]"#,
    ))
    .unwrap();
    assert_eq!(
        recv(&mut c),
        r#"["error",{"code":"connect_error","msg":"not joined"}]"#
    );
    join(&mut c, &id, &csrf);
    for bad in ["", "[", r#"["foo",{}]"#, r#"["event",{"id":1}]"#, "[1,2,3]"] {
        c.send(Message::text(bad)).unwrap();
        assert!(
            recv(&mut c).starts_with(r#"["error",{"code":"connect_error""#),
            "{bad}"
        );
    }
    event(&mut c, "click", "counter:inc", None);
    assert!(recv(&mut c).starts_with(r#"["update","#));
}

/// Waits until the live service holds `want` (preflights, sprockets), ticking its clock.
fn settle(live: &Live, want: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        live.tick();
        let now = live.counts();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counts stuck at {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_end_however_their_connections_end() {
    let server = Server::start(cassette::Config {
        preflight_ttl_ms: 500,
        ..cassette::Config::default()
    });
    let live = server.live.clone();
    assert_eq!(live.counts(), (0, 0));

    // Sockets killed mid-event: the event is sent and the TCP connection dropped at once,
    // without a close handshake.
    for i in 0..20 {
        let (id, csrf) = server.preflight("/live-demo");
        let mut c = server.socket();
        assert!(join(&mut c, &id, &csrf).starts_with(r#"["ok","#));
        event(&mut c, "click", "counter:inc", None);
        if i % 2 == 0 {
            event(&mut c, "submit", "todo:add", Some("x"));
        }
        drop(c);
    }
    // Sockets closed cleanly, and sockets that joined and went silent, then were dropped.
    for _ in 0..5 {
        let (id, csrf) = server.preflight("/live-demo");
        let mut c = server.socket();
        join(&mut c, &id, &csrf);
        c.close(1000, "bye").unwrap();
    }
    // Preflights nobody joins: they expire.
    for _ in 0..20 {
        server.preflight("/live-demo");
    }
    // A flood of joins with bad tokens, for real and for made-up preflights.
    let (id, _) = server.preflight("/dashboard");
    let mut flood = Vec::new();
    for i in 0..50 {
        let mut c = server.socket();
        let target = if i % 2 == 0 {
            id.clone()
        } else {
            format!("fake{i}")
        };
        let answer = join(&mut c, &target, "not-the-token");
        assert!(answer == INVALID_CSRF || answer == NOT_FOUND, "{answer}");
        flood.push(c);
    }
    drop(flood);
    settle(&live, (0, 0));
    assert_eq!(live.state().sprockets, []);
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.socket_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} sockets still held",
            live.socket_count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn spool_serve_dashboard_changes_every_second() {
    let server = spool_smol::chat::serve(ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..ChatOptions::default()
    })
    .unwrap();
    let addr = server.local_addr();
    let (status, html) = http_get(addr, "/dashboard");
    assert_eq!(status, 200);
    let (id, csrf) = (
        meta(&html, "spkt-preflight-id"),
        meta(&html, "spkt-csrf-token"),
    );
    let mut c = Client::connect(&format!("ws://{addr}/live"), ws::Config::default()).unwrap();
    assert!(join(&mut c, &id, &csrf).starts_with(r#"["ok","#));
    let started = Instant::now();
    let first = recv(&mut c);
    let second = recv(&mut c);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(first.starts_with(r#"["update","#) && second.starts_with(r#"["update","#));
    assert_ne!(first, second);
    // The live demo is there too.
    assert_eq!(http_get(addr, "/live-demo").0, 200);
    assert_eq!(server.live_views().counts().1, 1);
    server.shutdown();
}

#[test]
fn a_recorded_live_run_replays_to_the_same_outbounds() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-record.jsonl");
    let live = Arc::new(
        live_demo::live(cassette::Config::default())
            .record(&path)
            .unwrap(),
    );
    let handle = spool_std::Server::new(LiveSocket::new(live.clone()))
        .bind("127.0.0.1:0")
        .threads(2)
        .config(ws::Config {
            plain_http: true,
            ..ws::Config::default()
        })
        .start()
        .unwrap();
    let addr = handle.local_addr();
    let (_, html) = http_get(addr, "/live-demo");
    let mut c = Client::connect(&format!("ws://{addr}/live"), ws::Config::default()).unwrap();
    join(
        &mut c,
        &meta(&html, "spkt-preflight-id"),
        &meta(&html, "spkt-csrf-token"),
    );
    event(&mut c, "submit", "todo:add", Some("milk"));
    recv(&mut c);
    c.close(1000, "").unwrap();
    settle(&live, (0, 0));
    handle.shutdown();

    let log = std::fs::read_to_string(&path).unwrap();
    let mut replayed = cassette::Cassette::new(live_demo::views(), cassette::Config::default());
    let mut lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let e: cassette::Event = serde_json::from_value(v["event"].clone()).unwrap();
        let want: Vec<cassette::Outbound> = serde_json::from_value(v["outbounds"].clone()).unwrap();
        assert_eq!(replayed.handle(e), want, "{line}");
        lines += 1;
    }
    // The page, the join, the event, the disconnect, and the settling ticks.
    assert!(lines >= 4, "{log}");
}

#[test]
fn a_live_socket_from_another_origin_is_refused() {
    let server = Server::start(cassette::Config::default());
    let url = format!("ws://{}/live", server.addr());
    let options = |origin: String| spool_std::ClientOptions {
        headers: vec![("Origin".into(), origin)],
        ..spool_std::ClientOptions::default()
    };
    match Client::connect_with(&url, options("http://evil.example".into())) {
        Err(spool_std::ClientError::Handshake(why)) => assert!(why.contains("403"), "{why}"),
        Err(e) => panic!("refused, but not with 403: {e}"),
        Ok(_) => panic!("a cross-origin live socket was accepted"),
    }
    let same = options(format!("http://{}", server.addr()));
    assert!(Client::connect_with(&url, same).is_ok());
}
