//! A connection's socket, plain TCP or TLS (rustls), in halves that may live on different
//! threads: one reads, the other writes.
//!
//! No byte is interpreted here. Reads go into a per-thread scratch buffer and come out as
//! `Bytes` of exactly what arrived (decrypted, for TLS); writes take everything one call to the
//! core produced and hand it to the kernel in one vectored write.
//!
//! TLS shares one `rustls::Connection` behind a mutex. The reader blocks on the raw socket
//! without the lock, then locks to decrypt and to send what the TLS layer owes the peer
//! (handshake records, alerts); the writer locks to encrypt and write. The lock is never held
//! while waiting for the peer to send.

use std::cell::RefCell;
use std::io::{self, BufRead, IoSlice, Read as _, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_core::ws::Transmit;

/// The scratch buffer reads land in: one per thread, never per connection, sized so that a
/// busy connection empties the kernel's buffer in few calls.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// What one read produced.
#[derive(Debug)]
pub(crate) enum Read {
    /// Bytes from the peer, exactly as they arrived. Empty when a TLS record carried no
    /// application data (a handshake message, a key update).
    Data(Bytes),
    /// The peer closed its side.
    Eof,
}

/// A connection's socket, for the blocking client.
pub(crate) struct Transport {
    /// Shared by both halves (and the server's registry), so a connection holds one file
    /// descriptor however many threads touch it; it closes when the last holder lets go.
    tcp: Arc<TcpStream>,
    tls: Option<Arc<Mutex<rustls::Connection>>>,
    /// TLS: the peer's `close_notify` came with the plaintext just returned; report EOF next.
    eof_pending: bool,
    /// The read timeout last set through this half, to skip a system call when it is unchanged
    /// (the common case: no timer armed, no timeout).
    read_timeout: Option<Duration>,
}

impl Transport {
    /// A plain TCP transport.
    pub(crate) fn plain(tcp: Arc<TcpStream>) -> Transport {
        Transport {
            tcp,
            tls: None,
            eof_pending: false,
            read_timeout: None,
        }
    }

    /// A TLS transport over `tcp`; the TLS handshake runs as bytes flow.
    pub(crate) fn tls(tcp: Arc<TcpStream>, tls: impl Into<rustls::Connection>) -> Transport {
        let tls = Some(Arc::new(Mutex::new(tls.into())));
        Transport {
            tcp,
            tls,
            eof_pending: false,
            read_timeout: None,
        }
    }

    /// Bounds the next reads; `None` blocks until data arrives. A zero duration is taken as
    /// the shortest wait the OS allows, since the OS refuses zero.
    ///
    /// # Errors
    /// When the OS refuses the option.
    pub(crate) fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        if timeout != self.read_timeout {
            self.tcp.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Blocks until the peer sends something or closes.
    ///
    /// # Errors
    /// The socket's error (`WouldBlock` or `TimedOut` after a read timeout), or `InvalidData`
    /// when the TLS layer rejects what arrived (its alert has been sent).
    pub(crate) fn read(&mut self) -> io::Result<Read> {
        if self.eof_pending {
            return Ok(Read::Eof);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let n = (&*self.tcp).read(scratch)?;
            if n == 0 {
                return Ok(Read::Eof);
            }
            let Some(tls) = &self.tls else {
                return Ok(Read::Data(Bytes::copy_from_slice(&scratch[..n])));
            };
            let (plain, eof) = decrypt(&mut lock(tls), &self.tcp, &scratch[..n])?;
            self.eof_pending = eof;
            Ok(Read::Data(plain))
        })
    }

    /// Writes all of `bufs`, in order, in as few system calls as the kernel allows.
    ///
    /// # Errors
    /// The socket's error; the connection is then unusable.
    pub(crate) fn write(&mut self, transmits: &[Transmit]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = transmits
            .iter()
            .flat_map(|t| t.slices())
            .filter(|b| !b.is_empty())
            .map(IoSlice::new)
            .collect();
        let Some(tls) = &self.tls else {
            return write_all_vectored(&*self.tcp, &mut slices);
        };
        let mut tls = lock(tls);
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = tls.writer().write_vectored(rest)?;
            IoSlice::advance_slices(&mut rest, n);
            if !rest.is_empty() {
                // rustls took what fits in its send buffer (64 KiB): write that out to make room.
                if !tls.wants_write() {
                    // Only before the TLS handshake ends: nothing can drain until it does.
                    return Err(io::Error::other(
                        "tls send buffer full during the tls handshake",
                    ));
                }
                flush_tls(&mut tls, &self.tcp)?;
            }
        }
        flush_tls(&mut tls, &self.tcp)
    }

    /// Half-closes: a TLS `close_notify`, then a TCP FIN. Reading still works, so the peer's
    /// last bytes can be drained instead of answered with a reset.
    pub(crate) fn shutdown_write(&mut self) {
        if let Some(tls) = &self.tls {
            let mut tls = lock(tls);
            tls.send_close_notify();
            let _ = flush_tls(&mut tls, &self.tcp);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    /// Closes both directions, which also wakes a thread blocked reading the other half.
    pub(crate) fn shutdown(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

/// Feeds `wire` to the TLS layer and returns the plaintext it yields, and whether the peer
/// closed the TLS session. Whatever the TLS layer must send back is written before returning.
fn decrypt(
    tls: &mut rustls::Connection,
    tcp: &TcpStream,
    mut wire: &[u8],
) -> io::Result<(Bytes, bool)> {
    let mut plain = BytesMut::new();
    let mut eof = false;
    loop {
        if !wire.is_empty() && tls.read_tls(&mut wire)? == 0 {
            wire = &[]; // after close_notify rustls takes nothing more
        }
        if let Err(e) = tls.process_new_packets() {
            let _ = flush_tls(tls, tcp); // the alert that tells the peer why
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        let before = plain.len();
        let mut reader = tls.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => {
                    eof = true; // close_notify received and all plaintext taken
                    break;
                }
                Ok(chunk) => {
                    plain.extend_from_slice(chunk);
                    let len = chunk.len();
                    reader.consume(len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Records still buffered inside rustls are processed on the next round, even when the
        // socket gave nothing more.
        if wire.is_empty() && plain.len() == before {
            break;
        }
    }
    flush_tls(tls, tcp)?;
    Ok((plain.freeze(), eof))
}

/// Writes every TLS record rustls has queued.
fn flush_tls(tls: &mut rustls::Connection, mut tcp: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `Write::write_all_vectored`, which is unstable: writes every slice, resuming after partial
/// writes.
fn write_all_vectored(mut out: impl Write, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut rest = slices;
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Locks the TLS state. A panic elsewhere while it was held leaves rustls in a state it can
/// report errors from, so the poison is ignored rather than spread.
fn lock(tls: &Mutex<rustls::Connection>) -> MutexGuard<'_, rustls::Connection> {
    tls.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes a call, to exercise partial writes.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = b.len().min(self.max - total);
                self.got.extend_from_slice(&b[..n]);
                total += n;
                if total == self.max {
                    break;
                }
            }
            Ok(total)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_vectored_writes_resume_where_they_stopped() {
        let bufs = [&b"abc"[..], b"", b"defgh", b"i", b"jklmnopq"];
        for max in 1..=17 {
            let mut out = Trickle {
                got: Vec::new(),
                max,
            };
            let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            write_all_vectored(&mut out, &mut slices).unwrap();
            assert_eq!(out.got, b"abcdefghijklmnopq", "max {max}");
        }
    }
}
