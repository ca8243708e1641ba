//! Holds many idle WebSocket connections against `spool echo` and reports what they cost the
//! server: its thread count and resident memory before and after, and memory per connection.
//!
//! ```text
//! cargo build --release -p spool-smol --bin spool --example idle_connections
//! target/release/examples/idle_connections --shell smol --connections 19000
//! ```
//! (`tests/scripts/idle-connections.sh` does both.) The driver starts `spool echo` on
//! 127.0.0.1 with a short ping interval, then starts client processes (this same program, as
//! `idle_connections hold ...`) that each open their share of the connections, complete the
//! handshakes and answer every ping. Each client stays under the per-process descriptor limit
//! (at most `--per-client` connections, default 9,000), and binds each socket to a source
//! address spread over 127.0.0.0/8, so no single (source, destination) pair runs out of
//! ephemeral ports. Once every connection is up and pings have flowed for `--hold-ms`, the
//! driver reads `/proc/PID/status`, sends the server SIGTERM (every connection gets its 1001
//! close, which the clients answer) and reports how long the stop took.
//!
//! Loopback only; every step has a time bound, and every process it started is killed on the
//! way out.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, LocalExecutor, Timer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("hold") {
        hold(&args[1..])
    } else {
        drive(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_connections: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: idle_connections [--shell smol|std] [--connections N] \
[--per-client N] [--ping-interval-ms MS] [--hold-ms MS] [--spool PATH]";

/// `--name value` pairs into a lookup.
fn flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let Some(name) = name.strip_prefix("--") else {
            return Err(format!("unexpected {name:?}\n{USAGE}"));
        };
        let value = it
            .next()
            .ok_or(format!("--{name} needs a value\n{USAGE}"))?;
        out.push((name.to_string(), value.clone()));
    }
    Ok(out)
}

fn flag<T: std::str::FromStr>(
    flags: &[(String, String)],
    name: &str,
    default: T,
) -> Result<T, String> {
    match flags.iter().rev().find(|(n, _)| n == name) {
        Some((_, v)) => v.parse().map_err(|_| format!("--{name}: bad value {v:?}")),
        None => Ok(default),
    }
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// A child process killed when dropped, unless it has exited.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Threads and resident memory (KiB) of a process, from `/proc/PID/status`.
fn status(pid: u32) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e} (has the server died?)"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("Threads:")?, field("VmRSS:")?))
}

fn drive(args: &[String]) -> Result<(), String> {
    let flags = flags(args)?;
    let shell: String = flag(&flags, "shell", "smol".to_string())?;
    let connections: usize = flag(&flags, "connections", 19_000)?;
    let per_client: usize = flag(&flags, "per-client", 9_000)?.max(1);
    let ping_ms: u64 = flag(&flags, "ping-interval-ms", 1_000)?;
    let hold_ms: u64 = flag(&flags, "hold-ms", 5_000)?;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/examples/idle_connections -> target/<profile>/spool
    let default_spool = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("spool"))
        .unwrap_or_else(|| PathBuf::from("spool"));
    let spool: PathBuf = flag(&flags, "spool", default_spool)?;

    let mut server = Guard(
        Command::new(&spool)
            .args([
                "echo",
                "--port",
                "0",
                "--shell",
                &shell,
                "--grace-ms",
                "30000",
            ])
            .args(["--ping-interval-ms", &ping_ms.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", spool.display()))?,
    );
    let pid = server.0.id();
    let mut announce = String::new();
    BufReader::new(server.0.stdout.take().expect("piped"))
        .read_line(&mut announce)
        .map_err(|e| format!("reading the server's announce line: {e}"))?;
    let port: u16 = announce
        .trim()
        .rsplit_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .ok_or(format!("no port in the server's line {announce:?}"))?;
    std::thread::sleep(Duration::from_millis(200));
    let (threads_before, rss_before) = status(pid)?;
    println!(
        "server: spool echo --shell {shell} (pid {pid}) on 127.0.0.1:{port}, pings every {ping_ms} ms"
    );
    println!("before: {threads_before} threads, VmRSS {rss_before} KiB");

    let started = Instant::now();
    let processes = connections.div_ceil(per_client).max(1);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut clients = Vec::new();
    for c in 0..processes {
        let count = connections / processes + usize::from(c < connections % processes);
        let mut child = Guard(
            Command::new(&me)
                .args([
                    "hold",
                    "--port",
                    &port.to_string(),
                    "--count",
                    &count.to_string(),
                ])
                .args(["--client", &c.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start a client process: {e}"))?,
        );
        let out = child.0.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((c, line));
            }
        });
        clients.push(child);
    }
    drop(tx);

    // Every client reports `ready <connected> <failed>` once all its handshakes are done.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut ready, mut connected, mut failed) = (0, 0u64, 0u64);
    while ready < processes {
        let left = deadline.saturating_duration_since(Instant::now());
        let (c, line) = rx
            .recv_timeout(left)
            .map_err(|_| format!("only {ready} of {processes} clients ready after 180 s"))?;
        if let Some(rest) = line.strip_prefix("ready ") {
            let mut n = rest.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
            connected += n.next().unwrap_or(0);
            failed += n.next().unwrap_or(0);
            ready += 1;
        } else {
            println!("client {c}: {line}");
        }
    }
    let took = started.elapsed();
    println!(
        "clients: {processes} processes, {connected} connections up, {failed} failed, in {:.1} s",
        took.as_secs_f64()
    );
    if let Ok(Some(exit)) = server.0.try_wait() {
        return Err(format!("the server died while connections opened: {exit}"));
    }
    std::thread::sleep(Duration::from_millis(hold_ms));
    let (threads, rss) = status(pid)?;
    let per = (rss.saturating_sub(rss_before)) as f64 / connected.max(1) as f64;
    println!("after {hold_ms} ms idle: {threads} threads, VmRSS {rss} KiB");
    println!(
        "per connection: {per:.2} KiB of server memory ({} KiB over {connected})",
        rss.saturating_sub(rss_before)
    );

    // SIGTERM: every connection gets 1001, the clients answer, and the server exits.
    let signalled = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let exit = loop {
        if let Ok(Some(exit)) = server.0.try_wait() {
            break Some(exit);
        }
        if signalled.elapsed() > Duration::from_secs(40) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match exit {
        Some(exit) => println!(
            "SIGTERM: server exited ({exit}) after {} ms",
            signalled.elapsed().as_millis()
        ),
        None => println!("SIGTERM: server still running after 40 s; killing it"),
    }

    // Closing a client's stdin makes it print its totals and exit.
    for client in &mut clients {
        drop(client.0.stdin.take());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reported = 0;
    while reported < processes {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((c, line)) = rx.recv_timeout(left) else {
            break;
        };
        println!("client {c}: {line}");
        reported += usize::from(line.starts_with("done"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A client process.

static CONNECTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static PINGS: AtomicU64 = AtomicU64::new(0);
static CLOSES_1001: AtomicU64 = AtomicU64::new(0);
static OTHER_ENDS: AtomicU64 = AtomicU64::new(0);

/// How many handshakes one client process runs at once: enough to keep the server busy, few
/// enough not to overflow its listen backlog.
const IN_FLIGHT: usize = 128;

fn hold(args: &[String]) -> Result<(), String> {
    let flags = flags(args)?;
    let port: u16 = flag(&flags, "port", 0)?;
    let count: usize = flag(&flags, "count", 0)?;
    let client: u32 = flag(&flags, "client", 0)?;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        let (permit_tx, permit_rx) = smol::channel::bounded::<()>(IN_FLIGHT);
        for i in 0..count {
            let _ = permit_tx.send(()).await;
            let source = source_addr(client, i);
            let permits = permit_rx.clone();
            ex.spawn(async move {
                match open(source, server).await {
                    Ok((stream, early)) => {
                        CONNECTED.fetch_add(1, Ordering::Relaxed);
                        let _ = permits.recv().await;
                        idle(stream, early).await;
                    }
                    Err(_) => {
                        FAILED.fetch_add(1, Ordering::Relaxed);
                        let _ = permits.recv().await;
                    }
                }
            })
            .detach();
        }
        // Wait for the last handshakes.
        while (CONNECTED.load(Ordering::Relaxed) + FAILED.load(Ordering::Relaxed)) < count as u64 {
            Timer::after(Duration::from_millis(20)).await;
        }
        println!(
            "ready {} {}",
            CONNECTED.load(Ordering::Relaxed),
            FAILED.load(Ordering::Relaxed)
        );
        let _ = std::io::stdout().flush();
        // Hold until the driver closes stdin.
        smol::unblock(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await;
    }));
    println!(
        "done: {} pings answered, {} closes with 1001 answered, {} ended otherwise",
        PINGS.load(Ordering::Relaxed),
        CLOSES_1001.load(Ordering::Relaxed),
        OTHER_ENDS.load(Ordering::Relaxed)
    );
    Ok(())
}

/// 127.c.y.z for connection `i` of client process `c - 1`: 250 connections per source address,
/// far from the ~28,000 ephemeral ports each address has towards one server port.
fn source_addr(client: u32, i: usize) -> SocketAddr {
    let n = (i / 250) as u32;
    let ip = Ipv4Addr::new(
        127,
        (client + 1) as u8,
        (n / 250) as u8,
        (n % 250 + 2) as u8,
    );
    SocketAddr::V4(SocketAddrV4::new(ip, 0))
}

/// Binds to `source`, connects, and runs the opening handshake.
/// Returns the stream and whatever arrived after the response's blank line.
async fn open(
    source: SocketAddr,
    server: SocketAddr,
) -> std::io::Result<(Async<TcpStream>, Vec<u8>)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&source.into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        // EINPROGRESS on Linux: a non-blocking connect under way.
        Err(e) if e.raw_os_error() == Some(115) => {}
        Err(e) => return Err(e),
    }
    let mut stream = Async::new(TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || response.len() > 4096 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        response.extend_from_slice(&chunk[..n]);
    };
    if !response.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::ErrorKind::ConnectionRefused.into());
    }
    Ok((stream, response.split_off(end)))
}

/// Answers pings with pongs and a close with the same close, until the connection ends.
/// Server frames are unmasked (RFC 6455 §5.1); ours carry a zero mask, which is a mask.
async fn idle(mut stream: Async<TcpStream>, early: Vec<u8>) {
    let mut buf = [0u8; 256];
    let mut have = early.len().min(buf.len());
    buf[..have].copy_from_slice(&early[..have]);
    drop(early);
    loop {
        // Every frame the echo server sends unasked is a control frame: at most 127 bytes.
        while have >= 2 {
            let (opcode, len) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
            if len > 125 || have < 2 + len {
                break;
            }
            let payload = buf[2..2 + len].to_vec();
            buf.copy_within(2 + len..have, 0);
            have -= 2 + len;
            let mut reply = vec![0x80 | opcode_reply(opcode), 0x80 | len as u8, 0, 0, 0, 0];
            reply.extend_from_slice(&payload);
            match opcode {
                0x9 => {
                    PINGS.fetch_add(1, Ordering::Relaxed);
                    if stream.write_all(&reply).await.is_err() {
                        OTHER_ENDS.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                0x8 => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let _ = stream.write_all(&reply).await;
                    if code == Some(1001) {
                        CLOSES_1001.fetch_add(1, Ordering::Relaxed);
                    } else {
                        OTHER_ENDS.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                _ => {}
            }
        }
        if have == buf.len() {
            OTHER_ENDS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => {
                OTHER_ENDS.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(n) => have += n,
        }
    }
}

/// Pong for a ping, close for a close.
fn opcode_reply(opcode: u8) -> u8 {
    if opcode == 0x9 { 0xA } else { opcode }
}
