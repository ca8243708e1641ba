//! [`Text`]: the payload of a text message, UTF-8 by construction and cheap to clone.
//!
//! It is `Bytes` underneath, so one encoded broadcast can go to ten thousand connections as ten
//! thousand reference counts rather than ten thousand copies.
#![allow(unsafe_code)] // One use, in `as_str`; see its SAFETY comment.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// UTF-8 text held in shared bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Bytes);

impl Text {
    /// Text from bytes, if they are UTF-8.
    ///
    /// # Errors
    /// Gives the bytes back when they are not UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Text, Bytes> {
        match simdutf8::basic::from_utf8(&bytes) {
            Ok(_) => Ok(Text(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// Text from bytes the caller has just checked are UTF-8 (the receive path validates a
    /// payload while it can still stop before it, then wraps it without a second pass).
    pub(crate) fn from_validated(bytes: Bytes) -> Text {
        debug_assert!(simdutf8::basic::from_utf8(&bytes).is_ok());
        Text(bytes)
    }

    /// Text from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or inherits UTF-8 validity (`from_utf8` validates;
        // `from_validated`'s one caller validated the same frozen bytes; `String`, `&str` and
        // `&'static str` are UTF-8), and the bytes are never mutated.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The bytes underneath, shared.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes underneath.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}
