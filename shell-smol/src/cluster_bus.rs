//! Cluster mode's Redis bus on smol: the same job as `spool_std::cluster::RedisBus` (carry the
//! core's cluster messages over one Redis pub/sub channel per cluster), with the `redis`
//! crate's async client on smol instead of two blocking threads. `spool serve --redis` uses
//! this one.
//!
//! One thread runs a small executor with two tasks: a subscriber that reads the channel into
//! the hub (and says `link_up` each time it subscribes, so presence resynchronises), and a
//! publisher that drains a bounded queue. Each reconnects with exponential backoff
//! (`spool_std::cluster::RECONNECT_INITIAL` doubling to `RECONNECT_MAX`). A subscriber that
//! hears nothing for 2 s pings Redis, so a server that vanished without a word is noticed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_lite::{FutureExt as _, StreamExt as _};
use smol::channel::{Receiver, Sender, TrySendError, bounded};
use spool_core::ws::Text;
use spool_std::cluster::{
    BusError, BusStats, ClusterBus, Inbox, PUBLISH_QUEUE_CAPACITY, RECONNECT_INITIAL,
    RECONNECT_MAX, join_within,
};

/// How long connecting, subscribing or publishing may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence on the subscription after which Redis is pinged.
const IDLE_PING: Duration = Duration::from_secs(2);

/// The cluster's bus over Redis pub/sub, async on smol.
pub struct SmolRedisBus {
    client: redis::Client,
    channel: String,
    stats: Arc<BusStats>,
    queue: Option<Sender<Text>>,
    thread: Option<JoinHandle<()>>,
}

impl SmolRedisBus {
    /// A bus on `url` (`redis://127.0.0.1:6379`) for `cluster`, on the channel
    /// `spool:cluster:<cluster>` (the same as spool-std's, so both kinds of node mix).
    ///
    /// # Errors
    /// [`BusError::Url`] when the URL is not a Redis URL.
    pub fn new(url: &str, cluster: &str) -> Result<SmolRedisBus, BusError> {
        let (client, channel) = spool_std::cluster::redis_channel(url, cluster)?;
        Ok(SmolRedisBus {
            client,
            channel,
            stats: Arc::default(),
            queue: None,
            thread: None,
        })
    }

    /// The counters, shared.
    pub fn stats(&self) -> Arc<BusStats> {
        self.stats.clone()
    }
}

impl ClusterBus for SmolRedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&mut self, inbox: Arc<dyn Inbox>) {
        let (tx, rx) = bounded(PUBLISH_QUEUE_CAPACITY);
        self.queue = Some(tx);
        let (client, channel, stats) = (
            self.client.clone(),
            self.channel.clone(),
            self.stats.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("spool-redis".into())
            .spawn(move || {
                smol::block_on(async {
                    // The publisher ends once the hub closes its queue and it is drained; the
                    // subscriber, which never ends on its own, is dropped with it.
                    let publisher = publish(&client, &channel, rx, &stats);
                    let subscriber = async {
                        subscribe(&client, &channel, &*inbox, &stats).await;
                    };
                    publisher.or(subscriber).await;
                });
            });
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => tracing::error!("cannot start the Redis bus: {e}"),
        }
    }

    fn publish(&mut self, data: Text) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(data) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.dropped_one(),
            Err(TrySendError::Closed(_)) => {
                tracing::error!("the Redis bus is gone; a cluster message dropped");
            }
        }
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(q) = self.queue.take() {
            q.close();
        }
        if let Some(t) = self.thread.take() {
            join_within(t, grace);
        }
    }
}

impl Drop for SmolRedisBus {
    fn drop(&mut self) {
        if self.queue.is_some() {
            self.stop(Duration::from_secs(1));
        }
    }
}

/// `fut`, or `None` after `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    async { Some(fut.await) }
        .or(async {
            smol::Timer::after(limit).await;
            None
        })
        .await
}

/// Waits before the next attempt and doubles the wait, up to the maximum.
async fn back_off(wait: &mut Duration) {
    smol::Timer::after(*wait).await;
    *wait = (*wait * 2).min(RECONNECT_MAX);
}

async fn publish(client: &redis::Client, channel: &str, rx: Receiver<Text>, stats: &BusStats) {
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut wait = RECONNECT_INITIAL;
    while let Ok(data) = rx.recv().await {
        // A message that failed is sent again on the next connection: a repeat is harmless
        // (receivers drop repeated broadcasts; presence deltas merge idempotently). While the
        // hub stops (the queue is closed), a few tries and no more.
        let mut tries = 0;
        loop {
            tries += 1;
            if con.is_none() {
                match within(IO_TIMEOUT, client.get_multiplexed_async_connection()).await {
                    Some(Ok(c)) => {
                        con = Some(c);
                        wait = RECONNECT_INITIAL;
                    }
                    Some(Err(e)) => tracing::warn!("cluster publisher: cannot reach Redis: {e}"),
                    None => tracing::warn!("cluster publisher: connecting to Redis timed out"),
                }
            }
            if let Some(c) = con.as_mut() {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(channel).arg(data.as_bytes().as_ref());
                match within(IO_TIMEOUT, cmd.query_async::<i64>(c)).await {
                    Some(Ok(_)) => {
                        stats.published.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(Err(e)) => tracing::warn!("cluster publisher: PUBLISH failed: {e}"),
                    None => tracing::warn!("cluster publisher: PUBLISH timed out"),
                }
                con = None;
            }
            if rx.is_closed() && tries > 3 {
                tracing::warn!("cluster publisher: a message dropped while stopping");
                break;
            }
            back_off(&mut wait).await;
        }
    }
}

async fn subscribe(client: &redis::Client, channel: &str, inbox: &dyn Inbox, stats: &BusStats) {
    let mut wait = RECONNECT_INITIAL;
    loop {
        let mut pubsub = match within(IO_TIMEOUT, client.get_async_pubsub()).await {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(
                    "cluster subscriber: cannot reach Redis: {e}; again in {} ms",
                    wait.as_millis()
                );
                back_off(&mut wait).await;
                continue;
            }
            None => {
                tracing::warn!("cluster subscriber: connecting to Redis timed out");
                back_off(&mut wait).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(channel).await {
            tracing::warn!("cluster subscriber: SUBSCRIBE failed: {e}");
            back_off(&mut wait).await;
            continue;
        }
        wait = RECONNECT_INITIAL;
        let n = stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(channel, connects = n, "cluster subscriber: subscribed");
        inbox.link_up();
        loop {
            let next = {
                let mut messages = pubsub.on_message();
                within(IDLE_PING, messages.next()).await
            };
            match next {
                Some(Some(msg)) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let bytes = bytes::Bytes::copy_from_slice(msg.get_payload_bytes());
                    match Text::from_utf8(bytes) {
                        Ok(text) => inbox.receive(text),
                        Err(_) => tracing::warn!("cluster subscriber: a message not UTF-8 dropped"),
                    }
                }
                Some(None) => {
                    tracing::warn!("cluster subscriber: connection lost");
                    break;
                }
                // Quiet for a while: make sure Redis is still there.
                None => match within(IO_TIMEOUT, pubsub.ping::<redis::Value>()).await {
                    Some(Ok(_)) => {}
                    _ => {
                        tracing::warn!("cluster subscriber: Redis does not answer");
                        break;
                    }
                },
            }
        }
    }
}
