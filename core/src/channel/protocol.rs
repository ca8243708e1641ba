//! The Phoenix V2 wire format (PROTOCOLS.md §1): JSON arrays in text frames, and the binary
//! serializer's frames. Stateless: the runtime decides what to send; this only spells it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;

use super::event::{Frame, Payload};
use crate::ws::Text;

/// A decoded client message: `[join_ref, ref, topic, event, payload]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The channel's join reference (null for heartbeats and some leaves).
    pub join_ref: Option<String>,
    /// The message reference a reply echoes.
    pub msg_ref: Option<String>,
    /// The topic.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A client frame that is not a V2 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A text frame that is not JSON.
    NotJson,
    /// JSON that is not an array of at least five elements.
    NotAnArray,
    /// A reference that is neither a string nor null, or a topic or event that is not a string.
    BadField(&'static str),
    /// A binary frame of a kind clients do not send, or cut short.
    BadBinary,
}

impl DecodeError {
    /// A short lowercase description, also the close reason sent to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::NotJson => "text frame is not json",
            DecodeError::NotAnArray => "expected [join_ref, ref, topic, event, payload]",
            DecodeError::BadField(_) => "a message field has the wrong type",
            DecodeError::BadBinary => "malformed binary message",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadField(name) => write!(f, "{}: {name}", self.as_str()),
            _ => f.write_str(self.as_str()),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Kinds of the binary serializer (the frame's first byte).
const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

/// Decodes a client frame.
///
/// # Errors
/// [`DecodeError`] for anything phoenix.js would not send.
pub fn decode(frame: &Frame) -> Result<Message, DecodeError> {
    match frame {
        Frame::Text(text) => decode_text(text),
        Frame::Binary(bytes) => decode_binary(bytes),
    }
}

fn decode_text(text: &str) -> Result<Message, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|_| DecodeError::NotJson)?;
    let Value::Array(mut fields) = value else {
        return Err(DecodeError::NotAnArray);
    };
    if fields.len() < 5 {
        return Err(DecodeError::NotAnArray);
    }
    // Phoenix ignores elements past the fifth.
    fields.truncate(5);
    let payload = fields.pop().unwrap_or(Value::Null);
    let mut take_string =
        |i: usize, name: &'static str, nullable: bool| -> Result<Option<String>, DecodeError> {
            match std::mem::take(&mut fields[i]) {
                Value::String(s) => Ok(Some(s)),
                Value::Null if nullable => Ok(None),
                _ => Err(DecodeError::BadField(name)),
            }
        };
    let join_ref = take_string(0, "join_ref", true)?;
    let msg_ref = take_string(1, "ref", true)?;
    let topic = take_string(2, "topic", false)?.unwrap_or_default();
    let event = take_string(3, "event", false)?.unwrap_or_default();
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// `0 | len(jr) len(ref) len(topic) len(event) | jr ref topic event | payload`
fn decode_binary(bytes: &Bytes) -> Result<Message, DecodeError> {
    let [KIND_PUSH, lens @ ..] = &bytes[..] else {
        return Err(DecodeError::BadBinary);
    };
    let [jr_len, ref_len, topic_len, event_len, ..] = *lens else {
        return Err(DecodeError::BadBinary);
    };
    let mut at = 5;
    let mut field = |len: u8| -> Result<String, DecodeError> {
        let end = at + len as usize;
        let raw = bytes.get(at..end).ok_or(DecodeError::BadBinary)?;
        at = end;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadBinary)
    };
    let join_ref = field(jr_len)?;
    let msg_ref = field(ref_len)?;
    let topic = field(topic_len)?;
    let event = field(event_len)?;
    Ok(Message {
        join_ref: Some(join_ref),
        msg_ref: Some(msg_ref),
        topic,
        event,
        payload: Payload::Binary(bytes.slice(at..)),
    })
}

/// `{"status": .., "response": ..}`, in Phoenix's field order.
#[derive(Serialize)]
struct ReplyBody<'a> {
    status: &'a str,
    response: &'a Value,
}

fn json_frame<T: Serialize>(message: &T) -> Frame {
    // Serializing tuples of strings and `Value`s cannot fail: every map key is a string.
    let text = serde_json::to_string(message).unwrap_or_default();
    Frame::Text(Text::from(text))
}

/// A reply: `[jr, ref, topic, "phx_reply", {"status", "response"}]`, or a kind-1 binary frame
/// for a binary response. `None` when a binary frame cannot hold a field (over 255 bytes).
pub fn encode_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Option<Frame> {
    match response {
        Payload::Json(v) => Some(json_frame(&(
            join_ref,
            msg_ref,
            topic,
            "phx_reply",
            ReplyBody {
                status,
                response: v,
            },
        ))),
        Payload::Binary(b) => binary_frame(
            KIND_REPLY,
            &[join_ref.unwrap_or(""), msg_ref.unwrap_or(""), topic, status],
            b,
        ),
    }
}

/// A message to one client: `[jr, ref, topic, event, payload]`, or a kind-0 binary frame
/// (which has no ref).
pub fn encode_push(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Option<Frame> {
    match payload {
        Payload::Json(v) => Some(json_frame(&(join_ref, msg_ref, topic, event, v))),
        Payload::Binary(b) => binary_frame(KIND_PUSH, &[join_ref.unwrap_or(""), topic, event], b),
    }
}

/// A broadcast: `[null, null, topic, event, payload]`, or a kind-2 binary frame. The same
/// bytes go to every subscriber.
pub fn encode_broadcast(topic: &str, event: &str, payload: &Payload) -> Option<Frame> {
    match payload {
        Payload::Json(v) => Some(json_frame(&(None::<&str>, None::<&str>, topic, event, v))),
        Payload::Binary(b) => binary_frame(KIND_BROADCAST, &[topic, event], b),
    }
}

/// `kind | one length byte per field | the fields | payload`.
fn binary_frame(kind: u8, fields: &[&str], payload: &Bytes) -> Option<Frame> {
    let mut out = BytesMut::with_capacity(
        1 + fields.len() + fields.iter().map(|f| f.len()).sum::<usize>() + payload.len(),
    );
    out.put_u8(kind);
    for f in fields {
        out.put_u8(u8::try_from(f.len()).ok()?);
    }
    for f in fields {
        out.put_slice(f.as_bytes());
    }
    out.put_slice(payload);
    Some(Frame::Binary(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(frame: Option<Frame>) -> String {
        match frame {
            Some(Frame::Text(t)) => t.to_string(),
            other => panic!("{other:?}"),
        }
    }

    fn binary(frame: Option<Frame>) -> Vec<u8> {
        match frame {
            Some(Frame::Binary(b)) => b.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_the_v2_array_and_ignores_extra_elements() {
        let m = decode(&Frame::Text(
            r#"["1","2","room:1","phx_join",{"user":"a"},"extra"]"#.into(),
        ))
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.msg_ref.as_deref(), Some("2"));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("room:1", "phx_join"));
        assert_eq!(m.payload, Payload::Json(json!({"user": "a"})));
        let hb = decode(&Frame::Text(
            r#"[null,"5","phoenix","heartbeat",{}]"#.into(),
        ))
        .unwrap();
        assert_eq!((hb.join_ref, hb.msg_ref.as_deref()), (None, Some("5")));
    }

    #[test]
    fn refuses_what_phoenix_js_never_sends() {
        let bad = |s: &'static str| decode(&Frame::Text(Text::from_static(s))).unwrap_err();
        assert_eq!(bad("nope"), DecodeError::NotJson);
        assert_eq!(bad(r#"{"topic":"x"}"#), DecodeError::NotAnArray);
        assert_eq!(bad(r#"[null,null,"t","e"]"#), DecodeError::NotAnArray);
        assert_eq!(
            bad(r#"[1,null,"t","e",{}]"#),
            DecodeError::BadField("join_ref")
        );
        assert_eq!(
            bad(r#"[null,null,null,"e",{}]"#),
            DecodeError::BadField("topic")
        );
    }

    #[test]
    fn binary_push_matches_the_phoenix_js_test_vector() {
        // phoenix.js serializer test: {join_ref:"10", ref:"1", topic:"top", event:"ev", payload:[1]}.
        let wire = Bytes::from_static(b"\x00\x02\x01\x03\x0210\x31topev\x01");
        let m = decode(&Frame::Binary(wire)).unwrap();
        assert_eq!(
            (
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                m.topic.as_str(),
                m.event.as_str()
            ),
            (Some("10"), Some("1"), "top", "ev")
        );
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(&[1])));
        assert_eq!(
            decode(&Frame::Binary(Bytes::from_static(b"\x00\x09\x01"))),
            Err(DecodeError::BadBinary)
        );
        assert_eq!(
            decode(&Frame::Binary(Bytes::from_static(b"\x01"))),
            Err(DecodeError::BadBinary)
        );
    }

    #[test]
    fn encodes_replies_pushes_and_broadcasts_as_phoenix_does() {
        assert_eq!(
            text(encode_reply(
                Some("1"),
                Some("1"),
                "room:1",
                "ok",
                &Payload::Json(json!({}))
            )),
            r#"["1","1","room:1","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            text(encode_reply(
                None,
                Some("3"),
                "x",
                "error",
                &Payload::Json(json!({"reason": "unmatched topic"}))
            )),
            r#"[null,"3","x","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        assert_eq!(
            text(encode_push(
                Some("1"),
                None,
                "room:1",
                "presence_state",
                &Payload::Json(json!({}))
            )),
            r#"["1",null,"room:1","presence_state",{}]"#
        );
        assert_eq!(
            text(encode_broadcast(
                "room:1",
                "shout",
                &Payload::Json(json!({"body": "hi"}))
            )),
            r#"[null,null,"room:1","shout",{"body":"hi"}]"#
        );
    }

    #[test]
    fn binary_frames_match_the_phoenix_js_vectors() {
        let one = Payload::Binary(Bytes::from_static(&[1]));
        // phoenix.js decode vectors for server push, reply and broadcast.
        assert_eq!(
            binary(encode_push(Some("123"), None, "top", "some-event", &one)),
            b"\x00\x03\x03\n123topsome-event\x01"
        );
        assert_eq!(
            binary(encode_reply(Some("100"), Some("12"), "top", "ok", &one)),
            b"\x01\x03\x02\x03\x0210012topok\x01"
        );
        assert_eq!(
            binary(encode_broadcast("top", "some-event", &one)),
            b"\x02\x03\ntopsome-event\x01"
        );
        assert_eq!(encode_broadcast(&"t".repeat(256), "e", &one), None);
    }
}
