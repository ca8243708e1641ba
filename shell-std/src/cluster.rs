//! Cluster mode's bus for the channel [`Hub`](crate::channels::Hub): one Redis pub/sub channel
//! per cluster, as Phoenix.PubSub's Redis adapter uses.
//!
//! The core decides everything (what to publish, what a message means, when a peer is down);
//! this module only carries bytes. [`RedisBus`] runs two threads: a subscriber that reads the
//! cluster's channel and hands each message to the hub, and a publisher that writes what the
//! hub gives it. Each reconnects on its own with exponential backoff (100 ms doubling to 5 s)
//! when Redis goes away; when the subscriber is back it tells the hub (`ClusterUp`), which
//! publishes this node's state and asks for everyone's, so presence converges again.
//!
//! Bounds: the publisher's queue holds [`PUBLISH_QUEUE_CAPACITY`] messages; past it a message
//! is dropped and logged (a broadcast is lost for the other nodes; presence is repaired by the
//! next state transfer). Incoming messages go through the hub's bounded queue
//! ([`HubFull`](crate::channels::HubFull) drops one, logged, repaired the same way).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spool_core::ws::Text;

/// Messages waiting for the publisher.
pub const PUBLISH_QUEUE_CAPACITY: usize = 4_096;

/// The first wait after a failed connection; it doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long a Redis connection attempt, read or write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A subscriber that hears nothing this long pings Redis to tell a silent server from a dead
/// one.
const IDLE_PING: Duration = Duration::from_secs(2);

/// A fresh replica id for this boot of a node, from the OS: a restarted node is a new replica.
pub fn boot_id() -> u64 {
    let mut b = [0; 8];
    crate::random::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Where the bus hands what it reads: the hub's input.
pub trait Inbox: Send + Sync + 'static {
    /// A message from the bus.
    fn receive(&self, data: Text);
    /// The link came up (first, or after an outage).
    fn link_up(&self);
}

/// A bus the hub publishes on.
pub trait ClusterBus: Send {
    /// What `adapter_label` calls it (`redis`).
    fn name(&self) -> &'static str;
    /// Starts reading into `inbox`.
    fn start(&mut self, inbox: Arc<dyn Inbox>);
    /// Publishes one message, without blocking; a full queue drops it (logged).
    fn publish(&mut self, data: Text);
    /// Publishes what waits, for at most `grace`, and stops.
    fn stop(&mut self, grace: Duration);
}

/// Why a Redis bus could not be made.
#[derive(Debug)]
pub enum BusError {
    /// The URL is not a Redis URL.
    Url(String),
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::Url(e) => write!(f, "not a Redis URL: {e}"),
        }
    }
}

impl std::error::Error for BusError {}

/// What the bus counted, for logs and tests.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Messages published.
    pub published: AtomicU64,
    /// Messages dropped because the publisher's queue was full.
    pub dropped: AtomicU64,
    /// Messages read.
    pub received: AtomicU64,
    /// Times the subscriber connected.
    pub connects: AtomicU64,
}

impl BusStats {
    /// Counts a message the full publish queue refused, with a log line at each power of two
    /// rather than one per message while Redis is away for long.
    pub fn dropped_one(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                "the Redis publisher's queue is full ({PUBLISH_QUEUE_CAPACITY}); cluster messages dropped"
            );
        }
    }
}

/// Waits at most `grace` for a bus thread to finish (joining it if it did); says whether it
/// did. One that does not is left to end with the process.
pub fn join_within(thread: JoinHandle<()>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if thread.is_finished() {
        let _ = thread.join();
        return true;
    }
    tracing::warn!("the Redis publisher did not finish within the grace period");
    false
}

/// The Redis client for `url` and the pub/sub channel of `cluster`, `spool:cluster:<cluster>`:
/// every adapter uses the same, so nodes on different adapters share a cluster.
///
/// # Errors
/// [`BusError::Url`] when the URL is not a Redis URL.
pub fn redis_channel(url: &str, cluster: &str) -> Result<(redis::Client, String), BusError> {
    let client = redis::Client::open(url).map_err(|e| BusError::Url(e.to_string()))?;
    Ok((client, format!("spool:cluster:{cluster}")))
}

/// The cluster's bus over Redis pub/sub, on two threads.
pub struct RedisBus {
    client: redis::Client,
    channel: String,
    stats: Arc<BusStats>,
    stopping: Arc<AtomicBool>,
    queue: Option<SyncSender<Text>>,
    publisher: Option<JoinHandle<()>>,
    subscriber: Option<JoinHandle<()>>,
}

impl RedisBus {
    /// A bus on `url` (`redis://127.0.0.1:6379`) for `cluster`: its channel is
    /// `spool:cluster:<cluster>`. Nothing connects before [`ClusterBus::start`].
    ///
    /// # Errors
    /// [`BusError::Url`] when the URL is not one.
    pub fn new(url: &str, cluster: &str) -> Result<RedisBus, BusError> {
        let (client, channel) = redis_channel(url, cluster)?;
        Ok(RedisBus {
            client,
            channel,
            stats: Arc::default(),
            stopping: Arc::default(),
            queue: None,
            publisher: None,
            subscriber: None,
        })
    }

    /// The counters, shared.
    pub fn stats(&self) -> Arc<BusStats> {
        self.stats.clone()
    }
}

impl ClusterBus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&mut self, inbox: Arc<dyn Inbox>) {
        let (tx, rx) = sync_channel(PUBLISH_QUEUE_CAPACITY);
        self.queue = Some(tx);
        let (client, channel, stats) = (self.client.clone(), self.channel.clone(), &self.stats);
        let stats2 = stats.clone();
        let stopping = self.stopping.clone();
        let stopping2 = stopping.clone();
        self.publisher = std::thread::Builder::new()
            .name("spool-redis-pub".into())
            .spawn(move || publish_loop(&client, &channel, &rx, &stats2, &stopping2))
            .map_err(|e| tracing::error!("cannot start the Redis publisher: {e}"))
            .ok();
        let (client, channel, stats) = (self.client.clone(), self.channel.clone(), stats.clone());
        self.subscriber = std::thread::Builder::new()
            .name("spool-redis-sub".into())
            .spawn(move || subscribe_loop(&client, &channel, &*inbox, &stats, &stopping))
            .map_err(|e| tracing::error!("cannot start the Redis subscriber: {e}"))
            .ok();
    }

    fn publish(&mut self, data: Text) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(data) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.dropped_one(),
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the Redis publisher is gone; a cluster message dropped");
            }
        }
    }

    fn stop(&mut self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        // Closing the queue lets the publisher finish what waits, then return.
        self.queue = None;
        if let Some(t) = self.publisher.take() {
            join_within(t, grace);
        }
        // The subscriber notices `stopping` within its read timeout; nobody waits for it.
        self.subscriber = None;
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        if self.queue.is_some() {
            self.stop(Duration::from_secs(1));
        }
    }
}

/// Connects, retrying with backoff until it works or `give_up` says stop.
fn connect(
    client: &redis::Client,
    what: &str,
    give_up: &dyn Fn() -> bool,
) -> Option<redis::Connection> {
    let mut wait = RECONNECT_INITIAL;
    loop {
        match client.get_connection_with_timeout(IO_TIMEOUT) {
            Ok(con) => {
                let timeouts = con
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| con.set_write_timeout(Some(IO_TIMEOUT)));
                if let Err(e) = timeouts {
                    tracing::warn!("{what}: cannot set timeouts: {e}");
                }
                return Some(con);
            }
            Err(e) => {
                tracing::warn!(
                    "{what}: cannot reach Redis: {e}; again in {} ms",
                    wait.as_millis()
                );
            }
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if give_up() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20).min(wait));
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

fn publish_loop(
    client: &redis::Client,
    channel: &str,
    rx: &Receiver<Text>,
    stats: &BusStats,
    stopping: &AtomicBool,
) {
    let mut con: Option<redis::Connection> = None;
    let stop = || stopping.load(Ordering::Acquire);
    let mut lost_at_stop = 0u64;
    // Ends when the queue is closed (the hub stopped) and drained.
    while let Ok(data) = rx.recv() {
        // A message that failed is sent again on the next connection: a repeat is harmless
        // (receivers drop repeated broadcasts, and presence deltas merge idempotently).
        loop {
            if con.is_none() {
                // Once the hub stops, one attempt per message and no waiting.
                con = connect(client, "cluster publisher", &stop);
                if con.is_none() {
                    lost_at_stop += 1;
                    break;
                }
            }
            let Some(c) = con.as_mut() else { break };
            match redis::cmd("PUBLISH")
                .arg(channel)
                .arg(data.as_bytes().as_ref())
                .query::<i64>(c)
            {
                Ok(_) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    tracing::warn!("cluster publisher: PUBLISH failed: {e}; reconnecting");
                    con = None;
                }
            }
        }
    }
    if lost_at_stop > 0 {
        tracing::warn!(
            messages = lost_at_stop,
            "cluster publisher: Redis unreachable while stopping; messages dropped"
        );
    }
}

fn subscribe_loop(
    client: &redis::Client,
    channel: &str,
    inbox: &dyn Inbox,
    stats: &BusStats,
    stopping: &AtomicBool,
) {
    let stop = || stopping.load(Ordering::Acquire);
    while !stop() {
        let Some(mut con) = connect(client, "cluster subscriber", &stop) else {
            return;
        };
        let mut pubsub = con.as_pubsub();
        if let Err(e) = pubsub.subscribe(channel) {
            tracing::warn!("cluster subscriber: SUBSCRIBE failed: {e}");
            continue;
        }
        if let Err(e) = pubsub.set_read_timeout(Some(IDLE_PING)) {
            tracing::warn!("cluster subscriber: cannot set the read timeout: {e}");
        }
        let n = stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(channel, connects = n, "cluster subscriber: subscribed");
        inbox.link_up();
        while !stop() {
            match pubsub.get_message() {
                Ok(msg) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    match Text::from_utf8(bytes::Bytes::copy_from_slice(msg.get_payload_bytes())) {
                        Ok(text) => inbox.receive(text),
                        Err(_) => tracing::warn!("cluster subscriber: a message not UTF-8 dropped"),
                    }
                }
                // Quiet for a while: make sure Redis is still there.
                Err(e) if e.is_timeout() => {
                    if let Err(e) = pubsub.ping::<redis::Value>() {
                        tracing::warn!("cluster subscriber: Redis does not answer: {e}");
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("cluster subscriber: connection lost: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;

    impl Inbox for Nobody {
        fn receive(&self, _data: Text) {}
        fn link_up(&self) {}
    }

    #[test]
    fn with_redis_away_the_publish_queue_holds_its_bound_and_counts_what_it_drops() {
        // Nothing listens on port 1: the publisher waits, reconnecting, with one message in hand.
        let mut bus = RedisBus::new("redis://127.0.0.1:1", "t").unwrap();
        bus.start(Arc::new(Nobody));
        let offered = PUBLISH_QUEUE_CAPACITY + 1_000;
        for i in 0..offered {
            bus.publish(Text::from(format!("m{i}")));
        }
        let dropped = bus.stats().dropped.load(Ordering::Relaxed) as usize;
        // The queue's bound, plus the one message the publisher may have taken.
        assert!(
            dropped == 1_000 || dropped == 999,
            "{dropped} dropped of {offered}"
        );
        bus.stop(Duration::from_millis(100));
        assert_eq!(bus.stats().published.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused() {
        assert!(matches!(
            RedisBus::new("http://127.0.0.1", "t"),
            Err(BusError::Url(_))
        ));
    }
}
