//! Payloads: JSON kept as the text it arrived in, or bytes.
//!
//! A client's payload is a slice of its frame: decoding a message checks that the payload is
//! JSON but builds nothing from it, so a message costs its own bytes and no more, whatever its
//! shape (a `serde_json::Value` tree costs up to twenty times its text). A handler parses the
//! payload when it wants to ([`Payload::parse`], [`Payload::to_value`]), and a payload passed
//! on unchanged (a relayed broadcast) is copied into the outgoing frame as it came.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::ws::Text;

/// A message's payload: JSON text, or raw bytes (Phoenix's binary serializer).
///
/// ```
/// use serde::Deserialize;
/// use serde_json::json;
/// use spool_core::channel::Payload;
///
/// #[derive(Deserialize)]
/// struct NewMsg { body: String }
///
/// let payload = Payload::from(json!({"body": "hi", "extra": [1, 2]}));
/// let msg: NewMsg = payload.parse().unwrap();
/// assert_eq!(msg.body, "hi");
/// assert_eq!(payload.to_value().unwrap()["extra"][1], 2);
/// assert_eq!(payload.json_text(), Some(r#"{"body":"hi","extra":[1,2]}"#));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// JSON (an object, for everything phoenix.js sends).
    Json(JsonText),
    /// Bytes, from or for a binary frame.
    Binary(#[serde(with = "crate::b64")] Bytes),
}

impl Payload {
    /// An empty JSON object, `{}`.
    pub fn empty() -> Payload {
        Payload::Json(JsonText(Text::from_static("{}")))
    }

    /// The JSON text, if this is JSON.
    pub fn json_text(&self) -> Option<&str> {
        match self {
            Payload::Json(j) => Some(j.as_str()),
            Payload::Binary(_) => None,
        }
    }

    /// Parses the JSON into `T`: a struct of the fields a handler wants, say, which costs
    /// only those fields.
    ///
    /// # Errors
    /// When the JSON does not fit `T`, or the payload is binary.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self {
            Payload::Json(j) => j.parse(),
            Payload::Binary(_) => Err(serde::de::Error::custom("a binary payload is not JSON")),
        }
    }

    /// The JSON as a [`Value`], or `None` for a binary payload.
    pub fn to_value(&self) -> Option<Value> {
        self.parse().ok()
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload::Json(JsonText::from(&v))
    }
}

impl From<JsonText> for Payload {
    fn from(j: JsonText) -> Payload {
        Payload::Json(j)
    }
}

/// Valid JSON text, shared: a slice of the frame it came in, or what a handler serialized.
///
/// Two are equal when their texts are, or when they parse to equal values (a log read back
/// holds its payloads re-serialized).
#[derive(Clone)]
pub struct JsonText(Text);

impl JsonText {
    /// Checks that `text` is one JSON value, and keeps it as it is.
    ///
    /// # Errors
    /// When it is not.
    pub fn new(text: Text) -> Result<JsonText, serde_json::Error> {
        serde_json::from_str::<&RawValue>(&text)?;
        Ok(JsonText(text))
    }

    /// Text already checked to be one JSON value, with no whitespace around it.
    pub(crate) fn checked(text: Text) -> JsonText {
        JsonText(text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text into `T`.
    ///
    /// # Errors
    /// When the JSON does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl From<&Value> for JsonText {
    fn from(v: &Value) -> JsonText {
        // Printing a Value cannot fail: its map keys are strings.
        JsonText(Text::from(serde_json::to_string(v).unwrap_or_default()))
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        if self.0 == other.0 {
            return true;
        }
        match (self.parse::<Value>(), other.parse::<Value>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for JsonText {}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written into logs as the JSON itself, not as a string holding it.
impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_str(self.as_str()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// Read back through a [`Value`], since a log's events are internally tagged enums, whose
/// fields serde buffers and cannot hand over as raw text.
impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonText, D::Error> {
        Value::deserialize(d).map(|v| JsonText::from(&v))
    }
}
