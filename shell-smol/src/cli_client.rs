//! `spool client URL`: stdin lines out as text messages, what arrives on stdout, reconnecting.
//!
//! Delivery across a connection that dies mid-stream: a line counts as sent once the server
//! answered a ping sent after it (the pong proves the server read every earlier frame). A
//! line whose confirming pong died with the connection is sent again after the reconnect, so:
//!
//! - raw WebSocket mode is at-least-once: such a line can arrive twice (never lost, never
//!   reordered). `--resend-unconfirmed false` makes it at-most-once: a line is forgotten once
//!   written, and what was in flight when the connection died can be lost, never duplicated.
//! - `--phoenix` mode is exactly-once with a receiver that helps: each push carries an
//!   idempotency key, `{"body": line, "client_msg_id": "<run id>-<n>"}` (the run id drawn from
//!   the OS once per process, `n` counting lines from 1), and `spool serve`'s `room:*` channel
//!   drops a repeat of a key it has seen (the last 4,096 a topic; see
//!   `spool_core::channel::demo`). A push counts as sent once its reply came (the server
//!   handled it, not only read it), and what a crashed channel had not answered is sent again
//!   after the rejoin; `--confirm-by pong` counts pongs instead, for a server whose channel
//!   does not reply. Exactly-once over an ambiguous failure cannot be had
//!   without the receiver (Two Generals); Slack's `client_msg_id`, Discord's `nonce` and
//!   Matrix's `txn_id` do the same.

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};
use spool_core::client::{self, Backoff, Proxy, proxy_from_env};
use spool_core::ws::{Message, Url};

use crate::io::random_bytes;
use crate::reconnecting::{self, Handler, Next};

/// What `spool client` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server's URL.
    pub url: String,
    /// Ping this often when nothing arrives.
    pub ping_interval_ms: u64,
    /// The peer is dead when nothing answers a ping this long.
    pub pong_timeout_ms: u64,
    /// The first backoff delay.
    pub backoff_initial_ms: u64,
    /// The largest backoff delay.
    pub backoff_cap_ms: u64,
    /// Connect plus handshake.
    pub connect_timeout_ms: u64,
    /// Lines kept while disconnected.
    pub queue_max: usize,
    /// How long to flush after stdin closes.
    pub grace_ms: u64,
    /// `--proxy`; else the environment.
    pub proxy: Option<String>,
    /// Speak Phoenix channels, joined to this topic.
    pub phoenix_topic: Option<String>,
    /// Write the session's event log here.
    pub record: Option<std::path::PathBuf>,
    /// Keep lines until a pong confirms them and send them again after a reconnect
    /// (at-least-once); false: forget a line once written (at-most-once).
    pub resend_unconfirmed: bool,
    /// With `phoenix_topic`: a push counts as sent once its reply came (true), or once a pong
    /// came after it (false: for a server whose channel does not reply to `shout`).
    pub confirm_by_reply: bool,
}

/// Runs the client until stdin closes and the queue is sent (or the grace period ends).
///
/// # Errors
/// A bad URL, proxy or option.
pub fn run(options: Options) -> Result<(), String> {
    let mut url = Url::parse(&options.url).map_err(|e| format!("{}: {e}", options.url))?;
    if options.phoenix_topic.is_some() && !url.target.contains("vsn=") {
        let sep = if url.target.contains('?') { '&' } else { '?' };
        url.target.push(sep);
        url.target.push_str("vsn=2.0.0");
    }
    let proxy = match &options.proxy {
        Some(p) => Some(Proxy::parse(p)?),
        None => {
            let var = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
            proxy_from_env(
                &url,
                var(["https_proxy", "HTTPS_PROXY"]).as_deref(),
                var(["http_proxy", "HTTP_PROXY"]).as_deref(),
                var(["no_proxy", "NO_PROXY"]).as_deref(),
            )?
        }
    };
    let mut config = client::Config::new(url);
    config.ws.ping_interval_ms = Some(options.ping_interval_ms.max(1));
    config.ws.pong_timeout_ms = Some(options.pong_timeout_ms.max(1));
    config.connect_timeout_ms = options.connect_timeout_ms.max(1);
    config.backoff = Backoff {
        initial_ms: options.backoff_initial_ms.max(1),
        max_ms: options
            .backoff_cap_ms
            .max(options.backoff_initial_ms.max(1)),
        ..Backoff::default()
    };
    config.queue_max = options.queue_max.max(1);
    config.resend_unconfirmed = options.resend_unconfirmed;
    config.proxy = proxy;
    let grace = Duration::from_millis(options.grace_ms);
    let record = options.record.as_deref();
    match options.phoenix_topic {
        Some(topic) => {
            config.hold_until_ready = true;
            config.confirm_by_reply = options.confirm_by_reply;
            let handler = Phoenix::new(topic.clone(), options.confirm_by_reply);
            // The run id: drawn from the OS here, carried into the core inside each message.
            let run = hex(&random_bytes::<8>());
            run_with(config, handler, grace, record, move |line, n| {
                let payload = json!({ "body": line, "client_msg_id": format!("{run}-{n}") });
                Message::text(push(&topic, PUSH_REF_BASE + n, "shout", &payload))
            })
        }
        None => run_with(config, Lines, grace, record, |line, _| Message::text(line)),
    }
}

fn run_with<H: Handler<Info = ()>>(
    config: client::Config,
    handler: H,
    grace: Duration,
    record: Option<&std::path::Path>,
    encode: impl Fn(String, u64) -> Message + Send + 'static,
) -> Result<(), String> {
    let handle =
        reconnecting::connect_recorded(config, handler, record).map_err(|e| e.to_string())?;
    let sender = handle.sender();
    let (eof_tx, eof_rx) = smol::channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        // Lines count from 1.
        let mut n = 0u64;
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = line.trim_end_matches(['\n', '\r']).to_string();
                    n += 1;
                    if sender.send_blocking(encode(text, n)).is_err() {
                        break;
                    }
                }
            }
        }
        sender.finish_blocking(Duration::from_millis(FINISH_LINGER_MS));
        let _ = eof_tx.send_blocking(());
    });
    let heartbeat = handle.sender();
    std::thread::spawn(move || {
        // Phoenix closes a socket that sent no heartbeat for 60 s; other handlers ignore it.
        loop {
            std::thread::sleep(Duration::from_secs(30));
            if !heartbeat.try_info(()) {
                // Busy or stopped: try again next time.
            }
        }
    });
    smol::block_on(async move {
        let waited = async { Some(handle.wait().await) };
        let graced = async {
            let _ = eof_rx.recv().await;
            smol::Timer::after(grace).await;
            None
        };
        match futures_lite::future::or(waited, graced).await {
            Some(_) => {}
            None => eprintln!("spool client: grace period over, exiting with messages unsent"),
        }
    });
    let _ = std::io::stdout().flush();
    Ok(())
}

/// After stdin closed and everything queued was sent, how long answers may still arrive and
/// be printed (a broadcast goes through the server's hub after the push that caused it).
const FINISH_LINGER_MS: u64 = 200;

/// Plain mode: prints every text message (binary ones as lossy UTF-8).
struct Lines;

impl Handler for Lines {
    type Call = ();
    type Reply = ();
    type Info = ();

    fn handle_in(&mut self, frame: Message) -> Next {
        match frame {
            Message::Text(t) => println!("{}", t.as_str()),
            Message::Binary(b) => println!("{}", String::from_utf8_lossy(&b)),
            Message::Ping(_) | Message::Pong(_) => {}
        }
        Next::Ok
    }

    fn handle_disconnect(&mut self, code: u16, reason: &str) -> Next {
        eprintln!("spool client: disconnected ({code} {reason:?})");
        Next::Ok
    }

    fn handle_failure(&mut self, error: &client::Error) {
        eprintln!("spool client: {error}");
    }

    fn handle_dropped(&mut self, dropped: u64) {
        eprintln!("spool client: queue full, dropped={dropped}");
    }
}

/// Push refs count from here, clear of the join's.
const PUSH_REF_BASE: u64 = 1_000;

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Phoenix V2 push frame.
fn push(topic: &str, reference: u64, event: &str, payload: &Value) -> String {
    json!([JOIN_REF, reference.to_string(), topic, event, payload]).to_string()
}

/// Every join of this process uses one join_ref: each connection is a new socket, so the
/// server never sees it twice, and pushes queued under it stay valid across reconnects.
const JOIN_REF: &str = "1";

/// `--phoenix --join TOPIC`: joins on every connect, releases the queue once joined, prints
/// broadcasts (the `body` of a payload that has one, else the event and payload).
struct Phoenix {
    topic: String,
    heartbeat_ref: u64,
    /// Replies confirm pushes (`client::Config::confirm_by_reply`).
    by_reply: bool,
}

impl Phoenix {
    fn new(topic: String, by_reply: bool) -> Phoenix {
        Phoenix {
            topic,
            heartbeat_ref: 0,
            by_reply,
        }
    }
}

impl Handler for Phoenix {
    type Call = ();
    type Reply = ();
    type Info = ();

    fn handle_connect(&mut self, _headers: &[(String, String)]) -> Next {
        let join = json!([JOIN_REF, JOIN_REF, self.topic, "phx_join", {}]).to_string();
        Next::Reply(vec![Message::text(join)])
    }

    fn handle_in(&mut self, frame: Message) -> Next {
        let Some(text) = frame.as_text() else {
            return Next::Ok;
        };
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(text) else {
            return Next::Ok;
        };
        let [join_ref, reference, topic, event, payload] = &parts[..] else {
            return Next::Ok;
        };
        match event.as_str() {
            Some("phx_reply") if reference.as_str() == Some(JOIN_REF) => {
                if payload["status"] == "ok" {
                    return Next::Ready;
                }
                eprintln!("spool client: join refused: {}", payload["response"]);
            }
            Some("phx_reply") => {
                if payload["status"] != "ok" {
                    eprintln!("spool client: push refused: {}", payload["response"]);
                }
                // A reply under our join answers the oldest push not yet answered: a channel
                // handles its pushes in order. One without it (an unmatched topic, after a
                // crash) answers nothing: that push is sent again after the rejoin.
                let push = reference
                    .as_str()
                    .and_then(|r| r.parse::<u64>().ok())
                    .is_some_and(|r| r > PUSH_REF_BASE);
                if self.by_reply && push && join_ref.as_str() == Some(JOIN_REF) {
                    return Next::Confirmed(1);
                }
            }
            Some("phx_error") if topic.as_str() == Some(&self.topic) => {
                // The channel crashed: join again on this connection (phoenix.js rejoins),
                // and send again, after the join, what it had not answered.
                let join = json!([JOIN_REF, JOIN_REF, self.topic, "phx_join", {}]).to_string();
                return Next::Rewind(vec![Message::text(join)]);
            }
            Some(event) if !event.starts_with("phx_") && !event.starts_with("presence_") => {
                match payload.get("body").and_then(Value::as_str) {
                    Some(body) => println!("{body}"),
                    None => println!("{event} {payload}"),
                }
            }
            _ => {}
        }
        Next::Ok
    }

    fn handle_info(&mut self, _info: ()) -> Next {
        self.heartbeat_ref += 1;
        let reference = format!("hb{}", self.heartbeat_ref);
        let beat = json!([null, reference, "phoenix", "heartbeat", {}]).to_string();
        Next::Reply(vec![Message::text(beat)])
    }

    fn handle_disconnect(&mut self, code: u16, reason: &str) -> Next {
        eprintln!("spool client: disconnected ({code} {reason:?})");
        Next::Ok
    }

    fn handle_failure(&mut self, error: &client::Error) {
        eprintln!("spool client: {error}");
    }

    fn handle_dropped(&mut self, dropped: u64) {
        eprintln!("spool client: queue full, dropped={dropped}");
    }
}
