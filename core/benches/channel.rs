//! Channel runtime throughput.
//!
//! `cargo bench -p spool-core --bench channel` prints events per second for a joined client
//! pushing `ping` (the frame decoded, the handler run, its reply encoded), and the time of one
//! broadcast to the 10,000 subscribers of a topic with its deliveries per second. The aim for
//! the broadcast is under 1 ms of core time; the shell's writes are not counted.
//!
//! It also prints the time to disconnect, one by one in join order, all 100,000 subscribers of
//! one topic (a reconnect storm): a single timed run, since the setup dwarfs the work. The aim
//! is under 100 ms in total.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use spool_core::channel::{
    ChannelHandler, ClientId, Config, Event, Frame, HandleIn, Outbound, Payload, Router, Runtime,
    Socket,
};
use spool_core::ws::Text;

const SUBSCRIBERS: u64 = 10_000;

/// The demo's `room:*` channel, as far as the benchmark uses it.
struct Room;

impl ChannelHandler for Room {
    fn handle_in(&self, event: &str, payload: &Payload, _socket: &mut Socket) -> HandleIn {
        match event {
            "ping" => HandleIn::ok(json!({"pong": payload.to_value().unwrap_or(Value::Null)})),
            _ => HandleIn::NoReply,
        }
    }
}

fn runtime() -> Runtime {
    Runtime::new_single_node(Router::new().route("room:*", Room), Config::with_seed(1))
}

fn join(rt: &mut Runtime, client: u64, topic: &str) {
    let join = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
    let out = rt.handle(Event::Receive {
        now_ms: 0,
        client_id: ClientId(client),
        frame: Frame::Text(join.into()),
    });
    assert!(
        matches!(&out[0], Outbound::Reply { status, .. } if status == "ok"),
        "{out:?}"
    );
}

fn push_and_reply(c: &mut Criterion) {
    let mut rt = runtime();
    join(&mut rt, 1, "room:lobby");
    let ping = Frame::Text(Text::from_static(
        r#"["1","2","room:lobby","ping",{"n":1}]"#,
    ));
    let mut group = c.benchmark_group("push ping, reply ok");
    group.throughput(Throughput::Elements(1));
    group.bench_function("Runtime::handle", |b| {
        b.iter(|| {
            let out = rt.handle(Event::Receive {
                now_ms: 1,
                client_id: ClientId(1),
                frame: ping.clone(),
            });
            assert!(matches!(&out[..], [Outbound::Reply { status, .. }] if status == "ok"));
            black_box(out)
        })
    });
    group.finish();
}

fn broadcast(c: &mut Criterion) {
    let mut rt = runtime();
    for client in 0..SUBSCRIBERS {
        join(&mut rt, client, "room:big");
    }
    assert_eq!(rt.subscribers("room:big").len() as u64, SUBSCRIBERS);
    let payload = Payload::from(json!({"body": "hi"}));
    let mut group = c.benchmark_group("broadcast to 10,000 subscribers");
    group.throughput(Throughput::Elements(SUBSCRIBERS));
    for (name, except) in [("to all", None), ("from one", Some(ClientId(5_000)))] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = rt.handle(Event::Broadcast {
                    now_ms: 1,
                    except,
                    topic: "room:big".into(),
                    event: "shout".into(),
                    payload: payload.clone(),
                });
                assert!(matches!(&out[..], [Outbound::BroadcastMessage { .. }]));
                black_box(out)
            })
        });
    }
    group.finish();
}

/// Not a criterion benchmark: one run, timed and printed (criterion would repeat the 100,000
/// joins of the setup for every sample).
fn disconnect_storm(_c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut rt = runtime();
    for client in 0..N {
        join(&mut rt, client, "room:storm");
    }
    assert_eq!(rt.subscribers("room:storm").len() as u64, N);
    let (started, cpu) = (Instant::now(), thread_cpu_ns());
    for client in 0..N {
        black_box(rt.handle(Event::Disconnect {
            now_ms: 1,
            client_id: ClientId(client),
        }));
    }
    let (took, cpu) = (
        started.elapsed(),
        thread_cpu_ns().zip(cpu).map(|(b, a)| b - a),
    );
    assert_eq!(rt.membership_count(), 0);
    println!(
        "disconnect 100,000 subscribers of one topic one by one: {:.1} ms in total, {} ns each",
        took.as_secs_f64() * 1e3,
        took.as_nanos() / u128::from(N)
    );
    if let Some(cpu) = cpu {
        println!(
            "  on this thread's CPU: {} ms (to 10 ms; the rest of the wall time ran other work)",
            cpu / 1_000_000
        );
    }
}

/// Nanoseconds this thread has run on a CPU (Linux's `utime + stime`, in 10 ms ticks), so that
/// a busy machine does not inflate the figure.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start at the state, field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

criterion_group!(benches, push_and_reply, broadcast, disconnect_storm);
criterion_main!(benches);
