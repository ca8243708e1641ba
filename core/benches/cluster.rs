//! Cluster mode's cost per node.
//!
//! `cargo bench -p spool-core --bench cluster` prints, for a broadcast to the 10,000
//! subscribers of one topic spread over three nodes (3,334 + 3,333 + 3,333):
//! - on the publishing node: delivering to its own subscribers and encoding the bus message;
//! - on each other node: decoding the bus message, and delivering to its subscribers (one
//!   frame encoded, shared by all of them);
//!
//! and, after a node holding 1,000 presences is killed, how long (in the cluster's own time,
//! with the default 1.5 s heartbeat and 30 s down period) until the other nodes have told
//! their clients those presences left, and the CPU time one node spends doing it.
//!
//! The Redis round trip is not counted here; `tests/tests/cluster.rs` measures the whole path
//! through real Redis and prints what it saw.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use spool_core::channel::{ClientId, Config, Event, Frame, Outbound, Payload, Runtime, demo};
use spool_core::cluster::Options;
use spool_core::ws::Text;

const SUBSCRIBERS: [u64; 3] = [3_334, 3_333, 3_333];
const TOPIC: &str = "room:bench";

fn node(name: &str, boot: u64) -> Runtime {
    let config = Config {
        heartbeat_timeout_ms: None,
        ..Config::with_seed(1)
    };
    let mut rt =
        Runtime::new_cluster_ready(Options::new("bench", name, boot), demo::router(), config)
            .expect("valid options");
    rt.handle(Event::ClusterUp { now_ms: 0 });
    rt
}

fn join(rt: &mut Runtime, client: u64, user: Option<&str>) -> Vec<Outbound> {
    let params = user.map_or("{}".to_string(), |u| format!("{{\"user\":\"{u}\"}}"));
    let join = format!(r#"["1","1","{TOPIC}","phx_join",{params}]"#);
    rt.handle(Event::Receive {
        now_ms: 0,
        client_id: ClientId(client),
        frame: Frame::Text(join.into()),
    })
}

fn published(out: Vec<Outbound>) -> Vec<Text> {
    (out.into_iter())
        .filter_map(|o| match o {
            Outbound::ClusterPublish { data } => Some(data),
            _ => None,
        })
        .collect()
}

fn broadcast(now_ms: u64) -> Event {
    Event::Broadcast {
        now_ms,
        except: None,
        topic: TOPIC.into(),
        event: "shout".into(),
        payload: Payload::from(serde_json::json!({"body": "a message of some forty bytes"})),
    }
}

fn cluster() -> Vec<Runtime> {
    let mut nodes = vec![node("a", 1), node("b", 2), node("c", 3)];
    for (rt, n) in nodes.iter_mut().zip(SUBSCRIBERS) {
        for client in 0..n {
            join(rt, client + 10, None);
        }
    }
    nodes
}

fn broadcast_over_three_nodes(c: &mut Criterion) {
    let mut nodes = cluster();
    let mut group = c.benchmark_group("broadcast to 10,000 subscribers over 3 nodes");
    group.throughput(Throughput::Elements(SUBSCRIBERS[0]));
    let mut now = 1;
    group.bench_function(
        "publishing node (3,334 local deliveries + bus message)",
        |b| {
            b.iter(|| {
                now += 1;
                black_box(nodes[0].handle(broadcast(now)))
            })
        },
    );
    group.throughput(Throughput::Elements(SUBSCRIBERS[1]));
    // Each receive needs a fresh message (a repeat is dropped), made outside the timing.
    let (a, rest) = nodes.split_at_mut(1);
    group.bench_function("receiving node (bus message + 3,333 deliveries)", |b| {
        b.iter_batched(
            || {
                now += 1;
                (now, published(a[0].handle(broadcast(now))).remove(0))
            },
            |(now_ms, data)| black_box(rest[0].handle(Event::ClusterReceive { now_ms, data })),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Nodes a and b watch c, which holds 1,000 presences, until c goes silent.
fn convergence_after_a_kill(_c: &mut Criterion) {
    let mut nodes = vec![node("a", 1), node("b", 2), node("c", 3)];
    for rt in &mut nodes {
        join(rt, 1, None); // the watcher
    }
    let mut bus: Vec<(usize, Text)> = Vec::new();
    for u in 0..1_000 {
        bus.extend(
            published(join(&mut nodes[2], 100 + u, Some(&format!("u{u}"))))
                .into_iter()
                .map(|d| (2, d)),
        );
    }
    let deliver =
        |nodes: &mut Vec<Runtime>, bus: &mut Vec<(usize, Text)>, now: u64, alive: &[bool]| {
            while !bus.is_empty() {
                for (from, data) in std::mem::take(bus) {
                    for to in 0..nodes.len() {
                        if to != from && alive[to] {
                            let out = nodes[to].handle(Event::ClusterReceive {
                                now_ms: now,
                                data: data.clone(),
                            });
                            bus.extend(published(out).into_iter().map(|d| (to, d)));
                        }
                    }
                }
            }
        };
    let mut alive = [true; 3];
    deliver(&mut nodes, &mut bus, 0, &alive);
    assert_eq!(nodes[0].presences(TOPIC).len(), 1_000);
    // Heartbeats run for a while; c dies 700 ms after one of its heartbeats.
    let step = 10;
    let mut now = 0;
    let killed_at = 10_000 + 700;
    let mut left_at = None;
    let mut leave_cpu = std::time::Duration::ZERO;
    while left_at.is_none() && now < 200_000 {
        now += step;
        if now == killed_at {
            alive[2] = false;
        }
        for i in 0..3 {
            if !alive[i] {
                continue;
            }
            let started = Instant::now();
            let out = nodes[i].handle(Event::Tick { now_ms: now });
            let took = started.elapsed();
            let left = out.iter().any(
                |o| matches!(o, Outbound::PresenceDiff { diff, .. } if !diff.leaves.is_empty()),
            );
            if left && i == 0 {
                leave_cpu = took;
                left_at = Some(now);
            }
            bus.extend(published(out).into_iter().map(|d| (i, d)));
        }
        deliver(&mut nodes, &mut bus, now, &alive);
    }
    let left_at = left_at.expect("c's presences left");
    let down_after = Options::new("x", "y", 0).down_after_ms;
    println!(
        "presence convergence after a kill: c's 1,000 presences left a's clients {} ms after c died \
         (down_after_ms {down_after}, heartbeat 1,500 ms); a spent {:.2} ms of CPU on it ({:.2} us a presence)",
        left_at - killed_at,
        leave_cpu.as_secs_f64() * 1e3,
        leave_cpu.as_secs_f64() * 1e6 / 1_000.0,
    );
}

criterion_group!(
    benches,
    broadcast_over_three_nodes,
    convergence_after_a_kill
);
criterion_main!(benches);
