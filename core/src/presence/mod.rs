//! Presence: who is on a topic, with what metadata, and the diffs that keep clients in sync.
//!
//! The shape is Phoenix's: a topic's state is `{key: {"metas": [meta, ..]}}`, one key (a user)
//! may carry several metas (devices), and each meta has a unique opaque `phx_ref`. A change is
//! a [`Diff`] of joins and leaves; an update is a leave of the old meta and a join of the new one
//! carrying `phx_ref_prev`. A presence tracked here is owned by the connection that tracked it,
//! and leaves when the connection leaves the topic; in cluster mode the tracker also holds the
//! presences other nodes own, as [`crate::cluster`] learns of them. Every presence carries the
//! dot (its owner's clock) it was tracked under, which is how cluster deltas name it.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::ClientId;
use crate::hash::{HashMap, new_map};

/// One presence of a key: its reference and the application's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Unique, opaque; clients match metas by it.
    pub phx_ref: String,
    /// On an update, the reference this meta replaces.
    pub phx_ref_prev: Option<String>,
    /// The application's fields (`name`, `online_at`, ...).
    pub fields: Map<String, Value>,
}

impl Meta {
    /// The JSON object clients see: the fields, plus `phx_ref` (and `phx_ref_prev`).
    pub fn to_json(&self) -> Value {
        let mut m = self.fields.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        if let Some(prev) = &self.phx_ref_prev {
            m.insert("phx_ref_prev".into(), Value::String(prev.clone()));
        }
        Value::Object(m)
    }
}

impl Meta {
    /// Reads a meta from its JSON object (the inverse of [`Meta::to_json`]).
    pub fn from_json(value: &Value) -> Option<Meta> {
        let mut fields = value.as_object()?.clone();
        let phx_ref = match fields.remove("phx_ref")? {
            Value::String(s) => s,
            _ => return None,
        };
        let phx_ref_prev = match fields.remove("phx_ref_prev") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Some(Meta {
            phx_ref,
            phx_ref_prev,
            fields,
        })
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Meta, D::Error> {
        let v = Value::deserialize(d)?;
        Meta::from_json(&v)
            .ok_or_else(|| serde::de::Error::custom("a meta is an object with a string phx_ref"))
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// A key and its metas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key (a user id, say).
    pub key: String,
    /// One per tracked presence of the key.
    pub metas: Vec<Meta>,
}

/// A change of presence on one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Metas that appeared, by key.
    pub joins: Vec<Entry>,
    /// Metas that went away, by key.
    pub leaves: Vec<Entry>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload: `{"joins": {key: {"metas": [..]}}, "leaves": {..}}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("joins".into(), entries_json(&self.joins));
        m.insert("leaves".into(), entries_json(&self.leaves));
        Value::Object(m)
    }

    /// Appends `other`, a later change, so that the one diff means both to a client that
    /// applies joins before leaves (phoenix.js): a later join of a meta this diff has leaving
    /// takes the leave back, and a later leave of a meta this diff has joining takes the join
    /// back (and still leaves, in case the client held that meta before).
    pub fn extend(&mut self, other: Diff) {
        for e in other.joins {
            for m in e.metas {
                Diff::take(&mut self.leaves, &e.key, &m.phx_ref);
                Diff::add(&mut self.joins, &e.key, m);
            }
        }
        for e in other.leaves {
            for m in e.metas {
                Diff::take(&mut self.joins, &e.key, &m.phx_ref);
                Diff::add(&mut self.leaves, &e.key, m);
            }
        }
    }

    /// Removes the meta `phx_ref` of `key` from `list`.
    fn take(list: &mut Vec<Entry>, key: &str, phx_ref: &str) {
        if let Some(i) = list.iter().position(|e| e.key == key) {
            list[i].metas.retain(|m| m.phx_ref != phx_ref);
            if list[i].metas.is_empty() {
                list.remove(i);
            }
        }
    }

    fn add(list: &mut Vec<Entry>, key: &str, meta: Meta) {
        match list.iter_mut().find(|e| e.key == key) {
            Some(e) => e.metas.push(meta),
            None => list.push(Entry {
                key: key.to_string(),
                metas: vec![meta],
            }),
        }
    }
}

impl Serialize for Diff {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("joins", &entries_json(&self.joins))?;
        m.serialize_entry("leaves", &entries_json(&self.leaves))?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Diff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Diff, D::Error> {
        let v = Value::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(
                "a diff is {\"joins\": {key: {\"metas\": [..]}}, \"leaves\": {..}}",
            )
        };
        let side =
            |name: &str| entries_from_json(v.get(name).unwrap_or(&Value::Null)).ok_or_else(bad);
        Ok(Diff {
            joins: side("joins")?,
            leaves: side("leaves")?,
        })
    }
}

fn entries_from_json(v: &Value) -> Option<Vec<Entry>> {
    v.as_object()?
        .iter()
        .map(|(key, presence)| {
            let metas = presence
                .get("metas")?
                .as_array()?
                .iter()
                .map(Meta::from_json)
                .collect::<Option<Vec<_>>>()?;
            Some(Entry {
                key: key.clone(),
                metas,
            })
        })
        .collect()
}

/// `{key: {"metas": [..]}}`; serde_json's map keeps keys sorted, so the output is deterministic.
fn entries_json(entries: &[Entry]) -> Value {
    let mut out = Map::new();
    for e in entries {
        let metas: Vec<Value> = e.metas.iter().map(Meta::to_json).collect();
        let mut inner = Map::new();
        inner.insert("metas".into(), Value::Array(metas));
        out.insert(e.key.clone(), Value::Object(inner));
    }
    Value::Object(out)
}

/// Why a presence operation did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceError {
    /// The connection already tracks this key on this topic (Phoenix: `already_tracked`).
    AlreadyTracked,
    /// The connection tracks no such key on this topic (Phoenix: `nopresence`).
    NoPresence,
    /// The topic holds as many presences as its limit allows.
    Full,
}

impl std::fmt::Display for PresenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PresenceError::AlreadyTracked => "already tracked",
            PresenceError::NoPresence => "no such presence",
            PresenceError::Full => "too many presences on this topic",
        })
    }
}

impl std::error::Error for PresenceError {}

/// Who owns a presence: a socket of this node, or another node's replica (numbered by
/// [`crate::cluster`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Local(ClientId),
    Remote(u64),
}

/// One tracked presence.
#[derive(Clone, Debug)]
struct Tracked {
    owner: Owner,
    /// The owner's clock when it tracked this presence.
    dot: u64,
    meta: Meta,
}

/// The presences of one topic.
#[derive(Clone, Debug)]
struct Topic {
    keys: HashMap<String, Vec<Tracked>>,
    count: usize,
}

/// Presences of every topic on this node.
#[derive(Clone, Debug)]
pub struct Tracker {
    topics: HashMap<String, Topic>,
    seed: u64,
    max_per_topic: usize,
}

impl Tracker {
    /// An empty tracker. `seed` keys its hash maps; `max_per_topic` bounds each topic.
    pub fn new(seed: u64, max_per_topic: usize) -> Tracker {
        Tracker {
            topics: new_map(seed),
            seed,
            max_per_topic,
        }
    }

    /// Tracks `key` on `topic` for `owner`, with a fresh `phx_ref`, under `dot` (the node's
    /// clock for this change; any number on a single node).
    ///
    /// # Errors
    /// [`PresenceError::AlreadyTracked`] when the owner tracks the key already;
    /// [`PresenceError::Full`] at the topic's limit.
    pub fn track(
        &mut self,
        topic: &str,
        owner: ClientId,
        key: &str,
        fields: Map<String, Value>,
        phx_ref: String,
        dot: u64,
    ) -> Result<Diff, PresenceError> {
        let meta = Meta {
            phx_ref,
            phx_ref_prev: None,
            fields,
        };
        self.insert(topic, key, Owner::Local(owner), dot, meta)
    }

    /// Adds a presence another node owns.
    pub(crate) fn insert_remote(
        &mut self,
        topic: &str,
        key: &str,
        replica: u64,
        dot: u64,
        meta: Meta,
    ) -> Result<Diff, PresenceError> {
        self.insert(topic, key, Owner::Remote(replica), dot, meta)
    }

    fn insert(
        &mut self,
        topic: &str,
        key: &str,
        owner: Owner,
        dot: u64,
        meta: Meta,
    ) -> Result<Diff, PresenceError> {
        let seed = self.seed;
        let t = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Topic {
                keys: new_map(seed),
                count: 0,
            });
        // A remote replica's presences are told apart by their dots, a socket's by their key.
        let taken = |p: &Tracked| match owner {
            Owner::Local(_) => p.owner == owner,
            Owner::Remote(_) => p.owner == owner && p.dot == dot,
        };
        if t.keys.get(key).is_some_and(|v| v.iter().any(taken)) {
            return Err(PresenceError::AlreadyTracked);
        }
        if t.count >= self.max_per_topic {
            return Err(PresenceError::Full);
        }
        t.keys.entry(key.to_string()).or_default().push(Tracked {
            owner,
            dot,
            meta: meta.clone(),
        });
        t.count += 1;
        let mut diff = Diff::default();
        Diff::add(&mut diff.joins, key, meta);
        Ok(diff)
    }

    /// Replaces the fields of `owner`'s presence of `key`: a leave of the old meta and a join of
    /// the new one, which carries `phx_ref_prev`, under `dot`. Returns the diff and the dot the
    /// old meta had.
    ///
    /// # Errors
    /// [`PresenceError::NoPresence`] when the owner does not track the key.
    pub fn update(
        &mut self,
        topic: &str,
        owner: ClientId,
        key: &str,
        fields: Map<String, Value>,
        phx_ref: String,
        dot: u64,
    ) -> Result<(Diff, u64), PresenceError> {
        let tracked = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.keys.get_mut(key))
            .and_then(|v| v.iter_mut().find(|p| p.owner == Owner::Local(owner)))
            .ok_or(PresenceError::NoPresence)?;
        let old = tracked.meta.clone();
        let old_dot = tracked.dot;
        tracked.dot = dot;
        tracked.meta = Meta {
            phx_ref,
            phx_ref_prev: Some(old.phx_ref.clone()),
            fields,
        };
        let mut diff = Diff::default();
        Diff::add(&mut diff.leaves, key, old);
        Diff::add(&mut diff.joins, key, tracked.meta.clone());
        Ok((diff, old_dot))
    }

    /// Removes `owner`'s presence of `key` on `topic`: the diff, and the dot it had.
    pub fn untrack(&mut self, topic: &str, owner: ClientId, key: &str) -> (Diff, Option<u64>) {
        self.remove(topic, key, |p| p.owner == Owner::Local(owner))
    }

    /// Removes the presence of `key` on `topic` that `replica` tracked under `dot`.
    pub(crate) fn remove_remote(&mut self, topic: &str, key: &str, replica: u64, dot: u64) -> Diff {
        let owner = Owner::Remote(replica);
        self.remove(topic, key, |p| p.owner == owner && p.dot == dot)
            .0
    }

    fn remove(
        &mut self,
        topic: &str,
        key: &str,
        is_it: impl Fn(&Tracked) -> bool,
    ) -> (Diff, Option<u64>) {
        let mut diff = Diff::default();
        let mut dot = None;
        let Some(t) = self.topics.get_mut(topic) else {
            return (diff, dot);
        };
        if let Some(list) = t.keys.get_mut(key) {
            if let Some(i) = list.iter().position(is_it) {
                let gone = list.remove(i);
                t.count -= 1;
                dot = Some(gone.dot);
                Diff::add(&mut diff.leaves, key, gone.meta);
            }
            if list.is_empty() {
                t.keys.remove(key);
            }
        }
        if t.count == 0 {
            self.topics.remove(topic);
        }
        (diff, dot)
    }

    /// Every presence of `topic`, keys sorted, metas in the order tracked.
    pub fn list(&self, topic: &str) -> Vec<Entry> {
        let Some(t) = self.topics.get(topic) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = t
            .keys
            .iter()
            .map(|(k, v)| Entry {
                key: k.clone(),
                metas: v.iter().map(|p| p.meta.clone()).collect(),
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries
    }

    /// The `presence_state` payload of `topic`.
    pub fn state_json(&self, topic: &str) -> Value {
        entries_json(&self.list(topic))
    }

    /// How many presences `topic` holds.
    pub fn count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |t| t.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn track_update_untrack_make_phoenix_diffs() {
        let mut t = Tracker::new(1, 100);
        let a = ClientId(1);
        let d = t
            .track(
                "room",
                a,
                "alice",
                fields(json!({"name": "A"})),
                "r1".into(),
                1,
            )
            .unwrap();
        assert_eq!(
            d.to_json(),
            json!({"joins": {"alice": {"metas": [{"name": "A", "phx_ref": "r1"}]}}, "leaves": {}})
        );
        assert_eq!(
            t.track("room", a, "alice", Map::new(), "r2".into(), 2),
            Err(PresenceError::AlreadyTracked)
        );
        t.track("room", ClientId(2), "alice", Map::new(), "r3".into(), 3)
            .unwrap();
        assert_eq!(t.list("room")[0].metas.len(), 2, "one key, two devices");

        let (d, old_dot) = t
            .update(
                "room",
                a,
                "alice",
                fields(json!({"name": "B"})),
                "r4".into(),
                4,
            )
            .unwrap();
        assert_eq!(old_dot, 1);
        assert_eq!(
            d.to_json(),
            json!({
                "joins": {"alice": {"metas": [{"name": "B", "phx_ref": "r4", "phx_ref_prev": "r1"}]}},
                "leaves": {"alice": {"metas": [{"name": "A", "phx_ref": "r1"}]}}
            })
        );
        let (d, dot) = t.untrack("room", a, "alice");
        assert_eq!(d.leaves[0].metas[0].phx_ref, "r4");
        assert_eq!(dot, Some(4));
        assert_eq!(t.count("room"), 1);
        t.untrack("room", ClientId(2), "alice");
        assert_eq!(t.state_json("room"), json!({}));
        assert_eq!(
            t.update("room", a, "alice", Map::new(), "r5".into(), 5),
            Err(PresenceError::NoPresence)
        );
    }

    #[test]
    fn diffs_read_back_what_they_write() {
        let mut t = Tracker::new(1, 10);
        t.track(
            "x",
            ClientId(1),
            "a",
            fields(json!({"n": 1})),
            "1".into(),
            1,
        )
        .unwrap();
        let (d, _) = t
            .update(
                "x",
                ClientId(1),
                "a",
                fields(json!({"n": 2})),
                "2".into(),
                2,
            )
            .unwrap();
        let back: Diff = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn an_extended_diff_means_both_changes_to_a_client_that_joins_then_leaves() {
        let meta = |r: &str| Meta::from_json(&json!({"phx_ref": r})).unwrap();
        let one = |joins: bool, r: &str| {
            let e = vec![Entry {
                key: "k".into(),
                metas: vec![meta(r)],
            }];
            if joins {
                Diff {
                    joins: e,
                    leaves: vec![],
                }
            } else {
                Diff {
                    joins: vec![],
                    leaves: e,
                }
            }
        };
        // Leave then join of the same meta: it is there at the end.
        let mut d = one(false, "a");
        d.extend(one(true, "a"));
        assert_eq!((d.joins.len(), d.leaves.len()), (1, 0));
        // Join then leave: it is gone at the end.
        let mut d = one(true, "b");
        d.extend(one(false, "b"));
        assert_eq!((d.joins.len(), d.leaves.len()), (0, 1));
    }

    #[test]
    fn a_full_topic_refuses_more() {
        let mut t = Tracker::new(1, 2);
        t.track("x", ClientId(1), "a", Map::new(), "1".into(), 1)
            .unwrap();
        t.track("x", ClientId(2), "b", Map::new(), "2".into(), 2)
            .unwrap();
        assert_eq!(
            t.track("x", ClientId(3), "c", Map::new(), "3".into(), 3),
            Err(PresenceError::Full)
        );
    }
}
