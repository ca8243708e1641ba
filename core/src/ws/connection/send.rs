//! The send path: messages framed (and compressed) for the transport.

use bytes::{Bytes, BytesMut};

use super::{Connection, Phase, Role};
use crate::ws::deflate::{DeflateParams, Deflater};
use crate::ws::event::{Message, Outbound};
use crate::ws::frame::{FrameHeader, MAX_HEADER_LEN, Opcode};
use crate::ws::mask::apply_mask;
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
        let threshold = self.config.deflate.map_or(usize::MAX, |d| d.threshold_len);
        match self.deflate {
            Some(params) if !opcode.is_control() && payload.len() >= threshold => {
                let (level, bits, reset) = own_compression(
                    self.role,
                    &params,
                    self.config.deflate.map_or(1, |d| d.level),
                );
                let deflater = self
                    .deflater
                    .get_or_insert_with(|| Deflater::new(level, bits, reset));
                let compressed = deflater.compress(&payload);
                self.push_frame(opcode, true, Bytes::from(compressed), out);
            }
            _ => self.push_frame(opcode, false, payload, out),
        }
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
