//! What an idle connection holds after compressed traffic, measured with a counting allocator:
//! the bytes this thread has allocated and not freed, before and after one compressed message
//! each way. Under no-context-takeover nothing may stay behind (issue 7); with context takeover
//! the zlib streams are the connection's to keep, and the figure is printed for comparison.
//!
//! `cargo test -p spool-core --test deflate_memory -- --nocapture` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use spool_core::ws::{
    ClientRequest, Config, Connection, DeflateConfig, Event, Message, Outbound, Url,
};

/// The system allocator, counting per thread the bytes allocated and not yet freed, so that
/// tests running on other threads do not disturb the figure.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

fn held() -> isize {
    HELD.with(Cell::get)
}

// SAFETY: every call goes straight to the system allocator; counting touches only a
// thread-local integer and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn transmitted(out: Vec<Outbound>) -> Vec<Bytes> {
    out.into_iter()
        .filter_map(|o| match o {
            Outbound::Transmit(t) => Some(t.into_bytes()),
            _ => None,
        })
        .collect()
}

fn feed(to: &mut Connection, now_ms: u64, wire: Vec<Bytes>) -> Vec<Outbound> {
    let mut out = Vec::new();
    for bytes in wire {
        out.extend(to.handle(Event::Receive { now_ms, bytes }));
    }
    out
}

/// A client and a server, open, with compression as `deflate` says on both sides.
fn pair(deflate: DeflateConfig) -> (Connection, Connection) {
    let config = Config {
        deflate: Some(deflate),
        ..Config::default()
    };
    let request = ClientRequest {
        url: Url::parse("ws://localhost/").unwrap(),
        key: [7; 16],
        mask_seed: 3,
        headers: vec![],
    };
    let mut client = Connection::client(config.clone(), request).unwrap();
    let mut server = Connection::server(config).unwrap();
    server.handle(Event::Open { now_ms: 0 });
    let upgrade = transmitted(client.handle(Event::Open { now_ms: 0 }));
    feed(&mut server, 0, upgrade);
    let answer = transmitted(server.handle(Event::Accept { now_ms: 0 }));
    let opened = feed(&mut client, 0, answer);
    assert!(
        opened
            .iter()
            .any(|o| matches!(o, Outbound::Opened(h) if h.deflate.is_some())),
        "{opened:?}"
    );
    (client, server)
}

/// One compressed message each way; returns the bytes the two connections hold afterwards that
/// they did not hold before.
fn held_after_one_message_each_way(deflate: DeflateConfig) -> isize {
    let (mut client, mut server) = pair(deflate);
    let text = "a message long enough to be compressed, ".repeat(20);
    let before = held();
    let wire = transmitted(client.handle(Event::Send {
        now_ms: 1,
        message: Message::text(text.clone()),
    }));
    assert!(
        wire.iter().map(Bytes::len).sum::<usize>() < text.len() / 2,
        "compressed"
    );
    let got = feed(&mut server, 1, wire);
    assert_eq!(got, [Outbound::Deliver(Message::text(text.clone()))]);
    drop(got);
    let wire = transmitted(server.handle(Event::Send {
        now_ms: 2,
        message: Message::text(text.clone()),
    }));
    let got = feed(&mut client, 2, wire);
    assert_eq!(got, [Outbound::Deliver(Message::text(text.clone()))]);
    drop(got);
    let after = held();
    drop((client, server));
    after - before
}

#[test]
fn an_idle_connection_holds_no_zlib_state_under_no_context_takeover() {
    let takeover = held_after_one_message_each_way(DeflateConfig::default());
    let no_takeover = held_after_one_message_each_way(DeflateConfig {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateConfig::default()
    });
    println!(
        "idle after one compressed message each way, per connection: \
         context takeover {} bytes, no context takeover {} bytes",
        takeover / 2,
        no_takeover / 2
    );
    assert!(takeover > 0, "the counter counts");
    assert_eq!(no_takeover, 0, "bytes left behind by two idle connections");
}
