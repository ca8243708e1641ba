//! `spool client` against real servers, through proxies the tests control: the CONNECT proxy
//! (none, Basic credentials, 407), and a fault proxy that resets, closes, blackholes and
//! refuses. After each fault the client is back within the backoff cap plus the connect
//! timeout (plus, for a blackhole, the ping interval and pong timeout that find it), and every
//! line arrives once, in order. Small millisecond values keep each test to a few seconds.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as TMessage;
use futures_lite::{FutureExt as _, StreamExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_spool-under-test");

/// Timings of the fault tests, and the slack allowed for a busy machine's scheduling.
const PING_MS: u64 = 200;
const PONG_MS: u64 = 300;
const BACKOFF_INITIAL_MS: u64 = 50;
const BACKOFF_CAP_MS: u64 = 400;
const CONNECT_TIMEOUT_MS: u64 = 500;
const SLACK_MS: u64 = 700;

// ---------------------------------------------------------------------------------------------
// A recording async-tungstenite server: echoes, remembers every text message in order.

struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    accepted: Arc<Mutex<Vec<Instant>>>,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(bind: &str) -> Recorder {
        Recorder::start_with(bind, Arc::default(), Arc::default())
    }

    fn start_with(
        bind: &str,
        received: Arc<Mutex<Vec<String>>>,
        accepted: Arc<Mutex<Vec<Instant>>>,
    ) -> Recorder {
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let (r, a) = (received.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            let ex = smol::LocalExecutor::new();
            smol::block_on(ex.run(async {
                let listener = smol::Async::new(listener).unwrap();
                let accept = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        a.lock().unwrap().push(Instant::now());
                        let (r, stopped) = (r.clone(), stopped.clone());
                        ex.spawn(async move {
                            let serve = async {
                                let Ok(mut ws) = async_tungstenite::accept_async(tcp).await else {
                                    return;
                                };
                                while let Some(Ok(m)) = ws.next().await {
                                    if let TMessage::Text(t) = &m {
                                        r.lock().unwrap().push(t.to_string());
                                        if ws.send(m).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            };
                            serve
                                .or(async { while stopped.recv().await.is_ok() {} })
                                .await;
                        })
                        .detach();
                    }
                };
                accept
                    .or(async { while stopped.recv().await.is_ok() {} })
                    .await;
            }));
        });
        Recorder {
            addr,
            received,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Kills the server: every connection and the listener close.
    fn kill(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// A fault proxy: forwards TCP to a server, and on command resets, closes, blackholes or
// refuses.

#[derive(Clone, Copy, Debug)]
enum Fault {
    Reset,
    Close,
    Blackhole,
}

struct Conn {
    a: Arc<TcpStream>,
    b: Arc<TcpStream>,
    blackholed: Arc<AtomicBool>,
}

struct FaultProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
}

impl FaultProxy {
    fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (c, r) = (conns.clone(), refuse_until.clone());
        thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                let refusing = r.lock().unwrap().filter(|t| *t > Instant::now());
                if let Some(until) = refusing {
                    // Refused: nothing listens on the port until then.
                    drop(listener.take());
                    thread::sleep(until - Instant::now());
                    *r.lock().unwrap() = None;
                    listener = Some(TcpListener::bind(addr).unwrap());
                }
                let l = listener.as_ref().unwrap();
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let conn = Conn {
                            a: Arc::new(client),
                            b: Arc::new(server),
                            blackholed: Arc::default(),
                        };
                        pump(conn.a.clone(), conn.b.clone(), conn.blackholed.clone());
                        pump(conn.b.clone(), conn.a.clone(), conn.blackholed.clone());
                        c.lock().unwrap().push(conn);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            conns,
            refuse_until,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn fault(&self, fault: Fault) {
        for conn in self.conns.lock().unwrap().drain(..) {
            match fault {
                Fault::Reset => {
                    for s in [&conn.a, &conn.b] {
                        // SO_LINGER 0: the close that follows sends RST, not FIN.
                        let _ = socket2::SockRef::from(&**s).set_linger(Some(Duration::ZERO));
                        conn.blackholed.store(true, Ordering::SeqCst);
                        let _ = s.shutdown(Shutdown::Read); // wakes the pumps, which drop it
                    }
                }
                Fault::Close => {
                    for s in [&conn.a, &conn.b] {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Fault::Blackhole => {
                    // No FIN, no RST: bytes are taken and go nowhere.
                    conn.blackholed.store(true, Ordering::SeqCst);
                    std::mem::forget(conn);
                }
            }
        }
    }

    fn refuse_for(&self, d: Duration) {
        *self.refuse_until.lock().unwrap() = Some(Instant::now() + d);
        self.fault(Fault::Close);
    }
}

fn pump(from: Arc<TcpStream>, to: Arc<TcpStream>, blackholed: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&*from).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if blackholed.load(Ordering::SeqCst) {
                        continue;
                    }
                    if (&*to).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        if !blackholed.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// A CONNECT proxy: with or without Basic credentials, or one that always answers 407.

#[derive(Clone)]
enum Auth {
    None,
    Basic(&'static str), // the expected base64 of user:password
    Always407,
}

struct ConnectProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

fn connect_proxy(auth: Auth) -> ConnectProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (auth, seen) = (auth.clone(), seen.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().push(head.clone());
                let mut client = client;
                let authorized = match &auth {
                    Auth::None => true,
                    Auth::Basic(expected) => head
                        .lines()
                        .any(|l| l == format!("Proxy-Authorization: Basic {expected}")),
                    Auth::Always407 => false,
                };
                if !authorized {
                    let _ = client.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                          Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                }
                let target = head.split_whitespace().nth(1).unwrap().to_string();
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (a, b) = (Arc::new(client), Arc::new(server));
                pump(a.clone(), b.clone(), Arc::default());
                pump(b, a, Arc::default());
            });
        }
    });
    ConnectProxy { addr, requests }
}

// ---------------------------------------------------------------------------------------------
// The client process.

struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn spawn(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Client {
        let mut cmd = Command::new(BIN);
        cmd.arg("client").arg(url).args(extra);
        for var in [
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines: Arc<Mutex<Vec<String>>> = Arc::default();
            let l = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    l.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Client {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    fn fault_tolerant(url: &str) -> Client {
        Client::spawn(
            url,
            &[
                "--ping-interval-ms",
                &PING_MS.to_string(),
                "--pong-timeout-ms",
                &PONG_MS.to_string(),
                "--backoff-initial-ms",
                &BACKOFF_INITIAL_MS.to_string(),
                "--backoff-cap-ms",
                &BACKOFF_CAP_MS.to_string(),
                "--connect-timeout-ms",
                &CONNECT_TIMEOUT_MS.to_string(),
                "--grace-ms",
                "3000",
            ],
            &[],
        )
    }

    fn line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes stdin and waits for the exit, at most `bound`.
    fn finish(&mut self, bound: Duration) -> ExitStatus {
        self.stdin.take();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                panic!(
                    "the client did not exit within {bound:?}: {:?}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn wait_until(bound: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("line-{i}")).collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn lines_go_out_in_order_and_echoes_are_printed_against_async_tungstenite() {
    let server = Recorder::start("127.0.0.1:0");
    let mut client = Client::spawn(&server.url(), &[], &[]);
    for line in lines(0..50) {
        client.line(&line);
    }
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(server.received(), lines(0..50));
    assert_eq!(client.stdout(), lines(0..50));
}

fn survives(fault: Fault) {
    let server = Recorder::start("127.0.0.1:0");
    let proxy = FaultProxy::start(server.addr);
    let mut client = Client::fault_tolerant(&proxy.url());
    for line in lines(0..20) {
        client.line(&line);
    }
    let five_s = Duration::from_secs(5);
    wait_until(five_s, "the first lines", || server.received().len() == 20);
    thread::sleep(Duration::from_millis(100)); // their confirming pong comes back
    let before = server.connections();
    let faulted = Instant::now();
    proxy.fault(fault);
    for line in lines(20..40) {
        client.line(&line);
    }
    wait_until(five_s, "a new connection", || server.connections() > before);
    let back = faulted.elapsed();
    let detection = match fault {
        Fault::Blackhole => PING_MS + PONG_MS,
        Fault::Reset | Fault::Close => 0,
    };
    let bound = Duration::from_millis(detection + BACKOFF_CAP_MS + CONNECT_TIMEOUT_MS + SLACK_MS);
    assert!(
        back <= bound,
        "{fault:?}: back after {back:?}, bound {bound:?}"
    );
    wait_until(five_s, "every line", || server.received().len() >= 40);
    assert!(client.finish(five_s).success());
    assert_eq!(
        server.received(),
        lines(0..40),
        "{fault:?}: lost, duplicated or reordered"
    );
}

#[test]
fn a_reset_connection_comes_back_with_nothing_lost_or_duplicated() {
    survives(Fault::Reset);
}

#[test]
fn a_closed_connection_comes_back_with_nothing_lost_or_duplicated() {
    survives(Fault::Close);
}

#[test]
fn a_blackholed_connection_is_found_by_the_pong_deadline_and_replaced() {
    survives(Fault::Blackhole);
}

/// The most attempts a backoff of `initial_ms` doubling up to `cap_ms`, each delay shortened
/// by at most 20% jitter, can make in `window_ms` (the first attempt at the window's start).
fn most_attempts(initial_ms: u64, cap_ms: u64, window_ms: u64) -> u64 {
    let (mut attempts, mut elapsed, mut base) = (1, 0, initial_ms);
    loop {
        elapsed += base * 80 / 100;
        if elapsed > window_ms {
            return attempts;
        }
        attempts += 1;
        base = (base * 2).min(cap_ms);
    }
}

#[test]
fn refused_attempts_are_spaced_by_the_backoff_and_the_queue_waits() {
    let server = Recorder::start("127.0.0.1:0");
    let proxy = FaultProxy::start(server.addr);
    let mut client = Client::fault_tolerant(&proxy.url());
    client.line("before");
    wait_until(Duration::from_secs(5), "the first line", || {
        server.received().len() == 1
    });
    thread::sleep(Duration::from_millis(100));
    let refusal = Duration::from_secs(10);
    let connections_before = server.connections();
    let refused_at = Instant::now();
    proxy.refuse_for(refusal);
    for line in lines(0..10) {
        client.line(&line);
    }
    let refusal_over = refused_at + refusal;
    wait_until(Duration::from_secs(20), "every line", || {
        server.received().len() == 11
    });
    // Back within the backoff cap plus the connect timeout after the refusals end.
    let back = server.accepted.lock().unwrap()[connections_before] - refusal_over;
    let bound = Duration::from_millis(BACKOFF_CAP_MS + CONNECT_TIMEOUT_MS + SLACK_MS);
    // The refused attempts: each is one "connect failed" line of the client's. (Refused by
    // the kernel, with nothing listening, they never reach the proxy's code.)
    let failures = client
        .stderr()
        .iter()
        .filter(|l| l.contains("connect failed"))
        .count() as u64;
    let most = most_attempts(
        BACKOFF_INITIAL_MS,
        BACKOFF_CAP_MS,
        refusal.as_millis() as u64,
    );
    // Each delay is at most the cap (plus a loaded machine's scheduling): at least this many.
    let least = refusal.as_millis() as u64 / (BACKOFF_CAP_MS + SLACK_MS);
    println!(
        "10 s refusal: {failures} refused attempts (backoff allows {least}..={most}), \
         back {back:?} after the refusal ended (bound {bound:?}), all lines after {:?}",
        refused_at.elapsed()
    );
    assert!(back <= bound, "back after {back:?}, bound {bound:?}");
    // A tight loop would make thousands.
    assert!(
        (least..=most).contains(&failures),
        "{failures} refused attempts, the backoff allows {least}..={most}"
    );
    assert_eq!(
        server.connections(),
        connections_before + 1,
        "one new connection after the refusal"
    );
    assert!(client.finish(Duration::from_secs(5)).success());
    let mut expected = vec!["before".to_string()];
    expected.extend(lines(0..10));
    assert_eq!(server.received(), expected);
}

#[test]
fn a_killed_and_restarted_server_gets_what_was_sent_during_the_outage() {
    let mut server = Recorder::start("127.0.0.1:0");
    let addr = server.addr;
    let mut client = Client::fault_tolerant(&server.url());
    for line in lines(0..5) {
        client.line(&line);
    }
    wait_until(Duration::from_secs(5), "the first lines", || {
        server.received().len() == 5
    });
    thread::sleep(Duration::from_millis(100));
    let (received, accepted) = (server.received.clone(), server.accepted.clone());
    server.kill();
    for line in lines(5..10) {
        client.line(&line);
    }
    thread::sleep(Duration::from_millis(300));
    let server = Recorder::start_with(&addr.to_string(), received, accepted);
    wait_until(Duration::from_secs(5), "every line", || {
        server.received().len() >= 10
    });
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(server.received(), lines(0..10));
}

#[test]
fn a_full_queue_drops_the_newest_and_counts_exactly() {
    let server = Recorder::start("127.0.0.1:0");
    let proxy = FaultProxy::start(server.addr);
    proxy.refuse_for(Duration::from_millis(800));
    let mut client = Client::spawn(
        &proxy.url(),
        &[
            "--queue-max",
            "5",
            "--backoff-initial-ms",
            "50",
            "--backoff-cap-ms",
            "200",
        ],
        &[],
    );
    for line in lines(0..12) {
        client.line(&line);
    }
    wait_until(Duration::from_secs(5), "the queued lines", || {
        server.received().len() == 5
    });
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(server.received(), lines(0..5));
    let dropped: Vec<String> = client
        .stderr()
        .into_iter()
        .filter(|l| l.contains("dropped="))
        .collect();
    assert_eq!(dropped.len(), 7, "{dropped:?}");
    assert!(
        dropped.last().unwrap().ends_with("dropped=7"),
        "{dropped:?}"
    );
}

#[test]
fn through_a_connect_proxy_without_and_with_credentials() {
    let server = Recorder::start("127.0.0.1:0");
    let open = connect_proxy(Auth::None);
    let mut client = Client::spawn(
        &server.url(),
        &["--proxy", &format!("http://{}", open.addr)],
        &[],
    );
    client.line("via proxy");
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(client.stdout(), ["via proxy"]);
    let head = open.requests.lock().unwrap()[0].clone();
    assert!(
        head.starts_with(&format!("CONNECT {} HTTP/1.1\r\n", server.addr)),
        "{head}"
    );

    // Credentials from the proxy URL in the environment; user "al ice", password "p:w".
    let guarded = connect_proxy(Auth::Basic("YWwgaWNlOnA6dw=="));
    let proxy_url = format!("http://al%20ice:p%3Aw@{}", guarded.addr);
    let mut client = Client::spawn(&server.url(), &[], &[("http_proxy", &proxy_url)]);
    client.line("with credentials");
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(client.stdout(), ["with credentials"]);

    // no_proxy names the host: straight to the server, the proxy unused.
    let unused = connect_proxy(Auth::Always407);
    let mut client = Client::spawn(
        &server.url(),
        &[],
        &[
            ("http_proxy", &format!("http://{}", unused.addr)),
            ("no_proxy", "localhost,127.0.0.1"),
        ],
    );
    client.line("direct");
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(client.stdout(), ["direct"]);
    assert!(unused.requests.lock().unwrap().is_empty());
}

#[test]
fn a_proxy_that_answers_407_is_a_clear_error_not_a_hang() {
    let server = Recorder::start("127.0.0.1:0");
    let proxy = connect_proxy(Auth::Always407);
    let mut client = Client::spawn(
        &server.url(),
        &[
            "--proxy",
            &format!("http://u:wrong@{}", proxy.addr),
            "--grace-ms",
            "300",
        ],
        &[],
    );
    client.line("never delivered");
    wait_until(Duration::from_secs(5), "the error", || {
        client
            .stderr()
            .iter()
            .any(|l| l.contains("407 proxy authentication required"))
    });
    let start = Instant::now();
    assert!(client.finish(Duration::from_secs(5)).success());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(server.received().is_empty());
}

#[test]
fn phoenix_mode_joins_pushes_shouts_and_prints_broadcasts_from_spool_serve() {
    let chat = spool_smol::chat::serve(spool_smol::chat::ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .unwrap();
    let url = format!("ws://{}/socket/websocket", chat.local_addr());
    let mut listener = Client::spawn(&url, &["--phoenix", "--join", "room:t"], &[]);
    let mut talker = Client::spawn(&url, &["--phoenix", "--join", "room:t"], &[]);
    thread::sleep(Duration::from_millis(300)); // both joined
    talker.line("hello");
    talker.line("{\"not\": \"parsed\"}");
    wait_until(Duration::from_secs(5), "the broadcasts", || {
        listener.stdout().len() == 2
    });
    assert!(talker.finish(Duration::from_secs(5)).success());
    assert!(listener.finish(Duration::from_secs(5)).success());
    assert_eq!(listener.stdout(), ["hello", "{\"not\": \"parsed\"}"]);
    assert_eq!(talker.stdout(), ["hello", "{\"not\": \"parsed\"}"]);
    chat.shutdown();
}

#[test]
fn a_recorded_session_through_a_proxy_replays_to_the_same_outbounds() {
    use spool_core::client::{Outbound, StopReason};
    let server = Recorder::start("127.0.0.1:0");
    let proxy = connect_proxy(Auth::Basic("dTpw"));
    let dir = std::env::temp_dir().join(format!("spool-client-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("session.jsonl");
    let mut client = Client::spawn(
        &server.url(),
        &[
            "--proxy",
            &format!("http://u:p@{}", proxy.addr),
            "--record",
            log.to_str().unwrap(),
        ],
        &[],
    );
    client.line("one");
    client.line("two");
    assert!(client.finish(Duration::from_secs(5)).success());
    assert_eq!(client.stdout(), ["one", "two"]);
    let text = std::fs::read_to_string(&log).unwrap();
    let first = spool_core::replay::replay_client(&text).unwrap();
    let again = spool_core::replay::replay_client(&text).unwrap();
    assert_eq!(first, again, "replays are deterministic");
    let outbounds: Vec<Outbound> = first.into_iter().flat_map(|(_, out)| out).collect();
    let connect_request = outbounds.iter().find_map(|o| match o {
        Outbound::Transmit(t) if t.head().is_empty() && t.body().starts_with(b"CONNECT ") => {
            Some(String::from_utf8_lossy(t.body()).into_owned())
        }
        _ => None,
    });
    let connect_request = connect_request.expect("the CONNECT request is in the replay");
    assert!(
        connect_request.contains("Proxy-Authorization: Basic dTpw\r\n"),
        "{connect_request}"
    );
    assert!(
        outbounds
            .iter()
            .any(|o| matches!(o, Outbound::Opened { .. }))
    );
    assert_eq!(
        outbounds.last(),
        Some(&Outbound::Stopped {
            reason: StopReason::Closed
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn phoenix_mode_rejoins_a_restarted_spool_serve_and_loses_nothing() {
    let serve = |bind: &str| {
        spool_smol::chat::serve(spool_smol::chat::ChatOptions {
            bind: bind.into(),
            ..Default::default()
        })
        .unwrap()
    };
    let chat = serve("127.0.0.1:0");
    let addr = chat.local_addr();
    let url = format!("ws://{addr}/socket/websocket");
    let args = [
        "--phoenix",
        "--join",
        "room:restart",
        "--backoff-initial-ms",
        "50",
        "--backoff-cap-ms",
        "200",
        "--ping-interval-ms",
        "200",
        "--pong-timeout-ms",
        "300",
    ];
    let mut listener = Client::spawn(&url, &args, &[]);
    let mut talker = Client::spawn(&url, &args, &[]);
    thread::sleep(Duration::from_millis(300));
    talker.line("before");
    wait_until(Duration::from_secs(5), "the first broadcast", || {
        listener.stdout().len() == 1
    });
    thread::sleep(Duration::from_millis(100));
    chat.shutdown();
    for line in ["during-1", "during-2", "during-3"] {
        talker.line(line);
    }
    thread::sleep(Duration::from_millis(300));
    let chat = serve(&addr.to_string());
    talker.line("after");
    // The talker rejoins before its queue flows, so it hears its own broadcasts: every line
    // sent during the outage reached the channel, once, in order. (The listener hears what
    // was broadcast after its own rejoin; a broadcast has no history.)
    let expected = [
        "before", "during-1", "during-2", "during-3", "after", "final",
    ];
    wait_until(Duration::from_secs(5), "the talker's broadcasts", || {
        talker.stdout().len() >= 5
    });
    // By now the listener is back too (the backoff cap is 200 ms): it hears the next one.
    thread::sleep(Duration::from_millis(400));
    talker.line("final");
    let start = Instant::now();
    while !(talker.stdout().len() >= 6 && listener.stdout().last().is_some_and(|l| l == "final")) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "talker {:?} {:?}, listener {:?} {:?}",
            talker.stdout(),
            talker.stderr(),
            listener.stdout(),
            listener.stderr()
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(talker.finish(Duration::from_secs(5)).success());
    assert!(listener.finish(Duration::from_secs(5)).success());
    assert_eq!(talker.stdout(), expected, "{:?}", talker.stderr());
    let heard = listener.stdout();
    let heard: Vec<&str> = heard.iter().map(String::as_str).collect();
    assert!(
        heard[0] == "before" && expected.ends_with(&heard[1..]),
        "the listener heard {heard:?}"
    );
    chat.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Exactly once through faults mid-stream: idempotency keys and the demo channel's memory.

/// A Rust Phoenix client joined to `topic` directly (no proxy), collecting the `body` of every
/// `shout` it hears, in order.
fn phoenix_listener(
    addr: SocketAddr,
    topic: &str,
) -> (spool_smol::phoenix::PhoenixClient, Arc<Mutex<Vec<String>>>) {
    use spool_smol::phoenix::{PhoenixClient, PhoenixOptions};
    let options = PhoenixOptions {
        channel_buffer: 1 << 16,
        ..PhoenixOptions::default()
    };
    let client = PhoenixClient::connect(&format!("ws://{addr}/socket"), options).unwrap();
    let channel = client.channel(topic, serde_json::json!({}));
    smol::block_on(channel.join()).expect("the listener joins");
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = heard.clone();
    thread::spawn(move || {
        smol::block_on(async {
            while let Some(message) = channel.recv().await {
                if message.event == "shout" {
                    let body = message.payload["body"].as_str().unwrap_or("?").to_string();
                    h.lock().unwrap().push(body);
                }
            }
        });
    });
    (client, heard)
}

/// Faults the proxy's connections each time `progress()` passes another of `marks`, without
/// waiting for anything to be confirmed, and once the client is connected again. Returns the
/// faults made.
fn fault_at_marks(
    proxy: &FaultProxy,
    marks: &[usize],
    mut progress: impl FnMut() -> usize,
    done: impl Fn() -> bool,
) -> usize {
    let faults = [Fault::Reset, Fault::Close];
    let mut made = 0;
    for (i, &mark) in marks.iter().enumerate() {
        let start = Instant::now();
        while progress() < mark && !done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stalled below {mark}"
            );
            thread::sleep(Duration::from_millis(1));
        }
        if done() {
            break;
        }
        // Only a live connection can be faulted: wait for the proxy to hold one.
        while proxy.conns.lock().unwrap().is_empty() && !done() {
            assert!(start.elapsed() < Duration::from_secs(30), "no connection");
            thread::sleep(Duration::from_millis(1));
        }
        proxy.fault(faults[i % faults.len()]);
        made += 1;
    }
    made
}

#[test]
fn phoenix_mode_delivers_every_line_exactly_once_in_order_through_faults_mid_stream() {
    const N: usize = 4_000;
    let chat = spool_smol::chat::serve(spool_smol::chat::ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .unwrap();
    let proxy = FaultProxy::start(chat.local_addr());
    let (_listener, heard) = phoenix_listener(chat.local_addr(), "room:once");
    let url = format!("ws://{}/socket/websocket", proxy.addr);
    let mut talker = Client::spawn(
        &url,
        &[
            "--phoenix",
            "--join",
            "room:once",
            "--ping-interval-ms",
            &PING_MS.to_string(),
            "--pong-timeout-ms",
            &PONG_MS.to_string(),
            "--backoff-initial-ms",
            &BACKOFF_INITIAL_MS.to_string(),
            "--backoff-cap-ms",
            &BACKOFF_CAP_MS.to_string(),
            "--connect-timeout-ms",
            &CONNECT_TIMEOUT_MS.to_string(),
            "--queue-max",
            "100000",
            "--grace-ms",
            "20000",
        ],
        &[],
    );
    let mut stdin = talker.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        // Lines keep flowing while the faults happen: a few at a time, no waiting for answers.
        for (i, line) in lines(0..N).into_iter().enumerate() {
            writeln!(stdin, "{line}").unwrap();
            if i % 4 == 3 {
                stdin.flush().unwrap();
                thread::sleep(Duration::from_millis(1));
            }
        }
        // stdin closes here: the client sends what is queued and exits.
    });
    let marks: Vec<usize> = (1..=8).map(|k| k * N / 10).collect();
    let count = || heard.lock().unwrap().len();
    let faults = fault_at_marks(&proxy, &marks, count, || count() >= N);
    writer.join().unwrap();
    let status = talker.finish(Duration::from_secs(30));
    wait_until(
        Duration::from_secs(10),
        "every line at the listener",
        || count() >= N,
    );
    thread::sleep(Duration::from_millis(200)); // anything extra would arrive by now
    let heard = heard.lock().unwrap().clone();
    println!(
        "{faults} faults mid-stream; {} lines heard; talker stderr: {:?}",
        heard.len(),
        talker.stderr()
    );
    assert!(status.success());
    assert!(faults >= 4, "only {faults} faults landed");
    let first_wrong = heard.iter().zip(lines(0..N)).position(|(a, b)| *a != b);
    assert!(
        heard.len() == N && first_wrong.is_none(),
        "lost, duplicated or reordered: {} heard, first difference at {first_wrong:?}: {:?}",
        heard.len(),
        first_wrong.map(|i| &heard[i.saturating_sub(2)..(i + 3).min(heard.len())])
    );
    chat.shutdown();
}

#[test]
fn the_rust_phoenix_clients_push_once_arrives_exactly_once_through_faults() {
    use spool_smol::phoenix::{PhoenixClient, PhoenixOptions};
    const N: usize = 400;
    let chat = spool_smol::chat::serve(spool_smol::chat::ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .unwrap();
    let proxy = FaultProxy::start(chat.local_addr());
    let (_listener, heard) = phoenix_listener(chat.local_addr(), "room:once-rs");
    let options = PhoenixOptions {
        rejoin_after: Arc::new(|_| Duration::from_millis(50)),
        backoff: spool_core::client::Backoff {
            initial_ms: BACKOFF_INITIAL_MS,
            max_ms: BACKOFF_CAP_MS,
            ..Default::default()
        },
        connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
        ..PhoenixOptions::default()
    };
    let talker = PhoenixClient::connect(&format!("ws://{}/socket", proxy.addr), options).unwrap();
    let channel = talker.channel("room:once-rs", serde_json::json!({}));
    smol::block_on(channel.join()).expect("the talker joins");
    let pushing = thread::spawn(move || {
        smol::block_on(async {
            // Several pushes in flight at once, so that a fault catches some unanswered.
            for chunk in lines(0..N).chunks(8) {
                let mut pushes: Vec<_> = chunk
                    .iter()
                    .map(|line| {
                        Box::pin(channel.push_once("shout", serde_json::json!({ "body": line })))
                    })
                    .collect();
                // The first poll hands each push to the client, in order.
                let mut answers = Vec::new();
                for push in &mut pushes {
                    answers.push(futures_lite::future::poll_once(push).await);
                }
                for (answer, push) in answers.into_iter().zip(pushes) {
                    let answer = match answer {
                        Some(answer) => answer,
                        None => push.await,
                    };
                    answer.expect("every push_once is answered ok");
                }
            }
        });
        talker
    });
    let marks: Vec<usize> = (1..=6).map(|k| k * N / 8).collect();
    let count = || heard.lock().unwrap().len();
    let faults = fault_at_marks(&proxy, &marks, count, || count() >= N);
    let talker = pushing.join().unwrap();
    wait_until(
        Duration::from_secs(10),
        "every push at the listener",
        || count() >= N,
    );
    thread::sleep(Duration::from_millis(200));
    let heard = heard.lock().unwrap().clone();
    println!("{faults} faults mid-stream; {} pushes heard", heard.len());
    assert!(faults >= 3, "only {faults} faults landed");
    assert_eq!(heard, lines(0..N), "lost, duplicated or reordered");
    smol::block_on(talker.close());
    chat.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Memory with the queue full.

/// The resident set of process `pid`, in KiB, from /proc.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn with_the_queue_full_memory_stays_flat_and_dropped_counts_exactly() {
    const LINES: usize = 200_000;
    const QUEUE_MAX: usize = 1_000;
    const EARLY: usize = 5_000;
    // An unbounded queue would hold (LINES - EARLY) more lines of 100 bytes: about 19 MiB.
    const BOUND_KIB: u64 = 8 * 1024;
    // Nothing listens on this port: every attempt is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut client = Client::spawn(
        &format!("ws://127.0.0.1:{port}/"),
        &[
            "--queue-max",
            &QUEUE_MAX.to_string(),
            "--backoff-initial-ms",
            "50",
            "--backoff-cap-ms",
            "200",
            "--grace-ms",
            "200",
        ],
        &[],
    );
    let pid = client.child.id();
    let dropped = |client: &Client| {
        let stderr = client.stderr.lock().unwrap();
        stderr
            .iter()
            .rev()
            .find_map(|l| {
                l.split("dropped=")
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .unwrap_or(0)
    };
    let feed = |client: &mut Client, range: std::ops::Range<usize>| {
        let stdin = client.stdin.as_mut().unwrap();
        let mut chunk = String::with_capacity(100 * 1_000);
        for i in range {
            chunk.push_str(&format!("{i:0>99}\n")); // 100 bytes with the newline
            if chunk.len() >= 100 * 1_000 {
                stdin.write_all(chunk.as_bytes()).unwrap();
                chunk.clear();
            }
        }
        stdin.write_all(chunk.as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    feed(&mut client, 0..EARLY);
    let wait = Duration::from_secs(60);
    wait_until(wait, "the early lines", || {
        dropped(&client) == EARLY - QUEUE_MAX
    });
    let early_kib = vm_rss_kib(pid);
    feed(&mut client, EARLY..LINES);
    wait_until(wait, "the last line", || {
        dropped(&client) == LINES - QUEUE_MAX
    });
    let last_kib = vm_rss_kib(pid);
    println!(
        "queue full: VmRSS {early_kib} KiB after {EARLY} lines, {last_kib} KiB after {LINES} \
         (growth {} KiB, bound {BOUND_KIB} KiB); dropped={}",
        last_kib.saturating_sub(early_kib),
        dropped(&client)
    );
    assert!(
        last_kib <= early_kib + BOUND_KIB,
        "resident memory grew from {early_kib} KiB to {last_kib} KiB"
    );
    // Nothing more is dropped, and the count is exact: every line past the queue, once.
    assert!(client.finish(Duration::from_secs(10)).success());
    let counts: Vec<usize> = client
        .stderr()
        .iter()
        .filter_map(|l| l.split("dropped=").nth(1).and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(counts.len(), LINES - QUEUE_MAX);
    assert_eq!(counts.last(), Some(&(LINES - QUEUE_MAX)));
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "a running total"
    );
}
