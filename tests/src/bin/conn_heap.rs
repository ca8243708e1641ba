//! Heap bytes a spool WebSocket server keeps per idle connection, on either shell, counted
//! exactly by a counting global allocator (resident memory also counts allocator slack and the
//! process's fixed costs; this counts what the server asked for).
//!
//! ```text
//! cargo run --release -p spool-tests --bin conn_heap -- [std|smol] [CONNECTIONS=2000]
//! ```
//! Opens CONNECTIONS raw TCP connections to an in-process echo server, completes each
//! handshake, lets one message go each way on every connection, and prints the live heap
//! growth divided by the connections, with the size of the core's connection state.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use std::net::SocketAddr;

use spool_std::{Conn, Handler, Incoming, Next};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by size, in 16-byte steps up to 64 KiB (the last bucket takes the rest).
static BY_SIZE: [AtomicIsize; 4096] = [const { AtomicIsize::new(0) }; 4096];

fn bucket(size: usize) -> &'static AtomicIsize {
    &BY_SIZE[(size / 16).min(4095)]
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        bucket(layout.size()).fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        bucket(layout.size()).fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        bucket(layout.size()).fetch_sub(1, Ordering::Relaxed);
        bucket(new).fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

struct Echo;

impl Handler for Echo {
    type State = ();
    type User = ();
    fn on_init(&self, _conn: &mut Conn<()>) {}
    fn handle(&self, _s: &mut (), incoming: Incoming<()>, conn: &mut Conn<()>) -> Next {
        if let Incoming::Message(m @ spool_core::ws::Message::Text(_)) = incoming {
            conn.send(m);
        }
        Next::Continue
    }
}

/// A running server on either shell, to stop at the end.
enum Running {
    Std(spool_std::ServerHandle),
    Smol(spool_smol::ServerHandle),
}

fn start(shell: &str) -> (Running, SocketAddr) {
    match shell {
        "smol" => {
            let server = spool_smol::Server::new(Echo)
                .bind("127.0.0.1:0")
                .threads(2)
                .start()
                .expect("spool-smol server");
            let addr = server.local_addr();
            (Running::Smol(server), addr)
        }
        _ => {
            let server = spool_std::Server::new(Echo)
                .bind("127.0.0.1:0")
                .threads(2)
                .start()
                .expect("spool-std server");
            let addr = server.local_addr();
            (Running::Std(server), addr)
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let shell = match args.next().as_deref() {
        Some("smol") => "smol",
        Some("std") | None => "std",
        Some(other) => panic!("unknown shell {other}: std or smol"),
    };
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let (server, addr) = start(shell);
    std::thread::sleep(Duration::from_millis(200));
    let open = |count: usize| -> Vec<TcpStream> {
        (0..count)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                )
                .unwrap();
                let mut buf = [0u8; 1024];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    got += s.read(&mut buf[got..]).unwrap();
                }
                // One masked text message "hello", and its echo.
                s.write_all(&[0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1])
                    .unwrap();
                let mut echo = [0u8; 7];
                s.read_exact(&mut echo).unwrap();
                s
            })
            .collect()
    };
    // Warm up: the loops' first connections allocate their tables.
    let warm = open(200);
    std::thread::sleep(Duration::from_millis(300));
    let before = LIVE.load(Ordering::Relaxed);
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let held = open(n);
    std::thread::sleep(Duration::from_millis(500));
    let after = LIVE.load(Ordering::Relaxed);
    let per = (after - before) as f64 / n as f64;
    // Where it goes: the size classes whose live count grew by at least a tenth of n.
    for (i, b) in BY_SIZE.iter().enumerate() {
        let grew = b.load(Ordering::Relaxed) - sizes_before[i];
        if grew.unsigned_abs() >= n / 10 {
            println!(
                "  {:>6}-{:<6} bytes: {:+} allocations ({:.2} a connection)",
                i * 16,
                i * 16 + 15,
                grew,
                grew as f64 / n as f64
            );
        }
    }
    println!(
        "spool-{shell}: {n} idle connections: {per:.0} heap bytes each (client sockets of this process included: {} bytes each for the Vec of streams)",
        std::mem::size_of::<TcpStream>()
    );
    println!(
        "size_of ws::Connection = {} bytes",
        std::mem::size_of::<spool_core::ws::Connection>()
    );
    drop(held);
    drop(warm);
    match server {
        Running::Std(s) => s.shutdown(),
        Running::Smol(s) => s.shutdown(),
    }
}
