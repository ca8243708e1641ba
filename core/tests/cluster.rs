//! Cluster mode in the core: several channel runtimes joined by a simulated bus that the tests
//! control (what each node receives, in what order, twice or not at all), and time as data.
//!
//! The scenarios check what the cluster promises (broadcasts everywhere once, presence on every
//! node, down after `down_after_ms`, goodbye at once, a restarted node is a new replica); the
//! quickcheck property checks that nodes fed the same changes in any order, with repeats and
//! losses, converge once heartbeats and state transfers have run, and that the diffs each node
//! sent its clients add up to what it holds.

use std::collections::{BTreeMap, BTreeSet};

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use serde_json::Value;
use spool_core::channel::{ClientId, Config, Event, Frame, Outbound, Runtime, demo};
use spool_core::cluster::Options;
use spool_core::ws::Text;

const TOPIC: &str = "room:x";
/// The socket on each node that watches the topic, as phoenix.js would.
const OBSERVER: ClientId = ClientId(1);

/// One node, and what its observer saw.
struct Node {
    rt: Runtime,
    /// Published and not yet carried by the bus.
    published: Vec<Text>,
    /// The observer's presence view, built from `presence_state` and `presence_diff`s:
    /// key -> phx_refs.
    view: BTreeMap<String, BTreeSet<String>>,
    /// Broadcast payloads the observer got, in order.
    broadcasts: Vec<String>,
    /// Broadcast outbounds (frames encoded), for "encoded once per node".
    broadcast_frames: usize,
    notices: Vec<String>,
}

fn options(node: &str, boot: u64) -> Options {
    Options::new("test", node, boot).transport("memory")
}

impl Node {
    fn new(node: &str, boot: u64, now_ms: u64) -> Node {
        Node::with(options(node, boot), now_ms)
    }

    fn with(options: Options, now_ms: u64) -> Node {
        let config = Config::with_seed(9);
        let rt = Runtime::new_cluster_ready(options, demo::router(), config).unwrap();
        let mut n = Node {
            rt,
            published: Vec::new(),
            view: BTreeMap::new(),
            broadcasts: Vec::new(),
            broadcast_frames: 0,
            notices: Vec::new(),
        };
        n.handle(Event::ClusterUp { now_ms });
        n.join(now_ms, OBSERVER, None);
        n
    }

    fn handle(&mut self, event: Event) {
        for out in self.rt.handle(event) {
            match out {
                Outbound::ClusterPublish { data } => self.published.push(data),
                Outbound::PresenceDiff {
                    recipients, diff, ..
                } if recipients.contains(&OBSERVER) => {
                    for e in diff.joins {
                        let refs = self.view.entry(e.key).or_default();
                        refs.extend(e.metas.into_iter().map(|m| m.phx_ref));
                    }
                    for e in diff.leaves {
                        if let Some(refs) = self.view.get_mut(&e.key) {
                            for m in e.metas {
                                refs.remove(&m.phx_ref);
                            }
                            if refs.is_empty() {
                                self.view.remove(&e.key);
                            }
                        }
                    }
                }
                Outbound::PushMessage {
                    client_id,
                    event,
                    payload,
                    ..
                } if client_id == OBSERVER && event == "presence_state" => {
                    let state = payload.to_value().unwrap_or(Value::Null);
                    self.view.clear();
                    for (key, p) in state.as_object().into_iter().flatten() {
                        let refs = p["metas"].as_array().into_iter().flatten();
                        let refs = refs.map(|m| m["phx_ref"].as_str().unwrap_or("").to_string());
                        self.view.insert(key.clone(), refs.collect());
                    }
                }
                Outbound::BroadcastMessage {
                    recipients, frame, ..
                } => {
                    self.broadcast_frames += 1;
                    if recipients.contains(&OBSERVER) {
                        let Frame::Text(t) = frame else {
                            panic!("a text frame")
                        };
                        self.broadcasts.push(t.to_string());
                    }
                }
                Outbound::System { label } => self.notices.push(label),
                _ => {}
            }
        }
    }

    fn join(&mut self, now_ms: u64, client: ClientId, user: Option<&str>) {
        let params = match user {
            Some(u) => format!("{{\"user\":\"{u}\"}}"),
            None => "{}".into(),
        };
        let text = format!("[\"1\",\"1\",\"{TOPIC}\",\"phx_join\",{params}]");
        self.handle(Event::Receive {
            now_ms,
            client_id: client,
            frame: Frame::Text(text.into()),
        });
    }

    fn shout(&mut self, now_ms: u64, client: ClientId, body: &str) {
        let text = format!("[\"1\",\"2\",\"{TOPIC}\",\"shout\",{{\"body\":\"{body}\"}}]");
        self.handle(Event::Receive {
            now_ms,
            client_id: client,
            frame: Frame::Text(text.into()),
        });
    }

    fn leave(&mut self, now_ms: u64, client: ClientId) {
        self.handle(Event::Disconnect {
            now_ms,
            client_id: client,
        });
    }

    fn tick(&mut self, now_ms: u64) {
        self.handle(Event::Tick { now_ms });
    }

    /// The node's presences: key -> phx_refs.
    fn presences(&self) -> BTreeMap<String, BTreeSet<String>> {
        (self.rt.presences(TOPIC).into_iter())
            .map(|e| (e.key, e.metas.into_iter().map(|m| m.phx_ref).collect()))
            .collect()
    }

    fn keys(&self) -> BTreeSet<String> {
        self.presences().into_keys().collect()
    }
}

/// Carries every published message to every other node, in publish order, until quiet;
/// `cut` nodes neither send nor receive.
fn settle(nodes: &mut [Node], now_ms: u64, cut: &[usize]) {
    for _ in 0..10 {
        let mut any = false;
        for from in 0..nodes.len() {
            let out = std::mem::take(&mut nodes[from].published);
            if cut.contains(&from) {
                continue;
            }
            for data in out {
                any = true;
                for (to, node) in nodes.iter_mut().enumerate() {
                    if to != from && !cut.contains(&to) {
                        node.handle(Event::ClusterReceive {
                            now_ms,
                            data: data.clone(),
                        });
                    }
                }
            }
        }
        if !any {
            return;
        }
    }
    panic!("the bus never went quiet");
}

fn keys(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn presences_and_broadcasts_reach_every_node_once_encoded_once_per_node() {
    let mut nodes = vec![
        Node::new("a", 1, 0),
        Node::new("b", 2, 0),
        Node::new("c", 3, 0),
    ];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(10, ClientId(100), Some("ann"));
    nodes[1].join(10, ClientId(100), Some("bob"));
    settle(&mut nodes, 10, &[]);
    for n in &nodes {
        assert_eq!(n.keys(), keys(&["ann", "bob"]));
        assert_eq!(n.view, n.presences(), "the observer's diffs add up");
    }
    // Every phx_ref is unique across the cluster.
    let refs: Vec<String> = nodes[2].presences().into_values().flatten().collect();
    assert_eq!(refs.len(), 2);
    assert_ne!(refs[0], refs[1]);

    for n in &mut nodes {
        n.broadcast_frames = 0;
    }
    for i in 0..5 {
        nodes[0].shout(20, ClientId(100), &format!("m{i}"));
    }
    settle(&mut nodes, 20, &[]);
    for n in &nodes {
        let expected: Vec<String> = (0..5)
            .map(|i| format!("[null,null,\"{TOPIC}\",\"shout\",{{\"body\":\"m{i}\"}}]"))
            .collect();
        assert_eq!(n.broadcasts, expected, "once each, in publish order");
        assert_eq!(
            n.broadcast_frames, 5,
            "one encoded frame per broadcast per node"
        );
    }
}

#[test]
fn a_repeated_or_overtaken_broadcast_is_dropped() {
    let mut nodes = vec![Node::new("a", 1, 0), Node::new("b", 2, 0)];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(1, ClientId(100), None);
    nodes[0].shout(2, ClientId(100), "one");
    nodes[0].shout(2, ClientId(100), "two");
    let out = std::mem::take(&mut nodes[0].published);
    let (one, two) = (out[0].clone(), out[1].clone());
    for data in [two.clone(), one, two] {
        nodes[1].handle(Event::ClusterReceive { now_ms: 3, data });
    }
    assert_eq!(nodes[1].broadcasts.len(), 1, "{:?}", nodes[1].broadcasts);
    assert!(nodes[1].broadcasts[0].contains("two"));
}

#[test]
fn a_silent_node_is_down_after_down_after_ms_and_back_when_heard_again() {
    let down_after = Options::new("t", "x", 0).down_after_ms;
    let mut nodes = vec![Node::new("a", 1, 0), Node::new("b", 2, 0)];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(0, ClientId(100), Some("ann"));
    settle(&mut nodes, 0, &[]);
    assert_eq!(nodes[1].keys(), keys(&["ann"]));
    // a's messages stop reaching b: b keeps ticking on its own.
    let mut now = 0;
    while now + 1_000 < down_after {
        now += 1_000;
        nodes[1].tick(now);
        settle(&mut nodes, now, &[0]);
    }
    assert_eq!(
        nodes[1].keys(),
        keys(&["ann"]),
        "not down before down_after_ms"
    );
    assert!(nodes[1].rt.next_deadline() <= Some(down_after));
    nodes[1].tick(down_after);
    assert_eq!(nodes[1].keys(), keys(&[]), "down at down_after_ms");
    assert_eq!(nodes[1].view, nodes[1].presences());
    assert!(nodes[1].notices.iter().any(|n| n.contains("a#1 is down")));
    // a is heard again: its presences come back.
    nodes[0].tick(down_after + 10);
    settle(&mut nodes, down_after + 10, &[]);
    assert_eq!(nodes[1].keys(), keys(&["ann"]));
    assert_eq!(nodes[1].view, nodes[1].presences());
}

#[test]
fn a_node_forgotten_after_permdown_and_one_saying_goodbye_at_once() {
    let o = Options::new("t", "x", 0);
    let mut nodes = vec![
        Node::new("a", 1, 0),
        Node::new("b", 2, 0),
        Node::new("c", 3, 0),
    ];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(0, ClientId(100), Some("ann"));
    nodes[2].join(0, ClientId(100), Some("cy"));
    settle(&mut nodes, 0, &[]);
    assert_eq!(nodes[1].rt.cluster_replicas(), Some((2, 2)));
    nodes[2].handle(Event::Shutdown { now_ms: 5 });
    settle(&mut nodes, 5, &[]);
    assert_eq!(nodes[1].keys(), keys(&["ann"]), "c's presence left at once");
    assert_eq!(nodes[1].rt.cluster_replicas(), Some((1, 1)));
    nodes[1].tick(o.down_after_ms);
    assert_eq!(nodes[1].rt.cluster_replicas(), Some((1, 0)), "a is down");
    nodes[1].tick(o.permdown_after_ms);
    assert_eq!(
        nodes[1].rt.cluster_replicas(),
        Some((0, 0)),
        "a is forgotten"
    );
}

#[test]
fn a_restarted_node_is_a_new_replica_and_replaces_the_old_one() {
    let mut nodes = vec![Node::new("a", 1, 0), Node::new("b", 2, 0)];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(0, ClientId(100), Some("ann"));
    settle(&mut nodes, 0, &[]);
    // a dies without a word and comes back as a new boot, with a new user.
    nodes[0] = Node::new("a", 11, 100);
    nodes[0].join(100, ClientId(100), Some("amy"));
    settle(&mut nodes, 100, &[]);
    assert_eq!(nodes[1].keys(), keys(&["amy"]));
    assert_eq!(nodes[1].view, nodes[1].presences());
    assert_eq!(nodes[1].rt.cluster_replicas(), Some((1, 1)));
    assert_eq!(
        nodes[0].keys(),
        keys(&["amy"]),
        "ann left with the old boot"
    );
}

#[test]
fn a_lost_delta_is_found_by_the_next_heartbeat_and_repaired_by_a_state_transfer() {
    let mut nodes = vec![Node::new("a", 1, 0), Node::new("b", 2, 0)];
    settle(&mut nodes, 0, &[]);
    nodes[0].join(0, ClientId(100), Some("ann"));
    nodes[0].published.clear(); // the delta is lost on the way
    assert_eq!(nodes[1].keys(), keys(&[]));
    let interval = Options::new("t", "x", 0).heartbeat_interval_ms;
    nodes[0].tick(interval);
    nodes[1].tick(interval);
    settle(&mut nodes, interval, &[]);
    assert_eq!(nodes[1].keys(), keys(&["ann"]));
    assert_eq!(nodes[1].view, nodes[1].presences());
}

#[test]
fn presences_kept_of_another_replica_are_bounded() {
    let small = Options {
        max_presences_per_replica: 2,
        ..options("b", 2)
    };
    let mut nodes = vec![Node::new("a", 1, 0), Node::with(small, 0)];
    settle(&mut nodes, 0, &[]);
    for u in 0..3 {
        nodes[0].join(1, ClientId(100 + u), Some(&format!("u{u}")));
    }
    settle(&mut nodes, 1, &[]);
    assert_eq!(nodes[0].keys().len(), 3);
    assert_eq!(nodes[1].keys(), keys(&["u0", "u1"]));
    assert!(
        nodes[1]
            .notices
            .iter()
            .any(|n| n.contains("2 kept already"))
    );
    assert_eq!(nodes[1].view, nodes[1].presences());
    // One leaves: room for the next change.
    nodes[0].leave(2, ClientId(100));
    nodes[0].join(2, ClientId(200), Some("u9"));
    settle(&mut nodes, 2, &[]);
    assert_eq!(nodes[1].keys(), keys(&["u1", "u9"]));
}

#[test]
fn replicas_past_the_limit_are_dropped_with_a_notice() {
    let small = Options {
        max_replicas: 1,
        ..options("a", 1)
    };
    let mut nodes = vec![
        Node::with(small, 0),
        Node::new("b", 2, 0),
        Node::new("c", 3, 0),
    ];
    settle(&mut nodes, 0, &[]);
    assert_eq!(nodes[0].rt.cluster_replicas(), Some((1, 1)));
    assert!(
        nodes[0]
            .notices
            .iter()
            .any(|n| n.contains("replicas known already"))
    );
}

#[test]
fn a_single_node_ignores_cluster_events_and_publishes_nothing() {
    let mut rt = Runtime::new_single_node(demo::router(), Config::with_seed(1));
    let out = rt.handle(Event::ClusterReceive {
        now_ms: 0,
        data: "{}".into(),
    });
    assert!(matches!(&out[..], [Outbound::System { .. }]));
    assert!(rt.handle(Event::ClusterUp { now_ms: 0 }).is_empty());
    assert!(rt.handle(Event::Shutdown { now_ms: 0 }).is_empty());
    assert_eq!(rt.next_deadline(), None);
}

#[test]
fn junk_on_the_bus_is_a_notice_not_a_crash() {
    let mut node = Node::new("a", 1, 0);
    for junk in [
        "",
        "{",
        "[1,2]",
        "{\"v\":1}",
        "{\"v\":9,\"from\":{\"node\":\"b\",\"boot\":1},\"seq\":1,\"body\":{\"goodbye\":{}}}",
    ] {
        node.handle(Event::ClusterReceive {
            now_ms: 0,
            data: junk.into(),
        });
    }
    assert_eq!(
        node.notices
            .iter()
            .filter(|n| n.contains("dropped"))
            .count(),
        5
    );
}

// ---- convergence, generated ----

/// What happens, generated.
#[derive(Clone, Debug)]
enum Step {
    /// A user joins on a node.
    Join { node: u8, user: u8 },
    /// A user's socket on a node goes away.
    Leave { node: u8, user: u8 },
    /// The bus carries what waits, each copy to each node: dropped, repeated or shuffled.
    Scramble { seed: u64 },
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Step {
        let node = u8::arbitrary(g) % 3;
        let user = u8::arbitrary(g) % 6;
        match u8::arbitrary(g) % 5 {
            0 | 1 => Step::Join { node, user },
            2 => Step::Leave { node, user },
            _ => Step::Scramble {
                seed: u64::arbitrary(g),
            },
        }
    }
}

/// A tiny deterministic generator for the scrambling (xorshift).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

fn scramble(nodes: &mut [Node], now_ms: u64, seed: u64) -> (usize, usize) {
    let mut dice = Dice(seed | 1);
    let (mut lost, mut repeated) = (0, 0);
    let mut inboxes: Vec<Vec<Text>> = vec![Vec::new(); nodes.len()];
    for (from, node) in nodes.iter_mut().enumerate() {
        for data in std::mem::take(&mut node.published) {
            for (to, inbox) in inboxes.iter_mut().enumerate() {
                if to == from {
                    continue;
                }
                match dice.roll(5) {
                    0 => lost += 1,
                    1 => {
                        repeated += 1;
                        inbox.push(data.clone());
                        inbox.push(data.clone());
                    }
                    _ => inbox.push(data.clone()),
                }
            }
        }
    }
    for (to, mut inbox) in inboxes.into_iter().enumerate() {
        // Any order: a shuffle.
        for i in (1..inbox.len()).rev() {
            inbox.swap(i, dice.roll(i as u64 + 1) as usize);
        }
        for data in inbox {
            nodes[to].handle(Event::ClusterReceive { now_ms, data });
        }
    }
    (lost, repeated)
}

fn converges(steps: Vec<Step>) -> TestResult {
    let mut nodes = vec![
        Node::new("a", 1, 0),
        Node::new("b", 2, 0),
        Node::new("c", 3, 0),
    ];
    // Who is joined where, as the test sees it: (node, user) -> their socket.
    let mut joined: BTreeMap<(u8, u8), ClientId> = BTreeMap::new();
    let mut next_client = 100;
    let now = 10;
    for step in steps {
        match step {
            Step::Join { node, user } => {
                if joined.contains_key(&(node, user)) {
                    continue;
                }
                next_client += 1;
                let key = format!("n{node}u{user}");
                nodes[node as usize].join(now, ClientId(next_client), Some(&key));
                joined.insert((node, user), ClientId(next_client));
            }
            Step::Leave { node, user } => {
                if let Some(c) = joined.remove(&(node, user)) {
                    nodes[node as usize].leave(now, c);
                }
            }
            Step::Scramble { seed } => {
                scramble(&mut nodes, now, seed);
            }
        }
    }
    scramble(&mut nodes, now, 7);
    // Repair: heartbeats a few intervals apart, carried faithfully.
    let interval = Options::new("t", "x", 0).heartbeat_interval_ms;
    let mut t = now;
    for _ in 0..4 {
        t += interval;
        for n in nodes.iter_mut() {
            n.tick(t);
        }
        settle(&mut nodes, t, &[]);
    }
    let expected: BTreeSet<String> = (joined.keys())
        .map(|(node, user)| format!("n{node}u{user}"))
        .collect();
    let first = nodes[0].presences();
    for (i, n) in nodes.iter().enumerate() {
        if n.keys() != expected {
            return TestResult::error(format!(
                "node {i} holds {:?}, expected {expected:?}",
                n.keys()
            ));
        }
        if n.presences() != first {
            return TestResult::error(format!("node {i} differs from node 0 in its metas"));
        }
        if n.view != n.presences() {
            return TestResult::error(format!(
                "node {i}: the diffs it sent add up to {:?}, it holds {:?}",
                n.view,
                n.presences()
            ));
        }
    }
    TestResult::passed()
}

#[test]
fn replicas_fed_changes_in_any_order_with_repeats_and_losses_converge() {
    QuickCheck::new()
        .tests(300)
        .quickcheck(converges as fn(Vec<Step>) -> TestResult);
}

#[test]
fn the_scrambler_does_lose_and_repeat() {
    // Without this the property above could pass on a bus that never misbehaves.
    let mut nodes = vec![
        Node::new("a", 1, 0),
        Node::new("b", 2, 0),
        Node::new("c", 3, 0),
    ];
    for u in 0..20 {
        nodes[0].join(1, ClientId(100 + u), Some(&format!("u{u}")));
    }
    let (lost, repeated) = scramble(&mut nodes, 1, 99);
    assert!(lost > 0 && repeated > 0, "lost {lost}, repeated {repeated}");
    assert_ne!(nodes[1].keys().len(), 20, "a loss shows before the repair");
}
