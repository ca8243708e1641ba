//! A socket's channels: joining, leaving and pushing on one (Phoenix's `phx_join`,
//! `phx_leave` and pushes), carrying out what its handler asks of its [`Socket`], and ending
//! it, which unsubscribes it and takes its presences with it.

use serde_json::json;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::event::{ClientId, Payload};
use super::router::{HandleIn, Socket, SocketAction};
use super::runtime::{Runtime, clip};
use super::subscribers::Subscribers;
use crate::presence::Diff;

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

impl Runtime {
    pub(super) fn on_join(
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
        // A handler that panics fails its own join, never the runtime (Phoenix: a crashed join
        // replies with an error).
        let joined = catch_unwind(AssertUnwindSafe(|| {
            handler.join(topic, params, &mut socket)
        }))
        .unwrap_or_else(|_| {
            self.system(format!("join crashed: {}", clip(topic)));
            socket.take_actions();
            Err(json!({"reason": "join crashed"}))
        });
        match joined {
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

    pub(super) fn on_leave(
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

    pub(super) fn on_push(
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
        let socket = &mut m.socket;
        // A panicking handler crashes its channel (the client gets phx_error and rejoins), as an
        // exception in a Phoenix channel process does; the runtime and the other channels go on.
        let result = catch_unwind(AssertUnwindSafe(|| {
            handler.handle_in(event, payload, socket)
        }))
        .unwrap_or_else(|_| {
            socket.take_actions();
            HandleIn::Crash {
                reason: "handler panicked".into(),
            }
        });
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

    // ---- what handlers ask for ----

    pub(super) fn apply(&mut self, client: ClientId, topic: &str, actions: Vec<SocketAction>) {
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
                    let dot = self.next_dot();
                    match self.presence.track(topic, client, &key, meta, phx_ref, dot) {
                        Ok(diff) => {
                            self.tracked(topic, &key, &diff, dot);
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
                    let dot = self.next_dot();
                    match self
                        .presence
                        .update(topic, client, &key, meta, phx_ref, dot)
                    {
                        Ok((diff, old_dot)) => {
                            self.tracked(topic, &key, &diff, dot);
                            self.untracked(Some(old_dot));
                            self.presence_diff(topic, diff)
                        }
                        Err(e) => {
                            self.system(format!("update {} {}: {e}", clip(topic), clip(&key)))
                        }
                    }
                }
                SocketAction::Untrack { key } => {
                    if let Some(m) = self.membership_mut(client, topic) {
                        m.presence_keys.retain(|k| *k != key);
                    }
                    let (diff, dot) = self.presence.untrack(topic, client, &key);
                    self.untracked(dot);
                    self.presence_diff(topic, diff);
                }
            }
        }
    }

    /// Ends one channel: the handler's `terminate`, unsubscribe, presences leave.
    pub(super) fn end_membership(&mut self, client: ClientId, topic: &str, reason: &str) {
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
            let socket = &mut m.socket;
            if catch_unwind(AssertUnwindSafe(|| handler.terminate(reason, socket))).is_err() {
                self.system(format!("terminate crashed: {}", clip(m.socket.topic())));
            }
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
            let (d, dot) = self.presence.untrack(topic, client, key);
            self.untracked(dot);
            diff.leaves.extend(d.leaves);
        }
        self.presence_diff(topic, diff);
    }

    // ---- subscriptions ----

    pub(super) fn subscribe(&mut self, client: ClientId, topic: &str) {
        let seed = self.config.hash_seed;
        self.topics
            .entry(topic.to_string())
            .or_insert_with(|| Subscribers::new(seed))
            .insert(client);
    }

    pub(super) fn unsubscribe(&mut self, client: ClientId, topic: &str) {
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
