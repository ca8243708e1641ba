//! The demo application of `spool serve`: the `room:*` channel. It lives in the core, beside
//! the runtime, so that the server, `spool replay`, the tests and the fuzzers all run the very
//! same handler (a replay is only exact with the code that was recorded).
//!
//! Any join succeeds and tracks a presence under the `user` join parameter (with a `name` meta
//! if given); `shout` is broadcast to the topic, its payload relayed as the client wrote it,
//! unparsed; `ping` replies `{"pong": payload}`; `crash` crashes the channel (the client gets
//! `phx_error` and rejoins).
//!
//! Idempotency keys ([`Rooms`]): a `shout` whose payload carries a string `client_msg_id`
//! (Slack's `client_msg_id`, Discord's `nonce`, Matrix's `txn_id`) is broadcast the first time
//! its topic sees that key and dropped after that, and either way replied `ok` (`{}` the first
//! time, `{"duplicate": true}` after), so that a client which resends what a dead connection
//! left unconfirmed can stop. Exactly-once over a connection that may die mid-message needs the
//! receiver's help (Two Generals): the client resends, the receiver remembers. The memory is
//! bounded: the last [`KEYS_PER_TOPIC`] keys of each of the [`TOPICS`] topics that shouted last,
//! keys of at most [`MAX_KEY_LEN`] bytes (a longer one is refused with an error reply). A repeat
//! of a key forgotten past those bounds is broadcast again. A shout without a key is relayed
//! with no reply, as before. The memory belongs to one node: a cluster dedupes per node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use serde_json::{Map, Value, json};

use super::event::Payload;
use super::router::{ChannelHandler, HandleIn, Router, Socket};
use crate::hash::{HashMap, new_map};

/// The application's name in channel logs.
pub const APP: &str = "demo";

/// The most idempotency keys a topic remembers: a client may resend at most this many
/// messages after a reconnect and have every repeat dropped (`spool client --queue-max`
/// defaults to 1,000). At most about 120 bytes a key (one shared allocation of at most
/// [`MAX_KEY_LEN`] bytes, two pointers, a hash slot): under 0.5 MiB a topic.
pub const KEYS_PER_TOPIC: usize = 4_096;

/// The most topics whose keys are remembered; past it, the topic that shouted least recently
/// is forgotten. With [`KEYS_PER_TOPIC`] and [`MAX_KEY_LEN`], the worst case is about 30 MiB.
pub const TOPICS: usize = 64;

/// The longest `client_msg_id` accepted, in bytes: a 16-hex-digit run id, a dash and a 20-digit
/// counter fit with room to spare.
pub const MAX_KEY_LEN: usize = 64;

/// The stateless part of the `room:*` channel: join, shout (relayed, no memory), ping, crash.
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

/// The `room:*` channels of `spool serve`: [`Room`], plus the idempotency keys every topic
/// remembers (see the module doc). One value serves every topic, so a client's resend on a new
/// connection meets the keys its first connection left.
#[derive(Debug, Default)]
pub struct Rooms {
    seen: Mutex<Seen>,
}

impl ChannelHandler for Rooms {
    fn join(&self, topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        Room.join(topic, params, socket)
    }

    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        if event != "shout" {
            return Room.handle_in(event, payload, socket);
        }
        // Only the key is read, never a tree of the whole payload (a large message must cost
        // less than twice its size): a scan for its name, then a struct of that one field.
        #[derive(serde::Deserialize)]
        struct Keyed {
            client_msg_id: String,
        }
        let keyed = payload
            .json_text()
            .is_some_and(|t| t.contains("client_msg_id"))
            .then(|| payload.parse::<Keyed>().ok())
            .flatten();
        let Some(Keyed { client_msg_id: key }) = keyed else {
            return Room.handle_in(event, payload, socket);
        };
        let key = key.as_str();
        if key.len() > MAX_KEY_LEN {
            return HandleIn::error(json!({ "reason": "client_msg_id too long" }));
        }
        let first = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(socket.topic(), key);
        if first {
            socket.broadcast("shout", payload.clone());
            HandleIn::ok(json!({}))
        } else {
            HandleIn::ok(json!({ "duplicate": true }))
        }
    }
}

/// The keys each topic has seen, oldest first, bounded as the module doc says.
#[derive(Debug)]
struct Seen {
    topics: HashMap<String, Keys>,
    /// Counts inserts: a topic's `last_use` is unique, so the least recent is one topic.
    clock: u64,
}

#[derive(Debug)]
struct Keys {
    /// One allocation a key, shared by the order and the set.
    order: VecDeque<Arc<str>>,
    set: HashMap<Arc<str>, ()>,
    last_use: u64,
}

impl Default for Seen {
    fn default() -> Seen {
        // Keys are chosen by clients, so the maps are seeded; from data, as the core must, and
        // a fixed seed keeps replays exact. The bounds cap what a collision flood can cost.
        Seen {
            topics: new_map(KEY_SEED),
            clock: 0,
        }
    }
}

const KEY_SEED: u64 = 0x5EED_0FD3;

impl Seen {
    /// Remembers `key` for `topic`; false when it was remembered already.
    fn insert(&mut self, topic: &str, key: &str) -> bool {
        self.clock += 1;
        if !self.topics.contains_key(topic) && self.topics.len() >= TOPICS {
            let oldest = self
                .topics
                .iter()
                .min_by_key(|(_, keys)| keys.last_use)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                self.topics.remove(&oldest);
            }
        }
        let keys = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Keys {
                order: VecDeque::new(),
                set: new_map(KEY_SEED),
                last_use: 0,
            });
        keys.last_use = self.clock;
        if keys.set.contains_key(key) {
            return false;
        }
        if keys.order.len() >= KEYS_PER_TOPIC
            && let Some(old) = keys.order.pop_front()
        {
            keys.set.remove(&old);
        }
        let key: Arc<str> = Arc::from(key);
        keys.order.push_back(key.clone());
        keys.set.insert(key, ());
        true
    }
}

/// The demo's router: `room:*` to [`Rooms`].
pub fn router() -> Router {
    Router::new().route("room:*", Rooms::default())
}

/// The router of a logged application name, for replays: only the demo is known here.
pub fn router_for(app: &str) -> Option<Router> {
    (app == APP).then(router)
}

#[cfg(test)]
mod tests {
    use super::super::{ClientId, Config, Event, Frame, Runtime};
    use super::*;

    fn runtime() -> Runtime {
        Runtime::new_single_node(router(), Config::with_seed(1))
    }

    /// The text frames `client`'s message produced, in order.
    fn send(rt: &mut Runtime, client: u64, text: &str) -> Vec<String> {
        let event = Event::Receive {
            now_ms: 0,
            client_id: ClientId(client),
            frame: Frame::Text(text.into()),
        };
        rt.handle(event)
            .iter()
            .filter_map(|o| match o.delivery() {
                (_, Some(Frame::Text(t))) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }

    fn join(rt: &mut Runtime, client: u64, topic: &str) {
        send(
            rt,
            client,
            &format!(r#"["1","1","{topic}","phx_join",{{}}]"#),
        );
    }

    fn shout(rt: &mut Runtime, client: u64, topic: &str, key: &str) -> Vec<String> {
        let body = json!({"body": "hi", "client_msg_id": key});
        send(
            rt,
            client,
            &format!(r#"["1","5","{topic}","shout",{body}]"#),
        )
    }

    fn broadcast(out: &[String]) -> bool {
        out.iter()
            .any(|t| t.starts_with("[null,null,") && t.contains("\"shout\""))
    }

    #[test]
    fn a_keyed_shout_is_broadcast_once_and_every_copy_is_replied_ok() {
        let mut rt = runtime();
        join(&mut rt, 1, "room:k");
        let first = shout(&mut rt, 1, "room:k", "run-1");
        assert_eq!(
            first,
            [
                r#"[null,null,"room:k","shout",{"body":"hi","client_msg_id":"run-1"}]"#,
                r#"["1","5","room:k","phx_reply",{"status":"ok","response":{}}]"#,
            ]
        );
        // The same client on a new socket (a reconnect) resends it: replied, not broadcast.
        join(&mut rt, 2, "room:k");
        assert_eq!(
            shout(&mut rt, 2, "room:k", "run-1"),
            [r#"["1","5","room:k","phx_reply",{"status":"ok","response":{"duplicate":true}}]"#]
        );
        // Another topic has keys of its own; a shout without a key is relayed as before.
        join(&mut rt, 1, "room:other");
        assert!(broadcast(&shout(&mut rt, 1, "room:other", "run-1")));
        let plain = send(&mut rt, 1, r#"["1","6","room:k","shout",{"body":"x"}]"#);
        assert_eq!(plain, [r#"[null,null,"room:k","shout",{"body":"x"}]"#]);
        // A key that is not a string is no key: relayed, no reply.
        let odd = send(
            &mut rt,
            1,
            r#"["1","7","room:k","shout",{"client_msg_id":5}]"#,
        );
        assert_eq!(odd, [r#"[null,null,"room:k","shout",{"client_msg_id":5}]"#]);
    }

    #[test]
    fn past_the_keys_per_topic_the_oldest_key_is_forgotten_and_its_repeat_broadcast_again() {
        let mut rt = runtime();
        join(&mut rt, 1, "room:k");
        for n in 0..=KEYS_PER_TOPIC {
            assert!(broadcast(&shout(&mut rt, 1, "room:k", &format!("r-{n}"))));
        }
        // r-0 was pushed out by the 4,097th key; r-1 is still remembered.
        assert!(!broadcast(&shout(&mut rt, 1, "room:k", "r-1")));
        assert!(broadcast(&shout(&mut rt, 1, "room:k", "r-0")));
        let last = format!("r-{KEYS_PER_TOPIC}");
        assert!(!broadcast(&shout(&mut rt, 1, "room:k", &last)));
    }

    #[test]
    fn past_the_topics_the_least_recent_topic_is_forgotten() {
        let mut rt = runtime();
        for t in 0..=TOPICS as u64 {
            join(&mut rt, t, &format!("room:{t}"));
            assert!(broadcast(&shout(&mut rt, t, &format!("room:{t}"), "k")));
        }
        let last = TOPICS as u64;
        assert!(!broadcast(&shout(
            &mut rt,
            last,
            &format!("room:{last}"),
            "k"
        )));
        assert!(!broadcast(&shout(&mut rt, 1, "room:1", "k")));
        assert!(broadcast(&shout(&mut rt, 0, "room:0", "k")));
    }

    #[test]
    fn a_key_longer_than_the_limit_is_refused_not_remembered() {
        let mut rt = runtime();
        join(&mut rt, 1, "room:k");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let out = shout(&mut rt, 1, "room:k", &long);
        assert_eq!(
            out,
            [
                r#"["1","5","room:k","phx_reply",{"status":"error","response":{"reason":"client_msg_id too long"}}]"#
            ]
        );
        assert!(broadcast(&shout(
            &mut rt,
            1,
            "room:k",
            &"k".repeat(MAX_KEY_LEN)
        )));
    }
}
