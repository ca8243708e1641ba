//! The deadlines of a server thread's connections, kept by the thread's own
//! [`Runner`](crate::runner::Runner) rather than by async-io.
//!
//! An async-io timer lives in async-io's reactor: setting one takes its lock, queues the
//! change and wakes async-io's thread (a system call), which then moves it in a B-tree of every
//! timer in the process; when it fires, that thread wakes the task's runner across threads (a
//! second system call to ring its poller). Every connection's keep-alive deadline fires about
//! once a ping period, so at 19,000 connections with a ping a second that was most of what a
//! ping cost spool-smol: 11.8 us of server CPU per connection per second, against 6.3 for
//! spool-std, whose loop keeps its own deadlines.
//!
//! Here a runner keeps its tasks' deadlines in a binary heap on its own thread and sleeps in
//! its poller only until the earliest ([`Timers::next`]); on waking it fires what is due
//! ([`Timers::fire_due`]), each a wake-up of a task on the same thread. A deadline that moves
//! pushes a new entry and leaves the old one to be skipped when it surfaces (a heap cannot
//! find an entry to move it); a stale entry is known by its instant no longer being its
//! timer's. Stale entries are bounded: when they would outnumber the live ones (plus
//! [`SLACK`]), the heap is rebuilt with the live ones only, so it holds at most twice as many
//! entries as there are armed timers, plus [`SLACK`].
//!
//! A task that is not on a runner (a client's) uses an async-io timer instead
//! ([`crate::io::Deadline`]); [`TaskDeadline`] picks the one that fits where it is created.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::io::{Clock, Deadline};

/// Stale entries the heap tolerates beyond one per live one before it is rebuilt: a handful
/// of connections that come and go must not rebuild it each time.
const SLACK: usize = 64;

/// A runner's deadlines.
#[derive(Default)]
pub(crate) struct Timers {
    heap: RefCell<BinaryHeap<Entry>>,
    /// Timers armed now; each has exactly one entry in `heap` at its instant.
    armed: Cell<usize>,
}

/// One arming of a timer: the heap's earliest first.
struct Entry {
    at: Instant,
    timer: Weak<TimerState>,
}

impl Entry {
    /// Whether this entry is its timer's current arming (the timer may have moved, fired or
    /// gone since).
    fn is_live(&self) -> bool {
        self.timer
            .upgrade()
            .is_some_and(|t| t.at.get() == Some(self.at))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        // `BinaryHeap` is a max-heap: the earliest instant is the greatest.
        other.at.cmp(&self.at)
    }
}

/// What a timer and its runner's heap share.
#[derive(Default)]
struct TimerState {
    at: Cell<Option<Instant>>,
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Timers {
    /// Fires every timer due at `now`: each wakes its task (onto the runner's queue). Returns
    /// how many fired.
    pub(crate) fn fire_due(&self, now: Instant) -> usize {
        let mut fired = 0;
        loop {
            // Taken out before waking anyone: a woken task may arm its timer again.
            let entry = {
                let mut heap = self.heap.borrow_mut();
                match heap.peek() {
                    Some(top) if top.at <= now => heap.pop(),
                    _ => None,
                }
            };
            let Some(entry) = entry else {
                return fired;
            };
            let Some(timer) = entry.timer.upgrade() else {
                continue;
            };
            if timer.at.get() != Some(entry.at) {
                continue;
            }
            timer.at.set(None);
            self.armed.set(self.armed.get() - 1);
            timer.fired.set(true);
            let waker = timer.waker.borrow_mut().take();
            if let Some(waker) = waker {
                waker.wake();
            }
            fired += 1;
        }
    }

    /// The earliest armed deadline, if any: how long the runner may sleep. Stale entries on
    /// top are dropped on the way, so that a closed connection's deadline wakes nobody.
    pub(crate) fn next(&self) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        while let Some(top) = heap.peek() {
            if top.is_live() {
                return Some(top.at);
            }
            heap.pop();
        }
        None
    }

    /// Entries in the heap, live and stale.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.borrow().len()
    }

    fn push(&self, at: Instant, timer: &Rc<TimerState>) {
        let mut heap = self.heap.borrow_mut();
        if heap.len() >= 2 * self.armed.get() + SLACK {
            heap.retain(Entry::is_live);
        }
        heap.push(Entry {
            at,
            timer: Rc::downgrade(timer),
        });
    }
}

/// A timer on a runner's heap, for a task on that runner.
pub(crate) struct RunnerTimer {
    state: Rc<TimerState>,
    timers: Rc<Timers>,
}

impl RunnerTimer {
    pub(crate) fn new(timers: Rc<Timers>) -> RunnerTimer {
        RunnerTimer {
            state: Rc::default(),
            timers,
        }
    }

    /// Arms the timer at `at`, or disarms it (`None`); a fired timer that was not polled since
    /// forgets that it fired.
    pub(crate) fn set(&self, at: Option<Instant>) {
        let before = self.state.at.replace(at);
        self.state.fired.set(false);
        let armed = &self.timers.armed;
        match (before, at) {
            (None, Some(_)) => armed.set(armed.get() + 1),
            (Some(_), None) => armed.set(armed.get() - 1),
            _ => {}
        }
        if let Some(at) = at
            && before != Some(at)
        {
            self.timers.push(at, &self.state);
        }
    }

    /// Ready once the armed instant has passed and the runner has fired it.
    pub(crate) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.fired.replace(false) {
            return Poll::Ready(());
        }
        let mut waker = self.state.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for RunnerTimer {
    fn drop(&mut self) {
        // Its entry goes stale: the heap's weak reference no longer upgrades.
        if self.state.at.get().is_some() {
            let armed = &self.timers.armed;
            armed.set(armed.get() - 1);
        }
    }
}

/// A connection's deadline, on its runner's heap when it is created on a runner, else on
/// async-io: the same calls either way ([`crate::io::Deadline`]'s).
pub(crate) enum TaskDeadline {
    Runner {
        timer: RunnerTimer,
        /// The armed deadline, on the caller's clock.
        armed: Option<u64>,
    },
    Reactor(Deadline),
}

impl TaskDeadline {
    pub(crate) fn new() -> TaskDeadline {
        match crate::runner::timers() {
            Some(timers) => TaskDeadline::Runner {
                timer: RunnerTimer::new(timers),
                armed: None,
            },
            None => TaskDeadline::Reactor(Deadline::new()),
        }
    }

    /// Like [`Deadline::arm_no_later`]: the timer only moves earlier, to fire early at worst;
    /// returns whether it moved.
    pub(crate) fn arm_no_later(&mut self, next: Option<u64>, clock: &Clock) -> bool {
        match self {
            TaskDeadline::Reactor(deadline) => deadline.arm_no_later(next, clock),
            TaskDeadline::Runner { timer, armed } => {
                let moves = match (next, *armed) {
                    (Some(at), Some(was)) => at < was,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if moves {
                    *armed = next;
                    timer.set(next.map(|ms| clock.instant(ms)));
                }
                moves
            }
        }
    }

    /// Like [`Deadline::poll_due`]: Ready once when the armed deadline passes, by `now_ms` or
    /// by the timer firing (then the caller reads the clock afresh before it checks what is
    /// due); the deadline is disarmed then.
    pub(crate) fn poll_due(&mut self, now_ms: u64, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            TaskDeadline::Reactor(deadline) => deadline.poll_due(now_ms, cx),
            TaskDeadline::Runner { timer, armed } => {
                let Some(at) = *armed else {
                    return Poll::Pending;
                };
                if at <= now_ms || timer.poll_fired(cx).is_ready() {
                    *armed = None;
                    timer.set(None);
                    return Poll::Ready(());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, AtomicOrdering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn timers_fire_in_order_of_their_instants_and_only_when_due() {
        let timers = Rc::new(Timers::default());
        let start = Instant::now();
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let late = RunnerTimer::new(timers.clone());
        let early = RunnerTimer::new(timers.clone());
        late.set(Some(start + Duration::from_millis(20)));
        early.set(Some(start + Duration::from_millis(10)));
        assert!(late.poll_fired(&mut cx).is_pending());
        assert!(early.poll_fired(&mut cx).is_pending());
        assert_eq!(timers.next(), Some(start + Duration::from_millis(10)));

        assert_eq!(timers.fire_due(start + Duration::from_millis(9)), 0);
        assert_eq!(timers.fire_due(start + Duration::from_millis(10)), 1);
        assert_eq!(count.0.load(AtomicOrdering::SeqCst), 1);
        assert!(early.poll_fired(&mut cx).is_ready());
        assert!(early.poll_fired(&mut cx).is_pending(), "fired twice");
        assert!(late.poll_fired(&mut cx).is_pending());
        assert_eq!(timers.next(), Some(start + Duration::from_millis(20)));
        assert_eq!(timers.fire_due(start + Duration::from_secs(1)), 1);
        assert!(late.poll_fired(&mut cx).is_ready());
        assert_eq!(timers.next(), None);
        assert_eq!(timers.armed.get(), 0);
    }

    #[test]
    fn a_moved_timer_fires_once_at_its_new_instant_and_a_dropped_one_never() {
        let timers = Rc::new(Timers::default());
        let start = Instant::now();
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let moved = RunnerTimer::new(timers.clone());
        moved.set(Some(start + Duration::from_millis(50)));
        moved.set(Some(start + Duration::from_millis(30)));
        assert!(moved.poll_fired(&mut cx).is_pending());
        let dropped = RunnerTimer::new(timers.clone());
        dropped.set(Some(start + Duration::from_millis(5)));
        assert!(dropped.poll_fired(&mut cx).is_pending());
        drop(dropped);
        // The dropped timer's entry is skipped: the runner would sleep until 30 ms.
        assert_eq!(timers.next(), Some(start + Duration::from_millis(30)));
        assert_eq!(timers.fire_due(start + Duration::from_millis(100)), 1);
        assert_eq!(count.0.load(AtomicOrdering::SeqCst), 1);
        assert!(moved.poll_fired(&mut cx).is_ready());
        assert_eq!(timers.next(), None);

        // Disarmed, it does not fire.
        moved.set(Some(start + Duration::from_millis(200)));
        moved.set(None);
        assert_eq!(timers.fire_due(start + Duration::from_secs(1)), 0);
        assert!(moved.poll_fired(&mut cx).is_pending());
    }

    #[test]
    fn stale_entries_are_bounded_by_the_live_ones() {
        let timers = Rc::new(Timers::default());
        let start = Instant::now();
        let kept: Vec<RunnerTimer> = (0..100)
            .map(|i| {
                let t = RunnerTimer::new(timers.clone());
                t.set(Some(start + Duration::from_secs(100 + i)));
                t
            })
            .collect();
        // One timer moved 10,000 times, and 10,000 that come and go, all due long after now.
        let busy = RunnerTimer::new(timers.clone());
        for i in 0..10_000 {
            busy.set(Some(start + Duration::from_millis(60_000 - i)));
            let brief = RunnerTimer::new(timers.clone());
            brief.set(Some(start + Duration::from_secs(50)));
        }
        assert_eq!(timers.armed.get(), kept.len() + 1);
        assert!(
            timers.len() <= 2 * timers.armed.get() + SLACK + 1,
            "{} entries for {} armed timers",
            timers.len(),
            timers.armed.get()
        );
        // Every live timer still fires.
        assert_eq!(timers.fire_due(start + Duration::from_secs(1_000)), 101);
    }

    #[test]
    fn a_task_deadline_off_a_runner_uses_the_reactor_and_still_fires() {
        let clock = Clock::new();
        let mut deadline = TaskDeadline::new();
        assert!(matches!(deadline, TaskDeadline::Reactor(_)));
        assert!(deadline.arm_no_later(Some(clock.now_ms() + 20), &clock));
        assert!(!deadline.arm_no_later(Some(clock.now_ms() + 500), &clock));
        smol::block_on(std::future::poll_fn(|cx| {
            deadline.poll_due(clock.now_ms(), cx)
        }));
        assert!(clock.now_ms() >= 20);
    }
}
