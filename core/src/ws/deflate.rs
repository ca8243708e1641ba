//! permessage-deflate (RFC 7692): the parameters, their negotiation, and the per-message
//! compressor and decompressor.
//!
//! A compressed message is raw DEFLATE ending in an empty stored block whose trailing
//! `00 00 FF FF` is cut off by the sender (§7.2.1) and put back by the receiver (§7.2.2).
//! With context takeover the LZ77 window carries over from one message to the next.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use super::error::{ConfigError, HandshakeError, ProtocolError};

/// What this side offers (client) or accepts (server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeflateConfig {
    /// Server: always ask the client to reset its window after each message, trading ratio for
    /// memory. Client: ask the server to. Default false.
    pub server_no_context_takeover: bool,
    /// Server: ask the client to reset its window after each message. Client: promise to.
    /// Default false.
    pub client_no_context_takeover: bool,
    /// The largest window (log2 bytes, 8 to 15) the server compresses with. Default 15 (32 KiB).
    pub server_max_window_bits: u8,
    /// The largest window (8 to 15) the client compresses with. Default 15.
    pub client_max_window_bits: u8,
    /// zlib level, 0 (store) to 9 (best). Default 1: most of the ratio for little CPU, as on
    /// chat-like traffic the ratio barely moves past level 1.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed. Default 32 bytes: below that the
    /// DEFLATE block overhead outweighs any gain.
    pub threshold_len: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
            threshold_len: 32,
        }
    }
}

impl DeflateConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bits = 8..=15;
        if !bits.contains(&self.server_max_window_bits)
            || !bits.contains(&self.client_max_window_bits)
        {
            return Err(ConfigError::new(
                "deflate.*_max_window_bits",
                "must be from 8 to 15",
            ));
        }
        if self.level > 9 {
            return Err(ConfigError::new("deflate.level", "must be from 0 to 9"));
        }
        Ok(())
    }
}

/// The parameters both sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeflateParams {
    /// The server resets its window after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its window after each message.
    pub client_no_context_takeover: bool,
    /// The server's compression window, log2 bytes.
    pub server_max_window_bits: u8,
    /// The client's compression window, log2 bytes.
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value that states these parameters.
    pub fn header_value(&self, client_bits_requested: bool) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if client_bits_requested && self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// One extension offer or answer, split into its parameters.
struct Offer<'a> {
    params: Vec<(&'a str, Option<&'a str>)>,
}

/// Splits an extensions header into its permessage-deflate entries; other extensions are skipped.
fn deflate_entries(header: &str) -> Vec<Offer<'_>> {
    header
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
                return None;
            }
            let params = parts
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                })
                .collect();
            Some(Offer { params })
        })
        .collect()
}

fn window_bits(value: &str) -> Option<u8> {
    // RFC 7692 §7.1.2: a decimal integer from 8 to 15, no leading zeros.
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Server side: picks the first acceptable offer in `header` (§7.1). Returns the agreed
/// parameters and the header value to answer with, or `None` to go on without compression.
pub(crate) fn negotiate(header: &str, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    'offers: for offer in deflate_entries(header) {
        let mut agreed = DeflateParams {
            server_no_context_takeover: config.server_no_context_takeover,
            client_no_context_takeover: config.client_no_context_takeover,
            server_max_window_bits: config.server_max_window_bits,
            client_max_window_bits: 15,
        };
        let mut client_bits_offered = false;
        let mut seen: Vec<&str> = Vec::new();
        for &(name, value) in &offer.params {
            if seen.contains(&name) {
                continue 'offers; // §7.1: a repeated parameter makes the offer invalid
            }
            seen.push(name);
            match (name, value) {
                ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
                ("server_max_window_bits", Some(v)) => match window_bits(v) {
                    Some(b) => agreed.server_max_window_bits = b.min(config.server_max_window_bits),
                    None => continue 'offers,
                },
                ("client_max_window_bits", v) => {
                    client_bits_offered = true;
                    let offered = match v {
                        Some(v) => match window_bits(v) {
                            Some(b) => b,
                            None => continue 'offers,
                        },
                        None => 15,
                    };
                    agreed.client_max_window_bits = offered.min(config.client_max_window_bits);
                }
                _ => continue 'offers,
            }
        }
        let answer = agreed.header_value(client_bits_offered);
        return Some((agreed, answer));
    }
    None
}

/// Client side: the offer to send.
pub(crate) fn offer(config: &DeflateConfig) -> String {
    let mut s = String::from("permessage-deflate");
    if config.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if config.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if config.server_max_window_bits < 15 {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            config.server_max_window_bits
        ));
    }
    // Always say we can limit our window, so the server may ask for a smaller one.
    if config.client_max_window_bits < 15 {
        s.push_str(&format!(
            "; client_max_window_bits={}",
            config.client_max_window_bits
        ));
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// Client side: checks the server's answer against what was offered (§7.1).
pub(crate) fn accept_answer(
    header: &str,
    config: &DeflateConfig,
) -> Result<DeflateParams, HandshakeError> {
    let entries = deflate_entries(header);
    let [answer] = entries.as_slice() else {
        return Err(HandshakeError::Unrequested("extension"));
    };
    let mut agreed = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: config.client_no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: config.client_max_window_bits,
    };
    let bad = HandshakeError::Header("sec-websocket-extensions");
    for &(name, value) in &answer.params {
        match (name, value) {
            ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                agreed.server_max_window_bits = window_bits(v).ok_or(bad.clone())?;
            }
            ("client_max_window_bits", Some(v)) => {
                let b = window_bits(v).ok_or(bad.clone())?;
                agreed.client_max_window_bits = b.min(config.client_max_window_bits);
            }
            _ => return Err(bad),
        }
    }
    if config.server_no_context_takeover && !agreed.server_no_context_takeover {
        return Err(bad);
    }
    if agreed.server_max_window_bits > config.server_max_window_bits {
        return Err(bad);
    }
    Ok(agreed)
}

/// The tail every sync-flushed DEFLATE stream ends in (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compresses outgoing messages.
pub(crate) struct Deflater {
    inner: Compress,
    reset_each_message: bool,
}

impl Deflater {
    pub(crate) fn new(level: u32, window_bits: u8, no_context_takeover: bool) -> Deflater {
        // zlib raises a raw window of 8 bits to 9, and keeps match distances within
        // 2^9 - 262 = 250 bytes, so its output stays readable with an 8-bit window.
        let bits = window_bits.max(9);
        Deflater {
            inner: Compress::new_with_window_bits(Compression::new(level), false, bits),
            reset_each_message: no_context_takeover,
        }
    }

    /// The compressed form of one whole message.
    pub(crate) fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start_in = self.inner.total_in();
        loop {
            let consumed = (self.inner.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            // A sync flush on an in-memory stream only fails on a corrupted state, which would
            // be a bug in flate2; the empty result then becomes an empty message.
            let Ok(status) =
                self.inner
                    .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            else {
                break;
            };
            let done = (self.inner.total_in() - start_in) as usize == input.len();
            if done && out.capacity() > out.len() || status == Status::StreamEnd {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            out.push(0x00); // §7.2.3.6: an empty message compresses to one empty stored block.
        }
        if self.reset_each_message {
            self.inner.reset();
        }
        out
    }
}

/// Decompresses incoming messages, piece by piece, within a size limit.
pub(crate) struct Inflater {
    inner: Decompress,
    reset_each_message: bool,
    /// The current message's DEFLATE data ended with a final block (BFINAL=1): the rest of the
    /// message is not part of it.
    ended: bool,
}

impl Inflater {
    pub(crate) fn new(no_context_takeover: bool) -> Inflater {
        // A 15-bit window reads any stream made with a smaller one.
        Inflater {
            inner: Decompress::new_with_window_bits(false, 15),
            reset_each_message: no_context_takeover,
            ended: false,
        }
    }

    /// Inflates `input` onto the end of `out`, never letting `out` pass `limit` bytes.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        if self.ended {
            // RFC 7692 §7.2.2 decompresses the message "using DEFLATE", and a DEFLATE stream
            // ends at its final block (RFC 1951 §3.2.3): what follows is ignored. The RFC's own
            // §7.2.3.4 example has one such byte.
            return Ok(());
        }
        let start_in = self.inner.total_in();
        loop {
            let consumed = (self.inner.total_in() - start_in) as usize;
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(ProtocolError::MessageTooBig);
                }
                // Room to pass the limit by one byte, so that passing it is seen. Saturating:
                // `limit` may be as large as the config allows, and `input` is the peer's.
                let room = input
                    .len()
                    .saturating_mul(4)
                    .clamp(4096, 1 << 20)
                    .min(limit.saturating_add(1) - out.len());
                out.reserve_exact(room.max(1));
            }
            let before_out = out.len();
            let status = self
                .inner
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::BadDeflate)?;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig);
            }
            if status == Status::StreamEnd {
                // A final block (RFC 7692 §7.2.3.4: a sender may flush with BFINAL=1). The
                // message's data ends here; `finish` starts a fresh stream for the next one.
                self.ended = true;
                return Ok(());
            }
            let all_in = (self.inner.total_in() - start_in) as usize == input.len();
            if all_in && out.len() < out.capacity() {
                return Ok(());
            }
            if out.len() == before_out && !all_in && out.len() < out.capacity() {
                return Err(ProtocolError::BadDeflate); // no progress: corrupt input
            }
        }
    }

    /// Ends a message: feeds the cut-off tail so the last block flushes out (§7.2.2), unless
    /// the message's data already ended with a final block.
    ///
    /// After a final block the next message starts a new DEFLATE stream with an empty window:
    /// zlib cannot go on past the end of a stream, and a sender that ended its stream has no
    /// window to refer back to either, unless it primed its compressor by hand.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        let result = self.feed(&TAIL, out, limit);
        if self.ended || self.reset_each_message {
            self.inner.reset(false);
            self.ended = false;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_accepts_the_first_valid_offer() {
        let cfg = DeflateConfig::default();
        let (p, answer) = negotiate(
            "permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits; server_no_context_takeover",
            &cfg,
        )
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert!(negotiate("x-webkit-deflate-frame", &cfg).is_none());
        assert!(negotiate("permessage-deflate; foo", &cfg).is_none());
        assert!(negotiate("permessage-deflate; server_max_window_bits=08", &cfg).is_none());
        let (p, answer) = negotiate("permessage-deflate; client_max_window_bits=9", &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 9);
        assert_eq!(answer, "permessage-deflate; client_max_window_bits=9");
    }

    #[test]
    fn client_checks_the_answer() {
        let cfg = DeflateConfig::default();
        let p = accept_answer("permessage-deflate; server_max_window_bits=10", &cfg).unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert!(accept_answer("permessage-deflate; bogus", &cfg).is_err());
    }

    #[test]
    fn round_trip_with_and_without_context_takeover() {
        for (bits, reset) in [(15, false), (8, false), (9, true), (15, true)] {
            let mut d = Deflater::new(6, bits, reset);
            let mut i = Inflater::new(reset);
            for msg in ["", "hello hello hello hello", &"abc".repeat(5000)] {
                let wire = d.compress(msg.as_bytes());
                let mut out = Vec::new();
                i.feed(&wire, &mut out, 1 << 20).unwrap();
                i.finish(&mut out, 1 << 20).unwrap();
                assert_eq!(out, msg.as_bytes(), "bits {bits} reset {reset}");
            }
        }
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let mut d = Deflater::new(9, 15, false);
        let wire = d.compress(&vec![0u8; 1 << 20]);
        assert!(wire.len() < 2048);
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        assert_eq!(
            i.feed(&wire, &mut out, 1000),
            Err(ProtocolError::MessageTooBig)
        );
        assert!(out.capacity() < 1 << 20, "held {} bytes", out.capacity());
    }

    #[test]
    fn no_limit_is_too_large_to_add_to() {
        // Peer-controlled lengths meet `limit` in arithmetic; usize::MAX must not overflow it.
        let mut d = Deflater::new(1, 15, false);
        let wire = d.compress(b"hello hello hello");
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        i.feed(&wire, &mut out, usize::MAX).unwrap();
        i.finish(&mut out, usize::MAX).unwrap();
        assert_eq!(out, b"hello hello hello");
    }
}
