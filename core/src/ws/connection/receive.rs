//! The receive path: frames out of the input buffer, reassembled into messages, inflated and
//! checked (RFC 6455 §5, RFC 7692 §7.2.2), and control frames answered.

use std::mem;

use bytes::{Buf, Bytes, BytesMut};

use super::{Connection, FrameInProgress, MessageInProgress, Phase, Role};
use crate::ws::deflate::{DeflateParams, Inflater};
use crate::ws::error::ProtocolError;
use crate::ws::event::{Message, Outbound};
use crate::ws::frame::{FrameHeader, Opcode};
use crate::ws::mask::{apply_mask, extend_masked};
use crate::ws::text::Text;
use crate::ws::utf8::Utf8Validator;

/// The most whole messages [`Connection::read_whole_messages`] takes in one run (64 KiB of
/// 1 KiB messages).
const WHOLE_RUN: usize = 64;

impl Connection {
    /// Reads every whole frame in `buf`, and as much of a partial data frame as arrived.
    pub(super) fn read_frames(&mut self, out: &mut Vec<Outbound>) {
        // Only what this call delivered counts: entries the caller left in its vector must not
        // change the outcome (same events, same outbounds).
        let mut delivered = false;
        while matches!(self.phase, Phase::Open | Phase::Closing) {
            let before = out.len();
            let result = self.read_one(out);
            delivered |= out[before..]
                .iter()
                .any(|o| matches!(o, Outbound::Deliver(_)));
            match result {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if delivered => {
                    // Messages before the bad frame were delivered in this same call. Give the
                    // application one event to answer them (an echo, say) before failing, as
                    // a peer that read them one at a time would have; the deadline is now, so
                    // a shell with nothing to send ticks at once.
                    self.deferred_failure = Some(e);
                    self.buf = BytesMut::new();
                    break;
                }
                Err(e) => {
                    self.fail(e, out);
                    break;
                }
            }
        }
    }

    /// Bytes the shell keeps, arriving between messages with nothing buffered. A read that is
    /// exactly one whole simple message (see [`Connection::read_whole_messages`]), which is
    /// what a request-and-answer peer sends, is unmasked straight out of `bytes` into a buffer
    /// of the payload's size: one pass over it, and no copy of the read. Anything else is
    /// copied whole and read as [`Connection::read_frames`] reads it: for a run of many
    /// messages one copy and an unmasking in place cost less than a pass for each message. The
    /// outbounds are those of the same bytes handed over in a `Bytes` (a property test and the
    /// `ws_frames` fuzz target compare the two).
    pub(super) fn read_from(&mut self, bytes: &[u8], out: &mut Vec<Outbound>) {
        if let Ok(Some((h, start))) = FrameHeader::parse(bytes)
            && h.payload_len == (bytes.len() - start) as u64
            && self.copy_whole_message(&h, &bytes[start..], out)
        {
            return;
        }
        self.buf = BytesMut::from(bytes);
        self.read_frames(out);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Delivers the message whose header is `h` and whose payload is all of `payload`, if it
    /// is simple, unmasking it into a buffer of its own; false, having done nothing, if not.
    fn copy_whole_message(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        out: &mut Vec<Outbound>,
    ) -> bool {
        let limits = &self.config.limits;
        let max_len = limits.max_frame_len.min(limits.max_message_len) as u64;
        if !is_simple(h, payload.len(), max_len, self.role == Role::Server) {
            return false;
        }
        let text = h.opcode == Opcode::Text;
        let mut copy = Vec::with_capacity(payload.len());
        match h.mask {
            Some(key) => extend_masked(&mut copy, payload, key),
            None => copy.extend_from_slice(payload),
        }
        if text && simdutf8::basic::from_utf8(&copy).is_err() {
            // The general path rejects it, as it would have.
            return false;
        }
        out.push(deliver(Bytes::from(copy), text));
        true
    }

    /// Makes progress on one frame. `Ok(false)`: more bytes are needed.
    pub(super) fn read_one(&mut self, out: &mut Vec<Outbound>) -> Result<bool, ProtocolError> {
        let frame = match self.frame {
            Some(f) => f,
            None => {
                if self.read_whole_messages(out) {
                    return Ok(true);
                }
                let Some((header, len)) = FrameHeader::parse(&self.buf)? else {
                    return Ok(false);
                };
                self.check_header(&header)?;
                self.buf.advance(len);
                let f = FrameInProgress {
                    header,
                    consumed: 0,
                };
                self.frame = Some(f);
                f
            }
        };
        let h = frame.header;
        if h.opcode.is_control() {
            let len = h.payload_len as usize; // at most 125: checked in FrameHeader::parse
            if self.buf.len() < len {
                return Ok(false);
            }
            let mut payload = self.buf.split_to(len);
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            self.frame = None;
            self.on_control(h.opcode, payload.freeze(), out)?;
            return Ok(true);
        }
        let remaining = h.payload_len - frame.consumed;
        let take = remaining.min(self.buf.len() as u64) as usize;
        if take == 0 && remaining > 0 {
            return Ok(false);
        }
        let mut chunk = self.buf.split_to(take);
        if let Some(key) = h.mask {
            apply_mask(&mut chunk, key, frame.consumed as usize);
        }
        let frame_done = take as u64 == remaining;
        self.frame = if frame_done {
            None
        } else {
            Some(FrameInProgress {
                header: h,
                consumed: frame.consumed + take as u64,
            })
        };
        self.on_data(chunk, frame_done && h.fin, out)?;
        Ok(frame_done)
    }

    /// The common case: a run of whole messages, each in one uncompressed frame, already in
    /// the buffer. They are unmasked (and text checked) in place, then the run is frozen once
    /// and each message is a slice of it: one reference count a message instead of a split of
    /// the buffer each. False when the buffer does not start with such a message; the
    /// first frame that is anything else (a fragment, a control frame, a partial frame, an
    /// error of any kind) ends the run untouched, for the general path to answer exactly as it
    /// would have. The fuzz target `ws_frames` and Autobahn's cases go through both paths.
    fn read_whole_messages(&mut self, out: &mut Vec<Outbound>) -> bool {
        // An empty buffer (every read ends with one) must not pay for the run's array below.
        if self.message.is_some() || self.buf.is_empty() {
            return false;
        }
        let limits = &self.config.limits;
        let max_len = limits.max_frame_len.min(limits.max_message_len) as u64;
        let masked = self.role == Role::Server;
        // A read that is exactly one message (an echo's, a request's), seen before the run's
        // array is set up (clearing it cost more than the rest of this function): the buffer
        // is given up whole, where a split would first share it, which allocates a count.
        if let Ok(Some((h, start))) = FrameHeader::parse(&self.buf)
            && h.payload_len == (self.buf.len() - start) as u64
        {
            if !self.unmask_simple(&h, start, max_len, masked) {
                return false;
            }
            let mut whole = mem::take(&mut self.buf).freeze();
            if self.phase == Phase::Open {
                whole.advance(start);
                out.push(deliver(whole, h.opcode == Opcode::Text));
            }
            return true;
        }
        // (start, end, text) of each message found; a bounded run, so this stays on the stack.
        let mut found = [(0usize, 0usize, false); WHOLE_RUN];
        let mut count = 0;
        let mut at = 0;
        while count < WHOLE_RUN {
            let Ok(Some((h, header_len))) = FrameHeader::parse(&self.buf[at..]) else {
                break;
            };
            let start = at + header_len;
            if !self.unmask_simple(&h, start, max_len, masked) {
                break;
            }
            let end = start + h.payload_len as usize;
            let text = h.opcode == Opcode::Text;
            found[count] = (start, end, text);
            count += 1;
            at = end;
        }
        if count == 0 {
            return false;
        }
        let run = self.buf.split_to(at).freeze();
        if self.phase == Phase::Open {
            for &(start, end, text) in &found[..count] {
                out.push(deliver(run.slice(start..end), text));
            }
        }
        true
    }

    /// For a frame whose header `h` ends at `start`: when it is a whole, unfragmented,
    /// uncompressed data message within the limits and entirely in the buffer, unmasks its
    /// payload in place and checks it (text), and says true. Otherwise leaves the buffer as it
    /// was, for the general path to answer.
    #[inline(always)]
    fn unmask_simple(&mut self, h: &FrameHeader, start: usize, max_len: u64, masked: bool) -> bool {
        if !is_simple(h, self.buf.len() - start, max_len, masked) {
            return false;
        }
        let payload = &mut self.buf[start..start + h.payload_len as usize];
        if let Some(key) = h.mask {
            apply_mask(payload, key, 0);
        }
        if h.opcode == Opcode::Text && simdutf8::basic::from_utf8(payload).is_err() {
            // Masking is its own inverse: put the frame back as it came, for the general path
            // to reject.
            if let Some(key) = h.mask {
                apply_mask(payload, key, 0);
            }
            return false;
        }
        true
    }

    /// Checks what a header allows before any of its payload is buffered.
    pub(super) fn check_header(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        // RFC 6455 §5.1: clients mask every frame, servers none.
        if h.mask.is_some() != (self.role == Role::Server) {
            return Err(ProtocolError::BadMask);
        }
        // RFC 6455 §5.2 and RFC 7692 §6: RSV1 only on the first frame of a compressed message.
        let first_data = matches!(h.opcode, Opcode::Text | Opcode::Binary);
        if h.rsv23 || (h.rsv1 && !(first_data && self.deflate.is_some())) {
            return Err(ProtocolError::ReservedBits);
        }
        if h.payload_len > self.config.limits.max_frame_len as u64 {
            return Err(ProtocolError::FrameTooBig);
        }
        match (h.opcode, &self.message) {
            (Opcode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            let held = self.message.as_ref().map_or(0, |m| m.data.len()) as u64;
            let compressed = h.rsv1 || self.message.as_ref().is_some_and(|m| m.compressed);
            // The peer picks payload_len (up to 2^63 - 1): add without overflowing.
            let total = held.saturating_add(h.payload_len);
            if !compressed && total > self.config.limits.max_message_len as u64 {
                return Err(ProtocolError::MessageTooBig);
            }
            if self.message.is_none() {
                self.message = Some(MessageInProgress {
                    text: h.opcode == Opcode::Text,
                    compressed: h.rsv1,
                    data: Vec::new(),
                    utf8: Utf8Validator::new(),
                });
            }
        }
        Ok(())
    }

    /// Takes a piece of a data frame's payload, unmasked; `last` ends the message.
    pub(super) fn on_data(
        &mut self,
        chunk: BytesMut,
        last: bool,
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        let limit = self.config.limits.max_message_len;
        // check_header opened the message before any payload arrived.
        let Some(msg) = self.message.as_mut() else {
            return Ok(());
        };
        if last && !msg.compressed && msg.data.is_empty() {
            // The common case, a whole message in one frame: hand the buffer over uncopied.
            let msg = self.message.take().unwrap_or_else(|| unreachable!());
            let message = if msg.text {
                let text =
                    Text::from_utf8(chunk.freeze()).map_err(|_| ProtocolError::InvalidUtf8)?;
                Message::Text(text)
            } else {
                Message::Binary(chunk.freeze())
            };
            if self.phase == Phase::Open {
                out.push(Outbound::Deliver(message));
            }
            return Ok(());
        }
        let before = msg.data.len();
        if msg.compressed {
            let inflater = self.inflater.get_or_insert_with(|| {
                Box::new(Inflater::new(peer_no_context_takeover(
                    self.role,
                    self.deflate,
                )))
            });
            inflater.feed(&chunk, &mut msg.data, limit)?;
            if last {
                inflater.finish(&mut msg.data, limit)?;
                if peer_no_context_takeover(self.role, self.deflate) {
                    // The next message starts from an empty window: keep no zlib state (about
                    // 40 KiB) while the connection idles. RFC 7692 §7.2.2 allows exactly this.
                    self.inflater = None;
                }
            }
        } else {
            msg.data.extend_from_slice(&chunk);
        }
        if msg.text {
            msg.utf8
                .feed(&msg.data[before..])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !last {
            return Ok(());
        }
        let mut msg = self.message.take().unwrap_or_else(|| unreachable!());
        let message = if msg.text {
            msg.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            let text =
                Text::from_utf8(Bytes::from(msg.data)).map_err(|_| ProtocolError::InvalidUtf8)?;
            Message::Text(text)
        } else {
            Message::Binary(Bytes::from(msg.data))
        };
        if self.phase == Phase::Open {
            out.push(Outbound::Deliver(message));
        }
        Ok(())
    }

    pub(super) fn on_control(
        &mut self,
        opcode: Opcode,
        payload: Bytes,
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        // Once this side sent a close frame, pings go unanswered and pongs unreported.
        let open = self.phase == Phase::Open;
        match opcode {
            Opcode::Ping if open => {
                self.push_frame(Opcode::Pong, false, payload.clone(), out);
                out.push(Outbound::Deliver(Message::Ping(payload)));
            }
            Opcode::Pong if open => out.push(Outbound::Deliver(Message::Pong(payload))),
            Opcode::Close => self.on_close_frame(&payload, out)?,
            // FrameHeader::parse only lets the three control opcodes through.
            _ => {}
        }
        Ok(())
    }
}

/// Whether a frame with header `h`, `available` bytes of whose payload have arrived, is a
/// whole, unfragmented, uncompressed data message within `max_len`, masked as this end expects:
/// one the fast paths may deliver without the general path's bookkeeping.
#[inline(always)]
fn is_simple(h: &FrameHeader, available: usize, max_len: u64, masked: bool) -> bool {
    h.fin
        && !h.rsv1
        && !h.rsv23
        && matches!(h.opcode, Opcode::Text | Opcode::Binary)
        && h.mask.is_some() == masked
        && h.payload_len <= max_len
        && h.payload_len <= available as u64
}

/// Whether the peer resets its compression window after each message.
fn peer_no_context_takeover(role: Role, params: Option<DeflateParams>) -> bool {
    params.is_some_and(|p| match role {
        Role::Server => p.client_no_context_takeover,
        Role::Client => p.server_no_context_takeover,
    })
}

/// A whole message, its payload unmasked and (if text) checked, as the core delivers it.
#[inline(always)]
fn deliver(bytes: Bytes, text: bool) -> Outbound {
    Outbound::Deliver(if text {
        Message::Text(Text::from_validated(bytes))
    } else {
        Message::Binary(bytes)
    })
}
