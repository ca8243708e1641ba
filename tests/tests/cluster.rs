//! Cluster mode end to end: a Redis server of the test's own (Debian's `redis-server`, which
//! `.ci/test` installs), three `spool serve --redis` processes, and spool's Rust Phoenix client
//! on each node. Clients on different nodes see each other's broadcasts (once) and presences;
//! a killed node's presences leave the others within `down_after_ms` plus a heartbeat, a node
//! stopped with SIGTERM leaves at once, and after Redis restarts nothing is lost and presence
//! converges again.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Spool;
use futures_lite::FutureExt as _;
use serde_json::json;
use spool_core::client::Backoff;
use spool_smol::phoenix::{Channel, PhoenixClient, PhoenixOptions};

const HEARTBEAT_MS: u64 = 200;
const DOWN_AFTER_MS: u64 = 2_000;
const TOPIC: &str = "room:cluster";

/// A redis-server on a free port of 127.0.0.1, with no persistence; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package; .ci/test installs it)");
        let redis = Redis { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis never listened"
            );
            thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &str, id: &str) -> Spool {
    node_with(redis, id, &[])
}

fn node_with(redis: &str, id: &str, extra: &[&str]) -> Spool {
    let (hb, down) = (HEARTBEAT_MS.to_string(), DOWN_AFTER_MS.to_string());
    let mut args = vec![
        "serve",
        "--port",
        "0",
        "--redis",
        redis,
        "--cluster",
        "test",
        "--node-id",
        id,
        "--heartbeat-ms",
        &hb,
        "--down-after-ms",
        &down,
    ];
    args.extend_from_slice(extra);
    Spool::start(&args)
}

fn client(node: &Spool) -> PhoenixClient {
    let options = PhoenixOptions {
        timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(500),
        rejoin_after: Arc::new(|_| Duration::from_millis(100)),
        backoff: Backoff {
            initial_ms: 50,
            max_ms: 200,
            ..Backoff::default()
        },
        connect_timeout: Duration::from_secs(2),
        ..PhoenixOptions::default()
    };
    PhoenixClient::connect(&format!("ws://{}/socket", node.addr), options).unwrap()
}

fn keys(channel: &Channel) -> Vec<String> {
    channel.presence().keys().cloned().collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until `check` holds, at most `bound`; says how long it took.
async fn eventually(what: &str, bound: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        smol::Timer::after(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Every `shout` body that arrives within `quiet` of the previous one.
async fn shouts(channel: &Channel, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let next = async { channel.recv().await.map(Some) }.or(async {
            smol::Timer::after(quiet).await;
            None
        });
        match next.await {
            Some(Some(m)) if m.event == "shout" => {
                got.push(m.payload["body"].as_str().unwrap_or("").to_string())
            }
            Some(Some(_)) => {}
            Some(None) | None => return got,
        }
    }
}

async fn shout(channel: &Channel, body: &str) {
    // `shout` has no reply: the push times out quickly, the broadcast goes out.
    let _ = channel
        .push_with_timeout("shout", json!({ "body": body }), Duration::from_millis(20))
        .await;
}

async fn join(client: &PhoenixClient, user: &str) -> Channel {
    let channel = client.channel(TOPIC, json!({ "user": user }));
    assert_eq!(channel.join().await, Ok(json!({})));
    channel
}

#[test]
fn clients_on_three_nodes_see_each_others_broadcasts_once_and_presence() {
    let redis = Redis::start();
    let log = common::temp_dir("cluster-record").join("n1.jsonl");
    let log_arg = log.to_string_lossy().to_string();
    let mut nodes = [
        node_with(&redis.url(), "n1", &["--record", &log_arg]),
        node(&redis.url(), "n2"),
        node(&redis.url(), "n3"),
    ];
    let clients: Vec<PhoenixClient> = nodes.iter().map(client).collect();
    smol::block_on(async {
        let a = join(&clients[0], "ann").await;
        let b = join(&clients[1], "bob").await;
        let c = join(&clients[2], "cy").await;
        let all = names(&["ann", "bob", "cy"]);
        eventually(
            "every node to see every presence",
            Duration::from_secs(10),
            || keys(&a) == all && keys(&b) == all && keys(&c) == all,
        )
        .await;
        // Drain what the joins brought.
        for ch in [&a, &b, &c] {
            shouts(ch, Duration::from_millis(100)).await;
        }
        for i in 0..20 {
            shout(&a, &format!("m{i}")).await;
        }
        let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        for (name, ch) in [("b", &b), ("c", &c), ("a itself", &a)] {
            let got = shouts(ch, Duration::from_millis(700)).await;
            assert_eq!(got, expected, "{name}: every shout once, in order");
        }
    });
    for c in clients {
        smol::block_on(c.close());
    }
    // n1's recording, cluster messages included, replays to the same outbounds.
    nodes[0].signal("TERM");
    assert!(nodes[0].wait_for(Duration::from_secs(15)).is_some());
    let (status, out, err) = common::run(&["replay", &log_arg]);
    assert!(status.success(), "replay failed:\n{out}\n{err}");
    assert!(out.contains(" 0 differ"), "{out}");
}

#[test]
fn a_killed_node_leaves_within_down_after_and_a_stopped_one_at_once() {
    let redis = Redis::start();
    let mut nodes = [
        node(&redis.url(), "n1"),
        node(&redis.url(), "n2"),
        node(&redis.url(), "n3"),
    ];
    let clients: Vec<PhoenixClient> = nodes.iter().map(client).collect();
    smol::block_on(async {
        let a = join(&clients[0], "ann").await;
        let _b = join(&clients[1], "bob").await;
        let _c = join(&clients[2], "cy").await;
        eventually("a to see everyone", Duration::from_secs(10), || {
            keys(&a) == names(&["ann", "bob", "cy"])
        })
        .await;

        // SIGKILL: no goodbye; the others find out from the silence.
        nodes[2].signal("KILL");
        let killed = Instant::now();
        eventually(
            "cy to leave after n3 was killed",
            Duration::from_secs(10),
            || keys(&a) == names(&["ann", "bob"]),
        )
        .await;
        let took = killed.elapsed();
        println!("n3 killed: its presence left n1's clients after {took:?}");
        assert!(
            took >= Duration::from_millis(DOWN_AFTER_MS - HEARTBEAT_MS),
            "left after {took:?}, before n3 could have been called down"
        );
        // down_after_ms plus one heartbeat, and room for a loaded machine to deliver it.
        let bound = Duration::from_millis(DOWN_AFTER_MS + HEARTBEAT_MS + 1_000);
        assert!(took <= bound, "left after {took:?}, bound {bound:?}");

        // SIGTERM: the node says goodbye while it drains, long before down_after_ms.
        nodes[1].signal("TERM");
        let stopped = Instant::now();
        eventually(
            "bob to leave after n2 stopped",
            Duration::from_secs(10),
            || keys(&a) == names(&["ann"]),
        )
        .await;
        let took = stopped.elapsed();
        println!("n2 stopped: its presence left n1's clients after {took:?}");
        assert!(
            took < Duration::from_millis(DOWN_AFTER_MS),
            "a clean stop took {took:?}: as long as a crash"
        );
    });
    assert!(nodes[1].wait_for(Duration::from_secs(15)).is_some());
    let log = nodes[0].stderr();
    assert!(log.contains("is down"), "n1 logged n3 going down:\n{log}");
    assert!(
        log.contains("said goodbye"),
        "n1 logged n2's goodbye:\n{log}"
    );
}

#[test]
fn after_redis_restarts_nothing_is_lost_and_presence_converges() {
    let mut redis = Redis::start();
    let port = redis.port;
    let url = redis.url();
    let nodes = [node(&url, "n1"), node(&url, "n2")];
    let clients: Vec<PhoenixClient> = nodes.iter().map(client).collect();
    let late = client(&nodes[1]);
    smol::block_on(async {
        let a = join(&clients[0], "ann").await;
        let b = join(&clients[1], "bob").await;
        eventually("both nodes to see both", Duration::from_secs(10), || {
            keys(&a) == names(&["ann", "bob"]) && keys(&b) == names(&["ann", "bob"])
        })
        .await;
        shouts(&b, Duration::from_millis(100)).await;

        // Redis goes away for a second and comes back empty (no persistence).
        let _ = redis.child.kill();
        let _ = redis.child.wait();
        smol::Timer::after(Duration::from_secs(1)).await;
        redis = Redis::start_on(port);

        // A user joins n2 while things settle: n1 learns of it through the new Redis.
        let _dee = join(&late, "dee").await;
        let took = eventually(
            "presence to converge after the restart",
            Duration::from_secs(15),
            || {
                let all = names(&["ann", "bob", "dee"]);
                keys(&a) == all && keys(&b) == all
            },
        )
        .await;
        println!("presence converged {took:?} after Redis came back");

        // Subscriptions survived: a broadcast from n1 reaches n2 once the link is back.
        let mut heard = Vec::new();
        let start = Instant::now();
        while heard.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "n2 never heard n1 again"
            );
            shout(&a, "after").await;
            heard = shouts(&b, Duration::from_millis(300)).await;
        }
        assert!(heard.iter().all(|h| h == "after"), "{heard:?}");
    });
    drop(redis);
    for c in clients.into_iter().chain([late]) {
        smol::block_on(c.close());
    }
}

#[test]
fn without_redis_serve_stays_a_single_node_and_a_bad_url_is_a_clear_error() {
    let (status, _out, err) = common::run(&["serve", "--port", "0", "--redis", "http://x"]);
    assert!(!status.success());
    assert!(err.contains("cannot join the cluster"), "{err}");
    let (status, _out, err) = common::run(&["serve", "--port", "0", "--node-id", "n1"]);
    assert!(!status.success(), "--node-id needs --redis");
    assert!(err.contains("--redis"), "{err}");
}

#[test]
fn a_node_on_the_blocking_bus_and_one_on_the_smol_bus_share_a_cluster() {
    use spool_smol::chat::{self, BusKind, ChatOptions, ClusterOptions};
    let redis = Redis::start();
    let start = |id: &str, bus: BusKind| {
        chat::serve(ChatOptions {
            bind: "127.0.0.1:0".into(),
            cluster: Some(ClusterOptions {
                heartbeat_interval_ms: HEARTBEAT_MS,
                down_after_ms: DOWN_AFTER_MS,
                bus,
                ..ClusterOptions::new(&redis.url(), "mixed", id)
            }),
            ..ChatOptions::default()
        })
        .unwrap()
    };
    let threads = start("threads", BusKind::Threads);
    let smol_node = start("smol", BusKind::Smol);
    let connect = |server: &chat::ChatServer| {
        let url = format!("ws://{}/socket", server.local_addr());
        PhoenixClient::connect(&url, PhoenixOptions::default()).unwrap()
    };
    let (c1, c2) = (connect(&threads), connect(&smol_node));
    smol::block_on(async {
        let a = join(&c1, "ann").await;
        let b = join(&c2, "bob").await;
        eventually("both nodes to see both", Duration::from_secs(10), || {
            keys(&a) == names(&["ann", "bob"]) && keys(&b) == names(&["ann", "bob"])
        })
        .await;
        shouts(&a, Duration::from_millis(100)).await;
        shout(&b, "from smol").await;
        assert_eq!(shouts(&a, Duration::from_millis(700)).await, ["from smol"]);
        c1.close().await;
        c2.close().await;
    });
    threads.shutdown();
    smol_node.shutdown();
}
