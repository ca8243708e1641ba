//! The bytes a connection has to write, as both shells keep them: a queue of [`Transmit`]s
//! written with vectored writes, counted so that the server can bound it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use spool_core::ws::Transmit;

/// Slices handed to one vectored write: enough for 32 frames (a header and a payload each),
/// well under the kernel's `IOV_MAX` of 1024.
pub const MAX_IOVECS: usize = 64;

/// A lone transmit up to this size is copied and written in one piece: cheaper for the kernel
/// than two iovecs. (At 1 KiB echoes, 2,048 against 256 gave 2-4% less server CPU a round
/// trip and 2.7-5% more round trips a second, three alternating runs each.)
const SMALL_WRITE: usize = 2048;

/// Small transmits queued together are copied into one write of up to this many bytes, rather
/// than written as two iovecs each, 32 frames a call: a subscriber sent 100 broadcast frames
/// of 60 bytes took 4 `sendmsg`s of 64 iovecs, and the kernel walks every iovec. At 64 KiB
/// even frames of `SMALL_WRITE` bytes go 32 to a call, so gathering never takes more calls.
const GATHER_BYTES: usize = 64 * 1024;

/// Queues a thread keeps for its connections to borrow while they have more than one transmit
/// waiting: at most this many, each at most [`POOLED_CAPACITY`] transmits long.
const POOL_SIZE: usize = 64;
/// A queue longer than this (a burst) is freed rather than pooled.
const POOLED_CAPACITY: usize = 64;

/// A send queue behind an inline front transmit. Boxed (a collection in a box, which clippy
/// would otherwise question): a connection that has none holds one word for it, not a
/// `VecDeque`'s four.
type Queue = Box<VecDeque<Transmit>>;

thread_local! {
    /// Where small transmits are copied to be written in one piece (holding at most
    /// `GATHER_BYTES`, so its capacity stays under twice that; one a thread).
    static SMALL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };

    /// Empty queues, given back by connections that wrote their backlog: an idle connection
    /// holds no queue, and a busy one does not allocate one for every burst.
    static POOL: std::cell::RefCell<Vec<Queue>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

fn borrow_queue() -> Queue {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
}

fn give_back(queue: Queue) {
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
///
/// The oldest transmit is kept inline and only those behind it in a queue, borrowed from the
/// thread's pool while there are any: most connections write one reply at a time, and then
/// never touch the pool (borrowing a queue for each reply and giving it back cost about 230
/// instructions an echo round trip, callgrind). An idle connection holds 72 bytes here and no heap.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// The oldest transmit; `None` only when nothing waits.
    front: Option<Transmit>,
    /// The transmits behind `front`, oldest first; `None` rather than empty.
    rest: Option<Queue>,
    unsent: usize,
    /// Whether the front transmit has had some of its bytes written.
    started: bool,
}

impl Outgoing {
    /// Queues `transmit` behind what is there.
    pub fn push(&mut self, transmit: Transmit) {
        if transmit.is_empty() {
            return;
        }
        self.unsent += transmit.len();
        if self.front.is_none() {
            self.front = Some(transmit);
        } else {
            self.rest
                .get_or_insert_with(borrow_queue)
                .push_back(transmit);
        }
    }

    /// Bytes waiting to be written.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.front = None;
        self.rest = None;
        self.unsent = 0;
        self.started = false;
    }

    /// Drops everything not yet begun on the wire, keeping the rest of a transmit that is half
    /// written (cutting it would corrupt the stream for whatever is written after it), and
    /// gives the memory back.
    pub fn drop_unstarted(&mut self) {
        let keep = if self.started {
            self.front.take()
        } else {
            None
        };
        self.clear();
        if let Some(front) = keep {
            self.started = true;
            self.unsent = front.len();
            self.front = Some(front);
        }
    }

    /// Every transmit waiting, oldest first.
    fn transmits(&self) -> impl Iterator<Item = &Transmit> {
        self.front
            .iter()
            .chain(self.rest.iter().flat_map(|rest| rest.iter()))
    }

    /// Fills `slices` with the next bytes to write; returns how many slices were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        // A plain loop: the iterator chain this was (flat_map, filter, zip) cost ~200
        // instructions for the two slices of one frame.
        let mut count = 0;
        for transmit in self.transmits() {
            for part in transmit.slices() {
                if part.is_empty() {
                    continue;
                }
                let Some(slot) = slices.get_mut(count) else {
                    return count;
                };
                *slot = IoSlice::new(part);
                count += 1;
            }
        }
        count
    }

    /// Calls `write` with the next bytes to write, for one write call. Small transmits at the
    /// front (each at most [`SMALL_WRITE`] bytes, together at most [`GATHER_BYTES`]: a reply,
    /// an echo, a run of broadcast frames) are copied into one slice, which a socket writes
    /// with a plain `send`; otherwise up to [`MAX_IOVECS`] slices. The caller advances by what
    /// was written.
    pub fn with_next_slices<R>(&self, write: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
        let (gathered, bytes) = self.small_front();
        if gathered > 0 {
            // The front, then the rest: not through `transmits()`, whose chained iterator cost
            // a lone echo about 120 instructions more a round trip.
            let copy = |buffer: &mut Vec<u8>| {
                buffer.reserve(bytes);
                if let Some(front) = &self.front {
                    buffer.extend_from_slice(front.head());
                    buffer.extend_from_slice(front.body());
                }
                for transmit in self
                    .rest
                    .iter()
                    .flat_map(|rest| rest.iter())
                    .take(gathered - 1)
                {
                    buffer.extend_from_slice(transmit.head());
                    buffer.extend_from_slice(transmit.body());
                }
            };
            // Borrowed for the one call; were the thread's buffer in use (it cannot be: the
            // write does not come back here), a buffer of its own.
            return SMALL.with(|cell| match cell.try_borrow_mut() {
                Ok(mut small) => {
                    small.clear();
                    copy(&mut small);
                    write(&[IoSlice::new(&small)])
                }
                Err(_) => {
                    let mut own = Vec::new();
                    copy(&mut own);
                    write(&[IoSlice::new(&own)])
                }
            });
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = self.slices(&mut slices);
        write(&slices[..count])
    }

    /// How many transmits at the front are small enough to be copied into one write (none when
    /// the first is larger than [`SMALL_WRITE`]), and their bytes.
    fn small_front(&self) -> (usize, usize) {
        let Some(front) = &self.front else {
            return (0, 0);
        };
        let (mut count, mut bytes) = (1, front.len());
        if bytes > SMALL_WRITE {
            return (0, 0);
        }
        let Some(rest) = &self.rest else {
            return (count, bytes);
        };
        for transmit in rest.iter() {
            let len = transmit.len();
            if len > SMALL_WRITE || bytes + len > GATHER_BYTES {
                break;
            }
            bytes += len;
            count += 1;
        }
        (count, bytes)
    }

    /// Marks `written` bytes as written.
    pub fn advance(&mut self, mut written: usize) {
        self.unsent = self.unsent.saturating_sub(written);
        while written > 0 {
            let Some(front) = &mut self.front else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.front = self.next_behind();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
    }

    /// Takes the transmit behind the front out of `rest`, giving the queue back to the pool
    /// once it is empty (an idle connection holds no queue memory).
    fn next_behind(&mut self) -> Option<Transmit> {
        let rest = self.rest.as_mut()?;
        let next = rest.pop_front();
        if rest.is_empty()
            && let Some(queue) = self.rest.take()
        {
            give_back(queue);
        }
        next
    }

    /// Writes as much as `sink` takes without blocking. `Ok(true)` when everything was written,
    /// `Ok(false)` when the sink would block with bytes left.
    ///
    /// # Errors
    /// The sink's error, or `WriteZero` when it took nothing.
    pub fn write_to(&mut self, mut sink: impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            match self.with_next_slices(|slices| sink.write_vectored(slices)) {
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
        // (A lone transmit waits inline: it takes two to borrow a queue.)
        let mut many: Vec<Outgoing> = (0..POOL_SIZE + 10).map(|_| Outgoing::default()).collect();
        for o in &mut many {
            o.push(Transmit::from(vec![1u8; 4]));
            o.push(Transmit::from(vec![2u8; 4]));
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
        for o in &mut many {
            o.advance(8);
            assert!(o.is_empty() && o.rest.is_none());
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_SIZE);
        // A queue grown past POOLED_CAPACITY by a burst is freed, not pooled.
        POOL.with(|p| p.borrow_mut().clear());
        let mut burst = Outgoing::default();
        for _ in 0..POOLED_CAPACITY + 2 {
            burst.push(Transmit::from(vec![1u8; 1]));
        }
        burst.advance(POOLED_CAPACITY + 2);
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
    }

    use super::*;

    #[test]
    fn one_transmit_at_a_time_waits_inline_and_borrows_no_queue() {
        assert_eq!(std::mem::size_of::<Outgoing>(), 72);
        POOL.with(|p| p.borrow_mut().clear());
        let mut out = Outgoing::default();
        for round in 0..3u8 {
            out.push(Transmit::from(vec![round; 10]));
            assert!(out.rest.is_none());
            let mut sink = Narrow {
                room: 10,
                ..Narrow::default()
            };
            assert!(out.write_to(&mut sink).unwrap());
            assert_eq!(sink.taken, vec![round; 10]);
        }
        assert!(out.is_empty() && out.unsent() == 0);
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
    }

    /// A sink that takes `room` bytes in all, then would block; it records how many slices
    /// each call came in.
    #[derive(Default)]
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
        slices: Vec<usize>,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.slices.push(bufs.len());
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
            room: 3,
            ..Narrow::default()
        };
        assert!(!out.write_to(&mut sink).unwrap());
        assert_eq!(out.unsent(), 8);
        sink.room = 100;
        assert!(out.write_to(&mut sink).unwrap());
        assert_eq!(sink.taken, b"hello world");
        assert_eq!(out.unsent(), 0);
    }

    /// A real frame (a header inline, a payload shared), as the core makes them.
    fn frame(payload: &[u8]) -> Transmit {
        use spool_core::ws::{Config, Connection, Event, Message, Outbound};
        let mut ws = Connection::server(Config::default()).expect("config");
        let request = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        ws.handle(Event::Receive {
            now_ms: 0,
            bytes: bytes::Bytes::from_static(request.as_bytes()),
        });
        ws.handle(Event::Accept { now_ms: 0 });
        let sent = ws.handle(Event::Send {
            now_ms: 0,
            message: Message::Binary(bytes::Bytes::copy_from_slice(payload)),
        });
        sent.into_iter()
            .find_map(|o| match o {
                Outbound::Transmit(t) => Some(t),
                _ => None,
            })
            .expect("a frame")
    }

    #[test]
    fn a_lone_small_frame_goes_out_as_one_slice_and_resumes_after_a_partial_write() {
        let mut out = Outgoing::default();
        out.push(frame(b"0123456789"));
        let wire = [&[0x82u8, 10][..], b"0123456789"].concat();
        // The sink takes 5 bytes: the header and 3 payload bytes, from one `write`.
        let mut sink = Narrow {
            room: 5,
            ..Narrow::default()
        };
        assert!(!out.write_to(&mut sink).expect("write"));
        assert_eq!(
            sink.slices,
            [1, 1],
            "one slice, then a write that would block"
        );
        assert_eq!(out.unsent(), 7);
        sink.room = 100;
        assert!(out.write_to(&mut sink).expect("write"));
        assert_eq!(sink.taken, wire);
        assert_eq!(sink.slices, [1, 1, 1]);

        // Past SMALL_WRITE: a vectored write, a header and a payload.
        let big = vec![7u8; SMALL_WRITE + 1];
        out.push(frame(&big));
        let mut sink = Narrow {
            room: usize::MAX,
            ..Narrow::default()
        };
        assert!(out.write_to(&mut sink).expect("write"));
        assert_eq!(sink.slices, [2]);
    }

    #[test]
    fn small_frames_queued_together_go_out_in_one_slice_up_to_the_gather_bound() {
        // 100 broadcast-sized frames: one write of one slice, in order.
        let mut out = Outgoing::default();
        let mut wire = Vec::new();
        for i in 0..100u8 {
            let payload = [i; 60];
            out.push(frame(&payload));
            wire.extend_from_slice(&[0x82, 60]);
            wire.extend_from_slice(&payload);
        }
        let mut sink = Narrow {
            room: usize::MAX,
            ..Narrow::default()
        };
        assert!(out.write_to(&mut sink).expect("write"));
        assert_eq!(sink.slices, [1]);
        assert_eq!(sink.taken, wire);

        // More than GATHER_BYTES of them: writes of at most GATHER_BYTES each, all in order,
        // resumed after a partial write.
        let frames = 2 * GATHER_BYTES / 62 + 5;
        let mut wire = Vec::new();
        for i in 0..frames {
            let payload = [(i % 251) as u8; 60];
            out.push(frame(&payload));
            wire.extend_from_slice(&[0x82, 60]);
            wire.extend_from_slice(&payload);
        }
        let mut sink = Narrow {
            room: 1000,
            ..Narrow::default()
        };
        assert!(!out.write_to(&mut sink).expect("write"));
        assert_eq!(sink.taken.len(), 1000);
        sink.room = usize::MAX;
        let mut sizes = Vec::new();
        assert!(
            out.write_to(&mut Sizes(&mut sink, &mut sizes))
                .expect("write")
        );
        assert_eq!(sink.taken, wire);
        // What was left after the first 1,000 bytes, in the fewest writes the bound allows.
        assert_eq!(sizes.iter().sum::<usize>(), wire.len() - 1000);
        assert_eq!(
            sizes.len(),
            (wire.len() - 1000).div_ceil(GATHER_BYTES),
            "{sizes:?}"
        );
        assert!(sizes.iter().all(|&n| n <= GATHER_BYTES), "{sizes:?}");
        // The thread's copy buffer, the one thing gathering grows: at most twice the bound
        // (a `Vec` at most doubles past what it was asked to hold), however long the backlog.
        let kept = SMALL.with(|small| small.borrow().capacity());
        assert!(
            (GATHER_BYTES / 2..=2 * GATHER_BYTES).contains(&kept),
            "{kept}"
        );

        // A large frame behind small ones: the small ones in one slice, then the large one
        // as a header and a payload.
        out.push(frame(b"a"));
        out.push(frame(b"b"));
        out.push(frame(&vec![7u8; SMALL_WRITE + 1]));
        let mut sink = Narrow {
            room: usize::MAX,
            ..Narrow::default()
        };
        assert!(out.write_to(&mut sink).expect("write"));
        assert_eq!(sink.slices, [1, 2]);
        assert_eq!(&sink.taken[..6], [0x82, 1, b'a', 0x82, 1, b'b']);
    }

    #[test]
    fn any_pushes_and_partial_writes_put_every_byte_on_the_wire_once_and_in_order() {
        // Frames and bare transmits of 0 to 2,999 bytes (either side of SMALL_WRITE), each
        // followed by a write into a sink with room for 0 to 4,999 bytes: whatever gathers or
        // goes out through iovecs, the wire gets every byte once, in order, and `unsent`
        // counts what is left.
        fn prop(steps: Vec<(u16, u16)>) -> bool {
            let mut out = Outgoing::default();
            let mut wire = Vec::new();
            let mut sink = Narrow::default();
            for (i, (len, room)) in steps.into_iter().enumerate() {
                let payload: Vec<u8> = (0..usize::from(len) % 3000)
                    .map(|j| (i + j) as u8)
                    .collect();
                let transmit = if i % 2 == 0 {
                    frame(&payload)
                } else {
                    Transmit::from(payload)
                };
                wire.extend(transmit.slices().concat());
                out.push(transmit);
                sink.room = usize::from(room) % 5000;
                if out.write_to(&mut sink).is_err() || out.unsent() != wire.len() - sink.taken.len()
                {
                    return false;
                }
            }
            sink.room = usize::MAX;
            out.write_to(&mut sink).is_ok_and(|done| done) && out.is_empty() && sink.taken == wire
        }
        quickcheck::QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Vec<(u16, u16)>) -> bool);
    }

    /// Records the size of each write it passes on.
    struct Sizes<'a>(&'a mut Narrow, &'a mut Vec<usize>);

    impl Write for Sizes<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let n = self.0.write_vectored(bufs)?;
            self.1.push(n);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
            room: 100,
            ..Narrow::default()
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
