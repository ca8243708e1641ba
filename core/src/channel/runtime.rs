//! The channel runtime: every socket's joined channels, the subscribers of every topic, and
//! presence, in one deterministic state machine.
//!
//! Costs: finding a topic's subscribers or a socket's channels is a hash lookup (a socket's
//! channels are a short list, at most `max_channels_per_socket`); joining and leaving a topic
//! are O(1) (amortised: see `subscribers.rs`); a broadcast encodes its frame once and
//! copies the subscriber list once, whatever the number of subscribers.
//!
//! This file holds the machine, its queries and the dispatch of events. The rest of
//! `impl Runtime` lives beside it: `membership.rs` (joining, leaving and pushing on a channel,
//! what its handler asks, how it ends), `subscribers.rs` (each topic's subscriber table),
//! `heartbeat.rs` (the deadlines of silent sockets) and `outbox.rs` (spelling what goes out).

use serde_json::{Map, Value, json};

use super::config::Config;
use super::event::{ClientId, Event, Frame, Outbound, Payload};
use super::heartbeat::Deadlines;
use super::membership::Client;
use super::protocol::{self, Message};
use super::router::Router;
use super::subscribers::Subscribers;
use crate::cluster::{self, state::Cluster};
use crate::hash::{HashMap, new_map};
use crate::presence::{self, Tracker};

/// Where broadcasts and presences go beyond this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// This node only.
    SingleNode,
    /// A node of a cluster: broadcasts and presence deltas go out as
    /// [`Outbound::ClusterPublish`], and come in as [`Event::ClusterReceive`].
    Cluster(Box<cluster::Options>),
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
    /// In cluster mode: what this node knows of the others.
    pub(super) cluster: Option<Cluster>,
    /// What every `phx_ref` made here starts with: unique per node, and per boot in a cluster.
    pub(super) ref_prefix: String,
}

impl Runtime {
    /// A runtime for one node.
    pub fn new_single_node(router: Router, config: Config) -> Runtime {
        Runtime::new(router, config, Adapter::SingleNode)
    }

    /// A runtime for one node of a cluster: its broadcasts reach every node's subscribers and
    /// its presences every node's clients, through the bus its shell connects (see
    /// [`crate::cluster`]). The shell publishes each [`Outbound::ClusterPublish`], hands every
    /// bus message to [`Event::ClusterReceive`], sends [`Event::ClusterUp`] each time its link
    /// comes up, [`Event::Shutdown`] before it stops, and ticks at [`Runtime::next_deadline`].
    ///
    /// # Errors
    /// When the options do not hold together ([`cluster::Options::validate`]).
    pub fn new_cluster_ready(
        options: cluster::Options,
        router: Router,
        config: Config,
    ) -> Result<Runtime, cluster::OptionsError> {
        options.validate().map_err(cluster::OptionsError)?;
        Ok(Runtime::new(
            router,
            config,
            Adapter::Cluster(Box::new(options)),
        ))
    }

    fn new(router: Router, config: Config, adapter: Adapter) -> Runtime {
        let seed = config.hash_seed;
        let (cluster, ref_prefix) = match &adapter {
            Adapter::SingleNode => (None, config.node.clone()),
            Adapter::Cluster(o) => {
                let prefix = format!("{}.{:x}", o.replica.node, o.replica.boot);
                (Some(Cluster::new((**o).clone())), prefix)
            }
        };
        Runtime {
            cluster,
            ref_prefix,
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

    /// Every topic with subscribers, sorted: `(topic, subscribers, presences)`, for dashboards.
    pub fn topic_counts(&self) -> Vec<(String, usize, usize)> {
        let mut v: Vec<_> = (self.topics.iter())
            .map(|(t, s)| (t.clone(), s.len(), self.presence.count(t)))
            .collect();
        v.sort();
        v
    }

    /// When the runtime wants an [`Event::Tick`]: the earliest heartbeat deadline of a socket
    /// (`heartbeat_timeout_ms` after the last event that socket sent), or in cluster mode the
    /// next heartbeat to send or peer to declare down, or `None`. It may be early; a tick
    /// before a deadline does nothing.
    pub fn next_deadline(&self) -> Option<u64> {
        let sockets = self
            .config
            .heartbeat_timeout_ms
            .and_then(|_| self.deadlines.next());
        match (sockets, self.cluster_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// In cluster mode: `(replicas known, replicas up)` besides this one.
    pub fn cluster_replicas(&self) -> Option<(usize, usize)> {
        self.cluster.as_ref().map(|c| c.replicas())
    }

    /// Whether the runtime crashed and awaits [`Event::Restart`].
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// `single_node`, or `<transport>:<node>@<cluster>` (`redis:n1@prod`).
    pub fn adapter_label(&self) -> String {
        match &self.adapter {
            Adapter::SingleNode => "single_node".into(),
            Adapter::Cluster(o) => {
                format!("{}:{}@{}", o.transport, o.replica.node, o.cluster)
            }
        }
    }

    /// The adapter: single node, or cluster with its options.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
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
            Event::ClusterReceive { .. } => "cluster_receive",
            Event::ClusterUp { .. } => "cluster_up",
            Event::Shutdown { .. } => "shutdown",
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
            Outbound::ClusterPublish { .. } => "cluster_publish",
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
            Event::Tick { .. } => {
                self.on_tick();
                self.cluster_tick();
            }
            Event::ClusterReceive { data, .. } => self.on_cluster_receive(&data),
            Event::ClusterUp { .. } => self.on_cluster_up(),
            Event::Shutdown { .. } => self.on_shutdown(),
        }
        self.flush_cluster();
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

    pub(super) fn crash_channel(&mut self, client: ClientId, topic: &str, reason: &str) {
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
