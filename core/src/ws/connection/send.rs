//! The send path: messages framed (and compressed) for the transport.

use bytes::{Bytes, BytesMut};

use super::{Connection, Phase, Role};
use crate::ws::deflate::{DeflateParams, Deflater};
use crate::ws::event::{Message, Outbound};
use crate::ws::frame::{FrameHeader, MAX_HEADER_LEN, Opcode};
use crate::ws::mask::apply_mask;
use crate::ws::prepared::PreparedMessage;
use crate::ws::transmit::Transmit;

impl Connection {
    pub(super) fn on_send(&mut self, message: Message, out: &mut Vec<Outbound>) {
        if self.phase != Phase::Open {
            return;
        }
        let (opcode, payload) = match message {
            Message::Text(t) => (Opcode::Text, t.into_bytes()),
            Message::Binary(b) => (Opcode::Binary, b),
            // §5.5: control payloads are at most 125 bytes.
            Message::Ping(b) => (Opcode::Ping, b.slice(..b.len().min(125))),
            Message::Pong(b) => (Opcode::Pong, b.slice(..b.len().min(125))),
        };
        match self.deflate {
            Some(params) if self.is_worth_compressing(opcode, payload.len()) => {
                let (level, bits, reset) = own_compression(
                    self.role,
                    &params,
                    self.config.deflate.map_or(1, |d| d.level),
                );
                let compressed = if reset {
                    // No context takeover on our side: a fresh compressor for each message,
                    // dropped after it, so an idle connection holds no zlib state (a deflate
                    // stream with a 15-bit window is about 270 KiB).
                    Deflater::new(level, bits, true).compress(&payload)
                } else {
                    self.deflater
                        .get_or_insert_with(|| Box::new(Deflater::new(level, bits, false)))
                        .compress(&payload)
                };
                self.push_frame(opcode, true, Bytes::from(compressed), out);
            }
            _ => self.push_frame(opcode, false, payload, out),
        }
    }

    /// Sends a message that may come precompressed: the shared bytes when they fit what this
    /// connection negotiated, else as [`Event::Send`](crate::ws::Event::Send) would.
    pub(super) fn on_send_prepared(&mut self, prepared: PreparedMessage, out: &mut Vec<Outbound>) {
        if self.phase != Phase::Open {
            return;
        }
        let opcode = match prepared.message() {
            Message::Text(_) => Opcode::Text,
            Message::Binary(_) => Opcode::Binary,
            Message::Ping(_) | Message::Pong(_) => Opcode::Ping, // never precompressed
        };
        let shared = match (self.deflate, prepared.deflated()) {
            (Some(params), Some(bytes))
                if prepared.fits(self.role, &params)
                    && self.is_worth_compressing(opcode, prepared.message().len()) =>
            {
                Some(bytes.clone())
            }
            _ => None,
        };
        match shared {
            Some(bytes) => self.push_frame(opcode, true, bytes, out),
            None => self.on_send(prepared.into_message(), out),
        }
    }

    /// Whether a message goes out compressed, once compression was agreed on: data messages
    /// from `threshold_len` bytes up.
    fn is_worth_compressing(&self, opcode: Opcode, len: usize) -> bool {
        let threshold = self.config.deflate.map_or(usize::MAX, |d| d.threshold_len);
        !opcode.is_control() && len >= threshold
    }

    /// Frames `payload` and queues it: the header inline, the payload as the caller's own
    /// bytes. A client masks the payload in place when it is the only owner (a `String` sent as
    /// text, say), and on a copy otherwise.
    pub(super) fn push_frame(
        &mut self,
        opcode: Opcode,
        rsv1: bool,
        payload: Bytes,
        out: &mut Vec<Outbound>,
    ) {
        let mask = self.client.as_mut().map(|c| c.rng.next_mask());
        let header = FrameHeader {
            fin: true,
            rsv1,
            rsv23: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = header.encode(&mut head);
        let body = match mask {
            Some(key) => {
                let mut owned = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                apply_mask(&mut owned, key, 0);
                owned.freeze()
            }
            None => payload,
        };
        out.push(Outbound::Transmit(Transmit::frame(&head[..head_len], body)));
    }
}

/// This side's compressor settings: level, window bits, reset after each message.
fn own_compression(role: Role, params: &DeflateParams, level: u32) -> (u32, u8, bool) {
    match role {
        Role::Server => (
            level,
            params.server_max_window_bits,
            params.server_no_context_takeover,
        ),
        Role::Client => (
            level,
            params.client_max_window_bits,
            params.client_no_context_takeover,
        ),
    }
}
