//! Leaving a topic costs the same whatever the topic's size (issue 7, item 2): the cost per
//! subscriber of disconnecting every subscriber of a topic, one by one in join order, is about
//! the same for a topic ten times bigger. The removal used to renumber every later subscriber,
//! which made it ten times dearer per subscriber there. The figures are printed; the bench
//! `cargo bench -p spool-core --bench channel` measures 100,000 subscribers.

use std::time::{Duration, Instant};

use spool_core::channel::{ClientId, Config, Event, Frame, Runtime, demo};

/// The time to disconnect, in join order, each of `n` subscribers of one topic (the best of
/// `runs`, so that a busy machine slows the figure down rather than up).
fn disconnect_all(n: u64, runs: usize) -> Duration {
    (0..runs)
        .map(|_| {
            let mut rt = Runtime::new_single_node(demo::router(), Config::with_seed(1));
            for c in 0..n {
                rt.handle(Event::Receive {
                    now_ms: 0,
                    client_id: ClientId(c),
                    frame: Frame::Text(r#"["1","1","room:big","phx_join",{}]"#.into()),
                });
            }
            assert_eq!(rt.subscribers("room:big").len() as u64, n);
            let started = Instant::now();
            for c in 0..n {
                rt.handle(Event::Disconnect {
                    now_ms: 1,
                    client_id: ClientId(c),
                });
            }
            let took = started.elapsed();
            assert_eq!(rt.membership_count(), 0);
            took
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn disconnecting_a_subscriber_costs_the_same_in_a_topic_ten_times_bigger() {
    let (small, big) = (1_000, 10_000);
    let per_small = disconnect_all(small, 5).as_nanos() / u128::from(small);
    let per_big = disconnect_all(big, 3).as_nanos() / u128::from(big);
    println!("per disconnect: {per_small} ns of {small}, {per_big} ns of {big}");
    assert!(
        per_big < 4 * per_small.max(1),
        "{per_big} ns per disconnect of {big} subscribers, {per_small} ns of {small}"
    );
}
