//! Streaming UTF-8 validation (RFC 6455 §8.1), for text that arrives in pieces.
//!
//! The state is at most three bytes of a code point split between pieces. A piece fails as soon
//! as it holds a byte that no valid UTF-8 can continue with, so a bad text message is refused
//! before the rest of it arrives (Autobahn 6.4.x checks exactly this).

/// A validator for one text message, fed piece by piece.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: usize,
}

/// The input is not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl std::fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid utf-8")
    }
}

impl std::error::Error for InvalidUtf8 {}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Checks the next piece.
    ///
    /// # Errors
    /// [`InvalidUtf8`] when no continuation could make the input so far valid.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let need = char_width(self.carry[0]);
            let take = (need - self.carry_len).min(input.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&input[..take]);
            self.carry_len += take;
            input = &input[take..];
            let pending = &self.carry[..self.carry_len];
            if self.carry_len < need {
                // Still incomplete: valid only if it is a prefix of some code point.
                return match simdutf8::compat::from_utf8(pending) {
                    Err(e) if e.error_len().is_none() => Ok(()),
                    _ => Err(InvalidUtf8),
                };
            }
            simdutf8::compat::from_utf8(pending).map_err(|_| InvalidUtf8)?;
            self.carry_len = 0;
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &input[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Checks that the message does not end inside a code point.
    ///
    /// # Errors
    /// [`InvalidUtf8`] when it does.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.carry_len == 0;
        self.carry_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

/// The length of a code point from its first byte; 1 for bytes that cannot start one, so that
/// validation of the carried byte fails at once.
fn char_width(first: u8) -> usize {
    match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_split_at_every_byte_is_valid() {
        let text = "κόσμε ✓ 𝄞 done".as_bytes();
        for cut in 0..=text.len() {
            let mut v = Utf8Validator::new();
            v.feed(&text[..cut]).unwrap();
            v.feed(&text[cut..]).unwrap();
            v.finish().unwrap();
        }
    }

    #[test]
    fn fails_fast_on_a_byte_that_cannot_continue() {
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        // 0xED 0xA0 would start a surrogate: invalid before the third byte arrives.
        assert_eq!(v.feed(&[0xED]), Ok(()));
        assert_eq!(v.feed(&[0xA0]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xF4, 0x90]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xFF]), Err(InvalidUtf8));
    }

    #[test]
    fn ending_inside_a_code_point_is_invalid() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2, 0x9C]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
