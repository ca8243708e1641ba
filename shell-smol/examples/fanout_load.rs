//! Fan-out through Phoenix channels: many subscribers of one topic, spread over one or more
//! `spool serve` nodes, and one publisher; prints deliveries per second, missing deliveries,
//! latency percentiles, and each node's CPU per broadcast (from `/proc/PID/stat`).
//!
//! ```text
//! cargo run --release -p spool-smol --example fanout_load -- \
//!     --nodes 127.0.0.1:4000,127.0.0.1:4001 --pids 1234,1235 \
//!     --subscribers 10000 --broadcasts 100 --rate 20
//! ```
//! Subscribers join `room:fanout` on the nodes in turn; the publisher (on the first node)
//! shouts `--broadcasts` messages at `--rate` a second, each carrying its number and send time;
//! the run ends when every subscriber has every message, or 10 s after the last was sent.
//! `tests/scripts/cluster-fanout.sh` starts Redis and three nodes and runs this.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;
use spool_smol::{Client, ws};

struct Args {
    nodes: Vec<String>,
    pids: Vec<u32>,
    subscribers: usize,
    broadcasts: usize,
    rate: f64,
}

fn args() -> Args {
    let mut a = Args {
        nodes: vec!["127.0.0.1:4000".into()],
        pids: Vec::new(),
        subscribers: 1_000,
        broadcasts: 50,
        rate: 10.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--nodes" => a.nodes = value.split(',').map(str::to_string).collect(),
            "--pids" => a.pids = value.split(',').filter_map(|p| p.parse().ok()).collect(),
            "--subscribers" => a.subscribers = value.parse().unwrap_or(a.subscribers),
            "--broadcasts" => a.broadcasts = value.parse().unwrap_or(a.broadcasts),
            "--rate" => a.rate = value.parse().unwrap_or(a.rate),
            other => {
                eprintln!("fanout_load: unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

/// A process's user+system CPU time, from `/proc/PID/stat`.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // CLK_TCK is 100 on Linux
}

const TOPIC: &str = "room:fanout";

async fn join(url: &str) -> Option<Client> {
    let config = ws::Config {
        deflate: None,
        ..ws::Config::default()
    };
    let mut c = Client::connect(url, config).await.ok()?;
    let join = format!(r#"["1","1","{TOPIC}","phx_join",{{}}]"#);
    c.send(ws::Message::text(join)).await.ok()?;
    loop {
        if let ws::Message::Text(t) = c.recv().await.ok()?
            && t.contains("phx_reply")
        {
            return t.contains("\"ok\"").then_some(c);
        }
    }
}

/// The `n` and `t` of a shout: `[null,null,"room:fanout","shout",{"n":N,"t":T}]`.
fn shout_fields(text: &str) -> Option<(usize, u64)> {
    let payload = text.split_once("\"shout\",")?.1;
    let v: serde_json::Value = serde_json::from_str(payload.strip_suffix(']')?).ok()?;
    Some((v["n"].as_u64()? as usize, v["t"].as_u64()?))
}

fn main() {
    let a = args();
    let start = Instant::now();
    let executor = smol::LocalExecutor::new();
    let latencies: Rc<RefCell<Vec<u64>>> = Rc::default();
    let got: Rc<RefCell<Vec<usize>>> = Rc::new(RefCell::new(vec![0; a.broadcasts]));
    smol::block_on(executor.run(async {
        let urls: Vec<String> = (a.nodes.iter())
            .map(|n| format!("ws://{n}/socket/websocket"))
            .collect();
        // Subscribers, joined in batches so the nodes' accept queues are not flooded.
        let mut clients = Vec::with_capacity(a.subscribers);
        for batch in (0..a.subscribers).collect::<Vec<_>>().chunks(500) {
            let joins: Vec<_> = (batch.iter())
                .map(|i| executor.spawn(join_owned(urls[i % urls.len()].clone())))
                .collect();
            for j in joins {
                if let Some(c) = j.await {
                    clients.push(c);
                }
            }
        }
        let joined = clients.len();
        eprintln!(
            "fanout_load: {joined} of {} subscribers joined over {} nodes",
            a.subscribers,
            urls.len()
        );
        let done = Rc::new(RefCell::new(0usize));
        let mut readers = Vec::new();
        for mut c in clients {
            let (latencies, got, done) = (latencies.clone(), got.clone(), done.clone());
            let (broadcasts, start) = (a.broadcasts, start);
            readers.push(executor.spawn(async move {
                let mut seen = 0;
                while seen < broadcasts {
                    let Ok(message) = c.recv().await else { break };
                    if let ws::Message::Text(t) = message
                        && let Some((n, sent)) = shout_fields(&t) {
                            let now = start.elapsed().as_micros() as u64;
                            latencies.borrow_mut().push(now.saturating_sub(sent));
                            if let Some(g) = got.borrow_mut().get_mut(n) {
                                *g += 1;
                            }
                            seen += 1;
                        }
                }
                *done.borrow_mut() += 1;
                c
            }));
        }
        let mut publisher = join(&urls[0]).await.expect("the publisher joins");
        let cpu_before: Vec<Duration> = a.pids.iter().map(|p| cpu(*p)).collect();
        let began = Instant::now();
        let every = Duration::from_secs_f64(1.0 / a.rate);
        for n in 0..a.broadcasts {
            let at = began + every * n as u32;
            smol::Timer::at(at).await;
            let t = start.elapsed().as_micros();
            let shout = format!(r#"["1","{n}","{TOPIC}","shout",{{"n":{n},"t":{t}}}]"#);
            if publisher.send(ws::Message::text(shout)).await.is_err() {
                eprintln!("fanout_load: the publisher was cut off");
                break;
            }
        }
        let sent_in = began.elapsed();
        // Wait for every reader, at most 10 s after the last send.
        let wait = async {
            while *done.borrow() < joined {
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        };
        wait.or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
        })
        .await;
        let window = began.elapsed();
        let cpu_after: Vec<Duration> = a.pids.iter().map(|p| cpu(*p)).collect();
        let expected = joined * a.broadcasts;
        let delivered: usize = got.borrow().iter().sum();
        let mut lat = latencies.borrow().clone();
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        println!(
            "fanout: {joined} subscribers on {} nodes, {} broadcasts at {}/s (sent in {:.2} s): \
             {delivered} of {expected} deliveries ({} missing), {:.0} deliveries/s, \
             latency p50 {:.1} ms p99 {:.1} ms",
            urls.len(),
            a.broadcasts,
            a.rate,
            sent_in.as_secs_f64(),
            expected - delivered.min(expected),
            delivered as f64 / window.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
        for (i, (b, after)) in cpu_before.iter().zip(&cpu_after).enumerate() {
            let used = after.saturating_sub(*b);
            let per = used.as_secs_f64() * 1e6 / a.broadcasts.max(1) as f64;
            let local = joined / urls.len().max(1);
            println!(
                "node {i} (pid {}): CPU {:.2} s, {per:.0} us per broadcast, {:.2} us per local delivery (~{local} subscribers)",
                a.pids[i],
                used.as_secs_f64(),
                per / local.max(1) as f64,
            );
        }
        drop(readers);
        let _ = publisher.close(1000, "").await;
    }));
}

async fn join_owned(url: String) -> Option<Client> {
    join(&url).await
}
