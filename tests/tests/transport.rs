//! The WebsockexNova-shaped transports under the reconnecting driver: a scripted mock through
//! every state (refused, open, frames, closed by the server, reopened, stopped), and
//! spool's own core and async-tungstenite against an async-tungstenite echo server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::Message as TMessage;
use futures_lite::{FutureExt as _, StreamExt as _};
use spool_core::client;
use spool_core::ws::{self, Message, Url};
use spool_smol::reconnecting::{Handler, Next};
use spool_smol::transport::{self, CoreTransport, MockStep, MockTransport, TungsteniteTransport};

/// Notes every callback; answers each text with "re:" + text, once.
struct Notes(Arc<Mutex<Vec<String>>>);

impl Handler for Notes {
    type Call = ();
    type Reply = ();
    type Info = ();

    fn handle_connect(&mut self, headers: &[(String, String)]) -> Next {
        let server = headers.iter().find(|(n, _)| n == "x-server");
        self.0.lock().unwrap().push(format!("connect {server:?}"));
        Next::Ok
    }

    fn handle_disconnect(&mut self, code: u16, reason: &str) -> Next {
        self.0
            .lock()
            .unwrap()
            .push(format!("disconnect {code} {reason}"));
        Next::Ok
    }

    fn handle_in(&mut self, frame: Message) -> Next {
        let Some(text) = frame.as_text() else {
            return Next::Ok;
        };
        self.0.lock().unwrap().push(format!("in {text}"));
        if text.starts_with("re:") {
            Next::Ok
        } else {
            Next::Reply(vec![Message::text(format!("re:{text}"))])
        }
    }

    fn handle_failure(&mut self, error: &client::Error) {
        self.0.lock().unwrap().push(format!("failed {error}"));
    }
}

fn config(url: &str) -> client::Config {
    let mut config = client::Config::new(Url::parse(url).unwrap());
    config.ws.ping_interval_ms = None;
    config.connect_timeout_ms = 2_000;
    config
}

fn wait_for(notes: &Arc<Mutex<Vec<String>>>, what: &str) {
    for _ in 0..400 {
        if notes.lock().unwrap().iter().any(|n| n == what) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no {what:?} in {:?}", notes.lock().unwrap());
}

#[test]
fn the_mock_transport_drives_every_state() {
    let mock = MockTransport::new(vec![
        MockStep::Refuse("down".into()),
        MockStep::Accept(vec![("x-server".into(), "one".into())]),
        MockStep::Frame(Message::text("hi")),
        MockStep::Close(1001, "restart".into()),
        MockStep::Accept(vec![("x-server".into(), "two".into())]),
        MockStep::Frame(Message::text("again")),
    ]);
    let sent = mock.sent.clone();
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = smol::channel::unbounded();
    tx.try_send(Message::text("queued while down")).unwrap();
    let task = smol::spawn(transport::run(
        mock,
        config("ws://mock/"),
        Notes(notes.clone()),
        rx,
    ));
    wait_for(&notes, "in again");
    drop(tx);
    let unsent = smol::block_on(task);
    assert!(unsent.is_empty());
    assert_eq!(
        *notes.lock().unwrap(),
        [
            "failed connect failed: down",
            "connect Some((\"x-server\", \"one\"))",
            "in hi",
            "disconnect 1001 restart",
            "connect Some((\"x-server\", \"two\"))",
            "in again",
            "disconnect 1000 ",
        ]
    );
    assert_eq!(
        *sent.lock().unwrap(),
        [
            "close 1006",
            "open",
            "queued while down",
            "re:hi",
            "open",
            "re:again",
            "close 1000"
        ]
    );
}

/// An async-tungstenite echo server.
fn echo_server() -> String {
    echo_server_on("127.0.0.1:0")
}

fn echo_server_on(bind: &str) -> String {
    let listener = smol::block_on(smol::net::TcpListener::bind(bind)).unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    smol::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            smol::spawn(async move {
                let Ok(mut ws) = async_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, TMessage::Text(_)) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    url
}

fn echoes_through<T: transport::Transport>(transport: T) {
    let url = echo_server();
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = smol::channel::unbounded();
    for text in ["a", "b", "c"] {
        tx.try_send(Message::text(text)).unwrap();
    }
    let task = smol::spawn(transport::run(
        transport,
        config(&url),
        Notes(notes.clone()),
        rx,
    ));
    wait_for(&notes, "in re:c");
    drop(tx);
    let stopped = smol::block_on(task.or(async {
        smol::Timer::after(Duration::from_secs(5)).await;
        vec![Message::text("timed out")]
    }));
    assert!(stopped.is_empty(), "{stopped:?}");
    let notes = notes.lock().unwrap().clone();
    let ins: Vec<&String> = notes.iter().filter(|n| n.starts_with("in ")).collect();
    // The server echoes a, b, c; the handler answers each with re:x, echoed in turn.
    assert_eq!(ins.len(), 6, "{notes:?}");
    for text in ["in a", "in b", "in c", "in re:a", "in re:b", "in re:c"] {
        assert!(
            notes.iter().any(|n| n == text),
            "{text} missing from {notes:?}"
        );
    }
}

#[test]
fn the_core_transport_talks_to_async_tungstenite() {
    echoes_through(CoreTransport::new(ws::Config::default()));
}

#[test]
fn the_tungstenite_transport_talks_to_async_tungstenite() {
    echoes_through(TungsteniteTransport::default());
}

/// Answers even numbers with their double, and leaves odd ones to time out.
struct Doubler;

impl Handler for Doubler {
    type Call = u32;
    type Reply = u32;
    type Info = ();

    fn handle_call(&mut self, n: u32, from: spool_smol::reconnecting::From<u32>) -> Next {
        if n.is_multiple_of(2) {
            spool_smol::reconnecting::reply(from, n * 2);
        }
        Next::Ok
    }
}

#[test]
fn calls_from_outside_get_their_reply_or_time_out() {
    let url = echo_server();
    let handle = spool_smol::reconnecting::connect(config(&url), Doubler).unwrap();
    smol::block_on(async {
        assert_eq!(handle.call(21 * 2, Duration::from_secs(2)).await, Ok(84));
        let started = std::time::Instant::now();
        assert_eq!(
            handle.call(7, Duration::from_millis(100)).await,
            Err(client::CallError::Timeout)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        handle.close().await;
        let reason = handle.wait().await;
        assert_eq!(reason, client::StopReason::Closed);
    });
}

#[test]
fn the_std_driver_waits_out_refusals_then_delivers_in_order() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut config = config(&format!("ws://127.0.0.1:{port}/"));
    config.backoff.initial_ms = 20;
    config.backoff.max_ms = 100;
    let handle = spool_std::reconnecting::connect(config, Notes(notes.clone())).unwrap();
    for text in ["a", "b"] {
        assert!(handle.send(Message::text(text)));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        notes
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("failed connect failed")),
        "{:?}",
        notes.lock().unwrap()
    );
    echo_server_on(&format!("127.0.0.1:{port}"));
    wait_for(&notes, "in re:b");
    handle.finish(Duration::ZERO);
    assert_eq!(handle.wait(), client::StopReason::Closed);
    let notes = notes.lock().unwrap().clone();
    let ins: Vec<&str> = notes
        .iter()
        .filter(|n| n.starts_with("in "))
        .map(String::as_str)
        .collect();
    assert_eq!(ins, ["in a", "in b", "in re:a", "in re:b"]);
}

#[test]
fn the_std_driver_answers_calls_or_times_them_out() {
    let url = echo_server();
    let handle = spool_std::reconnecting::connect(config(&url), Doubler).unwrap();
    assert_eq!(handle.call(8, Duration::from_secs(2)), Ok(16));
    assert_eq!(
        handle.call(9, Duration::from_millis(50)),
        Err(client::CallError::Timeout)
    );
    handle.close();
    assert_eq!(handle.wait(), client::StopReason::Closed);
}
