//! The official Phoenix JavaScript client (npm `phoenix` 1.8, over the `ws` package) against the
//! demo channel server of `spool serve`: one Node script per scenario under `tests/node`, each
//! against its own in-process server. A script prints `ok <scenario>` and exits 0, or prints what
//! went wrong (with its last wire events) and exits 1.
//!
//! Needs `node` (20 or later; `$SPOOL_NODE` overrides the binary) and `tests/node/node_modules`,
//! which `bash .ci/test` installs with `npm ci`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use spool_smol::chat::{self, ChatOptions};

/// How long a script may run before it is killed (each has its own, shorter, hard timeout).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

fn node() -> PathBuf {
    std::env::var_os("SPOOL_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

/// Runs `tests/node/<scenario>.js` against a fresh demo server and asserts it succeeded.
fn scenario(name: &str) {
    let dir = node_dir();
    for package in ["phoenix", "ws"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "{}/node_modules/{package} is missing: run `bash .ci/test` (it runs `npm ci` in tests/node)",
            dir.display()
        );
    }

    let server = chat::serve(ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..ChatOptions::default()
    })
    .unwrap();
    let url = format!("ws://{}/socket", server.local_addr());

    let mut child = Command::new(node())
        .arg(dir.join(format!("{name}.js")))
        .arg(&url)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` (Node 20+ is needed): {e}",
                node().display()
            )
        });
    // Drain both pipes on threads, so a chatty script cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));

    let started = Instant::now();
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    server.shutdown();

    let output = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    match status {
        None => panic!("{name}.js against {url}: killed after {SCRIPT_TIMEOUT:?}\n{output}"),
        Some(status) => assert!(
            status.success(),
            "{name}.js against {url}: {status}\n{output}"
        ),
    }
    assert_eq!(
        stdout.lines().last(),
        Some(format!("ok {name}").as_str()),
        "{name}.js against {url}: no `ok {name}` line\n{output}"
    );
    println!("{output}");
}

/// Join ok, a push answered with `{"pong": payload}`, and the join of a topic with no route
/// refused with `{"reason": "unmatched topic"}`.
#[test]
fn phoenix_js_join_push_reply() {
    scenario("join_push_reply");
}

/// A `shout` reaches every member of the topic, the sender included, in order.
#[test]
fn phoenix_js_broadcast() {
    scenario("broadcast");
}

/// phoenix.js's `Presence` converges on every client through joins, two metas under one key,
/// a socket closing and a channel leaving.
#[test]
fn phoenix_js_presence() {
    scenario("presence");
}

/// A leave is acknowledged and followed by `phx_close`; nothing pushed afterwards reaches the room.
#[test]
fn phoenix_js_leave() {
    scenario("leave");
}

/// A crashed channel errors, phoenix.js rejoins it by itself on the same socket, and it works again.
#[test]
fn phoenix_js_crash_rejoin() {
    scenario("crash_rejoin");
}

/// Heartbeats every second are all answered; the connection stays up.
#[test]
fn phoenix_js_heartbeat() {
    scenario("heartbeat");
}
