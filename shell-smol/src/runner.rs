//! The run queue of one server thread: its acceptors and its connections, run one at a time on
//! the thread that spawned them.
//!
//! smol's `LocalExecutor` is built on its multi-threaded executor: every wake-up of a task goes
//! through a lock-free queue shared with other threads and then into a second, local one, and
//! every turn of its loop checks for work to steal. A server thread's tasks are woken almost
//! only by that same thread (its poller's edges, its connections' mailboxes when the sender is
//! a neighbour), so here a wake-up on the thread is a push on a plain queue of the
//! thread's, and only a wake-up from another thread (a mailbox message from a connection on
//! another thread, say) takes a lock. On this project's 2-core machine the executor's share of
//! a 16 B echo round trip fell from about 600 instructions to about 280 (callgrind).
//!
//! Tasks are `async-task`'s, as in smol. When none is ready, the runner waits in its thread's
//! connection poller ([`edge`]) if the thread has one: a single `epoll_wait` both sleeps and
//! learns which sockets are ready, as spool-std's event loop does, and sleeps no later than
//! the earliest deadline of its tasks, which it keeps itself ([`crate::timers`]). A task woken
//! from another thread (by async-io's thread for the listener, or by a neighbour's message)
//! rings the poller's alarm, only if the runner is asleep. A thread without one sleeps
//! in async-io's `block_on`, which drives async-io's reactor meanwhile: that costs four system
//! calls more per wake-up (async-io's own `epoll_wait`, its notifier's read and two re-arms).
//!
//! Dropping a [`Runner`] drops every task it has not finished, the way dropping smol's executor
//! does: that is how the server's connections end once shutdown's grace period is over.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::mem;
use std::pin::{Pin, pin};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_task::{Runnable, Task};
use futures_lite::future;
use slab::Slab;

use crate::edge::{self, Edge};
use crate::io::Clock;
use crate::timers::Timers;

/// How many tasks run before the poller (or the reactor) gets a look at the sockets: enough
/// that a busy thread seldom pays for the look, few enough that one batch of wake-ups cannot
/// keep a readable socket waiting long.
const BUDGET: usize = 128;

thread_local! {
    /// The runner running on this thread, if any: a task woken here goes on its queue.
    static CURRENT: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
    /// When the batch of tasks running on this thread began, if one is running: see [`now_ms`].
    static BATCH_STARTED: Cell<Option<BatchTime>> = const { Cell::new(None) };
}

/// The deadlines of the runner running on this thread, for a task of its to keep its own
/// there ([`crate::timers::TaskDeadline`]); `None` off a runner.
pub(crate) fn timers() -> Option<Rc<Timers>> {
    CURRENT.with(|c| c.borrow().as_ref().map(|local| local.timers.clone()))
}

/// The time for a task to handle its wake-up at, on `clock`: when its runner's current batch
/// began, or, outside a batch, the clock's reading. spool-std's loop reads the clock once a
/// wake-up of its poller and hands every event of the wake-up that time; this is the same for a
/// runner's batch of up to [`BUDGET`] tasks. Reading the clock and turning the instant into
/// milliseconds cost a 16 B echo round trip about 105 instructions (callgrind) and 22 ns of
/// its roughly 400 ns of user time; a batch pays that once, and its tasks (all on one server's
/// clock, as a rule) about 15 each. The time a task is handed is at most a batch old: under a
/// millisecond in an echo, a few in a broadcast backlog, against deadlines of seconds (and a
/// deadline's own wake-up reads the clock afresh).
pub(crate) fn now_ms(clock: &Clock) -> u64 {
    BATCH_STARTED.with(|cell| {
        let Some(mut batch) = cell.get() else {
            return clock.now_ms();
        };
        if let Some((seen, ms)) = batch.reading
            && seen == *clock
        {
            return ms;
        }
        let ms = clock.ms_at(batch.started);
        batch.reading = Some((*clock, ms));
        cell.set(Some(batch));
        ms
    })
}

/// A batch's start, and the last clock read at it with its reading.
#[derive(Clone, Copy)]
struct BatchTime {
    started: Instant,
    reading: Option<(Clock, u64)>,
}

/// Ids of runners, so that a wake-up can tell whether it is on its own runner's thread.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// What a wake-up from any thread can reach.
struct Shared {
    id: usize,
    /// Tasks woken from other threads.
    remote: Mutex<Vec<Runnable>>,
    /// Whether `remote` may hold any: checked before taking its lock.
    remote_waiting: AtomicBool,
    /// The waker of the runner's `block_on`, to wake it from another thread, when it sleeps
    /// in async-io's reactor.
    waker: Mutex<Option<Waker>>,
    /// Rings the thread's connection poller, when the runner sleeps in that.
    alarm: OnceLock<Arc<mio::Waker>>,
    /// True from just before the runner's wait in the poller until the alarm is rung or the
    /// wait is over: only then does a wake-up from another thread ring it.
    sleeping: AtomicBool,
    /// The future given to [`Runner::run`] was woken and wants polling.
    main_woken: AtomicBool,
    /// Set when the runner is dropped: a task woken after that is dropped instead of queued.
    closed: AtomicBool,
}

/// What only the runner's own thread touches.
struct Local {
    id: usize,
    queue: RefCell<VecDeque<Runnable>>,
    /// True while the run loop is taking tasks off the queue, so a task woken meanwhile needs
    /// no further wake-up.
    draining: Cell<bool>,
    /// The waker of the runner's `block_on`, for a task woken on this thread from outside the
    /// loop (by the reactor, while `block_on` sleeps in it).
    waker: RefCell<Option<Waker>>,
    /// The wakers of the tasks not yet finished, so that dropping the runner can drop them.
    active: Rc<RefCell<Slab<Waker>>>,
    /// Its tasks' deadlines ([`crate::timers`]).
    timers: Rc<Timers>,
}

/// A thread's tasks: spawned onto it, run by [`Runner::run`] on the thread that made it.
///
/// Its queues need no bound of their own: a task is on at most one of them at a time, once
/// (async-task schedules a task again only after it has run), and the server bounds the tasks
/// a thread has (`ServerLimits::max_connections` and its acceptors).
pub(crate) struct Runner {
    shared: Arc<Shared>,
    local: Rc<Local>,
}

impl Runner {
    pub(crate) fn new() -> Runner {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Runner {
            shared: Arc::new(Shared {
                id,
                remote: Mutex::new(Vec::new()),
                remote_waiting: AtomicBool::new(false),
                waker: Mutex::new(None),
                alarm: OnceLock::new(),
                sleeping: AtomicBool::new(false),
                main_woken: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            local: Rc::new(Local {
                id,
                queue: RefCell::new(VecDeque::new()),
                draining: Cell::new(false),
                waker: RefCell::new(None),
                active: Rc::new(RefCell::new(Slab::new())),
                timers: Rc::default(),
            }),
        }
    }

    /// Spawns `future` on this runner; it starts at the next turn of [`Runner::run`]. A panic
    /// in it ends that task only (and reaches whoever awaits its [`Task`]).
    pub(crate) fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let active = &self.local.active;
        let key = active.borrow().vacant_key();
        let tracked = Tracked {
            future,
            entry: Entry {
                active: Rc::downgrade(active),
                key,
            },
        };
        let shared = self.shared.clone();
        let (runnable, task) = async_task::Builder::new()
            .propagate_panic(true)
            .spawn_local(move |_| tracked, move |r| schedule(&shared, r));
        let inserted = active.borrow_mut().insert(runnable.waker());
        debug_assert_eq!(inserted, key);
        runnable.schedule();
        task
    }

    /// Runs the spawned tasks until `main` finishes, waiting in the thread's connection poller
    /// whenever none is ready, or in async-io's reactor if the thread has no poller.
    pub(crate) fn run<T>(&self, main: impl Future<Output = T>) -> T {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.local.clone()));
        let _restore = Restore(previous);
        let main = pin!(main);
        match edge::current() {
            Some(edge) => self.run_on(&edge, main),
            None => self.run_in_reactor(main),
        }
    }

    fn run_on<T>(&self, edge: &Edge, mut main: Pin<&mut impl Future<Output = T>>) -> T {
        let shared = &self.shared;
        shared.alarm.get_or_init(|| edge.alarm());
        let waker = Waker::from(Arc::new(MainWake(shared.clone())));
        let mut cx = Context::from_waker(&waker);
        // Every wake-up on this thread happens inside the loop below, which looks at the
        // queue again before it sleeps: none needs to wake anything.
        self.local.draining.set(true);
        let _undrain = Undrain(&self.local);
        shared.main_woken.store(true, Ordering::Relaxed);
        loop {
            if shared.main_woken.swap(false, Ordering::AcqRel)
                && let Poll::Ready(out) = main.as_mut().poll(&mut cx)
            {
                return out;
            }
            if self.run_batch() {
                // A look at the sockets and the clock between batches, so that a busy queue
                // cannot keep a readable socket or a due deadline waiting.
                self.fire_due_timers();
                edge.turn(Some(Duration::ZERO));
                continue;
            }
            let next_timer = self.fire_due_timers();
            // Announce the sleep, then look once more: a wake-up from another thread either
            // came before the announcement, and is seen here, or after, and rings the alarm.
            shared.sleeping.store(true, Ordering::SeqCst);
            if self.has_work() || shared.main_woken.load(Ordering::SeqCst) {
                shared.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            // Until the earliest deadline at most; mio rounds the wait up to a whole
            // millisecond, so the deadline has passed when it ends.
            edge.turn(next_timer.map(|at| at.saturating_duration_since(Instant::now())));
            shared.sleeping.store(false, Ordering::SeqCst);
        }
    }

    fn run_in_reactor<T>(&self, mut main: Pin<&mut impl Future<Output = T>>) -> T {
        // The runner's deadlines wake it through one async-io timer, at the earliest.
        let mut alarm = smol::Timer::never();
        let mut alarm_at = None;
        smol::block_on(future::poll_fn(|cx| {
            self.remember(cx.waker());
            if let Poll::Ready(out) = main.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            self.local.draining.set(true);
            let more = self.run_batch();
            let next_timer = self.fire_due_timers();
            self.local.draining.set(false);
            if more || self.has_work() {
                // Back at once, after the reactor's look at the sockets.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if next_timer != alarm_at {
                alarm_at = next_timer;
                match next_timer {
                    Some(at) => alarm.set_at(at),
                    None => alarm = smol::Timer::never(),
                }
            }
            if alarm_at.is_some() && Pin::new(&mut alarm).poll(cx).is_ready() {
                alarm_at = None;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }))
    }

    /// Fires the deadlines that are due (their tasks join the queue) and returns the next.
    /// Reads the clock only if a deadline is armed.
    fn fire_due_timers(&self) -> Option<Instant> {
        let timers = &self.local.timers;
        let next = timers.next()?;
        let now = Instant::now();
        if next > now {
            return Some(next);
        }
        timers.fire_due(now);
        timers.next()
    }

    /// Runs up to [`BUDGET`] ready tasks; true if that many ran and more are ready.
    fn run_batch(&self) -> bool {
        let Some(first) = self.next() else {
            return false;
        };
        let _batch = Batch::start();
        first.run();
        for _ in 1..BUDGET {
            let Some(runnable) = self.next() else {
                return false;
            };
            runnable.run();
        }
        self.has_work()
    }

    /// Keeps the `block_on` waker where both kinds of wake-up find it.
    fn remember(&self, waker: &Waker) {
        let mut local = self.local.waker.borrow_mut();
        if local.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        *local = Some(waker.clone());
        *lock(&self.shared.waker) = Some(waker.clone());
    }

    fn next(&self) -> Option<Runnable> {
        if let Some(runnable) = self.local.queue.borrow_mut().pop_front() {
            return Some(runnable);
        }
        if !self.shared.remote_waiting.load(Ordering::Acquire) {
            return None;
        }
        let mut remote = lock(&self.shared.remote);
        self.shared.remote_waiting.store(false, Ordering::Release);
        let mut queue = self.local.queue.borrow_mut();
        queue.extend(remote.drain(..));
        queue.pop_front()
    }

    fn has_work(&self) -> bool {
        !self.local.queue.borrow().is_empty() || self.shared.remote_waiting.load(Ordering::SeqCst)
    }
}

impl Shared {
    /// Gets the runner to look at its queues and its main future: rings the poller's alarm if
    /// it sleeps there, or wakes its `block_on`.
    fn notify(&self) {
        if let Some(alarm) = self.alarm.get() {
            if self.sleeping.load(Ordering::SeqCst)
                && self.sleeping.swap(false, Ordering::SeqCst)
                && let Err(e) = alarm.wake()
            {
                tracing::error!("cannot wake a server thread: {e}");
            }
            return;
        }
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// The waker of the future given to [`Runner::run`] when the runner sleeps in the poller.
struct MainWake(Arc<Shared>);

impl Wake for MainWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.main_woken.store(true, Ordering::SeqCst);
        self.0.notify();
    }
}

/// A batch's start time, in [`BATCH_STARTED`] while the batch runs (put back as it was after,
/// however the batch ends).
struct Batch(Option<BatchTime>);

impl Batch {
    fn start() -> Batch {
        let time = BatchTime {
            started: Instant::now(),
            reading: None,
        };
        Batch(BATCH_STARTED.with(|b| b.replace(Some(time))))
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        BATCH_STARTED.with(|b| b.set(self.0));
    }
}

/// Ends the poller loop's hold on `draining`, however the loop ends.
struct Undrain<'a>(&'a Local);

impl Drop for Undrain<'_> {
    fn drop(&mut self) {
        self.0.draining.set(false);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Waking each unfinished task schedules it on a closed runner, which drops it; so do
        // the ones already queued. A task's drop may wake others: keep going until none is left.
        loop {
            let active = mem::take(&mut *self.local.active.borrow_mut());
            let queued: Vec<Runnable> = self.local.queue.borrow_mut().drain(..).collect();
            let remote = mem::take(&mut *lock(&self.shared.remote));
            if active.is_empty() && queued.is_empty() && remote.is_empty() {
                break;
            }
            drop((queued, remote));
            for (_, waker) in active {
                waker.wake();
            }
        }
    }
}

/// Puts a woken task on its runner's queue: the plain one on the runner's own thread, the
/// locked one from anywhere else.
fn schedule(shared: &Shared, runnable: Runnable) {
    if shared.closed.load(Ordering::Acquire) {
        // Dropping it drops the task's future.
        drop(runnable);
        return;
    }
    let runnable = CURRENT.with(|current| {
        let current = current.borrow();
        let Some(local) = current.as_ref().filter(|l| l.id == shared.id) else {
            return Some(runnable);
        };
        local.queue.borrow_mut().push_back(runnable);
        if !local.draining.get()
            && let Some(waker) = local.waker.borrow().as_ref()
        {
            waker.wake_by_ref();
        }
        None
    });
    let Some(runnable) = runnable else {
        return;
    };
    lock(&shared.remote).push(runnable);
    shared.remote_waiting.store(true, Ordering::SeqCst);
    shared.notify();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; were it to, the data is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Puts back the runner that was current before `run`.
struct Restore(Option<Rc<Local>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

pin_project_lite::pin_project! {
    /// A task's future, which leaves the runner's list of unfinished tasks when it finishes or
    /// is dropped (the future is dropped first, then the entry).
    struct Tracked<F> {
        #[pin]
        future: F,
        entry: Entry,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// A task's place in its runner's list of unfinished tasks.
struct Entry {
    active: Weak<RefCell<Slab<Waker>>>,
    key: usize,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The runner being dropped has taken the list out already; nothing to remove then.
        if let Some(active) = self.active.upgrade()
            && let Ok(mut active) = active.try_borrow_mut()
        {
            active.try_remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Counts its drops.
    struct Dropped(Rc<Cell<usize>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn the_tasks_of_one_batch_share_its_time_and_outside_a_batch_the_clock_is_read() {
        let runner = Runner::new();
        let clock = Clock::new();
        let other = Clock::new();
        std::thread::sleep(Duration::from_millis(3));
        let tasks: Vec<Task<(u64, u64)>> = (0..3)
            .map(|_| {
                runner.spawn(async move {
                    // Time passes while the batch runs; its tasks still see when it began, on
                    // whichever clock they read.
                    std::thread::sleep(Duration::from_millis(2));
                    (now_ms(&clock), now_ms(&other))
                })
            })
            .collect();
        let seen = runner.run(async {
            let mut seen = Vec::new();
            for task in tasks {
                seen.push(task.await);
            }
            seen
        });
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[1], seen[2]);
        assert!(seen[0].0 >= 3, "{seen:?}");
        assert!(
            BATCH_STARTED.with(Cell::get).is_none(),
            "a batch's time outlived it"
        );
        let before = now_ms(&clock);
        std::thread::sleep(Duration::from_millis(2));
        assert!(now_ms(&clock) >= before + 2);
    }

    #[test]
    fn a_task_deadline_fires_through_its_runner_with_or_without_a_poller() {
        for with_poller in [false, true] {
            let fired_at = std::thread::spawn(move || {
                if with_poller {
                    edge::install().expect("a poller");
                }
                let runner = Runner::new();
                let clock = Clock::new();
                let task = runner.spawn(async move {
                    let mut deadline = crate::timers::TaskDeadline::new();
                    assert!(matches!(
                        deadline,
                        crate::timers::TaskDeadline::Runner { .. }
                    ));
                    deadline.arm_no_later(Some(30), &clock);
                    // Always "now" 0: only the runner firing the timer can end this.
                    future::poll_fn(|cx| deadline.poll_due(0, cx)).await;
                    clock.now_ms()
                });
                runner.run(task)
            })
            .join()
            .expect("the runner's thread");
            assert!((30..2_000).contains(&fired_at), "{fired_at} ms");
        }
    }

    #[test]
    fn tasks_run_and_their_results_come_back() {
        let runner = Runner::new();
        let a = runner.spawn(async { 1 });
        let b = runner.spawn(async {
            future::yield_now().await;
            2
        });
        assert_eq!(runner.run(async { a.await + b.await }), 3);
        assert!(
            runner.local.active.borrow().is_empty(),
            "finished tasks left"
        );
    }

    #[test]
    fn a_task_woken_from_another_thread_runs() {
        let runner = Runner::new();
        let (tx, rx) = smol::channel::bounded::<u32>(1);
        let task = runner.spawn(async move { rx.recv().await.unwrap_or(0) });
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            smol::block_on(tx.send(7)).is_ok()
        });
        let timeout = async {
            smol::Timer::after(Duration::from_secs(5)).await;
            u32::MAX
        };
        assert_eq!(runner.run(future::or(task, timeout)), 7);
        assert!(sender.join().unwrap_or(false));
    }

    #[test]
    fn on_a_thread_with_a_poller_wake_ups_from_other_threads_and_timers_end_its_sleep() {
        // Its own thread: the poller is the thread's, and the runner sleeps in it. A lost
        // wake-up would leave that thread asleep for good, so the test waits for its answer
        // with a limit of its own rather than on a timer the lost wake-up could hold up too.
        let (answer_tx, answer_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::edge::install().expect("poller");
            let runner = Runner::new();
            let (tx, rx) = smol::channel::bounded::<u32>(1);
            let task = runner.spawn(async move { rx.recv().await.unwrap_or(0) });
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                smol::block_on(tx.send(7)).is_ok()
            });
            // A message from another thread wakes its task through the alarm; a timer, fired
            // by async-io's thread, the same way.
            let slept = runner.spawn(async {
                smol::Timer::after(Duration::from_millis(40)).await;
                1
            });
            let got = runner.run(async { task.await + slept.await });
            let slept_in_poller = runner.shared.alarm.get().is_some();
            let _ = answer_tx.send((got, slept_in_poller, sender.join().unwrap_or(false)));
        });
        let answer = answer_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the runner was never woken");
        assert_eq!(answer, (8, true, true));
    }

    #[test]
    fn dropping_the_runner_drops_every_unfinished_task_once() {
        let drops = Rc::new(Cell::new(0));
        let runner = Runner::new();
        let never = smol::channel::bounded::<()>(1);
        for _ in 0..3 {
            let guard = Dropped(drops.clone());
            let waiting = never.1.clone();
            // Waits for good (woken by nothing), holding its guard.
            runner
                .spawn(async move {
                    let _guard = guard;
                    let _ = waiting.recv().await;
                })
                .detach();
        }
        // A queued task that never ran is dropped too.
        let guard = Dropped(drops.clone());
        runner.run(future::yield_now());
        runner
            .spawn(async move {
                let _guard = guard;
            })
            .detach();
        assert_eq!(drops.get(), 0);
        drop(runner);
        assert_eq!(drops.get(), 4);
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let runner = Runner::new();
        let bad = runner.spawn(async {
            panic!("a task's panic");
        });
        bad.detach();
        let good = runner.spawn(async { "still running" });
        assert_eq!(runner.run(good), "still running");
    }
}
