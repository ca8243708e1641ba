//! The live-service wire format (PROTOCOLS.md §2): client messages decoded, server messages
//! encoded. Every message is a JSON array in a text frame.

use serde_json::{Value, json};

/// A message from the client.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `["join", {"id", "csrf"}]`.
    Join {
        /// The preflight id.
        id: String,
        /// The CSRF token.
        csrf: String,
    },
    /// `["event", {"kind", "id", "value"?}]`.
    Event {
        /// `click`, `input`, ...
        kind: String,
        /// The handler id.
        id: String,
        /// The target's value.
        value: Option<String>,
    },
    /// `["hook:event", {"id", "name", "payload"?}]`.
    HookEvent {
        /// The hook id.
        id: String,
        /// The event's name.
        name: String,
        /// Its payload (`null` when absent).
        payload: Value,
    },
}

/// Why a client message could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than the configured limit.
    TooLong,
    /// Not JSON, or not `[tag, {..}]`.
    Malformed,
    /// A tag the protocol does not have.
    UnknownTag,
    /// A required field is missing or not a string.
    MissingField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLong => f.write_str("message too long"),
            DecodeError::Malformed => f.write_str("malformed message"),
            DecodeError::UnknownTag => f.write_str("unknown message"),
            DecodeError::MissingField(name) => write!(f, "missing field {name}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads one client message of at most `max_len` bytes. Unlike sprocket, the tag is checked:
/// an unknown tag is an error, never a crash.
///
/// # Errors
/// [`DecodeError`] saying what was wrong.
pub fn decode(text: &str, max_len: usize) -> Result<ClientMessage, DecodeError> {
    if text.len() > max_len {
        return Err(DecodeError::TooLong);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| DecodeError::Malformed)?;
    let Value::Array(items) = value else {
        return Err(DecodeError::Malformed);
    };
    let (Some(Value::String(tag)), Some(Value::Object(body))) = (items.first(), items.get(1))
    else {
        return Err(DecodeError::Malformed);
    };
    let string = |name: &'static str| match body.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(DecodeError::MissingField(name)),
    };
    match tag.as_str() {
        "join" => Ok(ClientMessage::Join {
            id: string("id")?,
            csrf: string("csrf")?,
        }),
        "event" => Ok(ClientMessage::Event {
            kind: string("kind")?,
            id: string("id")?,
            value: match body.get("value") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(v @ (Value::Bool(_) | Value::Number(_))) => Some(v.to_string()),
                Some(_) => return Err(DecodeError::MissingField("value")),
            },
        }),
        "hook:event" => Ok(ClientMessage::HookEvent {
            id: string("id")?,
            name: string("name")?,
            // sprocket 0.1.3's client sent `payload` and its server read `value`; read both.
            payload: body
                .get("payload")
                .or_else(|| body.get("value"))
                .cloned()
                .unwrap_or(Value::Null),
        }),
        _ => Err(DecodeError::UnknownTag),
    }
}

/// An error code of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// No preflight with that id (never stored, expired, evicted or used).
    PreflightNotFound,
    /// The token does not match the preflight's.
    InvalidCsrfToken,
    /// Anything else: not joined, joined twice, too many sessions, a malformed message.
    ConnectError,
}

impl ErrorCode {
    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PreflightNotFound => "preflight_not_found",
            ErrorCode::InvalidCsrfToken => "invalid_csrf_token",
            ErrorCode::ConnectError => "connect_error",
        }
    }
}

/// `["ok", rendered]`.
pub fn ok(rendered: Value) -> String {
    json!(["ok", rendered]).to_string()
}

/// `["update", patch, {"debug": debug}]`.
pub fn update(patch: Value, debug: bool) -> String {
    json!(["update", patch, {"debug": debug}]).to_string()
}

/// `["event", {"id", "kind", "value"}]`, to a client hook.
pub fn hook_event(id: &str, kind: &str, value: &Value) -> String {
    json!(["event", {"id": id, "kind": kind, "value": value}]).to_string()
}

/// `["error", {"code", "msg"}]`.
pub fn error(code: ErrorCode, msg: &str) -> String {
    json!(["error", {"code": code.as_str(), "msg": msg}]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_three_messages() {
        assert_eq!(
            decode(r#"["join",{"id":"p","csrf":"t"}]"#, 100),
            Ok(ClientMessage::Join {
                id: "p".into(),
                csrf: "t".into()
            })
        );
        assert_eq!(
            decode(r#"["event",{"kind":"click","id":"inc"}]"#, 100),
            Ok(ClientMessage::Event {
                kind: "click".into(),
                id: "inc".into(),
                value: None
            })
        );
        assert_eq!(
            decode(
                r#"["hook:event",{"id":"h","name":"n","payload":{"a":1}}]"#,
                100
            ),
            Ok(ClientMessage::HookEvent {
                id: "h".into(),
                name: "n".into(),
                payload: json!({"a": 1})
            })
        );
    }

    #[test]
    fn refuses_what_is_not_the_protocol() {
        assert_eq!(decode("[", 100), Err(DecodeError::Malformed));
        assert_eq!(decode(r#"["foo",{}]"#, 100), Err(DecodeError::UnknownTag));
        assert_eq!(
            decode(r#"["join",{}]"#, 100),
            Err(DecodeError::MissingField("id"))
        );
        assert_eq!(decode(r#"{"join":1}"#, 100), Err(DecodeError::Malformed));
        assert_eq!(decode(&"x".repeat(101), 100), Err(DecodeError::TooLong));
    }
}
