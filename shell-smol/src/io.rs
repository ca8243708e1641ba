//! The socket side both roles share: reads into a per-thread scratch buffer, vectored writes,
//! the lingering hang-up, the clock, drawn randomness and the event recorder.
//!
//! Nothing here looks inside the bytes: frames and HTTP heads are the core's business.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_lite::{future, ready};
use smol::{Async, Timer};
use spool_core::replay::{Line, Setup};
use spool_core::ws::{Connection, Event, Transmit};

/// One read's worth of scratch space, per thread. A connection copies only the bytes it read
/// into a `Bytes` it hands to the core, so an idle connection holds no read buffer.
const SCRATCH_LEN: usize = 64 * 1024;

/// Buffers handed to one `writev`; more wait for the next call (Linux allows 1024).
const MAX_IOVECS: usize = 64;

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
}

impl Socket for Async<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl Socket for futures_rustls::server::TlsStream<Async<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }
}

impl Socket for futures_rustls::client::TlsStream<Async<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }
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

/// Bytes the core asked to transmit, written in order with as few `writev` calls as the
/// socket allows.
#[derive(Default)]
pub(crate) struct Outgoing {
    bufs: Vec<Transmit>,
    head: usize,
}

impl Outgoing {
    pub(crate) fn push(&mut self, transmit: Transmit) {
        if !transmit.is_empty() {
            self.bufs.push(transmit);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.bufs.len()
    }

    pub(crate) fn clear(&mut self) {
        self.bufs.clear();
        self.head = 0;
    }

    /// Writes everything queued, then flushes (TLS records). Resumable: a partial write
    /// advances the queue, and the next poll carries on from there.
    pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let parts = self.bufs[self.head..]
                .iter()
                .flat_map(|t| t.slices())
                .filter(|s| !s.is_empty());
            for (slot, part) in slices.iter_mut().zip(parts) {
                *slot = IoSlice::new(part);
                count += 1;
            }
            let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        self.clear();
        Pin::new(stream).poll_flush(cx)
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 && self.head < self.bufs.len() {
            let transmit = &mut self.bufs[self.head];
            if written >= transmit.len() {
                written -= transmit.len();
                self.head += 1;
            } else {
                transmit.advance(written);
                written = 0;
            }
        }
    }

    /// Writes everything queued, with no timer watching (a client's `send`).
    pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> io::Result<()> {
        future::poll_fn(|cx| self.poll_write(stream, cx)).await
    }
}

/// Ends the transport after the core's `Disconnect`: write what is still queued (the close
/// frame, usually) and flush (TLS close_notify), shut down the write half, then read and discard
/// until the peer's end of stream; all of it within [`LINGER`], so a peer that stopped reading
/// cannot hold the connection.
pub(crate) async fn hang_up<S: Socket>(stream: &mut S, outgoing: &mut Outgoing) {
    let drain = async {
        if outgoing.write_all(stream).await.is_err() {
            return;
        }
        let _ = stream.close().await;
        let _ = stream.tcp().shutdown(Shutdown::Write);
        future::poll_fn(|cx| {
            loop {
                match ready!(poll_read_with(stream, cx, |b| b.is_empty())) {
                    Ok(false) => continue,
                    Ok(true) | Err(_) => return Poll::Ready(()),
                }
            }
        })
        .await;
    };
    future::or(drain, async {
        Timer::after(LINGER).await;
    })
    .await;
    outgoing.clear();
}

pub(crate) use spool_std::clock::Clock;

/// One timer per connection, re-armed only when the core's next deadline changes.
pub(crate) struct Deadline {
    timer: Timer,
    armed: Option<u64>,
}

impl Deadline {
    pub(crate) fn new() -> Deadline {
        Deadline {
            timer: Timer::never(),
            armed: None,
        }
    }

    /// Arms the timer at `connection.next_deadline()`.
    pub(crate) fn arm(&mut self, connection: &Connection, clock: &Clock) {
        let next = connection.next_deadline();
        if next == self.armed {
            return;
        }
        self.armed = next;
        match next {
            Some(ms) => self.timer.set_at(clock.instant(ms)),
            None => self.timer = Timer::never(),
        }
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
}

/// Writes an event log: the setup line, then one line per event given to the core.
pub(crate) struct Recorder {
    out: io::BufWriter<File>,
    failed: bool,
}

impl Recorder {
    pub(crate) fn create(path: &Path, setup: Setup) -> io::Result<Recorder> {
        let mut recorder = Recorder {
            out: io::BufWriter::new(File::create(path)?),
            failed: false,
        };
        recorder.line(&Line::Setup(setup));
        if recorder.failed {
            return Err(io::Error::other(format!(
                "{}: cannot write the event log",
                path.display()
            )));
        }
        Ok(recorder)
    }

    pub(crate) fn event(&mut self, event: &Event) {
        self.line(&Line::Event(event.clone()));
    }

    /// Pushes recorded lines to the file, so a killed process leaves a usable log.
    pub(crate) fn flush(&mut self) {
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
    }

    fn line(&mut self, line: &Line) {
        if self.failed {
            return;
        }
        let ok =
            serde_json::to_writer(&mut self.out, line).is_ok() && self.out.write_all(b"\n").is_ok();
        // A full disk stops the recording, never the connection.
        self.failed = !ok;
    }
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
