//! The channel runtime against a model (quickcheck): any sequence of joins, duplicate joins,
//! leaves, pushes, channel crashes and disconnects over a few clients and topics, sent as the
//! V2 JSON frames phoenix.js writes, with current, stale and null join_refs, leaves the runtime's
//! subscribers, membership count and presences where a plain map of who joined what says.
//!
//! The model knows only the wire contract: the route table (`room:*`), that a second join of a
//! topic replaces the first, that a message with a stale join_ref is dropped, and that a channel
//! ends on leave, crash and disconnect, taking its presence with it.

use std::collections::BTreeMap;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use serde_json::{Value, json};
use spool_core::channel::{ClientId, Config, Event, Frame, Outbound, Recipients, Runtime};

const CLIENTS: u64 = 4;
/// Three routed topics and one that no route matches.
const TOPICS: [&str; 4] = ["room:0", "room:1", "room:2", "nope"];
/// Presence keys, few so that clients collide on them; `None` joins without a `user`.
const KEYS: [Option<&str>; 4] = [None, Some("alice"), Some("bob"), Some("carol")];

/// The join_ref a join carries.
#[derive(Clone, Copy, Debug)]
enum JoinRef {
    /// A ref never used before.
    Fresh,
    /// The channel's current ref, if joined (a duplicate join with the same ref); else fresh.
    Again,
    /// `null`: the runtime takes the message ref, as it does for clients that omit it.
    Null,
}

/// The join_ref a leave or push carries.
#[derive(Clone, Copy, Debug)]
enum MsgRef {
    /// The channel's current join_ref.
    Current,
    /// An earlier join_ref of the same client and topic (or one never issued).
    Stale,
    /// `null`, which the runtime accepts as current.
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PushEvent {
    Ping,
    Shout,
    Crash,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Join {
        client: u64,
        topic: usize,
        key: usize,
        join_ref: JoinRef,
    },
    Leave {
        client: u64,
        topic: usize,
        join_ref: MsgRef,
    },
    Push {
        client: u64,
        topic: usize,
        event: PushEvent,
        join_ref: MsgRef,
    },
    Heartbeat {
        client: u64,
    },
    Disconnect {
        client: u64,
    },
}

impl Arbitrary for MsgRef {
    fn arbitrary(g: &mut Gen) -> MsgRef {
        *g.choose(&[
            MsgRef::Current,
            MsgRef::Current,
            MsgRef::Stale,
            MsgRef::Null,
        ])
        .unwrap()
    }
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        let client = u64::arbitrary(g) % CLIENTS;
        let topic = usize::arbitrary(g) % TOPICS.len();
        match u8::arbitrary(g) % 10 {
            0..=3 => Op::Join {
                client,
                topic,
                key: usize::arbitrary(g) % KEYS.len(),
                join_ref: *g
                    .choose(&[
                        JoinRef::Fresh,
                        JoinRef::Fresh,
                        JoinRef::Again,
                        JoinRef::Null,
                    ])
                    .unwrap(),
            },
            4 => Op::Leave {
                client,
                topic,
                join_ref: MsgRef::arbitrary(g),
            },
            5..=7 => Op::Push {
                client,
                topic,
                event: *g
                    .choose(&[
                        PushEvent::Ping,
                        PushEvent::Ping,
                        PushEvent::Shout,
                        PushEvent::Crash,
                    ])
                    .unwrap(),
                join_ref: MsgRef::arbitrary(g),
            },
            8 => Op::Disconnect { client },
            _ => Op::Heartbeat { client },
        }
    }
}

/// One joined channel in the model.
#[derive(Clone, Debug)]
struct Joined {
    join_ref: String,
    key: Option<&'static str>,
    /// When it joined, for the subscribers' order.
    seq: u64,
}

/// Who joined what: client -> topic -> channel.
#[derive(Debug, Default)]
struct Model {
    clients: BTreeMap<u64, BTreeMap<&'static str, Joined>>,
    seq: u64,
}

impl Model {
    fn is_routed(topic: &str) -> bool {
        topic.starts_with("room:")
    }

    fn joined(&self, client: u64, topic: &str) -> Option<&Joined> {
        self.clients.get(&client)?.get(topic)
    }

    /// A join replaces any earlier channel of the same client and topic.
    fn join(
        &mut self,
        client: u64,
        topic: &'static str,
        join_ref: &str,
        key: Option<&'static str>,
    ) {
        if !Model::is_routed(topic) {
            return;
        }
        self.seq += 1;
        let joined = Joined {
            join_ref: join_ref.to_string(),
            key,
            seq: self.seq,
        };
        self.clients
            .entry(client)
            .or_default()
            .insert(topic, joined);
    }

    fn end(&mut self, client: u64, topic: &str) {
        if let Some(topics) = self.clients.get_mut(&client) {
            topics.remove(topic);
        }
    }

    fn disconnect(&mut self, client: u64) {
        self.clients.remove(&client);
    }

    fn membership_count(&self) -> usize {
        self.clients.values().map(BTreeMap::len).sum()
    }

    /// Subscribers in the order they joined.
    fn subscribers(&self, topic: &str) -> Vec<ClientId> {
        let mut subs: Vec<(u64, u64)> = self
            .clients
            .iter()
            .filter_map(|(c, topics)| topics.get(topic).map(|j| (j.seq, *c)))
            .collect();
        subs.sort_unstable();
        subs.into_iter().map(|(_, c)| ClientId(c)).collect()
    }

    /// Keys sorted, with their number of metas: one per channel that joined with the key.
    fn presences(&self, topic: &str) -> Vec<(String, usize)> {
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        for topics in self.clients.values() {
            if let Some(key) = topics.get(topic).and_then(|j| j.key) {
                *keys.entry(key.to_string()).or_default() += 1;
            }
        }
        keys.into_iter().collect()
    }
}

/// The runtime, the model, and the refs handed out so far.
struct Driver {
    rt: Runtime,
    model: Model,
    next_ref: u64,
    /// Every join_ref each client used on each topic, for stale ones.
    used: BTreeMap<(u64, &'static str), Vec<String>>,
}

fn json_ref(r: Option<&str>) -> Value {
    r.map_or(Value::Null, |r| Value::String(r.into()))
}

fn replies_to(out: &[Outbound], client: u64) -> Vec<(&str, &str)> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Reply {
                client_id,
                topic,
                status,
                ..
            } if *client_id == ClientId(client) => Some((topic.as_str(), status.as_str())),
            _ => None,
        })
        .collect()
}

fn pushes_to(out: &[Outbound], client: u64) -> Vec<&str> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::PushMessage {
                client_id, event, ..
            } if *client_id == ClientId(client) => Some(event.as_str()),
            _ => None,
        })
        .collect()
}

impl Driver {
    fn new() -> Driver {
        Driver {
            rt: Runtime::new_single_node(spool_core::channel::demo::router(), Config::with_seed(1)),
            model: Model::default(),
            next_ref: 0,
            used: BTreeMap::new(),
        }
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn send(&mut self, client: u64, message: &Value) -> Vec<Outbound> {
        self.rt.handle(Event::Receive {
            now_ms: self.next_ref,
            client_id: ClientId(client),
            frame: Frame::Text(message.to_string().into()),
        })
    }

    /// The join_ref a leave or push carries, and whether the runtime must take it as current.
    fn msg_join_ref(&self, client: u64, topic: &'static str, kind: MsgRef) -> Option<String> {
        let current = self.model.joined(client, topic).map(|j| j.join_ref.clone());
        match kind {
            MsgRef::Current => Some(current.unwrap_or_else(|| "0".into())),
            MsgRef::Null => None,
            MsgRef::Stale => {
                let earlier = self.used.get(&(client, topic)).and_then(|refs| {
                    refs.iter()
                        .rev()
                        .find(|r| Some(*r) != current.as_ref())
                        .cloned()
                });
                // "0" is never issued, so it is stale whenever the client is joined.
                Some(earlier.unwrap_or_else(|| "0".into()))
            }
        }
    }

    /// Runs one operation on both sides; `Err` says how the runtime's answer differs.
    fn step(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Join {
                client,
                topic,
                key,
                join_ref,
            } => {
                let topic = TOPICS[topic];
                let key = KEYS[key];
                let msg_ref = self.fresh_ref();
                let current = self.model.joined(client, topic).map(|j| j.join_ref.clone());
                let join_ref = match join_ref {
                    JoinRef::Fresh => Some(msg_ref.clone()),
                    JoinRef::Again => Some(current.clone().unwrap_or_else(|| msg_ref.clone())),
                    JoinRef::Null => None,
                };
                let params = match key {
                    Some(k) => json!({"user": k}),
                    None => json!({}),
                };
                let out = self.send(
                    client,
                    &json!([
                        json_ref(join_ref.as_deref()),
                        msg_ref,
                        topic,
                        "phx_join",
                        params
                    ]),
                );
                let effective = join_ref.unwrap_or(msg_ref);
                self.used
                    .entry((client, topic))
                    .or_default()
                    .push(effective.clone());
                let status = if Model::is_routed(topic) {
                    "ok"
                } else {
                    "error"
                };
                if replies_to(&out, client) != [(topic, status)] {
                    return Err(format!("join replies {:?}", replies_to(&out, client)));
                }
                let closes = pushes_to(&out, client)
                    .iter()
                    .filter(|e| **e == "phx_close")
                    .count();
                if closes != usize::from(current.is_some() && Model::is_routed(topic)) {
                    return Err(format!("a duplicate join closes the old channel: {out:?}"));
                }
                self.model.join(client, topic, &effective, key);
            }
            Op::Leave {
                client,
                topic,
                join_ref,
            } => {
                let topic = TOPICS[topic];
                let jr = self.msg_join_ref(client, topic, join_ref);
                let msg_ref = self.fresh_ref();
                let out = self.send(
                    client,
                    &json!([json_ref(jr.as_deref()), msg_ref, topic, "phx_leave", {}]),
                );
                let joined = self.model.joined(client, topic).cloned();
                let accepted = match &joined {
                    None => false,
                    Some(j) => jr.as_ref().is_none_or(|r| *r == j.join_ref),
                };
                // A leave of a channel not joined is answered ok; a stale one is not answered.
                let expected: Vec<(&str, &str)> = if joined.is_none() || accepted {
                    vec![(topic, "ok")]
                } else {
                    vec![]
                };
                if replies_to(&out, client) != expected {
                    return Err(format!("leave replies {:?}", replies_to(&out, client)));
                }
                if accepted {
                    if pushes_to(&out, client) != ["phx_close"] {
                        return Err(format!("leave pushes {:?}", pushes_to(&out, client)));
                    }
                    self.model.end(client, topic);
                }
            }
            Op::Push {
                client,
                topic,
                event,
                join_ref,
            } => {
                let topic = TOPICS[topic];
                let jr = self.msg_join_ref(client, topic, join_ref);
                let msg_ref = self.fresh_ref();
                let name = match event {
                    PushEvent::Ping => "ping",
                    PushEvent::Shout => "shout",
                    PushEvent::Crash => "crash",
                };
                let out = self.send(
                    client,
                    &json!([json_ref(jr.as_deref()), msg_ref, topic, name, {"n": msg_ref}]),
                );
                let replies = replies_to(&out, client);
                let Some(joined) = self.model.joined(client, topic).cloned() else {
                    if replies != [(topic, "error")] {
                        return Err(format!("push to a topic not joined: {replies:?}"));
                    }
                    return self.compare();
                };
                if jr.as_ref().is_some_and(|r| *r != joined.join_ref) {
                    if !out.iter().all(|o| matches!(o, Outbound::System { .. })) {
                        return Err(format!("a stale push is dropped silently: {out:?}"));
                    }
                    return self.compare();
                }
                match event {
                    PushEvent::Ping => {
                        if replies != [(topic, "ok")] {
                            return Err(format!("ping on a joined topic: {replies:?}"));
                        }
                    }
                    PushEvent::Shout => {
                        let subs = self.model.subscribers(topic);
                        let sent = out.iter().any(
                            |o| matches!(o.delivery(), (Recipients::Many(r), Some(_)) if r == subs),
                        );
                        if !sent || !replies.is_empty() {
                            return Err(format!("shout goes to {subs:?}: {out:?}"));
                        }
                    }
                    PushEvent::Crash => {
                        if pushes_to(&out, client) != ["phx_error"] {
                            return Err(format!("crash pushes {:?}", pushes_to(&out, client)));
                        }
                        self.model.end(client, topic);
                    }
                }
            }
            Op::Heartbeat { client } => {
                let msg_ref = self.fresh_ref();
                let out = self.send(client, &json!([null, msg_ref, "phoenix", "heartbeat", {}]));
                if replies_to(&out, client) != [("phoenix", "ok")] {
                    return Err(format!("heartbeat replies {out:?}"));
                }
            }
            Op::Disconnect { client } => {
                self.rt.handle(Event::Disconnect {
                    now_ms: self.next_ref,
                    client_id: ClientId(client),
                });
                self.model.disconnect(client);
            }
        }
        self.compare()
    }

    /// The runtime's queries against the model's.
    fn compare(&self) -> Result<(), String> {
        if self.rt.membership_count() != self.model.membership_count() {
            return Err(format!(
                "membership_count {} != model {}",
                self.rt.membership_count(),
                self.model.membership_count()
            ));
        }
        for topic in TOPICS {
            let subs = self.rt.subscribers(topic);
            if subs != self.model.subscribers(topic) {
                return Err(format!(
                    "subscribers({topic}) {subs:?} != model {:?}",
                    self.model.subscribers(topic)
                ));
            }
            let presences: Vec<(String, usize)> = self
                .rt
                .presences(topic)
                .into_iter()
                .map(|e| (e.key, e.metas.len()))
                .collect();
            if presences != self.model.presences(topic) {
                return Err(format!(
                    "presences({topic}) {presences:?} != model {:?}",
                    self.model.presences(topic)
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn subscribers_memberships_and_presences_follow_the_model() {
    fn prop(ops: Vec<Op>) -> TestResult {
        let mut d = Driver::new();
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = d.step(*op) {
                return TestResult::error(format!("step {i}, {op:?}: {e}"));
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
}
