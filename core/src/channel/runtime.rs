//! The channel runtime: every socket's joined channels, the subscribers of every topic, and
//! presence, in one deterministic state machine.
//!
//! Costs: finding a topic's subscribers or a socket's channels is a hash lookup (a socket's
//! channels are a short list, at most `max_channels_per_socket`); joining and leaving a topic
//! are O(1) (amortised: see `subscribers.rs`); a broadcast encodes its frame once and
//! copies the subscriber list once, whatever the number of subscribers.

use serde_json::{Map, Value, json};

use super::config::Config;
use super::event::{ClientId, Event, Frame, Outbound, Payload};
use super::heartbeat::Deadlines;
use super::protocol::{self, Message};
use super::router::{HandleIn, Router, Socket, SocketAction};
use super::subscribers::Subscribers;
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

/// One socket: its joined channels, and when it was last heard from.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) memberships: Vec<Membership>,
    /// The `now_ms` of its last event.
    pub(super) last_seen_ms: u64,
    /// When its heartbeat entry comes due (`u64::MAX`: none).
    pub(super) due_ms: u64,
}

impl Client {
    pub(super) fn new(now_ms: u64) -> Client {
        Client {
            memberships: Vec::new(),
            last_seen_ms: now_ms,
            due_ms: u64::MAX,
        }
    }
}

/// The channel runtime. Feed it [`Event`]s; deliver its [`Outbound`]s.
///
/// ```
/// use spool_core::channel::{ChannelHandler, ClientId, Config, Event, Frame, Outbound, Router, Runtime};
///
/// struct Lobby;
/// impl ChannelHandler for Lobby {}
///
/// // A server draws the seed from the OS; a test picks any.
/// let config = Config::with_seed(1);
/// let mut rt = Runtime::new_single_node(Router::new().route("room:*", Lobby), config);
/// let join = r#"["1","1","room:lobby","phx_join",{}]"#;
/// let out = rt.handle(Event::Receive { now_ms: 0, client_id: ClientId(7), frame: Frame::Text(join.into()) });
/// assert!(matches!(&out[0], Outbound::Reply { status, .. } if status == "ok"));
/// assert_eq!(rt.subscribers("room:lobby"), [ClientId(7)]);
/// ```
pub struct Runtime {
    pub(super) config: Config,
    pub(super) router: Router,
    pub(super) adapter: Adapter,
    pub(super) clients: HashMap<ClientId, Client>,
    pub(super) topics: HashMap<String, Subscribers>,
    pub(super) presence: Tracker,
    pub(super) memberships: usize,
    pub(super) crashed: bool,
    pub(super) next_ref: u64,
    pub(super) outbox: Vec<Outbound>,
    /// The latest `now_ms` seen: time never goes backwards.
    pub(super) now_ms: u64,
    pub(super) deadlines: Deadlines,
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
            now_ms: 0,
            deadlines: Deadlines::default(),
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
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// A topic's presences, keys sorted.
    pub fn presences(&self, topic: &str) -> Vec<presence::Entry> {
        self.presence.list(topic)
    }

    /// When the runtime wants an [`Event::Tick`]: the earliest heartbeat deadline of a socket
    /// (`heartbeat_timeout_ms` after the last event that socket sent), or `None`. It may be
    /// early; a tick before a socket's real deadline does nothing to it.
    pub fn next_deadline(&self) -> Option<u64> {
        self.config.heartbeat_timeout_ms?;
        self.deadlines.next()
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
            Event::Leave { .. } => "leave",
            Event::Push { .. } => "push",
            Event::Broadcast { .. } => "broadcast",
            Event::Crash { .. } => "crash",
            Event::Restart { .. } => "restart",
            Event::Tick { .. } => "tick",
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
        self.now_ms = self.now_ms.max(event.now_ms());
        if let Some(client) = event.sender() {
            self.touch(client);
        }
        match event {
            Event::Connect { .. } => {}
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
            } => {
                let (jr, mr) = (Some(join_ref.as_str()), msg_ref.as_deref());
                if self.refuse_long(client_id, jr, mr, &topic, "phx_join") {
                    return;
                }
                let params = Payload::from(params);
                self.on_join(client_id, &topic, &join_ref, mr, &params)
            }
            Event::Leave {
                client_id,
                topic,
                join_ref,
                msg_ref,
                ..
            } => {
                let (jr, mr) = (join_ref.as_deref(), msg_ref.as_deref());
                if !self.refuse_long(client_id, jr, mr, &topic, "phx_leave") {
                    self.on_leave(client_id, &topic, jr, mr);
                }
            }
            Event::Push {
                client_id,
                topic,
                event,
                join_ref,
                msg_ref,
                payload,
                ..
            } => {
                let (jr, mr) = (join_ref.as_deref(), msg_ref.as_deref());
                if !self.refuse_long(client_id, jr, mr, &topic, &event) {
                    self.on_push(client_id, &topic, &event, jr, mr, &payload);
                }
            }
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
            Event::Tick { .. } => self.on_tick(),
        }
    }

    /// Takes everything produced since the last flush, in the order it was produced.
    pub fn flush_outbox(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
    }

    fn on_frame(&mut self, client: ClientId, frame: &Frame) {
        let message = match protocol::decode(frame, &self.config) {
            Ok(m) => m,
            Err(e) => return self.close_socket(client, e),
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
                // phoenix.js sends join_ref == ref on joins; a client that omits join_ref
                // still gets one, its ref.
                let join_ref = join_ref.or_else(|| msg_ref.clone()).unwrap_or_default();
                self.on_join(client, &topic, &join_ref, msg_ref.as_deref(), &payload);
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

    /// Phoenix closes a socket that sends what its serializer cannot read; a frame over the
    /// limit is refused from its length, before any parsing; a field over its limit, rather than
    /// echoed in a reply.
    fn close_socket(&mut self, client: ClientId, e: protocol::DecodeError) {
        self.outbox.push(Outbound::CloseSocket {
            client_id: client,
            code: e.close_code(),
            reason: e.as_str().into(),
        });
    }

    /// Closes the socket of a join, leave or push event whose strings break the limits that
    /// decoding a frame enforces, and says whether it did.
    fn refuse_long(
        &mut self,
        client: ClientId,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
    ) -> bool {
        match protocol::check_lengths(&self.config, join_ref, msg_ref, topic, event) {
            Ok(()) => false,
            Err(e) => {
                self.close_socket(client, e);
                true
            }
        }
    }

    fn on_join(
        &mut self,
        client: ClientId,
        topic: &str,
        join_ref: &str,
        msg_ref: Option<&str>,
        params: &Payload,
    ) {
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
        let joined = self.clients.get(&client).map_or(0, |c| c.memberships.len());
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
                let now_ms = self.now_ms;
                let c = self.clients.entry(client);
                c.or_insert_with(|| Client::new(now_ms))
                    .memberships
                    .push(Membership {
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
            return self.system(format!("stale leave dropped: {}", clip(topic)));
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
            return self.system(format!(
                "stale message dropped: {} {}",
                clip(topic),
                clip(event)
            ));
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
        // A channel's terminate and presence diff reach only its own topic, which the client
        // has left by then, so its other channels may go first.
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        for m in c.memberships {
            self.close_membership(client, m, "disconnected");
        }
        self.trim_deadlines();
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
        self.system(format!(
            "channel crashed: {}: {}",
            clip(topic),
            clip(reason)
        ));
        self.end_membership(client, topic, reason);
    }

    fn crash_all(&mut self, reason: &str) {
        // Sorted, so the order of the phx_errors does not depend on hash order.
        let mut all: Vec<(ClientId, String)> = self
            .clients
            .iter()
            .flat_map(|(id, c)| {
                let topics = c.memberships.iter().map(|m| m.socket.topic().to_string());
                topics.map(move |t| (*id, t))
            })
            .collect();
        all.sort();
        for (client, topic) in all {
            self.crash_channel(client, &topic, reason);
        }
        self.crashed = true;
        self.system(format!("crashed: {}", clip(reason)));
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
                        Err(e) => self.system(format!("track {} {}: {e}", clip(topic), clip(&key))),
                    }
                }
                SocketAction::UpdatePresence { key, meta } => {
                    let phx_ref = self.new_ref();
                    match self.presence.update(topic, client, &key, meta, phx_ref) {
                        Ok(diff) => self.presence_diff(topic, diff),
                        Err(e) => {
                            self.system(format!("update {} {}: {e}", clip(topic), clip(&key)))
                        }
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
        let Some(list) = self.clients.get_mut(&client).map(|c| &mut c.memberships) else {
            return;
        };
        let Some(i) = list.iter().position(|m| m.socket.topic() == topic) else {
            return;
        };
        let m = list.remove(i);
        self.close_membership(client, m, reason);
    }

    /// Ends a channel already taken from its socket's list.
    pub(super) fn close_membership(&mut self, client: ClientId, mut m: Membership, reason: &str) {
        self.memberships -= 1;
        self.unsubscribe(client, m.socket.topic());
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
                    let except = (!include_self).then_some(client);
                    self.broadcast(m.socket.topic(), &event, &payload, except);
                }
            }
        }
        let topic = m.socket.topic();
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
        self.topics
            .entry(topic.to_string())
            .or_insert_with(|| Subscribers::new(seed))
            .insert(client);
    }

    fn unsubscribe(&mut self, client: ClientId, topic: &str) {
        let Some(subs) = self.topics.get_mut(topic) else {
            return;
        };
        subs.remove(client);
        if subs.is_empty() {
            self.topics.remove(topic);
        }
    }

    pub(super) fn membership(&self, client: ClientId, topic: &str) -> Option<&Membership> {
        self.clients
            .get(&client)?
            .memberships
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
            .memberships
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

/// At most the first 64 bytes of `s` (cut at a character boundary), for notices: they may
/// quote what a peer or a handler chose, but never all of it.
pub(super) fn clip(s: &str) -> &str {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A `Map` from a JSON value, empty unless it is an object: meta fields from join params.
pub fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}
