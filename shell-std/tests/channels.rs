//! The channel hub end to end on loopback: it arms a timer at the runtime's next deadline and
//! sends the Tick, so a socket that stays silent past the heartbeat timeout is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_core::channel::{self, Runtime};
use spool_core::ws::{Initiator, Message};
use spool_std::channels::{ChannelSocket, Hub, hash_seed};
use spool_std::{Client, ClientError, Server};

#[test]
fn the_hub_ticks_and_a_silent_socket_is_closed_after_the_heartbeat_timeout() {
    let config = channel::Config {
        heartbeat_timeout_ms: Some(300),
        ..channel::Config::with_seed(hash_seed())
    };
    let runtime = Runtime::new_single_node(channel::demo::router(), config);
    let hub = Arc::new(Hub::start(runtime, channel::demo::APP, None).unwrap());
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", Box::new(|_| None));
    let server = Server::new(socket)
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
