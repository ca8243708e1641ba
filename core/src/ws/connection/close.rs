//! How a connection ends (RFC 6455 §7): the close handshake from either side, failing on a
//! protocol error, the transport going away, and reporting the end once.

use bytes::{Bytes, BytesMut};

use super::{Connection, Phase, Role, Timers};
use crate::ws::error::ProtocolError;
use crate::ws::event::{CloseInfo, Initiator, Outbound};
use crate::ws::frame::{Opcode, is_valid_close_code};

impl Connection {
    /// Ends the connection from this side: no more input is read and no timer is left.
    pub(super) fn hang_up(&mut self, out: &mut Vec<Outbound>) {
        self.phase = Phase::Done;
        self.timers = Timers::default();
        self.offer = None;
        self.buf = BytesMut::new();
        self.frame = None;
        self.message = None;
        self.release_zlib();
        out.push(Outbound::Disconnect);
    }

    /// Drops both zlib streams (each up to a few hundred KiB): nothing more will be sent or
    /// received through them.
    pub(super) fn release_zlib(&mut self) {
        self.deflater = None;
        self.inflater = None;
    }

    pub(super) fn on_close_frame(
        &mut self,
        payload: &[u8],
        out: &mut Vec<Outbound>,
    ) -> Result<(), ProtocolError> {
        // RFC 6455 §5.5.1: empty, or a 2-byte code and a UTF-8 reason.
        let (code, reason) = match payload {
            [] => (1005, String::new()),
            [_] => return Err(ProtocolError::CloseTooShort),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(ProtocolError::InvalidCloseCode);
                }
                let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                (code, reason.to_string())
            }
        };
        self.message = None;
        if self.close.is_none() {
            // Echo the peer's code (§5.5.1), or an empty close if it sent none.
            let echo = if code == 1005 {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&payload[..2])
            };
            self.push_frame(Opcode::Close, false, echo, out);
            self.close = Some((code, reason, Initiator::Remote));
        }
        let (code, reason, initiator) =
            self.close
                .clone()
                .unwrap_or((code, String::new(), Initiator::Remote));
        self.finish(code, reason, true, initiator, out);
        self.end_transport(out);
        Ok(())
    }

    /// After a completed close handshake: a server hangs up; a client waits for the server to.
    pub(super) fn end_transport(&mut self, out: &mut Vec<Outbound>) {
        match self.role {
            Role::Server => {
                self.phase = Phase::Done;
                self.timers.close = None;
                out.push(Outbound::Disconnect);
            }
            Role::Client => {
                self.phase = Phase::Draining;
                self.timers.close = Some(self.now_ms.saturating_add(self.config.close_timeout_ms));
            }
        }
        self.buf = BytesMut::new();
        self.frame = None;
        self.release_zlib();
    }

    /// Fails the connection on a protocol error (§7.1.7): a close frame with the error's code,
    /// then the transport is closed without waiting for an answer.
    pub(super) fn fail(&mut self, error: ProtocolError, out: &mut Vec<Outbound>) {
        let code = error.close_code();
        if self.close.is_none() {
            self.push_close(code, error.as_str(), out);
        }
        self.finish(
            code,
            error.as_str().to_string(),
            false,
            Initiator::Local,
            out,
        );
        self.hang_up(out);
    }

    pub(super) fn on_close_requested(&mut self, code: u16, reason: &str, out: &mut Vec<Outbound>) {
        match self.phase {
            Phase::Open => {
                let code = if is_valid_close_code(code) {
                    code
                } else {
                    1000
                };
                self.push_close(code, reason, out);
            }
            Phase::Fresh | Phase::Handshake | Phase::AwaitingDecision => {
                self.finish(1006, reason.to_string(), false, Initiator::Local, out);
                self.hang_up(out);
            }
            Phase::Closing | Phase::Draining | Phase::Done => {}
        }
    }

    /// Sends a close frame and waits for the answer.
    pub(super) fn push_close(&mut self, code: u16, reason: &str, out: &mut Vec<Outbound>) {
        let reason = truncate_utf8(reason, 123);
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.push_frame(Opcode::Close, false, payload.freeze(), out);
        self.close = Some((code, reason.to_string(), Initiator::Local));
        self.phase = Phase::Closing;
        self.timers.close = Some(self.now_ms.saturating_add(self.config.close_timeout_ms));
    }

    pub(super) fn on_transport_closed(&mut self, out: &mut Vec<Outbound>) {
        if self.phase == Phase::Done {
            return;
        }
        self.finish(1006, String::new(), false, Initiator::Transport, out);
        self.phase = Phase::Done;
        self.timers = Timers::default();
        self.buf = BytesMut::new();
        self.message = None;
        self.frame = None;
        self.release_zlib();
    }

    /// Reports the end of the connection, once.
    pub(super) fn finish(
        &mut self,
        code: u16,
        reason: String,
        clean: bool,
        initiator: Initiator,
        out: &mut Vec<Outbound>,
    ) {
        if self.closed_reported {
            return;
        }
        self.closed_reported = true;
        out.push(Outbound::Closed(CloseInfo {
            code,
            reason,
            clean,
            initiator,
        }));
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
