//! The channel runtime: every socket's joined channels, the subscribers of every topic, and
//! presence, in one deterministic state machine.
//!
//! Costs: finding a topic's subscribers or a socket's channels is a hash lookup (a socket's
//! channels are a short list, at most `max_channels_per_socket`); a broadcast encodes its frame
//! once and copies the subscriber list once, whatever the number of subscribers.

use serde_json::{Map, Value, json};

use super::config::Config;
use super::event::{ClientId, Event, Frame, Outbound, Payload};
use super::protocol::{self, Message};
use super::router::{HandleIn, Router, Socket, SocketAction};
use crate::hash::{HashMap, new_map};
use crate::presence::{self, Diff, Tracker};

/// Where broadcasts go beyond this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// This node only.
    SingleNode,
    /// Ready to join a cluster: named node in a named cluster.
    ClusterReady {
        /// This node's id.
        node_id: String,
        /// The cluster's name.
        cluster: String,
    },
}

/// One joined channel of one socket.
#[derive(Debug)]
pub(super) struct Membership {
    pub(super) route: usize,
    pub(super) socket: Socket,
    /// Presence keys this channel tracks, so they leave with it.
    pub(super) presence_keys: Vec<String>,
}

/// A topic's subscribers in subscription order, with their positions for O(1) removal.
#[derive(Debug)]
pub(super) struct Subscribers {
    pub(super) list: Vec<ClientId>,
    pub(super) position: HashMap<ClientId, usize>,
}

/// The channel runtime. Feed it [`Event`]s; deliver its [`Outbound`]s.
///
/// ```
/// use spool_core::channel::{ChannelHandler, ClientId, Config, Event, Frame, Outbound, Router, Runtime};
///
/// struct Lobby;
/// impl ChannelHandler for Lobby {}
///
/// let mut rt = Runtime::new_single_node(Router::new().route("room:*", Lobby), Config::default());
/// let join = r#"["1","1","room:lobby","phx_join",{}]"#;
/// let out = rt.handle(Event::Receive { now_ms: 0, client_id: ClientId(7), frame: Frame::Text(join.into()) });
/// assert!(matches!(&out[0], Outbound::Reply { status, .. } if status == "ok"));
/// assert_eq!(rt.subscribers("room:lobby"), [ClientId(7)]);
/// ```
pub struct Runtime {
    pub(super) config: Config,
    pub(super) router: Router,
    pub(super) adapter: Adapter,
    pub(super) clients: HashMap<ClientId, Vec<Membership>>,
    pub(super) topics: HashMap<String, Subscribers>,
    pub(super) presence: Tracker,
    pub(super) memberships: usize,
    pub(super) crashed: bool,
    pub(super) next_ref: u64,
    pub(super) outbox: Vec<Outbound>,
}

impl Runtime {
    /// A runtime for one node.
    pub fn new_single_node(router: Router, config: Config) -> Runtime {
        Runtime::new(router, config, Adapter::SingleNode)
    }

    /// A runtime that knows its node and cluster names, for cluster mode.
    pub fn new_cluster_ready(
        node_id: &str,
        cluster: &str,
        router: Router,
        config: Config,
    ) -> Runtime {
        let adapter = Adapter::ClusterReady {
            node_id: node_id.into(),
            cluster: cluster.into(),
        };
        Runtime::new(router, config, adapter)
    }

    fn new(router: Router, config: Config, adapter: Adapter) -> Runtime {
        let seed = config.hash_seed;
        Runtime {
            presence: Tracker::new(seed, config.max_presences_per_topic),
            clients: new_map(seed),
            topics: new_map(seed),
            config,
            router,
            adapter,
            memberships: 0,
            crashed: false,
            next_ref: 0,
            outbox: Vec::new(),
        }
    }

    // ---- queries ----

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many channels are joined, over all sockets.
    pub fn membership_count(&self) -> usize {
        self.memberships
    }

    /// A topic's subscribers, in the order they joined.
    pub fn subscribers(&self, topic: &str) -> Vec<ClientId> {
        self.topics
            .get(topic)
            .map(|s| s.list.clone())
            .unwrap_or_default()
    }

    /// A topic's presences, keys sorted.
    pub fn presences(&self, topic: &str) -> Vec<presence::Entry> {
        self.presence.list(topic)
    }

    /// Every topic with subscribers, sorted: `(topic, subscribers, presences)`, for dashboards.
    pub fn topic_counts(&self) -> Vec<(String, usize, usize)> {
        let mut v: Vec<_> = (self.topics.iter())
            .map(|(t, s)| (t.clone(), s.list.len(), self.presence.count(t)))
            .collect();
        v.sort();
        v
    }

    /// Whether the runtime crashed and awaits [`Event::Restart`].
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// `single_node`, or `cluster_ready:<node>@<cluster>`.
    pub fn adapter_label(&self) -> String {
        match &self.adapter {
            Adapter::SingleNode => "single_node".into(),
            Adapter::ClusterReady { node_id, cluster } => {
                format!("cluster_ready:{node_id}@{cluster}")
            }
        }
    }

    /// A stable name for an event, for logs and metrics.
    pub fn event_label(event: &Event) -> &'static str {
        match event {
            Event::Connect { .. } => "connect",
            Event::Receive { .. } => "receive",
            Event::Disconnect { .. } => "disconnect",
            Event::Join { .. } => "join",
            Event::Rejoin { .. } => "rejoin",
            Event::Leave { .. } => "leave",
            Event::Push { .. } => "push",
            Event::Broadcast { .. } => "broadcast",
            Event::Crash { .. } => "crash",
            Event::Restart { .. } => "restart",
        }
    }

    /// A stable name for an outbound, for logs and metrics.
    pub fn outbound_label(outbound: &Outbound) -> &'static str {
        match outbound {
            Outbound::Reply { .. } => "reply",
            Outbound::PushMessage { .. } => "push_message",
            Outbound::BroadcastMessage { .. } => "broadcast_message",
            Outbound::PresenceDiff { .. } => "presence_diff",
            Outbound::CloseSocket { .. } => "close_socket",
            Outbound::System { .. } => "system",
        }
    }

    // ---- input ----

    /// Handles one event and returns what to deliver, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        self.enqueue(event);
        self.flush_outbox()
    }

    /// Handles one event, keeping its outbounds for [`Runtime::flush_outbox`].
    pub fn enqueue(&mut self, event: Event) {
        match event {
            Event::Connect { client_id, .. } => {
                self.clients.entry(client_id).or_default();
            }
            Event::Receive {
                client_id, frame, ..
            } => self.on_frame(client_id, &frame),
            Event::Disconnect { client_id, .. } => self.on_disconnect(client_id),
            Event::Join {
                client_id,
                topic,
                join_ref,
                msg_ref,
                params,
                ..
            }
            | Event::Rejoin {
                client_id,
                topic,
                join_ref,
                msg_ref,
                params,
                ..
            } => self.on_join(client_id, &topic, &join_ref, msg_ref.as_deref(), &params),
            Event::Leave {
                client_id,
                topic,
                join_ref,
                msg_ref,
                ..
            } => self.on_leave(client_id, &topic, join_ref.as_deref(), msg_ref.as_deref()),
            Event::Push {
                client_id,
                topic,
                event,
                join_ref,
                msg_ref,
                payload,
                ..
            } => self.on_push(
                client_id,
                &topic,
                &event,
                join_ref.as_deref(),
                msg_ref.as_deref(),
                &payload,
            ),
            Event::Broadcast {
                except,
                topic,
                event,
                payload,
                ..
            } => self.broadcast(&topic, &event, &payload, except),
            Event::Crash {
                client_id: Some(c),
                topic: Some(t),
                reason,
                ..
            } => self.crash_channel(c, &t, &reason),
            Event::Crash { reason, .. } => self.crash_all(&reason),
            Event::Restart { .. } => {
                self.crashed = false;
                self.system("restarted".into());
            }
        }
    }

    /// Takes everything produced since the last flush, in the order it was produced.
    pub fn flush_outbox(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
    }

    fn on_frame(&mut self, client: ClientId, frame: &Frame) {
        let message = match protocol::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                // Phoenix closes a socket that sends what its serializer cannot read.
                self.outbox.push(Outbound::CloseSocket {
                    client_id: client,
                    code: 1008,
                    reason: e.as_str().into(),
                });
                return;
            }
        };
        let Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        } = message;
        match (topic.as_str(), event.as_str()) {
            ("phoenix", "heartbeat") => {
                self.reply(
                    client,
                    &topic,
                    None,
                    msg_ref.as_deref(),
                    "ok",
                    Payload::empty(),
                );
            }
            (_, "phx_join") => {
                let params = payload.json().cloned().unwrap_or(Value::Null);
                // phoenix.js sends join_ref == ref on joins; a client that omits join_ref
                // still gets one, its ref.
                let join_ref = join_ref.or_else(|| msg_ref.clone()).unwrap_or_default();
                self.on_join(client, &topic, &join_ref, msg_ref.as_deref(), &params);
            }
            (_, "phx_leave") => {
                self.on_leave(client, &topic, join_ref.as_deref(), msg_ref.as_deref())
            }
            _ => self.on_push(
                client,
                &topic,
                &event,
                join_ref.as_deref(),
                msg_ref.as_deref(),
                &payload,
            ),
        }
    }

    fn on_join(
        &mut self,
        client: ClientId,
        topic: &str,
        join_ref: &str,
        msg_ref: Option<&str>,
        params: &Value,
    ) {
        self.clients.entry(client).or_default();
        if self.crashed {
            return self.reply(
                client,
                topic,
                Some(join_ref),
                msg_ref,
                "error",
                json!({"reason": "crashed"}).into(),
            );
        }
        if topic.len() > self.config.max_topic_len {
            return self.reply(
                client,
                topic,
                Some(join_ref),
                msg_ref,
                "error",
                json!({"reason": "topic too long"}).into(),
            );
        }
        let Some(route) = self.router.find(topic) else {
            return self.reply(
                client,
                topic,
                None,
                msg_ref,
                "error",
                json!({"reason": "unmatched topic"}).into(),
            );
        };
        // A second join of a joined topic closes the first (Phoenix's duplicate_join).
        if let Some(old) = self.membership(client, topic) {
            let old_ref = old.socket.join_ref().to_string();
            self.push(
                client,
                topic,
                Some(&old_ref),
                Some(&old_ref),
                "phx_close",
                Payload::empty(),
            );
            self.end_membership(client, topic, "duplicate_join");
        }
        let joined = self.clients.get(&client).map_or(0, Vec::len);
        if joined >= self.config.max_channels_per_socket {
            let why = json!({"reason": "too many channels joined"});
            return self.reply(client, topic, Some(join_ref), msg_ref, "error", why.into());
        }
        let Some(handler) = self.router.handler(route).cloned() else {
            return;
        };
        let mut socket = Socket::new(client, topic, join_ref);
        match handler.join(topic, params, &mut socket) {
            Ok(response) => {
                let actions = socket.take_actions();
                self.subscribe(client, topic);
                self.clients.entry(client).or_default().push(Membership {
                    route,
                    socket,
                    presence_keys: Vec::new(),
                });
                self.memberships += 1;
                self.reply(
                    client,
                    topic,
                    Some(join_ref),
                    msg_ref,
                    "ok",
                    response.into(),
                );
                self.apply(client, topic, actions);
                if self.config.presence_state_on_join {
                    let state = self.presence.state_json(topic);
                    self.push(
                        client,
                        topic,
                        Some(join_ref),
                        None,
                        "presence_state",
                        state.into(),
                    );
                }
            }
            Err(response) => self.reply(
                client,
                topic,
                Some(join_ref),
                msg_ref,
                "error",
                response.into(),
            ),
        }
    }

    fn on_leave(
        &mut self,
        client: ClientId,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
    ) {
        let Some(m) = self.membership(client, topic) else {
            // Leaving a topic not joined is answered ok, as Phoenix does.
            return self.reply(client, topic, join_ref, msg_ref, "ok", Payload::empty());
        };
        let current = m.socket.join_ref().to_string();
        if join_ref.is_some_and(|j| j != current) {
            return self.system(format!("stale leave dropped: {topic}"));
        }
        self.reply(
            client,
            topic,
            Some(&current),
            msg_ref,
            "ok",
            Payload::empty(),
        );
        self.push(
            client,
            topic,
            Some(&current),
            Some(&current),
            "phx_close",
            Payload::empty(),
        );
        self.end_membership(client, topic, "left");
    }

    fn on_push(
        &mut self,
        client: ClientId,
        topic: &str,
        event: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        payload: &Payload,
    ) {
        let Some(m) = self.membership(client, topic) else {
            return self.reply(
                client,
                topic,
                None,
                msg_ref,
                "error",
                json!({"reason": "unmatched topic"}).into(),
            );
        };
        let current = m.socket.join_ref().to_string();
        if join_ref.is_some_and(|j| j != current) {
            // A message for an earlier join of this topic: Phoenix drops it silently.
            return self.system(format!("stale message dropped: {topic} {event}"));
        }
        let Some(handler) = self.router.handler(m.route).cloned() else {
            return;
        };
        let Some(m) = self.membership_mut(client, topic) else {
            return;
        };
        let result = handler.handle_in(event, payload, &mut m.socket);
        let actions = m.socket.take_actions();
        self.apply(client, topic, actions);
        match result {
            HandleIn::NoReply => {}
            HandleIn::Reply { status, response } => {
                self.reply(client, topic, Some(&current), msg_ref, &status, response)
            }
            HandleIn::Stop { reason, reply } => {
                if let Some((status, response)) = reply {
                    self.reply(client, topic, Some(&current), msg_ref, &status, response);
                }
                self.push(
                    client,
                    topic,
                    Some(&current),
                    Some(&current),
                    "phx_close",
                    Payload::empty(),
                );
                self.end_membership(client, topic, &reason);
            }
            HandleIn::Crash { reason } => self.crash_channel(client, topic, &reason),
        }
    }

    fn on_disconnect(&mut self, client: ClientId) {
        let topics: Vec<String> = self
            .clients
            .get(&client)
            .map(|ms| ms.iter().map(|m| m.socket.topic().to_string()).collect())
            .unwrap_or_default();
        for topic in topics {
            self.end_membership(client, &topic, "disconnected");
        }
        self.clients.remove(&client);
    }

    fn crash_channel(&mut self, client: ClientId, topic: &str, reason: &str) {
        let Some(m) = self.membership(client, topic) else {
            return;
        };
        let join_ref = m.socket.join_ref().to_string();
        let payload = json!({"reason": "channel_crash"}).into();
        self.push(
            client,
            topic,
            Some(&join_ref),
            Some(&join_ref),
            "phx_error",
            payload,
        );
        self.system(format!("channel crashed: {topic}: {reason}"));
        self.end_membership(client, topic, reason);
    }

    fn crash_all(&mut self, reason: &str) {
        // Sorted, so the order of the phx_errors does not depend on hash order.
        let mut all: Vec<(ClientId, String)> = self
            .clients
            .iter()
            .flat_map(|(c, ms)| ms.iter().map(move |m| (*c, m.socket.topic().to_string())))
            .collect();
        all.sort();
        for (client, topic) in all {
            self.crash_channel(client, &topic, reason);
        }
        self.crashed = true;
        self.system(format!("crashed: {reason}"));
    }

    // ---- what handlers ask for ----

    fn apply(&mut self, client: ClientId, topic: &str, actions: Vec<SocketAction>) {
        for action in actions {
            match action {
                SocketAction::Push { event, payload } => {
                    let join_ref = self
                        .membership(client, topic)
                        .map(|m| m.socket.join_ref().to_string());
                    if join_ref.is_some() {
                        self.push(client, topic, join_ref.as_deref(), None, &event, payload);
                    }
                }
                SocketAction::Broadcast {
                    event,
                    payload,
                    include_self,
                } => {
                    self.broadcast(topic, &event, &payload, (!include_self).then_some(client));
                }
                SocketAction::Track { key, meta } => {
                    let phx_ref = self.new_ref();
                    match self.presence.track(topic, client, &key, meta, phx_ref) {
                        Ok(diff) => {
                            if let Some(m) = self.membership_mut(client, topic) {
                                m.presence_keys.push(key);
                            }
                            self.presence_diff(topic, diff);
                        }
                        Err(e) => self.system(format!("track {topic} {key}: {e}")),
                    }
                }
                SocketAction::UpdatePresence { key, meta } => {
                    let phx_ref = self.new_ref();
                    match self.presence.update(topic, client, &key, meta, phx_ref) {
                        Ok(diff) => self.presence_diff(topic, diff),
                        Err(e) => self.system(format!("update {topic} {key}: {e}")),
                    }
                }
                SocketAction::Untrack { key } => {
                    if let Some(m) = self.membership_mut(client, topic) {
                        m.presence_keys.retain(|k| *k != key);
                    }
                    let diff = self.presence.untrack(topic, client, &key);
                    self.presence_diff(topic, diff);
                }
            }
        }
    }

    /// Ends one channel: the handler's `terminate`, unsubscribe, presences leave.
    fn end_membership(&mut self, client: ClientId, topic: &str, reason: &str) {
        let Some(list) = self.clients.get_mut(&client) else {
            return;
        };
        let Some(i) = list.iter().position(|m| m.socket.topic() == topic) else {
            return;
        };
        let mut m = list.remove(i);
        self.memberships -= 1;
        self.unsubscribe(client, topic);
        if let Some(handler) = self.router.handler(m.route).cloned() {
            handler.terminate(reason, &mut m.socket);
            // The channel is gone: of what terminate asks, only broadcasts still make sense.
            for action in m.socket.take_actions() {
                if let SocketAction::Broadcast {
                    event,
                    payload,
                    include_self,
                } = action
                {
                    self.broadcast(topic, &event, &payload, (!include_self).then_some(client));
                }
            }
        }
        let mut diff = Diff::default();
        for key in &m.presence_keys {
            let d = self.presence.untrack(topic, client, key);
            diff.leaves.extend(d.leaves);
        }
        self.presence_diff(topic, diff);
    }

    // ---- subscriptions ----

    fn subscribe(&mut self, client: ClientId, topic: &str) {
        let seed = self.config.hash_seed;
        let subs = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Subscribers {
                list: Vec::new(),
                position: new_map(seed),
            });
        if !subs.position.contains_key(&client) {
            subs.position.insert(client, subs.list.len());
            subs.list.push(client);
        }
    }

    fn unsubscribe(&mut self, client: ClientId, topic: &str) {
        let Some(subs) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(i) = subs.position.remove(&client) else {
            return;
        };
        // Keep subscription order: shift the later ones down. Removal is O(n) in the topic
        // size but runs once per leave, never per message.
        subs.list.remove(i);
        for (j, c) in subs.list.iter().enumerate().skip(i) {
            subs.position.insert(*c, j);
        }
        if subs.list.is_empty() {
            self.topics.remove(topic);
        }
    }

    pub(super) fn membership(&self, client: ClientId, topic: &str) -> Option<&Membership> {
        self.clients
            .get(&client)?
            .iter()
            .find(|m| m.socket.topic() == topic)
    }

    pub(super) fn membership_mut(
        &mut self,
        client: ClientId,
        topic: &str,
    ) -> Option<&mut Membership> {
        self.clients
            .get_mut(&client)?
            .iter_mut()
            .find(|m| m.socket.topic() == topic)
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("adapter", &self.adapter_label())
            .field("memberships", &self.memberships)
            .field("topics", &self.topics.len())
            .field("crashed", &self.crashed)
            .finish()
    }
}

/// A `Map` from a JSON value, empty unless it is an object: meta fields from join params.
pub fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}
