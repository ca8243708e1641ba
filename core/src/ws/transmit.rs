//! [`Transmit`]: bytes for the transport, shaped so that framing a message costs no allocation.
//!
//! A frame's header (at most 14 bytes) travels inline; its payload is the caller's own `Bytes`,
//! shared rather than copied. A shell writes both with one vectored write. Serialized (in event
//! logs) it is the base64 of its bytes, head and body together.

use std::fmt;

use bytes::{Buf, Bytes};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes to write to the transport, in two parts: an inline head and a shared body.
#[derive(Clone, Default)]
pub struct Transmit {
    head: [u8; HEAD_CAPACITY],
    /// `head[start..end]` is still to be written.
    start: u8,
    end: u8,
    body: Bytes,
}

/// Room for the longest frame header (RFC 6455 §5.2: 2 + 8 + 4 bytes).
const HEAD_CAPACITY: usize = 14;

impl Transmit {
    /// A head (a frame header, at most 14 bytes) followed by a body.
    pub(crate) fn frame(head: &[u8], body: Bytes) -> Transmit {
        let mut t = Transmit {
            body,
            ..Transmit::default()
        };
        let n = head.len().min(HEAD_CAPACITY);
        t.head[..n].copy_from_slice(&head[..n]);
        t.end = n as u8;
        t
    }

    /// The inline part still to be written.
    #[inline]
    pub fn head(&self) -> &[u8] {
        &self.head[self.start as usize..self.end as usize]
    }

    /// The shared part.
    #[inline]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Both parts, in order, for an `IoSlice` each.
    #[inline]
    pub fn slices(&self) -> [&[u8]; 2] {
        [self.head(), &self.body]
    }

    /// The number of bytes still to be written.
    #[inline]
    pub fn len(&self) -> usize {
        self.head().len() + self.body.len()
    }

    /// Whether nothing is left to write.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes, after a partial write.
    #[inline]
    pub fn advance(&mut self, n: usize) {
        let from_head = n.min(self.head().len());
        self.start += from_head as u8;
        let from_body = (n - from_head).min(self.body.len());
        self.body.advance(from_body);
    }

    /// All the bytes in one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.head());
        v.extend_from_slice(&self.body);
        v
    }

    /// All the bytes as one `Bytes`: the body itself when the head is empty, else a copy.
    pub fn into_bytes(self) -> Bytes {
        if self.head().is_empty() {
            self.body
        } else {
            Bytes::from(self.to_vec())
        }
    }

    /// Whether the bytes start with `prefix`.
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        prefix.len() <= self.len() && self.to_vec().starts_with(prefix)
    }
}

impl From<Bytes> for Transmit {
    fn from(body: Bytes) -> Transmit {
        Transmit {
            body,
            ..Transmit::default()
        }
    }
}

impl From<Vec<u8>> for Transmit {
    fn from(v: Vec<u8>) -> Transmit {
        Transmit::from(Bytes::from(v))
    }
}

impl From<&'static str> for Transmit {
    fn from(s: &'static str) -> Transmit {
        Transmit::from(Bytes::from_static(s.as_bytes()))
    }
}

/// Equal when the bytes are equal, however they are split between head and body.
impl PartialEq for Transmit {
    fn eq(&self, other: &Transmit) -> bool {
        self.len() == other.len()
            && self
                .head()
                .iter()
                .chain(&self.body[..])
                .eq(other.head().iter().chain(&other.body[..]))
    }
}

impl Eq for Transmit {}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transmit({:?})", Bytes::from(self.to_vec()))
    }
}

impl Serialize for Transmit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::b64::serialize(&self.to_vec(), s)
    }
}

impl<'de> Deserialize<'de> for Transmit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Transmit, D::Error> {
        crate::b64::deserialize::<D, Vec<u8>>(d).map(Transmit::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_across_head_and_body() {
        let mut t = Transmit::frame(&[1, 2, 3], Bytes::from_static(&[4, 5, 6, 7]));
        assert_eq!(t, Transmit::from(vec![1, 2, 3, 4, 5, 6, 7]));
        t.advance(2);
        assert_eq!(t.slices(), [&[3][..], &[4, 5, 6, 7][..]]);
        t.advance(3);
        assert_eq!((t.head(), &t.body()[..]), (&[][..], &[6, 7][..]));
        t.advance(10);
        assert!(t.is_empty());
    }
}
