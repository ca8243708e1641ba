//! The channel hub under faults: a channel handler that panics crashes only its channel; a
//! panic the runtime does not contain takes the hub down, and then every socket is closed with
//! 1011 and new ones are refused, rather than the server going silent.

use std::sync::Arc;

use serde_json::Value;
use spool_core::channel::{self, ChannelHandler, HandleIn, Payload, Router, Runtime, Socket};
use spool_core::ws::{Config, Message};
use spool_std::channels::{ChannelSocket, Hub};
use spool_std::{Client, ClientError, Server, ServerHandle};

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

fn start() -> (ServerHandle, Arc<Hub>, String) {
    let router = Router::new().route("frail:*", Arming);
    let runtime = Runtime::new_single_node(router, channel::Config::with_seed(3));
    let hub = Arc::new(Hub::start(runtime, "hub-test", None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    let server = Server::new(socket)
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
