//! Timers: the handshake and close deadlines, keep-alive pings and the idle timeout. Time only
//! enters as `now_ms`; [`Connection::next_deadline`] says when the shell should tick.

use bytes::Bytes;

use super::{Connection, Phase};
use crate::ws::error::HandshakeError;
use crate::ws::event::{Initiator, Outbound};
use crate::ws::frame::Opcode;

/// What the keep-alive timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeepAlive {
    /// Nothing arrived for `ping_interval_ms`: send a ping.
    Ping,
    /// Nothing arrived for `pong_timeout_ms` after a ping: the peer is taken for dead.
    GiveUp,
}

/// The close reason when a ping went unanswered.
const PONG_TIMEOUT: &str = "pong timeout";

/// Timers, each an absolute instant in ms, or `None` when not armed.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Timers {
    /// When the opening handshake must have finished.
    pub(super) handshake: Option<u64>,
    /// When the peer's close frame (or, draining, its hang-up) must have arrived.
    pub(super) close: Option<u64>,
}

impl Connection {
    /// The instant of the next timer, if any: the shell sends
    /// [`Event::Tick`](crate::ws::Event::Tick) then.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.deferred_failure.is_some() {
            return Some(self.now_ms);
        }
        let mut next = [self.timers.handshake, self.timers.close]
            .into_iter()
            .flatten()
            .min();
        if self.phase == Phase::Open {
            let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
            if let Some(idle) = self.config.idle_timeout_ms {
                consider(self.last_receive_ms.saturating_add(idle));
            }
            if let Some((at, _)) = self.keep_alive() {
                consider(at);
            }
        }
        next
    }

    /// When the keep-alive timer fires next and what it does then: a ping once nothing arrived
    /// for `ping_interval_ms`; once a ping is out and still nothing arrived, giving up on the
    /// peer `pong_timeout_ms` after the ping (with no pong timeout, another ping).
    fn keep_alive(&self) -> Option<(u64, KeepAlive)> {
        let interval = self.config.ping_interval_ms?;
        // Anything received at or after the ping's instant answers it: a pong, or any frame.
        let ping_unanswered = self.last_ping_ms > self.last_receive_ms;
        if let (true, Some(timeout)) = (ping_unanswered, self.config.pong_timeout_ms) {
            return Some((self.last_ping_ms.saturating_add(timeout), KeepAlive::GiveUp));
        }
        let quiet_since = self.last_receive_ms.max(self.last_ping_ms);
        Some((quiet_since.saturating_add(interval), KeepAlive::Ping))
    }

    pub(super) fn on_tick(&mut self, out: &mut Vec<Outbound>) {
        let now = self.now_ms;
        if self.timers.handshake.is_some_and(|t| now >= t) {
            self.timers.handshake = None;
            if matches!(self.phase, Phase::Handshake | Phase::AwaitingDecision) {
                self.fail_handshake(HandshakeError::Timeout, out);
                return;
            }
        }
        if self.timers.close.is_some_and(|t| now >= t) {
            self.timers.close = None;
            if self.phase == Phase::Closing {
                let (code, reason, initiator) =
                    self.close
                        .clone()
                        .unwrap_or((1006, String::new(), Initiator::Local));
                self.finish(code, reason, false, initiator, out);
            }
            if matches!(self.phase, Phase::Closing | Phase::Draining) {
                self.hang_up(out);
            }
            return;
        }
        if self.phase != Phase::Open {
            return;
        }
        if let Some(idle) = self.config.idle_timeout_ms
            && now >= self.last_receive_ms.saturating_add(idle)
        {
            self.push_close(1001, "idle timeout", out);
            return;
        }
        match self.keep_alive() {
            Some((at, KeepAlive::Ping)) if now >= at => {
                self.last_ping_ms = now;
                self.push_frame(Opcode::Ping, false, Bytes::new(), out);
            }
            Some((at, KeepAlive::GiveUp)) if now >= at => {
                // The peer is gone or stuck: waiting for its close frame would only hold the
                // connection longer. Say why (1001, going away, as Phoenix closes a silent
                // socket) in case it still reads, report an unclean end, and hang up.
                self.push_close(1001, PONG_TIMEOUT, out);
                self.finish(1001, PONG_TIMEOUT.to_string(), false, Initiator::Local, out);
                self.hang_up(out);
            }
            _ => {}
        }
    }
}
