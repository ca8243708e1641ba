//! The bytes a connection has to write, as both shells keep them: a queue of [`Transmit`]s
//! written with vectored writes, counted so that the server can bound it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use spool_core::ws::Transmit;

/// Slices handed to one vectored write: enough for 32 frames (a header and a payload each),
/// well under the kernel's `IOV_MAX` of 1024.
pub const MAX_IOVECS: usize = 64;

/// Queues a thread keeps for its connections to borrow while they have bytes to write: at most
/// this many, each at most [`POOLED_CAPACITY`] transmits long.
const POOL_SIZE: usize = 64;
/// A queue longer than this (a burst) is freed rather than pooled.
const POOLED_CAPACITY: usize = 64;

thread_local! {
    /// Empty queues, given back by connections that wrote everything: an idle connection
    /// holds no queue, and a busy one does not allocate one for every write.
    static POOL: std::cell::RefCell<Vec<VecDeque<Transmit>>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

fn borrow_queue() -> VecDeque<Transmit> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
}

fn give_back(queue: VecDeque<Transmit>) {
    if queue.capacity() == 0 || queue.capacity() > POOLED_CAPACITY {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_SIZE {
            pool.push(queue);
        }
    });
}

/// What waits to be written, oldest first. The first transmit may be partly written already.
#[derive(Debug, Default)]
pub struct Outgoing {
    queue: VecDeque<Transmit>,
    unsent: usize,
    /// Whether the front transmit has had some of its bytes written.
    started: bool,
}

impl Outgoing {
    /// Queues `transmit` behind what is there.
    pub fn push(&mut self, transmit: Transmit) {
        if !transmit.is_empty() {
            if self.queue.capacity() == 0 {
                self.queue = borrow_queue();
            }
            self.unsent += transmit.len();
            self.queue.push_back(transmit);
        }
    }

    /// Bytes waiting to be written.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.queue = VecDeque::new();
        self.unsent = 0;
        self.started = false;
    }

    /// Drops everything not yet begun on the wire, keeping the rest of a transmit that is half
    /// written (cutting it would corrupt the stream for whatever is written after it), and
    /// gives the memory back.
    pub fn drop_unstarted(&mut self) {
        let keep = if self.started {
            self.queue.pop_front()
        } else {
            None
        };
        self.clear();
        if let Some(front) = keep {
            self.started = true;
            self.unsent = front.len();
            self.queue.push_back(front);
        }
    }

    /// Fills `slices` with the next bytes to write; returns how many slices were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let parts = self
            .queue
            .iter()
            .flat_map(Transmit::slices)
            .filter(|s| !s.is_empty());
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
            count += 1;
        }
        count
    }

    /// Marks `written` bytes as written.
    pub fn advance(&mut self, mut written: usize) {
        self.unsent = self.unsent.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
        if self.queue.is_empty() {
            // An idle connection holds no queue memory: the queue goes back to the pool.
            give_back(std::mem::take(&mut self.queue));
        }
    }

    /// Writes as much as `sink` takes without blocking. `Ok(true)` when everything was written,
    /// `Ok(false)` when the sink would block with bytes left.
    ///
    /// # Errors
    /// The sink's error, or `WriteZero` when it took nothing.
    pub fn write_to(&mut self, mut sink: impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = self.slices(&mut slices);
            match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_pool_keeps_at_most_its_bound_and_no_burst_sized_queue() {
        // Many connections drain at once: the pool keeps POOL_SIZE queues, the rest are freed.
        let mut many: Vec<Outgoing> = (0..POOL_SIZE + 10).map(|_| Outgoing::default()).collect();
        for o in &mut many {
            o.push(Transmit::from(vec![1u8; 4]));
        }
        for o in &mut many {
            o.advance(4);
            assert!(o.is_empty());
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_SIZE);
        // A queue grown past POOLED_CAPACITY by a burst is freed, not pooled.
        POOL.with(|p| p.borrow_mut().clear());
        let mut burst = Outgoing::default();
        for _ in 0..POOLED_CAPACITY + 1 {
            burst.push(Transmit::from(vec![1u8; 1]));
        }
        burst.advance(POOLED_CAPACITY + 1);
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
    }

    use super::*;

    /// A sink that takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room);
                self.taken.extend_from_slice(&b[..take]);
                self.room -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut out = Outgoing::default();
        out.push(Transmit::from(b"hello ".to_vec()));
        out.push(Transmit::from(b"world".to_vec()));
        assert_eq!(out.unsent(), 11);
        let mut sink = Narrow {
            taken: Vec::new(),
            room: 3,
        };
        assert!(!out.write_to(&mut sink).unwrap());
        assert_eq!(out.unsent(), 8);
        sink.room = 100;
        assert!(out.write_to(&mut sink).unwrap());
        assert_eq!(sink.taken, b"hello world");
        assert_eq!(out.unsent(), 0);
    }

    #[test]
    fn dropping_keeps_a_half_written_transmit_whole() {
        let mut out = Outgoing::default();
        out.push(Transmit::from(b"abcdef".to_vec()));
        out.push(Transmit::from(b"ghij".to_vec()));
        out.advance(2);
        out.drop_unstarted();
        assert_eq!(out.unsent(), 4);
        let mut sink = Narrow {
            taken: Vec::new(),
            room: 100,
        };
        out.write_to(&mut sink).unwrap();
        assert_eq!(sink.taken, b"cdef");

        // Nothing started: everything goes.
        out.push(Transmit::from(b"xyz".to_vec()));
        out.drop_unstarted();
        assert!(out.is_empty());
        assert_eq!(out.unsent(), 0);
    }
}
