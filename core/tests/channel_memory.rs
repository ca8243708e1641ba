//! Peak memory of a large channel message, measured with a counting global allocator: the
//! runtime keeps a payload as the text it arrived in, so handling a message costs less than
//! twice its size on top of the frame itself (issue 7, item 1). One test in this binary, so
//! that no other test allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use spool_core::channel::{ClientId, Config, Event, Frame, Outbound, Runtime, demo};

/// Counts the bytes allocated now and the most allocated at once since the last reset.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes held at once while `f` runs, above what was held when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (PEAK.load(Ordering::SeqCst) - base, out)
}

/// A chat-like payload of about `len` bytes: many small objects, the shape that costs a
/// `serde_json::Value` tree many times its text.
fn payload(len: usize) -> String {
    let mut s = String::from(r#"{"items":["#);
    let mut i = 0;
    while s.len() < len {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"id":{i},"t":"hi","ok":true}}"#));
        i += 1;
    }
    s.push_str("]}");
    s
}

fn frame(client: u64, text: String) -> Event {
    Event::Receive {
        now_ms: 1,
        client_id: ClientId(client),
        frame: Frame::Text(text.into()),
    }
}

#[test]
fn a_large_message_costs_less_than_twice_its_size() {
    let mut rt = Runtime::new_single_node(demo::router(), Config::with_seed(1));
    rt.handle(frame(1, r#"["1","1","room:a","phx_join",{}]"#.into()));
    let body = payload(900 * 1024);
    let size = body.len();

    let cases = [
        (
            "a push on a topic the socket never joined",
            3,
            "room:a",
            "shout",
        ),
        ("a join of a topic no route matches", 3, "nope", "phx_join"),
        ("a shout the demo relays to the topic", 1, "room:a", "shout"),
    ];
    for (what, client, topic, event) in cases {
        let event = frame(client, format!(r#"["1","2","{topic}","{event}",{body}]"#));
        let (peak, out) = peak_during(|| rt.handle(event));
        println!(
            "{what}: {size} byte payload, peak {peak} bytes above the frame ({:.2}x)",
            peak as f64 / size as f64
        );
        assert!(!out.is_empty(), "{what}: an answer");
        assert!(
            peak < 2 * size,
            "{what}: peak {peak} bytes for a {size} byte message"
        );
    }

    // Past the limit (1 MiB by default), the socket is closed with 1009 before any parsing.
    let big = payload(2 << 20);
    let event = frame(3, format!(r#"["1","2","room:a","shout",{big}]"#));
    let (peak, out) = peak_during(|| rt.handle(event));
    println!("a {} byte message: peak {peak} bytes", big.len());
    assert!(
        matches!(
            &out[..],
            [Outbound::CloseSocket {
                code: 1009,
                client_id: ClientId(3),
                ..
            }]
        ),
        "{:?}",
        out.iter().map(Runtime::outbound_label).collect::<Vec<_>>()
    );
    assert!(peak < 64 * 1024, "peak {peak} bytes for a refused message");
}
