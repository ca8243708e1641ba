//! A server connection's mailbox on smol: the queue other threads put user messages in, and
//! the waker of the connection's task.
//!
//! One small allocation a connection, shared by every [`Mailbox`](crate::Mailbox) handed out and
//! by the task that takes the messages. It replaced a smol channel, whose channel, count, sink
//! and listener came to about 1,100 bytes a connection, most of it the channel's cache-padded
//! queue. The oldest message waits in the mailbox itself and only those behind it in a queue,
//! which holds no buffer while it is empty: an idle connection that once had mail does not keep
//! the room its busiest moment needed, and a connection that gets one message at a time (a
//! subscriber of a topic broadcast once a second) never allocates one.

use std::collections::VecDeque;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use spool_std::handler::{MailboxError, MailboxSink};

/// A connection's mailbox: at most `capacity` messages wait; past it senders are told
/// [`MailboxError::Full`], and once it is closed [`MailboxError::Gone`].
pub(crate) struct Inbox<U> {
    state: Mutex<State<U>>,
    capacity: usize,
    /// Set, under the lock, by a poll that found no message and left its waker; cleared,
    /// under the lock, by the delivery that takes that waker. While it is set a poll has
    /// nothing to take and its task is registered already, so it answers without the lock:
    /// a connection looks at its mailbox on every wake-up, and the lock cost a 16 B echo
    /// round trip 38 instructions (callgrind). This holds because one task polls a mailbox,
    /// the connection's, whose waker stays the one to wake.
    armed: AtomicBool,
}

struct State<U> {
    /// The oldest message; `None` only when `queue` is empty too.
    first: Option<U>,
    /// The messages behind `first`, oldest first.
    queue: VecDeque<U>,
    /// The task to wake when a message arrives, while it waits for one.
    waker: Option<Waker>,
    closed: bool,
}

impl<U> Inbox<U> {
    /// An open mailbox taking up to `capacity` messages (at least 1).
    pub(crate) fn new(capacity: usize) -> Arc<Inbox<U>> {
        Arc::new(Inbox {
            state: Mutex::new(State {
                first: None,
                queue: VecDeque::new(),
                waker: None,
                closed: false,
            }),
            capacity: capacity.max(1),
            armed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<U>> {
        // A panic while the lock was held left the queue consistent: every step is one push or
        // pop.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The oldest message, if one waits.
    pub(crate) fn try_recv(&self) -> Option<U> {
        self.lock().pop()
    }

    /// The oldest message; or, with none waiting, `Pending`, and `cx`'s task is woken when
    /// one arrives. A closed mailbox stays pending: nothing more arrives. Only one task may
    /// poll a mailbox (see `armed`).
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<U> {
        // Acquire: a delivery that cleared the flag and then woke the task is seen whole.
        if self.armed.load(Ordering::Acquire) {
            debug_assert!(
                self.lock()
                    .waker
                    .as_ref()
                    .is_none_or(|w| w.will_wake(cx.waker())),
                "a mailbox polled by a second task"
            );
            return Poll::Pending;
        }
        let mut state = self.lock();
        if let Some(message) = state.pop() {
            return Poll::Ready(message);
        }
        if !state.closed {
            match &mut state.waker {
                Some(waker) => waker.clone_from(cx.waker()),
                None => state.waker = Some(cx.waker().clone()),
            }
            self.armed.store(true, Ordering::Release);
        }
        Poll::Pending
    }

    /// Refuses every later message, and drops those still waiting: nothing will take them.
    pub(crate) fn close(&self) {
        let left = {
            let mut state = self.lock();
            state.closed = true;
            (
                state.first.take(),
                mem::take(&mut state.queue),
                state.waker.take(),
            )
        };
        // Outside the lock: a message's drop or a waker may do anything, this mailbox included.
        drop(left);
    }

    /// Messages waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Room the queue holds, in messages.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.lock().queue.capacity()
    }
}

impl<U> State<U> {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.queue.len()
    }

    fn push(&mut self, message: U) {
        if self.first.is_none() {
            self.first = Some(message);
        } else {
            self.queue.push_back(message);
        }
    }

    fn pop(&mut self) -> Option<U> {
        let message = self.first.take()?;
        if !self.queue.is_empty() {
            self.first = self.queue.pop_front();
            if self.queue.is_empty() {
                // Emptied: the buffer goes, so an idle connection holds none.
                self.queue = VecDeque::new();
            }
        }
        Some(message)
    }
}

impl<U: Send> MailboxSink<U> for Inbox<U> {
    fn deliver(&self, message: U) -> Result<(), MailboxError<U>> {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return Err(MailboxError::Gone(message));
            }
            if state.len() >= self.capacity {
                return Err(MailboxError::Full(message));
            }
            state.push(message);
            self.armed.store(false, Ordering::Release);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn close(&self) {
        Inbox::close(self);
    }
}

/// The task's side of its mailbox: closes it when the task ends, however it ends.
pub(crate) struct Receiving<U>(pub(crate) Arc<Inbox<U>>);

impl<U> Drop for Receiving<U> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A waker that counts its wake-ups, for this crate's tests.
#[cfg(test)]
pub(crate) struct Count(pub(crate) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_no_buffer_once_emptied() {
        let inbox = Inbox::new(3);
        for i in 0..3 {
            assert_eq!(inbox.deliver(i), Ok(()));
        }
        assert_eq!(inbox.deliver(3), Err(MailboxError::Full(3)));
        assert_eq!(inbox.len(), 3);
        assert_eq!(inbox.try_recv(), Some(0));
        // Room again for one.
        assert_eq!(inbox.deliver(4), Ok(()));
        assert_eq!(inbox.deliver(5), Err(MailboxError::Full(5)));
        assert_eq!(
            (0..4).map(|_| inbox.try_recv()).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(4), None]
        );
        assert_eq!(inbox.room(), 0);
        // A zero capacity still takes one.
        let one = Inbox::new(0);
        assert_eq!(one.deliver(()), Ok(()));
        assert_eq!(one.deliver(()), Err(MailboxError::Full(())));
    }

    #[test]
    fn one_message_at_a_time_needs_no_buffer_and_order_holds_across_both_places() {
        let inbox = Inbox::new(4);
        for i in 0..3 {
            assert_eq!(inbox.deliver(i), Ok(()));
            assert_eq!(inbox.room(), 0);
            assert_eq!(inbox.try_recv(), Some(i));
        }
        // Messages pushed and taken in turns come out in the order they went in.
        let mut expected = 0;
        let mut next = 0;
        for round in 0..20 {
            for _ in 0..(round % 4) {
                if inbox.deliver(next) == Ok(()) {
                    next += 1;
                }
            }
            for _ in 0..(round % 3) {
                if let Some(m) = inbox.try_recv() {
                    assert_eq!(m, expected);
                    expected += 1;
                }
            }
            assert!(inbox.len() <= 4);
        }
        while let Some(m) = inbox.try_recv() {
            assert_eq!(m, expected);
            expected += 1;
        }
        assert_eq!(expected, next);
        assert_eq!(inbox.room(), 0);
    }

    /// Wakes the parked receiving thread.
    struct Unpark(std::thread::Thread);

    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    #[test]
    fn a_delivery_from_another_thread_always_reaches_a_waiting_task() {
        // The lock-free look at `armed` must never miss a message: every one sent from another
        // thread arrives, in order, and the receiver is never left asleep with mail waiting.
        const N: u32 = 20_000;
        let inbox = Inbox::new(16);
        let sender = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    let mut message = i;
                    while let Err(MailboxError::Full(m)) = inbox.deliver(message) {
                        message = m;
                        std::thread::yield_now();
                    }
                }
            })
        };
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut expected = 0;
        while expected < N {
            match inbox.poll_recv(&mut cx) {
                Poll::Ready(m) => {
                    assert_eq!(m, expected);
                    expected += 1;
                }
                Poll::Pending => {
                    let asleep = std::time::Instant::now();
                    std::thread::park_timeout(std::time::Duration::from_secs(10));
                    assert!(
                        asleep.elapsed() < std::time::Duration::from_secs(10),
                        "no wake-up with {expected} of {N} received"
                    );
                }
            }
        }
        sender.join().unwrap();
    }

    #[test]
    fn wakes_a_waiting_task_once_and_refuses_after_close() {
        let inbox = Inbox::new(8);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Pending);
        inbox.deliver("a").unwrap();
        inbox.deliver("b").unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready("a"));
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready("b"));
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Pending);
        // Closing drops what waits and refuses the rest; the task is not woken for it.
        inbox.deliver("c").unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        drop(Receiving(inbox.clone()));
        assert_eq!(inbox.deliver("d"), Err(MailboxError::Gone("d")));
        assert_eq!(inbox.try_recv(), None);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Pending);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}
