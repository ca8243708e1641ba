//! The benchmark suite's peers (tests/scripts/bench.sh) do the job they are measured on: each
//! echo server sends back text and binary messages of every length class (7-bit, 16-bit and
//! 64-bit lengths), and each fan-out server answers a join and delivers a shout to every
//! subscriber. Correctness only: nothing here is timed.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use spool_core::ws::{Config, Message};
use spool_tests::tests_dir;

/// A server process, killed when dropped.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Held from choosing a port until the server listens on it: this file's tests run in
/// parallel, and the kernel may hand a port just freed to the next `bind(0)`, so two of them
/// could otherwise pick the same one, and the loser's check would reach the winner's server.
static STARTING: Mutex<()> = Mutex::new(());

/// How many ports a server is tried on: another process (a client's ephemeral port, say) can
/// take the chosen one before the server binds it; the server then exits, and is started again
/// on another.
const START_ATTEMPTS: usize = 5;

fn start(program: impl Into<PathBuf>, args: &[&str]) -> Server {
    let program = program.into();
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..START_ATTEMPTS {
        if let Some(server) = try_start(&program, args) {
            return server;
        }
    }
    panic!(
        "{} exited before listening, on {START_ATTEMPTS} ports",
        program.display()
    );
}

/// The server listening on a free port, or `None` if it exited first (its port was taken).
fn try_start(program: &Path, args: &[&str]) -> Option<Server> {
    let port = free_port();
    let child = Command::new(program)
        .args(args)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut server = Server(child, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            eprintln!("{} exited ({status}) on port {port}", program.display());
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

fn node_script(name: &str) -> (String, String) {
    let script = tests_dir().join("node").join(name);
    ("node".to_string(), script.to_string_lossy().into_owned())
}

fn config() -> Config {
    Config {
        deflate: None,
        ..Config::default()
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than 30 s.
fn bounded(label: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: no answer within 30 s"),
    }
}

fn check_echo(label: &'static str, server: &Server) {
    let url = format!("ws://127.0.0.1:{}/", server.1);
    bounded(label, move || {
        let mut c = spool_std::Client::connect(&url, config()).unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for m in [
            Message::text("hello"),
            Message::binary(vec![7u8; 16]),
            Message::binary(vec![1u8; 1024]),
            Message::binary(big),
        ] {
            c.send(m.clone()).unwrap();
            assert_eq!(c.recv().unwrap(), m, "{label}");
        }
    });
}

#[test]
fn rust_echo_peers_echo() {
    for (label, exe) in [
        ("bare mio", env!("CARGO_BIN_EXE_peer_mio")),
        ("fastwebsockets", env!("CARGO_BIN_EXE_peer_fastwebsockets")),
        (
            "tokio-websockets",
            env!("CARGO_BIN_EXE_peer_tokio_websockets"),
        ),
        (
            "async-tungstenite",
            env!("CARGO_BIN_EXE_peer_async_tungstenite"),
        ),
    ] {
        let server = start(exe, &[]);
        check_echo(label, &server);
    }
}

#[test]
fn node_echo_peer_echoes() {
    let (node, script) = node_script("bench_echo_server.js");
    let server = start(node, &[&script]);
    check_echo("Node ws", &server);
}

fn check_fanout(label: &'static str, server: &Server) {
    let url = format!("ws://127.0.0.1:{}/socket/websocket", server.1);
    bounded(label, move || {
        let join = |c: &mut spool_std::Client| {
            c.send(Message::text(r#"["1","1","room:fanout","phx_join",{}]"#))
                .unwrap();
            let reply = c.recv().unwrap();
            let text = reply.as_text().unwrap();
            assert!(
                text.contains("phx_reply") && text.contains("\"ok\""),
                "{label}: {text}"
            );
        };
        let mut subscribers: Vec<_> = (0..2)
            .map(|_| spool_std::Client::connect(&url, config()).unwrap())
            .collect();
        for s in &mut subscribers {
            join(s);
        }
        let mut publisher = spool_std::Client::connect(&url, config()).unwrap();
        join(&mut publisher);
        publisher
            .send(Message::text(
                r#"["1","2","room:fanout","shout",{"n":0,"t":12345}]"#,
            ))
            .unwrap();
        for s in &mut subscribers {
            let shout = s.recv().unwrap();
            let value: serde_json::Value = serde_json::from_str(shout.as_text().unwrap()).unwrap();
            assert_eq!(value[2], "room:fanout", "{label}");
            assert_eq!(value[3], "shout", "{label}");
            assert_eq!(value[4]["n"], 0, "{label}");
            assert_eq!(value[4]["t"], 12345, "{label}");
        }
    });
}

#[test]
fn tokio_fanout_peer_delivers_to_every_subscriber() {
    let server = start(env!("CARGO_BIN_EXE_peer_tokio_fanout"), &[]);
    check_fanout("tokio broadcast", &server);
}

#[test]
fn bare_mio_fanout_peer_delivers_to_every_subscriber() {
    let server = start(env!("CARGO_BIN_EXE_peer_mio_fanout"), &[]);
    check_fanout("bare mio fan-out", &server);
}

#[test]
fn node_fanout_peer_delivers_to_every_subscriber() {
    let (node, script) = node_script("bench_fanout_server.js");
    let server = start(node, &[&script]);
    check_fanout("Node ws fan-out", &server);
}
