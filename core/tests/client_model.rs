//! The client session against generated runs (quickcheck): the backoff stays within its bounds
//! and grows as configured, for any seed; and whatever faults cut its connections, every
//! message accepted reaches the server once, in order, and `dropped` counts exactly the rest.
//!
//! The server is spool's own WebSocket machine, the two joined by in-memory queues.

use bytes::Bytes;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use spool_core::client::{self, Backoff, Client, Outbound};
use spool_core::rand::Rng;
use spool_core::ws::{self, Message, Url};

#[test]
fn backoff_stays_within_bounds_and_grows_as_configured() {
    fn prop(seed: u64, initial: u16, cap: u16, factor: u8, jitter: u8) -> TestResult {
        let backoff = Backoff {
            initial_ms: u64::from(initial % 1_000) + 1,
            max_ms: u64::from(initial % 1_000) + 1 + u64::from(cap),
            factor: u32::from(factor % 5) + 1,
            jitter_percent: jitter % 101,
            max_attempts: None,
        };
        if backoff.validate().is_err() {
            return TestResult::failed();
        }
        let mut rng = Rng::new(seed);
        let mut expected = backoff.initial_ms;
        for failures in 1..40 {
            let base = backoff.base_ms(failures);
            if base != expected {
                return TestResult::error(format!("base {failures}: {base} != {expected}"));
            }
            let delay = backoff.delay_ms(failures, &mut rng);
            let floor = (base - base * u64::from(backoff.jitter_percent) / 100).max(1);
            if delay < floor || delay > base || delay > backoff.max_ms {
                return TestResult::error(format!("delay {delay} outside [{floor}, {base}]"));
            }
            expected = (expected * u64::from(backoff.factor)).min(backoff.max_ms);
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(u64, u16, u16, u8, u8) -> TestResult);
}

/// One step of a generated run.
#[derive(Clone, Debug)]
enum Op {
    /// The application sends the next message.
    Send,
    /// The wire carries everything in flight, both ways, until quiet.
    Deliver,
    /// The connection is reset after everything in flight was delivered.
    ResetQuiet,
    /// The connection dies and what was in flight is lost (a blackhole, then a reset).
    Blackhole,
    /// The server refuses the next connection attempts.
    Refuse(u8),
    /// Time passes to the client's next deadline.
    Tick,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 12 {
            0..=4 => Op::Send,
            5..=7 => Op::Deliver,
            8 => Op::ResetQuiet,
            9 => Op::Blackhole,
            10 => Op::Refuse(u8::arbitrary(g) % 4),
            _ => Op::Tick,
        }
    }
}

/// A client, a server machine for its current connection, and the wire between them.
struct Pair {
    client: Client,
    server: Option<ws::Connection>,
    now_ms: u64,
    to_server: Vec<Bytes>,
    to_client: Vec<Bytes>,
    received: Vec<String>,
    refuse: u8,
    dropped_reported: u64,
    attempts: u64,
}

impl Pair {
    fn new(queue_max: usize) -> Pair {
        let mut config = client::Config::new(Url::parse("ws://server.test/").unwrap());
        config.queue_max = queue_max;
        config.jitter_seed = 7;
        config.ws.ping_interval_ms = Some(1_000);
        config.ws.pong_timeout_ms = Some(1_000);
        let mut pair = Pair {
            client: Client::new(config).unwrap(),
            server: None,
            now_ms: 0,
            to_server: Vec::new(),
            to_client: Vec::new(),
            received: Vec::new(),
            refuse: 0,
            dropped_reported: 0,
            attempts: 0,
        };
        pair.client_event(client::Event::Start { now_ms: 0 });
        pair
    }

    fn client_event(&mut self, event: client::Event) {
        let out = self.client.handle(event);
        for o in out {
            match o {
                Outbound::Connect { .. } => {
                    self.attempts += 1;
                    self.server = None;
                    self.to_server.clear();
                    self.to_client.clear();
                    if self.refuse > 0 {
                        self.refuse -= 1;
                        let now_ms = self.now_ms;
                        self.client_event(client::Event::ConnectFailed {
                            now_ms,
                            reason: "refused".into(),
                        });
                        return;
                    }
                    let mut server = ws::Connection::server(ws::Config::default()).unwrap();
                    server.handle(ws::Event::Open {
                        now_ms: self.now_ms,
                    });
                    self.server = Some(server);
                    let now_ms = self.now_ms;
                    self.client_event(client::Event::Connected {
                        now_ms,
                        key: [3; 16],
                        mask_seed: self.attempts,
                    });
                    return;
                }
                Outbound::Transmit(t) => {
                    let mut bytes = t.head().to_vec();
                    bytes.extend_from_slice(t.body());
                    self.to_server.push(bytes.into());
                }
                Outbound::Disconnect => {
                    self.server = None;
                    self.to_server.clear();
                    self.to_client.clear();
                }
                Outbound::Dropped { dropped } => {
                    assert_eq!(dropped, self.dropped_reported + 1, "a running total");
                    self.dropped_reported = dropped;
                }
                _ => {}
            }
        }
    }

    /// Carries everything in flight both ways until nothing moves.
    fn deliver(&mut self) {
        for _ in 0..100 {
            if self.to_server.is_empty() && self.to_client.is_empty() {
                return;
            }
            let now_ms = self.now_ms;
            for bytes in std::mem::take(&mut self.to_server) {
                let Some(server) = self.server.as_mut() else {
                    break;
                };
                let mut out = server.handle(ws::Event::Receive { now_ms, bytes });
                if out.iter().any(|o| matches!(o, ws::Outbound::Upgrade(_))) {
                    out.extend(server.handle(ws::Event::Accept { now_ms }));
                }
                for o in out {
                    match o {
                        ws::Outbound::Transmit(t) => {
                            let mut b = t.head().to_vec();
                            b.extend_from_slice(t.body());
                            self.to_client.push(b.into());
                        }
                        ws::Outbound::Deliver(Message::Text(t)) => {
                            self.received.push(t.as_str().to_string());
                        }
                        _ => {}
                    }
                }
            }
            for bytes in std::mem::take(&mut self.to_client) {
                self.client_event(client::Event::Receive { now_ms, bytes });
            }
        }
        panic!("the wire never went quiet");
    }

    fn cut(&mut self) {
        self.server = None;
        self.to_server.clear();
        self.to_client.clear();
        let now_ms = self.now_ms;
        self.client_event(client::Event::TransportClosed { now_ms });
    }

    fn tick(&mut self) {
        if let Some(at) = self.client.next_deadline() {
            self.now_ms = self.now_ms.max(at);
            let now_ms = self.now_ms;
            self.client_event(client::Event::Tick { now_ms });
        }
    }
}

#[test]
fn nothing_accepted_is_lost_duplicated_or_reordered_and_dropped_is_exact() {
    fn prop(ops: Vec<Op>, queue_max: u8) -> TestResult {
        let queue_max = usize::from(queue_max % 8) + 1;
        let mut pair = Pair::new(queue_max);
        let mut accepted = Vec::new();
        let mut sent = 0u64;
        for op in ops {
            match op {
                Op::Send => {
                    let line = format!("m{sent}");
                    sent += 1;
                    let before = pair.client.dropped();
                    let now_ms = pair.now_ms;
                    pair.client_event(client::Event::Send {
                        now_ms,
                        message: Message::text(line.clone()),
                    });
                    if pair.client.dropped() == before {
                        accepted.push(line);
                    }
                }
                Op::Deliver => pair.deliver(),
                Op::ResetQuiet => {
                    pair.deliver();
                    pair.cut();
                }
                Op::Blackhole => pair.cut(),
                Op::Refuse(n) => pair.refuse = n,
                Op::Tick => pair.tick(),
            }
        }
        // Let it settle: reconnect and drain.
        pair.refuse = 0;
        for _ in 0..50 {
            pair.deliver();
            if pair.client.is_open() && pair.client.queued() == 0 {
                break;
            }
            pair.tick();
        }
        if pair.client.queued() != 0 {
            return TestResult::error(format!("{} still queued", pair.client.queued()));
        }
        if pair.received != accepted {
            return TestResult::error(format!(
                "received {:?}, accepted {:?}",
                pair.received, accepted
            ));
        }
        if pair.client.dropped() + accepted.len() as u64 != sent
            || pair.dropped_reported != pair.client.dropped()
        {
            return TestResult::error(format!(
                "sent {sent}, accepted {}, dropped {}",
                accepted.len(),
                pair.client.dropped()
            ));
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Op>, u8) -> TestResult);
}
