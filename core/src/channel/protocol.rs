//! The Phoenix V2 wire format (PROTOCOLS.md §1): JSON arrays in text frames, and the binary
//! serializer's frames. Stateless: the runtime decides what to send; this only spells it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::config::Config;
use super::event::Frame;
use super::payload::{JsonText, Payload};
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
    /// The payload, as the frame carried it.
    pub payload: Payload,
}

/// A client frame that is not a V2 message, or breaks a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame longer than `max_message_len`.
    TooBig,
    /// A text frame that is not JSON.
    NotJson,
    /// JSON that is not an array of at least five elements.
    NotAnArray,
    /// A reference that is neither a string nor null, or a topic or event that is not a string.
    BadField(&'static str),
    /// A binary frame of a kind clients do not send, or cut short.
    BadBinary,
    /// A reference, topic or event name over its limit in the configuration.
    TooLong(&'static str),
}

impl DecodeError {
    /// A short lowercase description, also the close reason sent to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::TooBig => "message too big",
            DecodeError::NotJson => "text frame is not json",
            DecodeError::NotAnArray => "expected [join_ref, ref, topic, event, payload]",
            DecodeError::BadField(_) => "a message field has the wrong type",
            DecodeError::BadBinary => "malformed binary message",
            DecodeError::TooLong("topic") => "topic too long",
            DecodeError::TooLong("event") => "event name too long",
            DecodeError::TooLong(_) => "ref too long",
        }
    }

    /// The WebSocket close code for the socket that sent it: 1009 (message too big) for a
    /// frame over the limit, else 1008 (policy violation), as Phoenix closes a socket whose
    /// frame its serializer cannot read.
    pub fn close_code(self) -> u16 {
        match self {
            DecodeError::TooBig => 1009,
            _ => 1008,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadField(name) | DecodeError::TooLong(name) => {
                write!(f, "{}: {name}", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Kinds of the binary serializer (the frame's first byte).
const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

/// Decodes a client frame, within the limits of `config`.
///
/// The length is checked first, from the frame's length alone, and the lengths of the refs,
/// topic and event name once decoded. A text frame's payload stays the frame's own bytes:
/// decoding checks it is JSON and copies nothing.
///
/// # Errors
/// [`DecodeError`] for a frame over the limits, or anything phoenix.js would not send.
pub fn decode(frame: &Frame, config: &Config) -> Result<Message, DecodeError> {
    let len = match frame {
        Frame::Text(t) => t.len(),
        Frame::Binary(b) => b.len(),
    };
    if len > config.max_message_len {
        return Err(DecodeError::TooBig);
    }
    let m = match frame {
        Frame::Text(text) => decode_text(text)?,
        Frame::Binary(bytes) => decode_binary(bytes)?,
    };
    let (join_ref, msg_ref) = (m.join_ref.as_deref(), m.msg_ref.as_deref());
    check_lengths(config, join_ref, msg_ref, &m.topic, &m.event)?;
    Ok(m)
}

/// Checks a message's strings against the limits of `config`: replies and notices echo them,
/// so none may be longer than its limit.
///
/// # Errors
/// [`DecodeError::TooLong`] naming the first field over its limit.
pub fn check_lengths(
    config: &Config,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
) -> Result<(), DecodeError> {
    let fields = [
        ("join_ref", join_ref.map_or(0, str::len), config.max_ref_len),
        ("ref", msg_ref.map_or(0, str::len), config.max_ref_len),
        ("topic", topic.len(), config.max_topic_len),
        ("event", event.len(), config.max_event_len),
    ];
    match fields.iter().find(|(_, len, max)| len > max) {
        Some((name, ..)) => Err(DecodeError::TooLong(name)),
        None => Ok(()),
    }
}

/// The five elements of a V2 array, each as its raw JSON text; elements past the fifth are
/// checked and skipped, as Phoenix ignores them.
struct Fields<'a>([&'a RawValue; 5]);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields<'de>, D::Error> {
        d.deserialize_seq(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fields<'de>, A::Error> {
        let mut next = |i: usize| {
            seq.next_element::<&RawValue>()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))
        };
        let fields = [next(0)?, next(1)?, next(2)?, next(3)?, next(4)?];
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Fields(fields))
    }
}

fn decode_text(text: &Text) -> Result<Message, DecodeError> {
    let Fields([join_ref, msg_ref, topic, event, payload]) =
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DecodeError::NotAnArray,
            _ => DecodeError::NotJson,
        })?;
    let string = |raw: &RawValue, name: &'static str| {
        serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| DecodeError::BadField(name))
    };
    let join_ref = string(join_ref, "join_ref")?;
    let msg_ref = string(msg_ref, "ref")?;
    let topic = string(topic, "topic")?.ok_or(DecodeError::BadField("topic"))?;
    let event = string(event, "event")?.ok_or(DecodeError::BadField("event"))?;
    // The payload is a slice of the frame: `raw` borrows from `text`, so `slice_ref` finds it
    // there, and a slice of JSON text at a value's bounds is UTF-8.
    let bytes = text.as_bytes().slice_ref(payload.get().as_bytes());
    let payload = Text::from_utf8(bytes).map_err(|_| DecodeError::NotJson)?;
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(JsonText::checked(payload)),
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

/// A V2 JSON array written by hand, so that a payload's text goes in as it is: the same bytes
/// serde_json writes for the tuple (no spaces, its string escapes).
struct JsonArray(Vec<u8>);

impl JsonArray {
    fn new(capacity: usize) -> JsonArray {
        let mut out = Vec::with_capacity(capacity + 64);
        out.push(b'[');
        JsonArray(out)
    }

    fn string(mut self, s: Option<&str>) -> JsonArray {
        match s {
            // Writing to a Vec cannot fail.
            Some(s) => {
                let _ = serde_json::to_writer(&mut self.0, s);
            }
            None => self.0.extend_from_slice(b"null"),
        }
        self.0.push(b',');
        self
    }

    fn raw(mut self, json: &str) -> JsonArray {
        self.0.extend_from_slice(json.as_bytes());
        self
    }

    fn finish(mut self) -> Option<Frame> {
        self.0.push(b']');
        // Every piece was UTF-8: escaped strings, `null`, commas and JSON text.
        String::from_utf8(self.0)
            .ok()
            .map(|s| Frame::Text(Text::from(s)))
    }
}

/// The four strings before the payload, and their length.
fn head_len(fields: [Option<&str>; 4]) -> usize {
    fields.iter().map(|f| f.map_or(4, str::len) + 3).sum()
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
        Payload::Json(j) => {
            let head = [join_ref, msg_ref, Some(topic), Some("phx_reply")];
            let mut out = head.iter().fold(
                JsonArray::new(head_len(head) + status.len() + j.as_str().len()),
                |out, f| out.string(*f),
            );
            out = out.raw(r#"{"status":"#);
            let _ = serde_json::to_writer(&mut out.0, status);
            out.raw(r#","response":"#).raw(j.as_str()).raw("}").finish()
        }
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
        Payload::Json(j) => json_message([join_ref, msg_ref, Some(topic), Some(event)], j),
        Payload::Binary(b) => binary_frame(KIND_PUSH, &[join_ref.unwrap_or(""), topic, event], b),
    }
}

/// A broadcast: `[null, null, topic, event, payload]`, or a kind-2 binary frame. The same
/// bytes go to every subscriber.
pub fn encode_broadcast(topic: &str, event: &str, payload: &Payload) -> Option<Frame> {
    match payload {
        Payload::Json(j) => json_message([None, None, Some(topic), Some(event)], j),
        Payload::Binary(b) => binary_frame(KIND_BROADCAST, &[topic, event], b),
    }
}

fn json_message(head: [Option<&str>; 4], payload: &JsonText) -> Option<Frame> {
    head.iter()
        .fold(
            JsonArray::new(head_len(head) + payload.as_str().len()),
            |out, f| out.string(*f),
        )
        .raw(payload.as_str())
        .finish()
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

    fn decode(frame: &Frame) -> Result<Message, DecodeError> {
        super::decode(frame, &Config::with_seed(1))
    }

    fn json(text: &str) -> Payload {
        Payload::Json(JsonText::new(Text::from(text)).unwrap())
    }

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
        assert_eq!(m.payload.json_text(), Some(r#"{"user":"a"}"#));
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
                &json("{}")
            )),
            r#"["1","1","room:1","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            text(encode_reply(
                None,
                Some("3"),
                "x",
                "error",
                &json(r#"{"reason":"unmatched topic"}"#)
            )),
            r#"[null,"3","x","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        assert_eq!(
            text(encode_push(
                Some("1"),
                None,
                "room:1",
                "presence_state",
                &json("{}")
            )),
            r#"["1",null,"room:1","presence_state",{}]"#
        );
        assert_eq!(
            text(encode_broadcast(
                "room:1",
                "shout",
                &json(r#"{"body":"hi"}"#)
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
