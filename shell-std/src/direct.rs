//! Socket reads and writes straight to the kernel, for both shells' connection sockets.
//!
//! std's `recv` and `writev` go through libc's wrappers, which make every call a
//! thread-cancellation point (two more calls into libc each time, for a feature Rust never
//! uses), and `writev` enters through the file layer (position lock, access checks, change
//! notification), which a socket does not need. On a loopback echo those were about 5% of the
//! server's time, as much as spool's own bookkeeping. These use `recv`, `send` and `sendmsg`
//! through rustix, which makes the system calls itself.
//!
//! [`ReadBuffer`] is a thread's buffer for plain reads, read into without being zeroed first.

use std::io::{self, IoSlice, Write};
use std::mem;
use std::net::TcpStream;

use bytes::Bytes;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

/// Reads what the socket has, up to `buf.len()` bytes; `Ok(0)` at the end of the stream.
///
/// # Errors
/// The socket's error; `WouldBlock` on an empty non-blocking socket.
pub fn recv(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let (read, _) = rustix::net::recv(socket, buf, RecvFlags::empty())?;
    Ok(read)
}

/// One thread's buffer for its connections' plain reads, taken in turn (an idle connection
/// holds none). The kernel writes into its spare capacity, which needs no zeroing beforehand.
/// A small read is then lent where it lies ([`Received::Lent`]): a WebSocket handler unmasks
/// a message straight out of it. A large one is given away whole ([`Received::Given`]) and
/// the buffer allocated again at the next read, so that its bytes are not copied a second
/// time: the core unmasks them in place.
pub struct ReadBuffer {
    buf: Vec<u8>,
}

/// A read's bytes, as [`ReadBuffer::take`] hands them on.
pub enum Received<'a> {
    /// Still in the thread's buffer: copy what is to be kept.
    Lent(&'a [u8]),
    /// The buffer itself, now the receiver's.
    Given(Bytes),
}

impl Default for ReadBuffer {
    fn default() -> ReadBuffer {
        ReadBuffer::new()
    }
}

impl ReadBuffer {
    /// The most one read takes.
    pub const CAPACITY: usize = 64 * 1024;
    /// Reads of this many bytes or more are given away rather than lent: copying a quarter
    /// of the buffer costs more than allocating a new one, and a receiver that keeps a piece
    /// of a given buffer keeps at most four times what it read alive.
    pub const GIVE_FROM: usize = 16 * 1024;

    /// An empty buffer; the memory comes with the first read.
    pub fn new() -> ReadBuffer {
        ReadBuffer { buf: Vec::new() }
    }

    /// Reads what the socket has, up to [`ReadBuffer::CAPACITY`] bytes, in place of the
    /// previous read; `Ok(0)` at the end of the stream.
    ///
    /// # Errors
    /// The socket's error; `WouldBlock` on an empty non-blocking socket.
    pub fn recv(&mut self, socket: &TcpStream) -> io::Result<usize> {
        self.buf.clear();
        if self.buf.capacity() < Self::CAPACITY {
            // The first read, or the one after a buffer was given away.
            self.buf = Vec::with_capacity(Self::CAPACITY);
        }
        let spare = rustix::buffer::spare_capacity(&mut self.buf);
        let (read, _) = rustix::net::recv(socket, spare, RecvFlags::empty())?;
        Ok(read)
    }

    /// The last read's bytes: lent if few, given away if many.
    pub fn take(&mut self) -> Received<'_> {
        if self.buf.len() >= Self::GIVE_FROM {
            Received::Given(Bytes::from(mem::take(&mut self.buf)))
        } else {
            Received::Lent(&self.buf)
        }
    }
}

/// Writes as much of `bufs` as the socket takes, in one call. A peer that has gone yields
/// `BrokenPipe`, never `SIGPIPE`.
///
/// # Errors
/// The socket's error; `WouldBlock` when its send buffer is full.
pub fn send_vectored(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    if let [one] = bufs {
        return Ok(rustix::net::send(socket, one, SendFlags::NOSIGNAL)?);
    }
    Ok(rustix::net::sendmsg(
        socket,
        bufs,
        &mut SendAncillaryBuffer::default(),
        SendFlags::NOSIGNAL,
    )?)
}

/// A socket as a [`Write`] through [`send_vectored`].
pub struct Direct<'a>(pub &'a TcpStream);

impl Write for Direct<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_vectored(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn vectored_sends_arrive_in_order_and_a_gone_peer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let sent =
            send_vectored(&client, &[IoSlice::new(b"ab"), IoSlice::new(b"cde")]).expect("send");
        assert_eq!(sent, 5);
        Direct(&client).write_all(b"f").expect("send one");
        let mut got = [0u8; 6];
        (&server).read_exact(&mut got).expect("read");
        assert_eq!(&got, b"abcdef");
        server.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 8];
        assert_eq!(
            recv(&server, &mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        drop(server);
        // The peer closed: the first send may still be taken (and answered with a reset), a
        // later one fails. (Rust ignores SIGPIPE in its binaries, so this cannot show that
        // NOSIGNAL is set; it shows the failure comes back as an error.)
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = send_vectored(&client, &[IoSlice::new(b"x")]) {
                failed = Some(e.kind());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            matches!(
                failed,
                Some(io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
            ),
            "{failed:?}"
        );
    }
}
