//! The live views of `spool serve`: a counter and a todo list at `/live-demo`, and at
//! `/dashboard` a live view of the server itself (uptime, connections, channels and their
//! subscribers, presences, messages in and out per second with the last minute as a chart,
//! live sessions), refreshed every second by a [`Ticker`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use spool_core::cassette::{self, Views};
use spool_core::view::demo::{Dashboard, Demo};
use spool_std::Handler;
use spool_std::channels::{ChannelSocket, Hub};
use spool_std::live::{Live, Site, SiteStats, Ticker};

/// Seconds of message rates the dashboard's chart shows.
pub const HISTORY_LEN: usize = 60;
/// How long the dashboard waits for the channel hub's answer before showing no channels.
const HUB_ANSWER: Duration = Duration::from_millis(500);

/// The views `spool serve` offers: `demo` (counter and todos) and `dashboard`.
pub fn views() -> Views {
    let mut views = Views::new();
    views.register("demo", || Box::new(Demo::default()));
    views.register("dashboard", || Box::new(Dashboard::default()));
    views
}

/// The live service of `spool serve`: `/live-demo` and `/dashboard`, sockets at `/live`.
pub fn live(config: cassette::Config) -> Live {
    Live::new(views(), config)
        .route("/live-demo", "demo")
        .route("/dashboard", "dashboard")
}

/// The WebSocket configuration of `spool serve`: the channel socket's, with a ping every 20 s
/// so that a live page nobody touches outlives the 60 s idle timeout.
pub fn ws_config() -> spool_core::ws::Config {
    spool_core::ws::Config {
        ping_interval_ms: Some(20_000),
        ..ChannelSocket::ws_config()
    }
}

/// The running live part of `spool serve`; dropping it stops the dashboard's ticker.
pub struct LiveDemo {
    live: Arc<Live>,
    _ticker: Ticker,
}

impl LiveDemo {
    /// The live service.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

/// Puts the live views beside `other` (the channel socket of `hub`), and starts the ticker that sweeps
/// preflights and refreshes dashboards every second.
///
/// # Errors
/// When the ticker's thread cannot start.
pub fn mount<H: Handler>(
    other: H,
    hub: Arc<Hub>,
    origin: Arc<spool_std::live::OriginRule>,
) -> std::io::Result<(Site<H>, LiveDemo)> {
    let live = Arc::new(live(cassette::Config::default()));
    let socket = spool_std::live::LiveSocket::new(live.clone()).with_origin_rule(origin);
    let site = Site::with_live_socket(other, socket);
    let job = dashboard_job(live.clone(), site.stats(), hub);
    let ticker = Ticker::start("spool-live-tick", Duration::from_secs(1), job)?;
    Ok((
        site,
        LiveDemo {
            live,
            _ticker: ticker,
        },
    ))
}

/// Each second: sweep preflights, gather the server's figures, send them to every dashboard.
fn dashboard_job(live: Arc<Live>, stats: Arc<SiteStats>, hub: Arc<Hub>) -> impl FnMut() + Send {
    let start = Instant::now();
    let mut history: VecDeque<(u64, u64)> = VecDeque::with_capacity(HISTORY_LEN);
    let mut last = (0u64, 0u64);
    move || {
        live.tick();
        let totals = (
            stats.messages_in.load(Ordering::Relaxed),
            stats.messages_out.load(Ordering::Relaxed),
        );
        let rate = (
            totals.0.saturating_sub(last.0),
            totals.1.saturating_sub(last.1),
        );
        last = totals;
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(rate);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        hub.inspect(move |rt| {
            let _ = tx.send(rt.topic_counts());
        });
        let topics = rx.recv_timeout(HUB_ANSWER).unwrap_or_default();
        let (preflights, sessions) = live.counts();
        let message = json!({
            "uptime_s": start.elapsed().as_secs(),
            "connections": stats.connections.load(Ordering::Relaxed),
            "live_sessions": sessions,
            "preflights": preflights,
            "presences": topics.iter().map(|t| t.2).sum::<usize>(),
            "in_per_s": rate.0,
            "out_per_s": rate.1,
            "channels": topics.iter().map(|(topic, subs, pres)| json!({
                "topic": topic, "subscribers": subs, "presences": pres,
            })).collect::<Vec<_>>(),
            "history": history.iter().map(|(i, o)| json!([i, o])).collect::<Vec<_>>(),
        });
        live.info("dashboard", message);
    }
}
