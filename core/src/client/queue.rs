//! The outgoing queue: messages waiting for a connection, and messages sent but not yet
//! confirmed, in one bounded deque, in the order they were given.

use std::collections::VecDeque;

use crate::ws::Message;

/// `messages[..sent]` went out on the current connection and wait for a confirming pong;
/// `messages[sent..]` wait to be sent.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    messages: VecDeque<Message>,
    sent: usize,
    /// Payload bytes held.
    len: usize,
    /// Messages refused since the client was made.
    pub(crate) dropped: u64,
    /// The confirming ping in flight: its payload counter, and how many messages from the front
    /// it covers.
    pub(crate) confirming: Option<(u64, usize)>,
    pub(crate) next_ping: u64,
}

impl Queue {
    /// Adds a message at the back, or refuses it (drop newest) when either bound is reached.
    pub(crate) fn push(&mut self, message: Message, max: usize, max_len: usize) -> bool {
        if self.messages.len() >= max || self.len.saturating_add(message.len()) > max_len {
            self.dropped += 1;
            return false;
        }
        self.len += message.len();
        self.messages.push_back(message);
        true
    }

    /// The next message to send, if any waits; it counts as sent.
    pub(crate) fn next_unsent(&mut self) -> Option<Message> {
        let message = self.messages.get(self.sent)?.clone();
        self.sent += 1;
        Some(message)
    }

    /// Whether a message waits to be sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.sent < self.messages.len()
    }

    /// Forgets the oldest `n` sent messages: they are confirmed, or not kept.
    pub(crate) fn confirm(&mut self, n: usize) {
        let n = n.min(self.sent);
        for message in self.messages.drain(..n) {
            self.len -= message.len();
        }
        self.sent -= n;
    }

    /// The number of sent messages not yet confirmed.
    pub(crate) fn unconfirmed(&self) -> usize {
        self.sent
    }

    /// The connection is gone: every unconfirmed message waits to be sent again, first.
    pub(crate) fn rewind(&mut self) {
        self.sent = 0;
        self.confirming = None;
    }

    /// Whether nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
}
