//! The socket side both roles share: reads into a per-thread scratch buffer, vectored writes
//! from the shared send queue, the lingering hang-up, the clock and drawn randomness. (Event
//! logs are written by `spool_std::record`, the send queue is `spool_std::outgoing`.)
//!
//! Nothing here looks inside the bytes: frames and HTTP heads are the core's business.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_lite::{future, ready};
use smol::{Async, Timer};
pub(crate) use spool_std::direct::Received;
pub(crate) use spool_std::outgoing::Outgoing;

/// One read's worth of scratch space, per thread, for the reads that do not go through a
/// [`ReadBuffer`](spool_std::direct::ReadBuffer) (TLS plaintext, clients): the bytes are lent
/// or copied out, so an idle connection holds no read buffer.
const SCRATCH_LEN: usize = 64 * 1024;

/// How long a hang-up waits for the peer's end of the stream after our last bytes, so that the
/// peer reads our close frame instead of a reset (RFC 6455 §7.1.1 asks the server to close
/// TCP first and the client to wait for it).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// A stream a shell drives: plain TCP or TLS over it.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// The TCP stream underneath, for shutting down its write half (`poll_close` on
    /// `Async<TcpStream>` only flushes).
    fn tcp(&self) -> &TcpStream;

    /// Ready when reading is worth trying, without reading. The default says at once: a TLS
    /// stream may hold decrypted bytes of its own, so only a read can tell.
    fn poll_readiness(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Polls one read and hands its bytes to `take` (none at the end of the stream), returning
    /// what `take` returns and how many bytes were read. The default lends them from the
    /// thread's scratch buffer; `take` must not poll a stream.
    fn poll_read_into<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(Received<'_>) -> T,
    ) -> Poll<io::Result<(usize, T)>>
    where
        Self: Sized,
    {
        poll_read_with_scratch(self, cx, take)
    }
}

/// The default [`Socket::poll_read_into`]: a read into the thread's scratch buffer, lent.
pub(crate) fn poll_read_with_scratch<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    cx: &mut Context<'_>,
    take: impl FnOnce(Received<'_>) -> T,
) -> Poll<io::Result<(usize, T)>> {
    poll_read_with(stream, cx, |bytes| {
        (bytes.len(), take(Received::Lent(bytes)))
    })
}

impl Socket for Async<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }

    fn poll_readiness(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_readable(cx)
    }
}

impl<S: Socket> Socket for futures_rustls::server::TlsStream<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl Socket for futures_rustls::client::TlsStream<Async<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }
}

/// Whether a read of `read` bytes emptied the kernel's buffer: it filled less than the scratch
/// buffer. (For TLS, whether the stream's own buffer is empty is not known; its
/// [`Socket::poll_readiness`] always says to read.)
pub(crate) fn was_short(read: usize) -> bool {
    read < SCRATCH_LEN
}

/// Polls one read into the thread's scratch buffer and returns a copy of the bytes read (empty
/// at end of stream). The scratch buffer is borrowed only inside this call, so every connection
/// on the thread can share it.
pub(crate) fn poll_read<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Bytes>> {
    poll_read_with(stream, cx, Bytes::copy_from_slice)
}

/// Polls one read into the thread's scratch buffer and gives `take` the bytes read (none at end
/// of stream) where they lie; returns what `take` returns. `take` must not poll a stream.
fn poll_read_with<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]) -> T,
) -> Poll<io::Result<T>> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => Pin::new(stream)
            .poll_read(cx, &mut buf)
            .map_ok(|n| take(&buf[..n])),
        // Only if a stream's poll_read polled another stream on this thread: read into a
        // buffer of its own rather than panic.
        Err(_) => {
            let mut own = vec![0; SCRATCH_LEN];
            Pin::new(stream)
                .poll_read(cx, &mut own)
                .map_ok(|n| take(&own[..n]))
        }
    })
}

/// Writes everything `outgoing` holds, then flushes (TLS records). Resumable: a partial write
/// advances the queue, and the next poll carries on from there. The queue is the one both shells
/// keep ([`Outgoing`]); this is its async side.
pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
    outgoing: &mut Outgoing,
    stream: &mut S,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !outgoing.is_empty() {
        let written = ready!(outgoing.with_next_slices(|slices| {
            Pin::new(&mut *stream).poll_write_vectored(cx, slices)
        }))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        outgoing.advance(written);
    }
    Pin::new(stream).poll_flush(cx)
}

/// Writes everything queued, with no timer watching (a client's `send`).
pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
    outgoing: &mut Outgoing,
    stream: &mut S,
) -> io::Result<()> {
    future::poll_fn(|cx| poll_write(outgoing, stream, cx)).await
}

/// Ends the transport after the core's `Disconnect`: write what is still queued (the close
/// frame, usually) and flush (TLS close_notify), shut down the write half, then read and discard
/// until the peer's end of stream; all of it within `linger`, so a peer that stopped reading
/// cannot hold the connection.
pub(crate) async fn hang_up<S: Socket>(stream: &mut S, outgoing: &mut Outgoing, linger: Duration) {
    let drain = async {
        if write_all(outgoing, stream).await.is_err() {
            return;
        }
        let _ = stream.close().await;
        let _ = stream.tcp().shutdown(Shutdown::Write);
        drain_until_eof(stream).await;
    };
    future::or(drain, async {
        Timer::after(linger).await;
    })
    .await;
    outgoing.clear();
}

/// Reads and discards until the peer's end of stream (or a read error).
pub(crate) async fn drain_until_eof<S: AsyncRead + Unpin>(stream: &mut S) {
    future::poll_fn(|cx| {
        loop {
            match ready!(poll_read_with(stream, cx, |b| b.is_empty())) {
                Ok(false) => continue,
                Ok(true) | Err(_) => return Poll::Ready(()),
            }
        }
    })
    .await;
}

pub(crate) use spool_std::clock::Clock;

/// One timer per connection, re-armed only when the core's next deadline changes.
pub(crate) struct Deadline {
    timer: Timer,
    armed: Option<u64>,
    /// The waker the armed timer holds, for [`Deadline::poll_due`]; `None` until it is
    /// polled after arming.
    registered: Option<Arc<TimerWake>>,
}

/// The waker an armed timer is given: it wakes the task and remembers that it did. The caller's
/// time can be older than the timer when it fires (a connection's quick second look within one
/// poll reuses the time of the first), and then only this flag tells [`Deadline::poll_due`]
/// that the deadline has passed.
struct TimerWake {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for TimerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Deadline {
    pub(crate) fn new() -> Deadline {
        Deadline {
            timer: Timer::never(),
            armed: None,
            registered: None,
        }
    }

    /// Arms the timer at `next` (a core's or a handler's next deadline, on `clock`); `None`
    /// disarms it. Re-arming at the same deadline costs nothing.
    pub(crate) fn arm(&mut self, next: Option<u64>, clock: &Clock) {
        if next == self.armed {
            return;
        }
        self.armed = next;
        self.registered = None;
        match next {
            Some(ms) => self.timer.set_at(clock.instant(ms)),
            None => self.timer = Timer::never(),
        }
    }

    /// Like [`Deadline::arm`], but the timer only ever moves earlier: a later deadline, or
    /// none, leaves it where it is, to fire early. The caller must check, when it fires, whether
    /// anything is due (and arm again). Moving an async-io timer costs a trip through the
    /// reactor (a remove and an insert on its timer queue, a B-tree update and a notify of the
    /// reactor's thread); a connection's keep-alive deadline moves with every message it
    /// receives, so re-arming exactly would pay that per message, where this pays it about
    /// once per keep-alive period.
    /// Returns whether it moved the timer, which then wants polling again.
    pub(crate) fn arm_no_later(&mut self, next: Option<u64>, clock: &Clock) -> bool {
        match (next, self.armed) {
            (Some(at), Some(armed)) if at < armed => self.arm(next, clock),
            (Some(_), None) => self.arm(next, clock),
            _ => return false,
        }
        true
    }

    /// Ready once when the armed deadline passes.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed.is_none() {
            return Poll::Pending;
        }
        ready!(Pin::new(&mut self.timer).poll(cx));
        // A fired timer does not fire again; forget it so the next `arm` sets it afresh.
        self.armed = None;
        Poll::Ready(())
    }

    /// Like [`Deadline::poll_fired`], against `now_ms` (read on the same clock by the caller,
    /// during this poll): the timer itself is polled only to hand it the waker, once after
    /// each `arm` and again if the waker changes. A connection woken by its socket then pays
    /// neither the timer's poll nor the clock read inside it, about 150 instructions a
    /// message. The timer still wakes the task when the deadline passes, and says so: Ready
    /// then, even if `now_ms` is older than the deadline, so the caller must read the clock
    /// afresh before it checks what is due.
    pub(crate) fn poll_due(&mut self, now_ms: u64, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.armed else {
            return Poll::Pending;
        };
        if let Some(wake) = &self.registered {
            if at > now_ms && !wake.fired.load(Ordering::Acquire) {
                if wake.task.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            } else {
                self.armed = None;
                self.registered = None;
                return Poll::Ready(());
            }
        } else if at <= now_ms {
            self.armed = None;
            return Poll::Ready(());
        }
        let wake = Arc::new(TimerWake {
            fired: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(wake.clone());
        if Pin::new(&mut self.timer)
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            // Past the timer's instant but not yet a whole millisecond on: fire early, as
            // `arm_no_later` allows; the caller checks what is due.
            self.armed = None;
            self.registered = None;
            return Poll::Ready(());
        }
        self.registered = Some(wake);
        Poll::Pending
    }
}

/// Whether `registered`, the waker something was last given, still wakes this task: then it
/// need not be given the waker again.
pub(crate) fn holds_waker(registered: &Option<Waker>, cx: &Context<'_>) -> bool {
    registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
}

/// Random bytes from the OS (`/dev/urandom`), or, where that cannot be read, from std's
/// randomly keyed hasher mixed with the time. Keys and mask seeds come from here; the core never
/// draws its own.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut out = [0u8; N];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_ok()
    {
        return out;
    }
    use std::hash::{BuildHasher as _, Hasher as _};
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(time);
        hasher.write_usize(i);
        let word = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::inbox::Count;

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Polls until `count` shows a wake-up, for at most two seconds.
    fn wait_for_wake(count: &Count) -> bool {
        let give_up = Instant::now() + Duration::from_secs(2);
        while Instant::now() < give_up {
            if count.0.load(Ordering::SeqCst) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn a_deadline_polled_against_the_callers_clock_fires_once_when_due() {
        let clock = Clock::new();
        let mut deadline = Deadline::new();
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(deadline.poll_due(0, &mut cx), Poll::Pending, "not armed");
        deadline.arm(Some(1_000), &clock);
        assert_eq!(deadline.poll_due(999, &mut cx), Poll::Pending);
        assert_eq!(deadline.poll_due(999, &mut cx), Poll::Pending);
        assert_eq!(deadline.poll_due(1_000, &mut cx), Poll::Ready(()));
        assert_eq!(
            deadline.poll_due(5_000, &mut cx),
            Poll::Pending,
            "fired once"
        );
        deadline.arm(Some(2_000), &clock);
        assert_eq!(
            deadline.poll_due(2_001, &mut cx),
            Poll::Ready(()),
            "armed again"
        );
    }

    #[test]
    fn a_timer_that_fired_is_due_even_against_a_stale_time() {
        // A connection's quick second look within one poll reuses the first look's time,
        // which can be before a deadline whose timer fired in between: the timer's word must
        // be enough. (Before, such a task waited for its next event, or for ever.)
        let clock = Clock::new();
        let mut deadline = Deadline::new();
        let stale = clock.now_ms();
        let at = stale + 30;
        deadline.arm(Some(at), &clock);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(deadline.poll_due(stale, &mut cx), Poll::Pending);
        smol::block_on(Timer::after(Duration::from_millis(60)));
        assert!(wait_for_wake(&count), "the timer never woke the task");
        assert_eq!(deadline.poll_due(stale, &mut cx), Poll::Ready(()));
        assert_eq!(
            deadline.poll_due(stale, &mut cx),
            Poll::Pending,
            "fired once"
        );
    }

    #[test]
    fn the_timer_wakes_the_last_waker_it_was_polled_with() {
        // async-io's reactor runs timers on its own thread once something blocks on it;
        // `block_on` below sleeps in it.
        let clock = Clock::new();
        let mut deadline = Deadline::new();
        let at = clock.now_ms() + 30;
        deadline.arm(Some(at), &clock);
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        let now = clock.now_ms();
        assert_eq!(
            deadline.poll_due(now, &mut Context::from_waker(&first_waker)),
            Poll::Pending
        );
        // A different waker must take over from the first.
        assert_eq!(
            deadline.poll_due(now, &mut Context::from_waker(&second_waker)),
            Poll::Pending
        );
        smol::block_on(Timer::after(Duration::from_millis(60)));
        assert!(wait_for_wake(&second), "the timer never woke the task");
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "woke the replaced waker");
        // Woken at or past the deadline on the same clock: due now, without another timer.
        let now = clock.now_ms();
        assert!(now >= at, "woken at {now}, before the deadline {at}");
        assert_eq!(
            deadline.poll_due(now, &mut Context::from_waker(&second_waker)),
            Poll::Ready(())
        );
    }
}
