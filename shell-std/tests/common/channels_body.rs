// The channel hub over either shell's server (the including file's `shell`: spool_std or
// spool_smol), driven by the blocking client: the heartbeat tick, a panicking socket handler,
// a panicking channel handler, a failed hub. Included with `include!` by
// shell-std/tests/channels.rs and shell-smol/tests/channels.rs. The subscriber that stops
// reading is in slow_subscriber_body.rs, in a test binary of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use spool_core::channel::{
    self, ChannelHandler, HandleIn, Payload, Router, Runtime, Socket, demo,
};
use spool_core::ws::{CloseInfo, Config, Initiator, Message, Request};
use spool_std::channels::{ChannelSocket, Hub, SocketState, ToSocket, hash_seed};
use spool_std::{Client, ClientError, Conn, Handler, HttpResponse, Incoming, Next, Rejection};

include!("channel_join.rs");

#[test]
fn the_hub_ticks_and_a_silent_socket_is_closed_after_the_heartbeat_timeout() {
    let config = channel::Config {
        heartbeat_timeout_ms: Some(300),
        ..channel::Config::with_seed(hash_seed())
    };
    let runtime = Runtime::new_single_node(channel::demo::router(), config);
    let hub = Arc::new(Hub::start(runtime, channel::demo::APP, None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    let server = shell::Server::new(socket)
        .threads(1)
        .config(ChannelSocket::ws_config())
        .start()
        .unwrap();
    let url = format!("ws://{}/socket/websocket", server.local_addr());
    let mut client = Client::connect(&url, spool_core::ws::Config::default()).unwrap();
    client
        .send(Message::text(r#"["1","1","room:a","phx_join",{}]"#))
        .unwrap();
    assert!(matches!(client.recv().unwrap(), Message::Text(t) if t.contains(r#""status":"ok""#)));
    let started = Instant::now();
    loop {
        match client.recv() {
            Ok(Message::Text(_)) => continue, // presence_state
            Err(ClientError::Closed(info)) => {
                assert_eq!(
                    (info.code, info.reason.as_str(), info.initiator),
                    (1001, "heartbeat timeout", Initiator::Remote)
                );
                break;
            }
            other => panic!("expected the heartbeat timeout, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    server.shutdown();
}

/// A channel server whose socket handler panics on a text frame `"panic"`: the shell closes
/// that connection with 1011 and runs `on_close`, so the hub drops its channels and presences.
struct PanickingSocket(ChannelSocket);

impl Handler for PanickingSocket {
    type State = SocketState;
    type User = ToSocket;
    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        self.0.on_upgrade(request)
    }
    fn on_request(&self, request: &Request) -> HttpResponse {
        self.0.on_request(request)
    }
    fn on_init(&self, conn: &mut Conn<ToSocket>) -> SocketState {
        self.0.on_init(conn)
    }
    fn handle(&self, s: &mut SocketState, incoming: Incoming<ToSocket>, conn: &mut Conn<ToSocket>) -> Next {
        if matches!(&incoming, Incoming::Message(Message::Text(t)) if t == "panic") {
            panic!("a socket handler bug");
        }
        self.0.handle(s, incoming, conn)
    }
    fn on_close(&self, s: SocketState, info: &CloseInfo) {
        self.0.on_close(s, info)
    }
}

#[test]
fn a_panicking_socket_handler_closes_with_1011_and_the_hub_drops_its_presences() {
    let runtime = Runtime::new_single_node(demo::router(), channel::Config::with_seed(hash_seed()));
    let hub = Arc::new(Hub::start(runtime, demo::APP, None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    let server = shell::Server::new(PanickingSocket(socket))
        .config(ChannelSocket::ws_config())
        .start()
        .unwrap();
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.local_addr());
    let mut watcher = Client::connect(&url, Config::default()).unwrap();
    join(&mut watcher, "watcher");
    let mut doomed = Client::connect(&url, Config::default()).unwrap();
    join(&mut doomed, "doomed");
    doomed.send(Message::text("panic")).unwrap();
    assert_eq!(closed_with(&mut doomed), 1011);
    // The watcher sees the doomed user's presence leave.
    loop {
        let Message::Text(t) = watcher.recv().unwrap() else {
            continue;
        };
        if t.contains("presence_diff") && t.contains(r#""leaves":{"doomed""#) {
            break;
        }
    }
    drop((watcher, doomed));
    server.shutdown();
}

/// `boom` panics in handle_in (contained: the channel crashes); a broadcast of `fatal` asks
/// `intercepts`, which the runtime calls outside any handler boundary, and that panics.
struct Fragile;

impl ChannelHandler for Fragile {
    fn join(&self, _: &str, _: &Payload, _: &mut Socket) -> Result<Value, Value> {
        Ok(Value::Null)
    }

    fn handle_in(&self, event: &str, _: &Payload, socket: &mut Socket) -> HandleIn {
        match event {
            "boom" => panic!("a handler bug"),
            "fatal" => {
                socket.broadcast("fatal", Payload::empty());
                HandleIn::NoReply
            }
            _ => HandleIn::ok(Value::Null),
        }
    }

    fn intercepts(&self) -> &[&str] {
        if std::thread::current().name() == Some("spool-hub") && FATAL.with(|f| f.get()) {
            panic!("a bug outside any handler boundary");
        }
        &[]
    }
}

thread_local! {
    /// Set on the hub's thread by the `fatal` push (through `handle_in` below), so that only
    /// the broadcast that follows it trips `intercepts`.
    static FATAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps Fragile so that `fatal` arms the thread-local flag before broadcasting.
struct Arming;

impl ChannelHandler for Arming {
    fn join(&self, t: &str, p: &Payload, s: &mut Socket) -> Result<Value, Value> {
        Fragile.join(t, p, s)
    }
    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        if event == "fatal" {
            FATAL.with(|f| f.set(true));
        }
        Fragile.handle_in(event, payload, socket)
    }
    fn intercepts(&self) -> &[&str] {
        Fragile.intercepts()
    }
}

fn start() -> (shell::ServerHandle, Arc<Hub>, String) {
    let router = Router::new().route("frail:*", Arming);
    let runtime = Runtime::new_single_node(router, channel::Config::with_seed(3));
    let hub = Arc::new(Hub::start(runtime, "hub-test", None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    let server = shell::Server::new(socket)
        .config(ChannelSocket::ws_config())
        .start()
        .unwrap();
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.local_addr());
    (server, hub, url)
}

/// The next text frame that is not presence bookkeeping.
fn text(client: &mut Client) -> String {
    loop {
        match client.recv().unwrap() {
            Message::Text(t) if !t.contains(r#""presence_"#) => return t.to_string(),
            _ => continue,
        }
    }
}

fn closed_with(client: &mut Client) -> u16 {
    loop {
        match client.recv() {
            Ok(_) => continue,
            Err(ClientError::Closed(info)) => return info.code,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_panicking_channel_handler_crashes_its_channel_and_the_hub_goes_on() {
    let (server, hub, url) = start();
    let mut client = Client::connect(&url, Config::default()).unwrap();
    client
        .send(Message::text(r#"["1","1","frail:a","phx_join",{}]"#))
        .unwrap();
    assert!(text(&mut client).contains(r#""status":"ok""#));
    client
        .send(Message::text(r#"["1","2","frail:a","boom",{}]"#))
        .unwrap();
    assert_eq!(
        text(&mut client),
        r#"["1","1","frail:a","phx_error",{"reason":"channel_crash"}]"#
    );
    // The client rejoins, as phoenix.js does, and the channel works.
    client
        .send(Message::text(r#"["3","3","frail:a","phx_join",{}]"#))
        .unwrap();
    assert!(text(&mut client).contains(r#""status":"ok""#));
    client
        .send(Message::text(r#"["3","4","frail:a","ping",{}]"#))
        .unwrap();
    assert!(text(&mut client).contains(r#""status":"ok""#));
    assert!(!hub.has_failed());
    drop(client);
    server.shutdown();
}

#[test]
fn a_failed_hub_closes_every_socket_with_1011_and_refuses_new_ones() {
    let (server, hub, url) = start();
    let mut bystander = Client::connect(&url, Config::default()).unwrap();
    let mut culprit = Client::connect(&url, Config::default()).unwrap();
    culprit
        .send(Message::text(r#"["1","1","frail:a","phx_join",{}]"#))
        .unwrap();
    assert!(text(&mut culprit).contains(r#""status":"ok""#));
    culprit
        .send(Message::text(r#"["1","2","frail:a","fatal",{}]"#))
        .unwrap();
    assert_eq!(closed_with(&mut culprit), 1011);
    assert_eq!(closed_with(&mut bystander), 1011);
    assert!(hub.has_failed());
    let mut late = Client::connect(&url, Config::default()).unwrap();
    assert_eq!(closed_with(&mut late), 1011);
    drop((bystander, culprit, late));
    server.shutdown();
}
