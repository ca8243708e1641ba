//! The server's connection sockets on an edge-triggered poller of each server thread's own,
//! which is also where the thread sleeps.
//!
//! async-io registers a socket one-shot: every time a task waits for it, the registration is
//! armed again, one `epoll_ctl` a message on a busy connection, plus a trip through the
//! reactor's locks. Here every server thread has an epoll instance of its own (mio's), with its
//! connection sockets registered once, edge-triggered, for reads and writes. The thread's
//! [`Runner`](crate::runner::Runner) waits in it when no task is ready ([`Edge::turn`]): one
//! `epoll_wait` reports every socket that became ready since the last, whatever their number,
//! and nothing needs arming again; the wait ends no later than the runner's earliest
//! connection deadline ([`crate::timers`]). The listener stays on async-io, whose own thread
//! wakes the task waiting for it; a wake-up from another thread rings the poller's
//! [`alarm`](Edge::alarm), a `mio::Waker`.
//!
//! A socket's readiness is two flags. An edge sets them and wakes whoever waits; a read that
//! comes back short (the kernel had less than was asked) or says `WouldBlock` clears the read
//! flag, a write that says `WouldBlock` clears the write flag, and until an edge sets them
//! again nobody calls the kernel for that socket. The poller and the connections run on the
//! same thread, so no edge can slip in between a read and the clearing of its flag: an edge
//! for bytes that arrive later is still queued in the epoll instance when the flag is cleared.

use std::cell::{OnceCell, RefCell};
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use smol::Async;
use spool_std::direct::{ReadBuffer, recv, send_vectored};

use crate::io::{Received, Socket};

/// Readiness events one call into the kernel takes; a turn that gets this many asks again.
const EVENTS_PER_TURN: usize = 1024;

/// The alarm's token: past any socket's key, which is a slab index below the connection limit.
const ALARM: Token = Token(usize::MAX);

thread_local! {
    static EDGE: OnceCell<Rc<Edge>> = const { OnceCell::new() };
    /// The thread's plain reads (see [`ReadBuffer`]).
    static READS: RefCell<ReadBuffer> = RefCell::new(ReadBuffer::new());
}

/// One server thread's poller and the readiness of its sockets.
pub(crate) struct Edge {
    poll: RefCell<mio::Poll>,
    events: RefCell<Events>,
    /// Ends a wait in `poll` from another thread.
    alarm: Arc<mio::Waker>,
    /// One entry a registered socket (at most the server's connection limit).
    sockets: RefCell<Slab<Readiness>>,
}

#[derive(Default)]
struct Readiness {
    readable: bool,
    writable: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// Gives this thread its poller, which the thread's [`Runner`](crate::runner::Runner) then
/// waits in. Once is enough: a second call keeps the first poller.
///
/// # Errors
/// When the poller or its alarm cannot be created.
pub(crate) fn install() -> io::Result<()> {
    if installed() {
        return Ok(());
    }
    let poll = mio::Poll::new()?;
    let alarm = Arc::new(mio::Waker::new(poll.registry(), ALARM)?);
    let edge = Rc::new(Edge {
        poll: RefCell::new(poll),
        events: RefCell::new(Events::with_capacity(EVENTS_PER_TURN)),
        alarm,
        sockets: RefCell::new(Slab::new()),
    });
    EDGE.with(|cell| {
        let _ = cell.set(edge);
    });
    Ok(())
}

/// Whether this thread has its poller ([`install`]).
pub(crate) fn installed() -> bool {
    EDGE.with(|cell| cell.get().is_some())
}

/// This thread's poller, if it has one.
pub(crate) fn current() -> Option<Rc<Edge>> {
    EDGE.with(|cell| cell.get().cloned())
}

impl Edge {
    /// What another thread rings to end a wait in [`Edge::turn`].
    pub(crate) fn alarm(&self) -> Arc<mio::Waker> {
        self.alarm.clone()
    }

    /// Takes the edges the kernel has, waiting up to `timeout` (`None`: until there is one or
    /// the alarm rings), and wakes whom they concern.
    pub(crate) fn turn(&self, timeout: Option<Duration>) {
        let mut poll = self.poll.borrow_mut();
        let mut events = self.events.borrow_mut();
        let mut timeout = timeout;
        loop {
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    return;
                }
                tracing::error!("connection poller failed: {e}; retrying in 10 ms");
                // Not at once: a wait that fails at once would otherwise spin.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
            let mut sockets = self.sockets.borrow_mut();
            let mut taken = 0;
            for event in events.iter() {
                taken += 1;
                // The alarm's wake-up is the return from `poll` itself.
                let Some(socket) = sockets.get_mut(event.token().0) else {
                    continue;
                };
                // A hang-up or an error is for the next read or write to find.
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    socket.readable = true;
                    // Woken by reference and kept: a connection's task waits to read again
                    // as soon as it has, and then finds its waker in place rather than
                    // cloning it anew (with the drop of the one taken, and the run queue's
                    // share, 46 instructions a 16 B echo round trip under callgrind). A read
                    // edge while the task is busy makes one poll that finds bytes to read.
                    // Not so for writing: a writable edge comes with every acknowledgement
                    // while the send buffer has room, so that waker is taken.
                    if let Some(waker) = &socket.reader {
                        waker.wake_by_ref();
                    }
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    socket.writable = true;
                    if let Some(waker) = socket.writer.take() {
                        waker.wake();
                    }
                }
            }
            if taken < EVENTS_PER_TURN {
                return;
            }
            timeout = Some(Duration::ZERO);
        }
    }
}

/// A connection socket registered with its thread's [`Edge`].
pub(crate) struct EdgeStream {
    socket: TcpStream,
    key: usize,
    edge: Rc<Edge>,
}

impl EdgeStream {
    /// Moves a socket from async-io to this thread's poller.
    ///
    /// # Errors
    /// When the thread has no poller ([`install`]) or the socket cannot be registered.
    pub(crate) fn adopt(stream: Async<TcpStream>) -> io::Result<EdgeStream> {
        let edge =
            current().ok_or_else(|| io::Error::other("no connection poller on this thread"))?;
        let socket = stream.into_inner()?;
        socket.set_nonblocking(true)?;
        // Edge-triggered: bytes already there are no edge, so both start ready.
        let key = edge.sockets.borrow_mut().insert(Readiness {
            readable: true,
            writable: true,
            ..Readiness::default()
        });
        let registered = edge.poll.borrow().registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            edge.sockets.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(EdgeStream { socket, key, edge })
    }

    fn readiness<R>(&self, f: impl FnOnce(&mut Readiness) -> R) -> R {
        let mut sockets = self.edge.sockets.borrow_mut();
        // Present for as long as this stream: inserted by `adopt`, removed by `drop`.
        let mut gone = Readiness::default();
        f(sockets.get_mut(self.key).unwrap_or(&mut gone))
    }

    /// Not readable until the next edge; `cx` is woken by it.
    fn wait_readable(&self, cx: &Context<'_>) {
        self.readiness(|r| {
            r.readable = false;
            set_waker(&mut r.reader, cx);
        });
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) => waker.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
    }
}

impl Drop for EdgeStream {
    fn drop(&mut self) {
        let _ = self
            .edge
            .poll
            .borrow()
            .registry()
            .deregister(&mut SourceFd(&self.socket.as_raw_fd()));
        self.edge.sockets.borrow_mut().try_remove(self.key);
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if !self.readiness(|r| r.readable) {
                self.wait_readable(cx);
                return Poll::Pending;
            }
            match recv(&self.socket, buf) {
                Ok(n) => {
                    if n > 0 && n < buf.len() {
                        // Short: the kernel had no more. Later bytes are a new edge.
                        self.readiness(|r| r.readable = false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_readable(cx);
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.readiness(|r| r.writable) {
                self.readiness(|r| set_waker(&mut r.writer, cx));
                return Poll::Pending;
            }
            match send_vectored(&self.socket, bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readiness(|r| {
                        r.writable = false;
                        set_waker(&mut r.writer, cx);
                    });
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Flushes only, as async-io's stream does; [`Socket::tcp`] shuts the write half down.
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Socket for EdgeStream {
    fn tcp(&self) -> &TcpStream {
        &self.socket
    }

    fn poll_readiness(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.readiness(|r| r.readable) {
            return Poll::Ready(Ok(()));
        }
        self.readiness(|r| set_waker(&mut r.reader, cx));
        Poll::Pending
    }

    /// Reads into the thread's [`ReadBuffer`], which lends a small read and gives a large one
    /// away: neither is copied again before the handler.
    fn poll_read_into<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(Received<'_>) -> T,
    ) -> Poll<io::Result<(usize, T)>> {
        READS.with(|reads| {
            let Ok(mut reads) = reads.try_borrow_mut() else {
                // Only if `take` polled a stream: read the way other streams do.
                return crate::io::poll_read_with_scratch(self, cx, take);
            };
            loop {
                if !self.readiness(|r| r.readable) {
                    self.wait_readable(cx);
                    return Poll::Pending;
                }
                match reads.recv(&self.socket) {
                    Ok(n) => {
                        if n > 0 && n < ReadBuffer::CAPACITY {
                            // Short: the kernel had no more. Later bytes are a new edge.
                            self.readiness(|r| r.readable = false);
                        }
                        let read = if n == 0 {
                            Received::Lent(&[])
                        } else {
                            reads.take()
                        };
                        return Poll::Ready(Ok((n, take(read))));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait_readable(cx);
                        return Poll::Pending;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Runner;
    use futures_lite::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread;

    /// A connected pair: the server end adopted by this thread's poller, the client end plain.
    fn pair() -> (Async<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (Async::new(server).expect("async"), client)
    }

    #[test]
    fn reads_wait_for_the_next_edge_and_writes_for_room() {
        // The server threads' run queue, as in production.
        let executor = Runner::new();
        install().expect("install");
        let test = async {
            let (server, mut client) = pair();
            // Bytes sent before the socket was adopted are no edge: read at once anyway.
            client.write_all(b"early").expect("write");
            let mut stream = EdgeStream::adopt(server).expect("adopt");
            assert_eq!(
                EDGE.with(|e| e.get().map(|e| e.sockets.borrow().len())),
                Some(1)
            );
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"early");
            // That read was short, so the socket is known empty: the next read waits for an
            // edge, which bytes sent from another thread later make.
            let writer = thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                client.write_all(b"late").expect("write");
                client
            });
            let n = stream.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"late");
            let mut client = writer.join().expect("writer");

            // Fill the socket until the kernel takes no more: the write waits for room, which
            // the peer's reading makes (a write edge), and then completes.
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0usize;
            let full = loop {
                let wrote = futures_lite::future::poll_once(stream.write(&chunk)).await;
                match wrote {
                    Some(Ok(n)) => sent += n,
                    Some(Err(e)) => panic!("write failed: {e}"),
                    None => break true,
                }
                assert!(sent < 64 << 20, "the socket never filled");
            };
            assert!(full);
            let reader = thread::spawn(move || {
                let mut sink = vec![0u8; 1 << 16];
                let mut total = 0usize;
                while let Ok(n) = client.read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            });
            stream.write_all(&chunk).await.expect("write after room");
            sent += chunk.len();
            stream
                .tcp()
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            // Dropping the stream takes it out of the thread's poller.
            drop(stream);
            assert_eq!(
                EDGE.with(|e| e.get().map(|e| e.sockets.borrow().len())),
                Some(0)
            );
            assert_eq!(reader.join().expect("reader"), sent);
        };
        // A lost wake-up would hang the test; this makes it a failure instead.
        let timeout = async {
            smol::Timer::after(Duration::from_secs(20)).await;
            panic!("a read or write was never woken");
        };
        executor.run(futures_lite::future::or(test, timeout));
    }

    #[test]
    fn a_thread_without_a_poller_says_so() {
        let (server, _client) = thread::spawn(pair).join().expect("pair");
        let adopted = thread::spawn(move || EdgeStream::adopt(server).map(|_| ()))
            .join()
            .expect("thread");
        assert!(adopted.is_err());
    }
}
