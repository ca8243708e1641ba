//! The demo application of `spool serve`: the `room:*` channel. It lives in the core, beside
//! the runtime, so that the server, `spool replay`, the tests and the fuzzers all run the very
//! same handler (a replay is only exact with the code that was recorded).
//!
//! Any join succeeds and tracks a presence under the `user` join parameter (with a `name` meta
//! if given); `shout` is broadcast to the topic, its payload relayed as the client wrote it,
//! unparsed; `ping` replies `{"pong": payload}`; `crash` crashes the channel (the client gets
//! `phx_error` and rejoins).

use serde_json::{Map, Value, json};

use super::event::Payload;
use super::router::{ChannelHandler, HandleIn, Router, Socket};

/// The application's name in channel logs.
pub const APP: &str = "demo";

/// The `room:*` channel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Room;

impl ChannelHandler for Room {
    fn join(&self, _topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        let params = params.to_value().unwrap_or(Value::Null);
        if let Some(user) = params
            .get("user")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            let mut meta = Map::new();
            if let Some(name) = params.get("name").filter(|n| n.is_string()) {
                meta.insert("name".into(), name.clone());
            }
            socket.track(user, meta);
        }
        Ok(json!({}))
    }

    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        match event {
            "shout" => {
                socket.broadcast("shout", payload.clone());
                HandleIn::NoReply
            }
            "ping" => {
                let pong = payload.to_value().unwrap_or(Value::Null);
                HandleIn::ok(json!({ "pong": pong }))
            }
            "crash" => HandleIn::Crash {
                reason: "crash requested by the client".into(),
            },
            _ => HandleIn::NoReply,
        }
    }
}

/// The demo's router: `room:*` to [`Room`].
pub fn router() -> Router {
    Router::new().route("room:*", Room)
}

/// The router of a logged application name, for replays: only the demo is known here.
pub fn router_for(app: &str) -> Option<Router> {
    (app == APP).then(router)
}
