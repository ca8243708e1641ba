//! The client side of Phoenix channels that is pure logic: the channels machine
//! ([`Channels`]: refs, join_refs, joins and rejoins, pushes with replies and timeouts, leaves,
//! heartbeats, idempotency keys), presence replicas synced by phoenix.js's rules, and
//! phoenix.js's reconnect and rejoin schedules.
//!
//! [`Presence`] follows `phoenix/assets/js/phoenix/presence.js` (1.8): a `presence_state`
//! replaces the replica (reported as the joins and leaves that turn the old state into the new
//! one), a `presence_diff` applies joins then leaves, metas are matched by `phx_ref` (opaque),
//! a key whose last meta leaves is removed, and diffs that arrive after a (re)join but before
//! its `presence_state` are held back and applied right after it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod channels;
mod log;

pub use channels::{Channels, Config, Event, JoinError, Outbound, PushError};
pub use log::{Line, replay};

/// phoenix.js's socket reconnect delays: 10, 50, 100, 150, 200, 250, 500, 1,000, 2,000 ms,
/// then 5,000 ms, for `tries` from 1.
pub fn socket_reconnect_ms(tries: u32) -> u64 {
    const STEPS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1_000, 2_000];
    STEPS
        .get(tries.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(5_000)
}

/// phoenix.js's channel rejoin delays: 1,000, 2,000, 5,000 ms, then 10,000 ms, for `tries`
/// from 1.
pub fn rejoin_ms(tries: u32) -> u64 {
    const STEPS: [u64; 3] = [1_000, 2_000, 5_000];
    STEPS
        .get(tries.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(10_000)
}

/// What a sync changed, in phoenix.js's `onJoin` / `onLeave` terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// `key` gained metas: `current` is what it had before (if anything), `joined` the
    /// presence with the new metas.
    Join {
        /// The presence key (a user).
        key: String,
        /// The presence before, if the key was there.
        current: Option<Value>,
        /// The joining presence.
        joined: Value,
    },
    /// `key` lost metas: `current` is what it has left (no metas: the key is gone), `left`
    /// the presence with the metas that left.
    Leave {
        /// The presence key.
        key: String,
        /// The presence after the leave.
        current: Value,
        /// The leaving presence.
        left: Value,
    },
}

/// One topic's presence replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Presence {
    state: Map<String, Value>,
    /// The join the last `presence_state` belonged to.
    join_ref: Option<String>,
    pending: Vec<Value>,
}

impl Presence {
    /// An empty replica.
    pub fn new() -> Presence {
        Presence::default()
    }

    /// The presences: `{"key": {"metas": [..]}}`.
    pub fn state(&self) -> &Map<String, Value> {
        &self.state
    }

    /// The keys present, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// A `presence_state` arrived on the join `join_ref`: replace the replica, then apply the
    /// diffs held back since that join.
    pub fn on_state(&mut self, join_ref: &str, new_state: &Value) -> Vec<Change> {
        self.join_ref = Some(join_ref.to_string());
        let empty = Map::new();
        let new_state = new_state.as_object().unwrap_or(&empty);
        let mut joins = Map::new();
        let mut leaves = Map::new();
        for (key, presence) in &self.state {
            if !new_state.contains_key(key) {
                leaves.insert(key.clone(), presence.clone());
            }
        }
        for (key, new_presence) in new_state {
            match self.state.get(key) {
                Some(current) => {
                    let new_refs = refs(new_presence);
                    let cur_refs = refs(current);
                    let joined: Vec<Value> = metas(new_presence)
                        .iter()
                        .filter(|m| !cur_refs.contains(&phx_ref(m)))
                        .cloned()
                        .collect();
                    let left: Vec<Value> = metas(current)
                        .iter()
                        .filter(|m| !new_refs.contains(&phx_ref(m)))
                        .cloned()
                        .collect();
                    if !joined.is_empty() {
                        joins.insert(key.clone(), with_metas(new_presence, joined));
                    }
                    if !left.is_empty() {
                        leaves.insert(key.clone(), with_metas(current, left));
                    }
                }
                None => {
                    joins.insert(key.clone(), new_presence.clone());
                }
            }
        }
        let mut changes = self.apply_diff(&joins, &leaves);
        for diff in std::mem::take(&mut self.pending) {
            changes.extend(self.sync_diff(&diff));
        }
        changes
    }

    /// A `presence_diff` arrived while the channel's current join is `join_ref`: applied now,
    /// or held back until that join's `presence_state`.
    pub fn on_diff(&mut self, join_ref: &str, diff: &Value) -> Vec<Change> {
        if self.join_ref.as_deref() != Some(join_ref) {
            self.pending.push(diff.clone());
            return Vec::new();
        }
        self.sync_diff(diff)
    }

    fn sync_diff(&mut self, diff: &Value) -> Vec<Change> {
        let empty = Map::new();
        let joins = diff
            .get("joins")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let leaves = diff
            .get("leaves")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        self.apply_diff(joins, leaves)
    }

    fn apply_diff(
        &mut self,
        joins: &Map<String, Value>,
        leaves: &Map<String, Value>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for (key, new_presence) in joins {
            let current = self.state.get(key).cloned();
            let mut merged = new_presence.clone();
            if let Some(current) = &current {
                let joined_refs = refs(new_presence);
                let mut kept: Vec<Value> = metas(current)
                    .iter()
                    .filter(|m| !joined_refs.contains(&phx_ref(m)))
                    .cloned()
                    .collect();
                kept.extend(metas(new_presence).iter().cloned());
                merged = with_metas(new_presence, kept);
            }
            self.state.insert(key.clone(), merged);
            changes.push(Change::Join {
                key: key.clone(),
                current,
                joined: new_presence.clone(),
            });
        }
        for (key, left_presence) in leaves {
            let Some(current) = self.state.get(key) else {
                continue;
            };
            let remove = refs(left_presence);
            let remaining: Vec<Value> = metas(current)
                .iter()
                .filter(|m| !remove.contains(&phx_ref(m)))
                .cloned()
                .collect();
            let now = with_metas(current, remaining.clone());
            changes.push(Change::Leave {
                key: key.clone(),
                current: now.clone(),
                left: left_presence.clone(),
            });
            if remaining.is_empty() {
                self.state.remove(key);
            } else {
                self.state.insert(key.clone(), now);
            }
        }
        changes
    }
}

fn metas(presence: &Value) -> &[Value] {
    presence
        .get("metas")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn phx_ref(meta: &Value) -> Value {
    meta.get("phx_ref").cloned().unwrap_or(Value::Null)
}

fn refs(presence: &Value) -> Vec<Value> {
    metas(presence).iter().map(phx_ref).collect()
}

fn with_metas(presence: &Value, metas: Vec<Value>) -> Value {
    let mut out = presence.as_object().cloned().unwrap_or_default();
    out.insert("metas".into(), Value::Array(metas));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schedules_match_phoenix_js() {
        let socket: Vec<u64> = (1..=11).map(socket_reconnect_ms).collect();
        assert_eq!(
            socket,
            [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000]
        );
        let rejoin: Vec<u64> = (1..=5).map(rejoin_ms).collect();
        assert_eq!(rejoin, [1000, 2000, 5000, 10000, 10000]);
    }

    #[test]
    fn state_then_diffs_follow_phoenix_js() {
        let mut p = Presence::new();
        let changes = p.on_state(
            "1",
            &json!({"u1": {"metas": [{"id": 1, "phx_ref": "1"}]},
                    "u2": {"metas": [{"id": 2, "phx_ref": "2"}]}}),
        );
        assert_eq!(changes.len(), 2);
        // A second device for u1, then u2 leaves.
        p.on_diff(
            "1",
            &json!({"joins": {"u1": {"metas": [{"id": 1, "phx_ref": "1.2"}]}}, "leaves": {}}),
        );
        let changes = p.on_diff(
            "1",
            &json!({"joins": {}, "leaves": {"u2": {"metas": [{"id": 2, "phx_ref": "2"}]}}}),
        );
        assert!(matches!(&changes[..], [Change::Leave { key, .. }] if key == "u2"));
        assert_eq!(
            Value::Object(p.state().clone()),
            json!({"u1": {"metas": [{"id": 1, "phx_ref": "1"}, {"id": 1, "phx_ref": "1.2"}]}})
        );
        // An update: the old meta leaves and the new one joins in one diff.
        p.on_diff(
            "1",
            &json!({"joins": {"u1": {"metas": [{"id": 1, "away": true, "phx_ref": "1.3",
                                                "phx_ref_prev": "1"}]}},
                    "leaves": {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}}),
        );
        let refs: Vec<Value> = metas(&p.state()["u1"]).iter().map(phx_ref).collect();
        assert_eq!(refs, [json!("1.2"), json!("1.3")]);
    }

    #[test]
    fn diffs_before_the_state_of_a_rejoin_are_held_back() {
        let mut p = Presence::new();
        p.on_state("1", &json!({"u1": {"metas": [{"phx_ref": "a"}]}}));
        // Rejoined as "5": this diff belongs after the new state.
        let held = p.on_diff(
            "5",
            &json!({"joins": {"u3": {"metas": [{"phx_ref": "c"}]}}, "leaves": {}}),
        );
        assert!(held.is_empty());
        assert_eq!(p.keys().collect::<Vec<_>>(), ["u1"]);
        let changes = p.on_state("5", &json!({"u2": {"metas": [{"phx_ref": "b"}]}}));
        // u1 left, u2 joined (the state), then u3 joined (the held diff).
        let summary: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Join { key, .. } => format!("+{key}"),
                Change::Leave { key, .. } => format!("-{key}"),
            })
            .collect();
        assert_eq!(summary, ["+u2", "-u1", "+u3"]);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["u2", "u3"]);
    }
}

#[cfg(test)]
mod channels_tests;
