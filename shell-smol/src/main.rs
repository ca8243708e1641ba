//! The `spool` binary: the channel server with its demo chat (`serve`), an echo server on
//! either shell, the client side of the Autobahn conformance suite, and the replayer of the
//! event logs both servers record.
//!
//! The servers stop on SIGTERM or SIGINT: they stop accepting, close every connection with
//! 1001, let recordings finish, and exit 0. Logs go to stderr through `tracing`, filtered by
//! `RUST_LOG` (default `info`).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use spool_core::ws::CloseInfo;
use spool_smol::chat::AllowedOrigin;
use spool_smol::{Client, ClientError, Conn, Handler, Incoming, Next, ws};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "spool", version, about = "spool: a realtime toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebSocket echo server: every text and binary message comes back.
    Echo(EchoArgs),
    /// Run the client side of the Autobahn suite against a fuzzing server.
    EchoClient(EchoClientArgs),
    /// Connect to a WebSocket server and stay connected: each stdin line is sent as one text
    /// message, in order, queued while disconnected; what arrives is printed on stdout. Exits 0
    /// once stdin closes and everything queued was sent, or after --grace-ms.
    Client(ClientArgs),
    /// Serve Phoenix-compatible channels at /socket/websocket, with a demo `room:*` channel
    /// and a chat page at /.
    Serve(ServeArgs),
    /// Replay event logs: a channel log written by `serve --record` (reporting every outbound
    /// that differs), or a WebSocket connection's log written by `echo --record`. Given a
    /// directory, replays every .jsonl file in it.
    Replay {
        /// A log, or a directory of logs.
        log: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 4000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Record every channel event (and what it produced) to FILE, for `spool replay`.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also accept sockets from pages of this origin (repeatable). A socket request with an
    /// Origin is accepted when the Origin's host is the request's Host (any scheme or port) or
    /// matches one of these; one without an Origin (not a browser) always is. Forms, as
    /// Phoenix's check_origin: https://example.com (that scheme, host and port),
    /// //example.com (any scheme and port), //example.com:8080, //*.example.com, or * (any).
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Vec<AllowedOrigin>,
    /// Which shell runs the sockets: smol (a task per connection) or std (event loops over
    /// epoll, fewer wake-ups per broadcast).
    #[arg(long, value_enum, default_value_t = Shell::Smol)]
    shell: Shell,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    stop: StopArgs,
}

/// Cluster mode: several `spool serve` nodes share topics and presence through Redis.
#[derive(Args)]
struct ClusterArgs {
    /// Join a cluster through this Redis server (redis://127.0.0.1:6379). Without it the
    /// server is a single node and needs no Redis.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The cluster's name: nodes of one cluster share one Redis channel.
    #[arg(long, value_name = "NAME", default_value = "spool", requires = "redis")]
    cluster: String,
    /// This node's id, unique in the cluster and the same across its restarts
    /// [default: HOST:PORT].
    #[arg(long, value_name = "ID", requires = "redis")]
    node_id: Option<String>,
    /// How often this node tells the others it is alive.
    #[arg(long, value_name = "MS", default_value_t = 1_500, requires = "redis")]
    heartbeat_ms: u64,
    /// A node not heard from this long is down: its presences leave.
    #[arg(long, value_name = "MS", default_value_t = 30_000, requires = "redis")]
    down_after_ms: u64,
    /// A node not heard from this long is forgotten.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1_200_000,
        requires = "redis"
    )]
    permdown_after_ms: u64,
}

#[derive(Args)]
struct EchoArgs {
    /// Port to listen on (0: any free port).
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Which shell runs the server.
    #[arg(long, value_enum, default_value_t = Shell::Smol)]
    shell: Shell,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Turn permessage-deflate off (the echo server accepts it otherwise).
    #[arg(long)]
    no_deflate: bool,
    /// Write each connection's event log to DIR/N.jsonl, N counting connections.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Ping a connection when nothing arrived from it for this long [default: 30,000].
    #[arg(long, value_name = "MS")]
    ping_interval_ms: Option<u64>,
    #[command(flatten)]
    stop: StopArgs,
}

/// How a server stops.
#[derive(Args)]
struct StopArgs {
    /// On SIGTERM or SIGINT, how long closing connections may take before spool exits anyway
    /// (still with status 0, after logging how many were cut off).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    grace_ms: u64,
}

#[derive(Args)]
struct EchoClientArgs {
    /// The fuzzing server's URL [default: $AUTOBAHN_URL].
    url: Option<String>,
    /// Agent name in the reports [default: $AUTOBAHN_AGENT, else "spool"].
    #[arg(long)]
    agent: Option<String>,
    /// Run each case over this client transport (`core`: spool's machine through the
    /// transport trait; `tungstenite`: async-tungstenite) instead of spool's plain client.
    #[arg(long, value_name = "NAME")]
    transport: Option<String>,
}

#[derive(Args)]
struct ClientArgs {
    /// The server, ws:// or wss://.
    url: String,
    /// Send a ping when nothing arrived for this long.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    ping_interval_ms: u64,
    /// The peer is dead if no pong arrives this long after a ping.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pong_timeout_ms: u64,
    /// The first delay between attempts.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    backoff_initial_ms: u64,
    /// The largest delay between attempts.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    backoff_cap_ms: u64,
    /// Connect plus handshake (and proxy, and TLS).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Lines kept while disconnected; past it lines are dropped and counted (dropped=N).
    #[arg(long, value_name = "LINES", default_value_t = 1_000)]
    queue_max: usize,
    /// How long to flush after stdin closes.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    grace_ms: u64,
    /// An HTTP proxy to tunnel through with CONNECT, http://[user:pass@]host:port
    /// [default: $https_proxy for wss://, $http_proxy for ws://, unless $no_proxy names the host].
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Keep each line until a pong confirms the server read it, and send it again after a
    /// reconnect if none did: at-least-once (a line can arrive twice). false: at-most-once (a
    /// line in flight when the connection dies can be lost).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    resend_unconfirmed: bool,
    /// What confirms a line: `reply` (with --phoenix, the default: the push's reply) or `pong`
    /// (a pong after it: the server read it; the only choice without --phoenix).
    #[arg(long, value_name = "HOW", value_parser = ["reply", "pong"])]
    confirm_by: Option<String>,
    /// Speak Phoenix channels: each line is pushed as `shout` {"body": line, "client_msg_id":
    /// "RUN-N"} (the key lets the server drop a resent repeat), broadcasts are printed.
    #[arg(long, requires = "join")]
    phoenix: bool,
    /// The topic to join with --phoenix.
    #[arg(long, value_name = "TOPIC", requires = "phoenix")]
    join: Option<String>,
    /// Write the session's event log to FILE, for `spool replay`. It holds the configuration,
    /// proxy credentials included: treat it as a secret.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shell {
    Smol,
    Std,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Smol => "smol",
            Shell::Std => "std",
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Prints the line scripts wait for (stdout, flushed) and logs it.
fn announce(line: String) {
    println!("{line}");
    let _ = std::io::stdout().flush();
    info!("{line}");
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let signals = stop_signals()?;
    let tls = args.tls_cert.zip(args.tls_key);
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let bind = join_host_port(&args.host, args.port);
    let c = &args.cluster;
    let cluster = c
        .redis
        .as_ref()
        .map(|url| spool_smol::chat::ClusterOptions {
            heartbeat_interval_ms: c.heartbeat_ms,
            down_after_ms: c.down_after_ms,
            permdown_after_ms: c.permdown_after_ms,
            ..spool_smol::chat::ClusterOptions::new(
                url,
                &c.cluster,
                c.node_id.as_deref().unwrap_or(&bind),
            )
        });
    let options = spool_smol::chat::ChatOptions {
        bind,
        record: args.record.clone(),
        tls,
        allowed_origins: args.allow_origin,
        cluster,
        shell: match args.shell {
            Shell::Smol => spool_smol::chat::ShellKind::Smol,
            Shell::Std => spool_smol::chat::ShellKind::Std,
        },
    };
    let server = spool_smol::chat::serve(options).map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    if let Some(path) = &args.record {
        info!("recording channel events to {}", path.display());
    }
    announce(format!(
        "spool serve: chat on {http}://{addr}/, channels at {ws}://{addr}/socket/websocket"
    ));
    announce(format!(
        "spool serve: live views at {http}://{addr}/live-demo and {http}://{addr}/dashboard"
    ));
    if let Some(url) = &args.cluster.redis {
        announce(format!(
            "spool serve: cluster {} through {url}",
            args.cluster.cluster
        ));
    }
    let live = server.live_connections();
    stop_on_signal(signals, args.stop.grace_ms, &live, move || {
        server.shutdown()
    })
}

/// Replays one log, or every `.jsonl` in a directory (sorted by name); fails if any fails.
fn replay(path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return replay_file(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut logs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        let file = entry.path();
        if file.extension().is_some_and(|x| x == "jsonl") && file.is_file() {
            logs.push(file);
        }
    }
    if logs.is_empty() {
        return Err(format!(
            "{}: no .jsonl logs in this directory",
            path.display()
        ));
    }
    // 10.jsonl after 9.jsonl: by number where the names are numbers.
    logs.sort_by_key(|p| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        (stem.parse::<u64>().unwrap_or(u64::MAX), p.clone())
    });
    let mut failed = 0usize;
    for log in &logs {
        if let Err(e) = replay_file(log) {
            error!("{e}");
            failed += 1;
        }
    }
    println!(
        "replayed {} logs in {}: {failed} failed",
        logs.len(),
        path.display()
    );
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} logs failed", logs.len())),
    }
}

/// Which kind of log a file is, by its setup line.
enum LogKind {
    /// One WebSocket connection's events (`spool_core::replay::Line`).
    WebSocket,
    /// A channel runtime's events and outbounds (`spool_core::replay::ChannelLine`).
    Channel,
    /// A reconnecting client's session (`spool_core::replay::ClientLine`), from
    /// `client --record`.
    Client,
}

fn log_kind(path: &Path, text: &str) -> Result<LogKind, String> {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| format!("{}: empty log", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(first)
        .map_err(|e| format!("{}: line 1 is not JSON: {e}", path.display()))?;
    let setup = value.get("setup");
    if value.get("client_setup").is_some() {
        return Ok(LogKind::Client);
    }
    if setup.and_then(|s| s.get("role")).is_some() {
        Ok(LogKind::WebSocket)
    } else if setup.and_then(|s| s.get("app")).is_some() {
        Ok(LogKind::Channel)
    } else {
        Err(format!(
            "{}: line 1 is neither a WebSocket nor a channel log's setup",
            path.display()
        ))
    }
}

fn replay_file(log: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    match log_kind(log, &text)? {
        LogKind::WebSocket => replay_ws(log, &text),
        LogKind::Channel => replay_channel(log, &text),
        LogKind::Client => replay_client(log, &text),
    }
}

/// A WebSocket log holds only what went in; replaying it checks that it replays at all and
/// says what came out, ending with how the connection closed.
fn replay_ws(log: &Path, text: &str) -> Result<(), String> {
    let steps =
        spool_core::replay::replay_ws(text).map_err(|e| format!("{}: {e}", log.display()))?;
    let outbounds: usize = steps.iter().map(|(_, out)| out.len()).sum();
    let closed = steps.iter().flat_map(|(_, out)| out).find_map(|o| match o {
        ws::Outbound::Closed(info) => Some(info.clone()),
        _ => None,
    });
    let ending = match closed {
        Some(CloseInfo { code, reason, .. }) => format!("closed with {code} {reason:?}"),
        None => "still open at the end of the log".to_string(),
    };
    println!(
        "replayed websocket log {}: {} events, {outbounds} outbounds, {ending}",
        log.display(),
        steps.len()
    );
    Ok(())
}

/// A client log holds only what went in; replaying it says what came out: attempts, drops,
/// and how the session ended.
fn replay_client(log: &Path, text: &str) -> Result<(), String> {
    use spool_core::client::Outbound;
    let steps =
        spool_core::replay::replay_client(text).map_err(|e| format!("{}: {e}", log.display()))?;
    let outbounds: Vec<&Outbound> = steps.iter().flat_map(|(_, out)| out).collect();
    let count = |f: fn(&Outbound) -> bool| outbounds.iter().filter(|o| f(o)).count();
    let ending = outbounds
        .iter()
        .find_map(|o| match o {
            Outbound::Stopped { reason } => Some(format!("stopped ({reason:?})")),
            _ => None,
        })
        .unwrap_or_else(|| "still running at the end of the log".to_string());
    println!(
        "replayed client log {}: {} events, {} connections opened, {} attempts failed, {} \
         messages dropped, {ending}",
        log.display(),
        steps.len(),
        count(|o| matches!(o, Outbound::Opened { .. })),
        count(|o| matches!(o, Outbound::Failed(_))),
        count(|o| matches!(o, Outbound::Dropped { .. })),
    );
    Ok(())
}

fn replay_channel(log: &Path, text: &str) -> Result<(), String> {
    let report = spool_core::replay::replay_channel(text, spool_smol::chat::router_for)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    for m in &report.mismatches {
        println!(
            "line {}: recorded {} outbounds, replay produced {}",
            m.line,
            m.recorded.len(),
            m.replayed.len()
        );
        let show =
            |o: &[spool_core::channel::Outbound]| serde_json::to_string(o).unwrap_or_default();
        println!("  recorded: {}", show(&m.recorded));
        println!("  replayed: {}", show(&m.replayed));
    }
    println!(
        "replayed channel log {}: {} events of app {:?}, {} differ",
        log.display(),
        report.events,
        report.setup.app,
        report.mismatches.len()
    );
    if report.mismatches.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {} events replayed differently",
            log.display(),
            report.mismatches.len()
        ))
    }
}

/// Logs to stderr: `RUST_LOG` filters (`spool=debug`, `warn`), `info` when unset or invalid.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Echo(args) => echo("echo", args),
        Command::EchoClient(args) => echo_client(args),
        Command::Client(args) => spool_smol::cli_client::run(spool_smol::cli_client::Options {
            url: args.url,
            ping_interval_ms: args.ping_interval_ms,
            pong_timeout_ms: args.pong_timeout_ms,
            backoff_initial_ms: args.backoff_initial_ms,
            backoff_cap_ms: args.backoff_cap_ms,
            connect_timeout_ms: args.connect_timeout_ms,
            queue_max: args.queue_max,
            grace_ms: args.grace_ms,
            proxy: args.proxy,
            phoenix_topic: args.join,
            record: args.record,
            resend_unconfirmed: args.resend_unconfirmed,
            confirm_by_reply: match args.confirm_by.as_deref() {
                Some("reply") if !args.phoenix => {
                    eprintln!("spool client: --confirm-by reply needs --phoenix");
                    return ExitCode::from(2);
                }
                Some("pong") => false,
                _ => args.phoenix,
            },
        }),
        Command::Serve(args) => serve(args),
        Command::Replay { log } => replay(&log),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Registers for SIGTERM and SIGINT; from here on they no longer kill the process.
fn stop_signals() -> Result<Signals, String> {
    Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle SIGTERM and SIGINT: {e}"))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// Blocks until SIGTERM or SIGINT, then runs `stop` (which closes every connection and returns
/// once they are closed) and waits for it at most `grace_ms`. Past that, or at a second signal,
/// it logs how many connections were still open and returns `Ok` anyway: the process was asked
/// to stop, and stops, so it still exits 0; the log says what was cut off.
///
/// # Errors
/// When the signal thread is gone, or `stop` panicked.
fn stop_on_signal(
    mut signals: Signals,
    grace_ms: u64,
    live: &AtomicUsize,
    stop: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    enum Note {
        Signal(i32),
        Stopped,
        Panicked,
    }
    let (tx, rx) = mpsc::channel();
    let notes = tx.clone();
    // Forwards every signal, until main has returned and nobody listens.
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if notes.send(Note::Signal(signal)).is_err() {
                return;
            }
        }
    });
    let Ok(Note::Signal(signal)) = rx.recv() else {
        return Err("cannot wait for signals".to_string());
    };
    let started = Instant::now();
    info!(
        "{}: stopping; closing {} connections with 1001 (grace {grace_ms} ms)",
        signal_name(signal),
        live.load(Ordering::Relaxed)
    );
    std::thread::spawn(move || {
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(stop));
        let _ = tx.send(match stopped {
            Ok(()) => Note::Stopped,
            Err(_) => Note::Panicked,
        });
    });
    match rx.recv_timeout(Duration::from_millis(grace_ms)) {
        Ok(Note::Stopped) => info!("stopped in {} ms", started.elapsed().as_millis()),
        Ok(Note::Signal(signal)) => warn!(
            "{} again: exiting now, cutting off {} connections still closing",
            signal_name(signal),
            live.load(Ordering::Relaxed)
        ),
        Ok(Note::Panicked) => {
            return Err(format!(
                "the server's shutdown panicked, with {} connections open",
                live.load(Ordering::Relaxed)
            ));
        }
        Err(_) => warn!(
            "grace period of {grace_ms} ms is over: exiting, cutting off {} connections still \
             closing",
            live.load(Ordering::Relaxed)
        ),
    }
    Ok(())
}

/// Sends back every text and binary message, counting open connections.
#[derive(Default)]
struct Echo {
    live: Arc<AtomicUsize>,
}

impl Handler for Echo {
    type State = ();
    type User = ();

    fn on_init(&self, _conn: &mut Conn<()>) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn handle(&self, _state: &mut (), incoming: Incoming<()>, conn: &mut Conn<()>) -> Next {
        match incoming {
            Incoming::Message(message @ (ws::Message::Text(_) | ws::Message::Binary(_))) => {
                conn.send(message)
            }
            Incoming::Message(ws::Message::Ping(_) | ws::Message::Pong(_)) | Incoming::User(()) => {
            }
        }
        Next::Continue
    }

    fn on_close(&self, _state: (), _info: &CloseInfo) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

fn echo(command: &str, args: EchoArgs) -> Result<(), String> {
    let signals = stop_signals()?;
    // The echo server accepts permessage-deflate unless told not to (Autobahn's 12.* and 13.*
    // need it), although a server's default is off.
    let mut config = ws::Config {
        deflate: (!args.no_deflate).then(ws::DeflateConfig::default),
        ..ws::Config::default()
    };
    if let Some(ms) = args.ping_interval_ms {
        config.ping_interval_ms = Some(ms);
    }
    let bind = join_host_port(&args.host, args.port);
    if let Some(dir) = &args.record {
        // Made here too, not only by the server, so that the error names the directory.
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the record directory {}: {e}", dir.display()))?;
        info!(
            "recording each connection's events to {}/N.jsonl",
            dir.display()
        );
    }
    let tls = args.tls_cert.zip(args.tls_key);
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let announce = |addr: SocketAddr| {
        announce(format!(
            "spool {command} listening on {scheme}://{} (shell {})",
            join_host_port(&args.host, addr.port()),
            args.shell.name()
        ));
    };
    let failed = |e: spool_smol::StartError| format!("cannot start the server on {bind}: {e}");
    let echo = Echo::default();
    let live = echo.live.clone();
    let grace_ms = args.stop.grace_ms;
    match args.shell {
        Shell::Smol => {
            let mut server = spool_smol::Server::new(echo)
                .bind(bind.clone())
                .config(config);
            if let Some((cert, key)) = tls {
                server = server.tls(cert, key);
            }
            if let Some(dir) = args.record {
                server = server.record(dir);
            }
            let handle = server.start().map_err(failed)?;
            announce(handle.local_addr());
            stop_on_signal(signals, grace_ms, &live, move || handle.shutdown())
        }
        Shell::Std => {
            let mut server = spool_std::Server::new(echo)
                .bind(bind.clone())
                .config(config);
            if let Some((cert, key)) = tls {
                server = server.tls(cert, key);
            }
            if let Some(dir) = args.record {
                server = server.record(dir);
            }
            let handle = server.start().map_err(failed)?;
            announce(handle.local_addr());
            stop_on_signal(signals, grace_ms, &live, move || handle.shutdown())
        }
    }
}

fn echo_client(args: EchoClientArgs) -> Result<(), String> {
    let url = args
        .url
        .or_else(|| std::env::var("AUTOBAHN_URL").ok())
        .ok_or("no URL: give one, or set AUTOBAHN_URL")?;
    let base = url.trim_end_matches('/').to_string();
    let agent = args
        .agent
        .or_else(|| std::env::var("AUTOBAHN_AGENT").ok())
        .unwrap_or_else(|| "spool".to_string());
    let transport = args.transport;
    smol::block_on(async move {
        let count = case_count(&base).await?;
        eprintln!("spool echo-client: {count} cases on {base} as {agent}");
        let mut failures = 0usize;
        for case in 1..=count {
            let case_url = format!("{base}/runCase?case={case}&agent={agent}");
            let ran = match &transport {
                Some(transport) => spool_smol::transport::echo_case(transport, &case_url).await,
                None => run_case(&case_url).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = ran {
                failures += 1;
                eprintln!("spool echo-client: case {case}: {e}");
            }
            if case % 50 == 0 || case == count {
                eprintln!("spool echo-client: {case}/{count} cases run");
            }
        }
        let reports = format!("{base}/updateReports?agent={agent}");
        let mut client = Client::connect(&reports, ws::Config::default())
            .await
            .map_err(|e| format!("{reports}: {e}"))?;
        client
            .close(1000, "")
            .await
            .map_err(|e| format!("{reports}: {e}"))?;
        if failures > 0 {
            eprintln!("spool echo-client: {failures} cases could not run");
        }
        Ok(())
    })
}

async fn case_count(base: &str) -> Result<usize, String> {
    let url = format!("{base}/getCaseCount");
    let mut client = Client::connect(&url, ws::Config::default())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    loop {
        match client.recv().await {
            Ok(ws::Message::Text(text)) => {
                return text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{url}: not a case count: {text:?}"));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{url}: {e}")),
        }
    }
}

/// Echoes every text and binary message until the connection ends. Offers permessage-deflate
/// (off in the default config), so that Autobahn's 12.* and 13.* cases run.
async fn run_case(url: &str) -> Result<(), ClientError> {
    let config = ws::Config {
        deflate: Some(ws::DeflateConfig::default()),
        ..ws::Config::default()
    };
    let mut client = Client::connect(url, config).await?;
    loop {
        match client.recv().await {
            Ok(message @ (ws::Message::Text(_) | ws::Message::Binary(_))) => {
                // A failed send ends the connection; the next recv says how.
                let _ = client.send(message).await;
            }
            Ok(ws::Message::Ping(_) | ws::Message::Pong(_)) => {}
            Err(ClientError::Closed(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
