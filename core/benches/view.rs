//! Live-view costs.
//!
//! `cargo bench -p spool-core --bench view` prints:
//! - the time of `diff` between two renders of a 1,000-row keyed list where one row changed
//!   and one moved, and of encoding that patch for the wire;
//! - the memory held per idle sprocket (a joined live session of `spool serve`'s demo view, and
//!   of a plain counter), measured with a counting allocator over 1,000 sessions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::Criterion;
use spool_core::cassette::{Cassette, Config, ConnId, Event, Views};
use spool_core::view::demo::Demo;
use spool_core::view::{self, Element, View, el};

/// Counts the bytes held by live allocations.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same layout; the counter
// is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROWS: usize = 1_000;

fn row(i: usize, label: &str) -> Element {
    el("li")
        .key(i.to_string())
        .class("row")
        .child(el("span").text(label.to_string()))
        .child(el("button").on_click(format!("remove:{i}")).text("x"))
}

/// The list before and after: row 500's label changed, row 100 moved to the end.
fn lists() -> (Element, Element) {
    let before = el("ul").children((0..ROWS).map(|i| row(i, &format!("row {i}"))));
    let mut order: Vec<usize> = (0..ROWS).filter(|&i| i != 100).collect();
    order.push(100);
    let after = el("ul").children(order.into_iter().map(|i| {
        let label = if i == 500 {
            "row 500, changed".to_string()
        } else {
            format!("row {i}")
        };
        row(i, &label)
    }));
    (before, after)
}

struct Counter(u64);

impl View for Counter {
    fn render(&self) -> Element {
        el("div")
            .child(el("button").on_click("inc").text("+"))
            .child(el("span").text(self.0.to_string()))
    }
}

/// Bytes held per sprocket of `view` once `n` sessions joined and sit idle.
fn bytes_per_sprocket(view: &str, n: u64) -> f64 {
    let mut views = Views::new();
    views.register("demo", || Box::new(Demo::default()));
    views.register("counter", || Box::new(Counter(0)));
    let mut c = Cassette::new(
        views,
        Config {
            max_sprockets: n as usize,
            ..Config::default()
        },
    );
    // Warm the maps to their final capacity so the figure is the sessions, not the growth.
    let ids: Vec<(String, String)> = (0..n)
        .map(|i| (format!("{i:032x}"), format!("{i:064x}")))
        .collect();
    let join = |c: &mut Cassette, i: u64, id: &str, csrf: &str| {
        c.handle(Event::PushPreflight {
            now_ms: i,
            id: id.to_string(),
            csrf_token: csrf.to_string(),
            view: view.to_string(),
        });
        c.handle(Event::Receive {
            now_ms: i,
            conn: ConnId(i),
            text: format!(r#"["join",{{"id":"{id}","csrf":"{csrf}"}}]"#),
        });
    };
    join(&mut c, n + 1, "warm", "up");
    c.handle(Event::Disconnect {
        now_ms: n + 1,
        conn: ConnId(n + 1),
    });
    let before = HELD.load(Ordering::Relaxed);
    for (i, (id, csrf)) in ids.iter().enumerate() {
        join(&mut c, i as u64, id, csrf);
    }
    let after = HELD.load(Ordering::Relaxed);
    assert_eq!(c.sprocket_count(), n as usize);
    black_box(&c);
    (after - before) as f64 / n as f64
}

fn main() {
    for view in ["demo", "counter"] {
        println!(
            "memory per idle sprocket ({view} view, 1,000 sessions): {:.0} bytes",
            bytes_per_sprocket(view, 1_000)
        );
    }
    let (before, after) = lists();
    let patch = view::diff(&before, &after);
    println!(
        "diff of {ROWS} keyed rows, one changed and one moved: patch of {} bytes on the wire",
        patch.to_json(false).to_string().len()
    );
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("view_diff_1000_keyed_rows_one_changed_one_moved", |b| {
        b.iter(|| view::diff(black_box(&before), black_box(&after)))
    });
    c.bench_function("view_diff_and_encode_1000_keyed_rows", |b| {
        b.iter(|| {
            view::diff(black_box(&before), black_box(&after))
                .to_json(false)
                .to_string()
        })
    });
    c.final_summary();
}
