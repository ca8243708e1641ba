//! The `spool` binary: the channel server with its demo chat (`serve`), an echo server on
//! either shell, the client side of the Autobahn conformance suite, and the channel log
//! replayer.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use spool_smol::{Client, ClientError, Conn, Handler, Incoming, Next, ws};

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
    /// Serve Phoenix-compatible channels at /socket/websocket, with a demo `room:*` channel
    /// and a chat page at /.
    Serve {
        /// Port to listen on.
        #[arg(long, default_value_t = 4000)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Record every channel event (and what it produced) to FILE, for `spool replay`.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// Replay a channel log written by `serve --record` and report every outbound that differs.
    Replay {
        /// The log.
        log: PathBuf,
    },
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
    /// Turn permessage-deflate off.
    #[arg(long)]
    no_deflate: bool,
    /// Write each connection's event log to DIR/N.jsonl, N counting connections.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
}

#[derive(Args)]
struct EchoClientArgs {
    /// The fuzzing server's URL [default: $AUTOBAHN_URL].
    url: Option<String>,
    /// Agent name in the reports [default: $AUTOBAHN_AGENT, else "spool"].
    #[arg(long)]
    agent: Option<String>,
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

fn serve(host: &str, port: u16, record: Option<PathBuf>) -> Result<(), String> {
    let bind = format!("{host}:{port}");
    let options = spool_smol::chat::ChatOptions {
        bind: bind.clone(),
        record,
    };
    let server = spool_smol::chat::serve(options)
        .map_err(|e| format!("cannot start the server on {bind}: {e}"))?;
    let addr = server.local_addr();
    println!("spool serve: chat on http://{addr}/, channels at ws://{addr}/socket/websocket");
    println!("spool serve: live views at http://{addr}/live-demo and http://{addr}/dashboard");
    let _ = std::io::stdout().flush();
    server.wait();
    Err("the server stopped".to_string())
}

fn replay(log: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let report = spool_core::replay::replay_channel(&text, spool_smol::chat::router_for)
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
        "replayed {} events of app {:?}: {} differ",
        report.events,
        report.setup.app,
        report.mismatches.len()
    );
    if report.mismatches.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} events replayed differently",
            report.mismatches.len()
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo("echo", args),
        Command::EchoClient(args) => echo_client(args),
        Command::Serve { port, host, record } => serve(&host, port, record),
        Command::Replay { log } => replay(&log),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends back every text and binary message.
struct Echo;

impl Handler for Echo {
    type State = ();
    type User = ();

    fn on_init(&self, _conn: &mut Conn<()>) {}

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
}

fn echo(command: &str, args: EchoArgs) -> Result<(), String> {
    let mut config = ws::Config::default();
    if args.no_deflate {
        config.deflate = None;
    }
    let bind = if args.host.contains(':') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    let tls = args.tls_cert.zip(args.tls_key);
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let announce = |addr: SocketAddr| {
        let host = if args.host.contains(':') {
            format!("[{}]", args.host)
        } else {
            args.host.clone()
        };
        println!(
            "spool {command} listening on {scheme}://{host}:{} (shell {})",
            addr.port(),
            args.shell.name()
        );
        let _ = std::io::stdout().flush();
    };
    let failed = |e: spool_smol::StartError| format!("cannot start the server on {bind}: {e}");
    match args.shell {
        Shell::Smol => {
            let mut server = spool_smol::Server::new(Echo)
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
            handle.wait();
        }
        Shell::Std => {
            let mut server = spool_std::Server::new(Echo)
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
            handle.wait();
        }
    }
    Err("the server stopped".to_string())
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
    smol::block_on(async move {
        let count = case_count(&base).await?;
        eprintln!("spool echo-client: {count} cases on {base} as {agent}");
        let mut failures = 0usize;
        for case in 1..=count {
            let case_url = format!("{base}/runCase?case={case}&agent={agent}");
            if let Err(e) = run_case(&case_url).await {
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

/// Echoes every text and binary message until the connection ends.
async fn run_case(url: &str) -> Result<(), ClientError> {
    let mut client = Client::connect(url, ws::Config::default()).await?;
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
