//! How the runtime spells what it produces: replies, pushes, broadcasts (encoded once) and
//! presence diffs, each with its encoded frame, appended to the outbox in order.

use super::event::{ClientId, Outbound, Payload};
use super::protocol;
use super::runtime::{Runtime, clip};
use crate::presence::Diff;
use std::panic::{AssertUnwindSafe, catch_unwind};

impl Runtime {
    pub(super) fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("{}-{}", self.ref_prefix, self.next_ref)
    }

    pub(super) fn system(&mut self, label: String) {
        self.outbox.push(Outbound::System { label });
    }

    pub(super) fn reply(
        &mut self,
        client: ClientId,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        status: &str,
        response: Payload,
    ) {
        match protocol::encode_reply(join_ref, msg_ref, topic, status, &response) {
            Some(frame) => self.outbox.push(Outbound::Reply {
                client_id: client,
                topic: topic.into(),
                join_ref: join_ref.map(Into::into),
                msg_ref: msg_ref.map(Into::into),
                status: status.into(),
                response,
                frame,
            }),
            None => self.system(format!("reply not encodable: {}", clip(topic))),
        }
    }

    pub(super) fn push(
        &mut self,
        client: ClientId,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        event: &str,
        payload: Payload,
    ) {
        match protocol::encode_push(join_ref, msg_ref, topic, event, &payload) {
            Some(frame) => self.outbox.push(Outbound::PushMessage {
                client_id: client,
                topic: topic.into(),
                join_ref: join_ref.map(Into::into),
                msg_ref: msg_ref.map(Into::into),
                event: event.into(),
                payload,
                frame,
            }),
            None => self.system(format!(
                "push not encodable: {} {}",
                clip(topic),
                clip(event)
            )),
        }
    }

    /// A broadcast made on this node: to its subscribers, and to the other nodes' in cluster
    /// mode.
    pub(super) fn broadcast(
        &mut self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<ClientId>,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.broadcast(topic, event, payload);
        }
        self.deliver_broadcast(topic, event, payload, except);
    }

    /// Fastlane: one frame for every subscriber here, unless the topic's handler intercepts the
    /// event, in which case each subscriber's `handle_out` decides its own push.
    pub(super) fn deliver_broadcast(
        &mut self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<ClientId>,
    ) {
        let Some(subs) = self.topics.get(topic) else {
            return;
        };
        let route = self.router.find(topic);
        let handler = route.and_then(|r| self.router.handler(r)).cloned();
        if let Some(handler) = handler.filter(|h| h.intercepts().contains(&event)) {
            let recipients: Vec<ClientId> = subs.iter().filter(|c| Some(*c) != except).collect();
            let mut crashed = Vec::new();
            for client in recipients {
                let Some(m) = self.membership_mut(client, topic) else {
                    continue;
                };
                let socket = &mut m.socket;
                let out = catch_unwind(AssertUnwindSafe(|| {
                    handler.handle_out(event, payload, socket)
                }));
                let join_ref = m.socket.join_ref().to_string();
                match out {
                    Ok(Some(p)) => self.push(client, topic, Some(&join_ref), None, event, p),
                    Ok(None) => {}
                    // That subscriber's channel crashes; the others still get theirs.
                    Err(_) => crashed.push(client),
                }
            }
            for client in crashed {
                self.crash_channel(client, topic, "handler panicked");
            }
            return;
        }
        let recipients = subs.recipients(except);
        if recipients.is_empty() {
            return;
        }
        match protocol::encode_broadcast(topic, event, payload) {
            Some(frame) => self.outbox.push(Outbound::BroadcastMessage {
                topic: topic.into(),
                event: event.into(),
                recipients,
                frame,
            }),
            None => self.system(format!(
                "broadcast not encodable: {} {}",
                clip(topic),
                clip(event)
            )),
        }
    }

    pub(super) fn presence_diff(&mut self, topic: &str, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        let recipients = match self.topics.get(topic) {
            Some(subs) => subs.recipients(None),
            None => return,
        };
        if recipients.is_empty() {
            return;
        }
        let payload = Payload::from(diff.to_json());
        if let Some(frame) = protocol::encode_broadcast(topic, "presence_diff", &payload) {
            self.outbox.push(Outbound::PresenceDiff {
                topic: topic.into(),
                diff,
                recipients,
                frame,
            });
        }
    }
}
