//! The application side of channels: a [`ChannelHandler`] per route, shaped after Phoenix's
//! `join/3`, `handle_in/3` and `handle_out/3`, and a [`Router`] from topics to handlers.
//!
//! Handlers run inside the runtime, so they must be deterministic: same calls, same answers.
//! What a handler wants done besides its return value (push, broadcast, track a presence) it
//! asks of its [`Socket`], and the runtime carries it out after the callback returns.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::event::{ClientId, Payload};

/// A channel's behaviour. Only `join` decides anything by default; everything else has a
/// default that does nothing surprising.
pub trait ChannelHandler: Send + Sync + 'static {
    /// Decides a join: `Ok(response)` joins and replies `ok` with the response;
    /// `Err(response)` refuses with `error` (e.g. `{"reason": "unauthorized"}`).
    /// `params` is the join's payload as the client sent it: `params.parse::<T>()` or
    /// `params.to_value()` reads it. The default accepts with `{}`.
    fn join(&self, topic: &str, params: &Payload, socket: &mut Socket) -> Result<Value, Value> {
        let _ = (topic, params, socket);
        Ok(Value::Object(Map::new()))
    }

    /// Handles an event a client pushed. The payload is the client's text, unparsed: relay it
    /// as it is, or read it with `payload.parse::<T>()` or `payload.to_value()`. The default
    /// ignores it (no reply).
    fn handle_in(&self, event: &str, payload: &Payload, socket: &mut Socket) -> HandleIn {
        let _ = (event, payload, socket);
        HandleIn::NoReply
    }

    /// Broadcast events this channel intercepts: for these, `handle_out` runs once per
    /// subscriber instead of one shared frame going to all. The default intercepts nothing.
    fn intercepts(&self) -> &[&str] {
        &[]
    }

    /// An intercepted broadcast on its way to one subscriber: `Some(payload)` pushes it
    /// (changed or not), `None` drops it for this subscriber. The default pushes it unchanged.
    fn handle_out(&self, event: &str, payload: &Payload, socket: &mut Socket) -> Option<Payload> {
        let _ = (event, socket);
        Some(payload.clone())
    }

    /// The channel ends: left, stopped, crashed, or its socket went away.
    fn terminate(&self, reason: &str, socket: &mut Socket) {
        let _ = (reason, socket);
    }
}

/// What `handle_in` wants done with the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleIn {
    /// No reply (the client's push times out unless it expects none).
    NoReply,
    /// Reply to the push.
    Reply {
        /// `ok`, `error`, or an application's own status.
        status: String,
        /// The response.
        response: Payload,
    },
    /// End the channel gracefully (`phx_close`), after an optional reply.
    Stop {
        /// Why, for `terminate`.
        reason: String,
        /// A reply to send first.
        reply: Option<(String, Payload)>,
    },
    /// The channel crashed: the client gets `phx_error` and rejoins.
    Crash {
        /// Why, for `terminate` and the logs.
        reason: String,
    },
}

impl HandleIn {
    /// Reply `ok` with `response`.
    pub fn ok(response: impl Into<Payload>) -> HandleIn {
        HandleIn::Reply {
            status: "ok".into(),
            response: response.into(),
        }
    }

    /// Reply `error` with `response`.
    pub fn error(response: impl Into<Payload>) -> HandleIn {
        HandleIn::Reply {
            status: "error".into(),
            response: response.into(),
        }
    }
}

/// Something a handler asked of its socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAction {
    /// Push an event to this client only.
    Push {
        /// Event name.
        event: String,
        /// Payload.
        payload: Payload,
    },
    /// Broadcast to the topic's subscribers; without the sender when `include_self` is false.
    Broadcast {
        /// Event name.
        event: String,
        /// Payload.
        payload: Payload,
        /// Whether the sending client gets it too.
        include_self: bool,
    },
    /// Track a presence of `key` on this topic for this socket.
    Track {
        /// The key (a user id).
        key: String,
        /// The meta's fields.
        meta: Map<String, Value>,
    },
    /// Replace the fields of this socket's presence of `key`.
    UpdatePresence {
        /// The key.
        key: String,
        /// The new fields.
        meta: Map<String, Value>,
    },
    /// Stop tracking this socket's presence of `key`.
    Untrack {
        /// The key.
        key: String,
    },
}

/// A joined channel as its handler sees it: who, where, its assigns, and a queue of requests.
#[derive(Clone, Debug)]
pub struct Socket {
    client_id: ClientId,
    topic: String,
    join_ref: String,
    /// Per-channel state the handler keeps between calls, as Phoenix's `socket.assigns`.
    pub assigns: Map<String, Value>,
    actions: Vec<SocketAction>,
}

impl Socket {
    pub(crate) fn new(client_id: ClientId, topic: &str, join_ref: &str) -> Socket {
        Socket {
            client_id,
            topic: topic.to_string(),
            join_ref: join_ref.to_string(),
            assigns: Map::new(),
            actions: Vec::new(),
        }
    }

    /// The client's socket.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The topic this channel joined.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The join reference of this channel.
    pub fn join_ref(&self) -> &str {
        &self.join_ref
    }

    /// Pushes `event` to this client only.
    pub fn push(&mut self, event: impl Into<String>, payload: impl Into<Payload>) {
        self.actions.push(SocketAction::Push {
            event: event.into(),
            payload: payload.into(),
        });
    }

    /// Broadcasts `event` to every subscriber of the topic, this client included.
    pub fn broadcast(&mut self, event: impl Into<String>, payload: impl Into<Payload>) {
        self.actions.push(SocketAction::Broadcast {
            event: event.into(),
            payload: payload.into(),
            include_self: true,
        });
    }

    /// Broadcasts `event` to every subscriber of the topic but this client.
    pub fn broadcast_from(&mut self, event: impl Into<String>, payload: impl Into<Payload>) {
        self.actions.push(SocketAction::Broadcast {
            event: event.into(),
            payload: payload.into(),
            include_self: false,
        });
    }

    /// Tracks a presence of `key` for this client on this topic.
    pub fn track(&mut self, key: impl Into<String>, meta: Map<String, Value>) {
        self.actions.push(SocketAction::Track {
            key: key.into(),
            meta,
        });
    }

    /// Replaces the fields of this client's presence of `key`.
    pub fn update_presence(&mut self, key: impl Into<String>, meta: Map<String, Value>) {
        self.actions.push(SocketAction::UpdatePresence {
            key: key.into(),
            meta,
        });
    }

    /// Stops tracking this client's presence of `key`.
    pub fn untrack(&mut self, key: impl Into<String>) {
        self.actions.push(SocketAction::Untrack { key: key.into() });
    }

    pub(crate) fn take_actions(&mut self) -> Vec<SocketAction> {
        std::mem::take(&mut self.actions)
    }
}

/// How a route matches topics.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// The whole topic.
    Exact(String),
    /// A prefix, written `room:*`.
    Prefix(String),
}

/// Topics to handlers, by exact name or by prefix (`room:*`); the first matching route wins.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(Pattern, Arc<dyn ChannelHandler>)>,
}

impl Router {
    /// A router with no routes: every join is an unmatched topic.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route: `pattern` is a topic, or a prefix ending in `*`.
    pub fn route(mut self, pattern: &str, handler: impl ChannelHandler) -> Router {
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(pattern.to_string()),
        };
        self.routes.push((pattern, Arc::new(handler)));
        self
    }

    /// The index of the route for `topic`, if any. Routes are configuration, a handful at most,
    /// so a scan is cheaper than any index.
    pub(crate) fn find(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|(p, _)| match p {
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        })
    }

    pub(crate) fn handler(&self, route: usize) -> Option<&Arc<dyn ChannelHandler>> {
        self.routes.get(route).map(|(_, h)| h)
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let patterns: Vec<String> = self
            .routes
            .iter()
            .map(|(p, _)| match p {
                Pattern::Exact(t) => t.clone(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
            .collect();
        f.debug_struct("Router").field("routes", &patterns).finish()
    }
}
