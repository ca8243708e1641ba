//! Cluster messages as they travel on the bus: one JSON object each.
//!
//! ```text
//! {"v":1,"from":{"node":"a","boot":7},"seq":12,"body":{"broadcast":{"topic":"room:1","event":"shout","json":{"body":"hi"}}}}
//! {"v":1,"from":..,"seq":13,"body":{"delta":{"ops":[{"dot":4,"add":{"topic":"room:1","key":"ann","meta":{"phx_ref":"a.7-3"}}},{"dot":5,"remove":2}]}}}
//! {"v":1,"from":..,"seq":14,"body":{"heartbeat":{"clock":5}}}
//! {"v":1,"from":..,"seq":15,"body":{"state_request":{"to":{"node":"b","boot":9}}}}
//! {"v":1,"from":..,"seq":16,"body":{"state":{"clock":5,"entries":[{"dot":4,"topic":"room:1","key":"ann","meta":{..}}]}}}
//! {"v":1,"from":..,"seq":17,"body":{"goodbye":{}}}
//! ```
//!
//! A broadcast's payload is `json` (the JSON as the publisher had it, copied into the frame
//! unparsed) or `binary` (base64). Decoding checks the version, the length and every name.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Replica;
use crate::channel::{JsonText, Payload};
use crate::presence::Meta;
use crate::ws::Text;

/// The wire version this core writes and reads.
pub const VERSION: u32 = 1;

/// The longest node id, topic, event name or presence key, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// One bus message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its sender.
    pub from: Replica,
    /// The sender's count of messages it published, from 1 at each boot.
    pub seq: u64,
    /// What it says.
    pub body: Body,
}

/// What a bus message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A broadcast to a topic's subscribers on every node.
    Broadcast {
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
    },
    /// Presence changes of the sender's own sockets, in clock order.
    Delta {
        /// The changes.
        ops: Vec<Op>,
    },
    /// The sender is alive; its clock is this.
    Heartbeat {
        /// The sender's clock: the dot of its latest change.
        clock: u64,
    },
    /// The sender asks for a replica's state (`to`), or every replica's (`None`).
    StateRequest {
        /// The replica asked.
        to: Option<Replica>,
    },
    /// The sender's presences, all of them, as of `clock`.
    State {
        /// The sender's clock when it wrote this.
        clock: u64,
        /// Every presence it owns.
        entries: Vec<Entry>,
    },
    /// The sender is shutting down: forget it now.
    Goodbye,
}

/// One presence change, under its own dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The change's clock on its replica.
    pub dot: u64,
    /// What changed.
    pub change: Change,
}

/// A presence appears, or the presence of an earlier dot goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A presence tracked under this op's dot.
    Add {
        /// Its topic.
        topic: String,
        /// Its key.
        key: String,
        /// Its meta, `phx_ref` included.
        meta: Meta,
    },
    /// The presence tracked under this dot goes.
    Remove(u64),
}

/// A presence in a state transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The dot it was tracked under.
    pub dot: u64,
    /// Its topic.
    pub topic: String,
    /// Its key.
    pub key: String,
    /// Its meta.
    pub meta: Meta,
}

/// Why a bus message was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than the configured maximum.
    TooLong(usize),
    /// Not a message of this shape.
    Malformed(String),
    /// A version this core does not read.
    Version(u32),
    /// A node id, topic, event or key too long or empty.
    BadName,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLong(n) => write!(f, "a cluster message of {n} bytes is too long"),
            DecodeError::Malformed(e) => write!(f, "a malformed cluster message: {e}"),
            DecodeError::Version(v) => write!(f, "a cluster message of version {v}"),
            DecodeError::BadName => {
                write!(f, "a cluster message with an empty or overlong name")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

// ---- the JSON shapes ----

#[derive(Serialize, Deserialize)]
struct WireMessage<B> {
    v: u32,
    from: Replica,
    seq: u64,
    body: B,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum WireBody {
    Broadcast {
        topic: String,
        event: String,
        #[serde(default)]
        json: Option<Box<RawValue>>,
        #[serde(default)]
        binary: Option<String>,
    },
    Delta {
        ops: Vec<WireOp>,
    },
    Heartbeat {
        clock: u64,
    },
    StateRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Replica>,
    },
    State {
        clock: u64,
        entries: Vec<Entry>,
    },
    Goodbye {},
}

#[derive(Serialize, Deserialize)]
struct WireOp {
    dot: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    add: Option<WireAdd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remove: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct WireAdd {
    topic: String,
    key: String,
    meta: Meta,
}

/// Reads one bus message of at most `max_len` bytes.
///
/// # Errors
/// [`DecodeError`] says why it was not read.
pub fn decode(text: &str, max_len: usize) -> Result<Message, DecodeError> {
    if text.len() > max_len {
        return Err(DecodeError::TooLong(text.len()));
    }
    let wire: WireMessage<WireBody> =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if wire.v != VERSION {
        return Err(DecodeError::Version(wire.v));
    }
    check_name(&wire.from.node)?;
    let malformed = |what: &str| DecodeError::Malformed(what.into());
    let body = match wire.body {
        WireBody::Broadcast {
            topic,
            event,
            json,
            binary,
        } => {
            check_name(&topic)?;
            check_name(&event)?;
            let payload = match (json, binary) {
                (Some(raw), None) => {
                    Payload::Json(JsonText::checked(Text::from(raw.get().to_string())))
                }
                (None, Some(b64)) => Payload::Binary(Bytes::from(
                    STANDARD
                        .decode(b64)
                        .map_err(|_| malformed("binary is not base64"))?,
                )),
                _ => return Err(malformed("a broadcast has one of json and binary")),
            };
            Body::Broadcast {
                topic,
                event,
                payload,
            }
        }
        WireBody::Delta { ops } => {
            let ops = ops
                .into_iter()
                .map(|op| {
                    let change = match (op.add, op.remove) {
                        (Some(a), None) => {
                            check_name(&a.topic)?;
                            check_name(&a.key)?;
                            Change::Add {
                                topic: a.topic,
                                key: a.key,
                                meta: a.meta,
                            }
                        }
                        (None, Some(dot)) => Change::Remove(dot),
                        _ => return Err(malformed("an op is one of add and remove")),
                    };
                    Ok(Op {
                        dot: op.dot,
                        change,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Body::Delta { ops }
        }
        WireBody::Heartbeat { clock } => Body::Heartbeat { clock },
        WireBody::StateRequest { to } => {
            if let Some(r) = &to {
                check_name(&r.node)?;
            }
            Body::StateRequest { to }
        }
        WireBody::State { clock, entries } => {
            for e in &entries {
                check_name(&e.topic)?;
                check_name(&e.key)?;
            }
            Body::State { clock, entries }
        }
        WireBody::Goodbye {} => Body::Goodbye,
    };
    Ok(Message {
        from: wire.from,
        seq: wire.seq,
        body,
    })
}

fn check_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DecodeError::BadName);
    }
    Ok(())
}

/// Writes one bus message. A broadcast's JSON payload is copied in as it is.
pub fn encode(message: &Message) -> Text {
    let head = |body: &str| {
        // A Replica and a number always serialize.
        let from = serde_json::to_string(&message.from).unwrap_or_default();
        format!(
            "{{\"v\":{VERSION},\"from\":{from},\"seq\":{},\"body\":{body}}}",
            message.seq
        )
    };
    let body = match &message.body {
        Body::Broadcast {
            topic,
            event,
            payload,
        } => {
            let (topic, event) = (to_json(topic), to_json(event));
            match payload {
                Payload::Json(j) => format!(
                    "{{\"broadcast\":{{\"topic\":{topic},\"event\":{event},\"json\":{}}}}}",
                    j.as_str()
                ),
                Payload::Binary(b) => format!(
                    "{{\"broadcast\":{{\"topic\":{topic},\"event\":{event},\"binary\":\"{}\"}}}}",
                    STANDARD.encode(b)
                ),
            }
        }
        Body::Delta { ops } => {
            let ops: Vec<WireOp> = ops
                .iter()
                .map(|op| match &op.change {
                    Change::Add { topic, key, meta } => WireOp {
                        dot: op.dot,
                        add: Some(WireAdd {
                            topic: topic.clone(),
                            key: key.clone(),
                            meta: meta.clone(),
                        }),
                        remove: None,
                    },
                    Change::Remove(dot) => WireOp {
                        dot: op.dot,
                        add: None,
                        remove: Some(*dot),
                    },
                })
                .collect();
            serde_json::to_string(&WireBody::Delta { ops }).unwrap_or_default()
        }
        Body::Heartbeat { clock } => format!("{{\"heartbeat\":{{\"clock\":{clock}}}}}"),
        Body::StateRequest { to } => {
            serde_json::to_string(&WireBody::StateRequest { to: to.clone() }).unwrap_or_default()
        }
        Body::State { clock, entries } => {
            let entries = to_json(entries);
            format!("{{\"state\":{{\"clock\":{clock},\"entries\":{entries}}}}}")
        }
        Body::Goodbye => "{\"goodbye\":{}}".into(),
    };
    Text::from(head(&body))
}

/// JSON text of strings, numbers and metas (objects with string keys), which always serialize.
fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from() -> Replica {
        Replica {
            node: "a".into(),
            boot: 7,
        }
    }

    fn meta(r: &str) -> Meta {
        Meta::from_json(&json!({"phx_ref": r, "name": "Ann"})).unwrap()
    }

    #[test]
    fn every_body_reads_back_what_it_writes() {
        let bodies = [
            Body::Broadcast {
                topic: "room:1".into(),
                event: "shout".into(),
                payload: Payload::from(json!({"body": "hi \"there\""})),
            },
            Body::Broadcast {
                topic: "room:1".into(),
                event: "bin".into(),
                payload: Payload::Binary(Bytes::from_static(&[0, 1, 255])),
            },
            Body::Delta {
                ops: vec![
                    Op {
                        dot: 4,
                        change: Change::Add {
                            topic: "room:1".into(),
                            key: "ann".into(),
                            meta: meta("a-1"),
                        },
                    },
                    Op {
                        dot: 5,
                        change: Change::Remove(2),
                    },
                ],
            },
            Body::Heartbeat { clock: 5 },
            Body::StateRequest { to: None },
            Body::StateRequest { to: Some(from()) },
            Body::State {
                clock: 5,
                entries: vec![Entry {
                    dot: 4,
                    topic: "room:1".into(),
                    key: "ann".into(),
                    meta: meta("a-1"),
                }],
            },
            Body::Goodbye,
        ];
        for (seq, body) in bodies.into_iter().enumerate() {
            let m = Message {
                from: from(),
                seq: seq as u64,
                body,
            };
            let text = encode(&m);
            assert_eq!(decode(&text, 1 << 20), Ok(m), "{text}");
        }
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let ok = r#"{"v":1,"from":{"node":"a","boot":1},"seq":1,"body":{"goodbye":{}}}"#;
        assert!(decode(ok, 1 << 10).is_ok());
        assert_eq!(decode(ok, 10), Err(DecodeError::TooLong(ok.len())));
        let v2 = ok.replace("\"v\":1", "\"v\":2");
        assert_eq!(decode(&v2, 1 << 10), Err(DecodeError::Version(2)));
        let unnamed = ok.replace("\"a\"", "\"\"");
        assert_eq!(decode(&unnamed, 1 << 10), Err(DecodeError::BadName));
        let both = r#"{"v":1,"from":{"node":"a","boot":1},"seq":1,"body":{"delta":{"ops":[{"dot":1,"remove":1,"add":{"topic":"t","key":"k","meta":{"phx_ref":"r"}}}]}}}"#;
        assert!(matches!(
            decode(both, 1 << 10),
            Err(DecodeError::Malformed(_))
        ));
        for junk in ["", "[]", "{}", "{\"v\":1}", "null", "{\"v\":1,\"from\":3}"] {
            assert!(decode(junk, 1 << 10).is_err(), "{junk}");
        }
    }
}
