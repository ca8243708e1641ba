//! `spool replay`: WebSocket logs (`spool echo --record`) and channel logs
//! (`spool serve --record`), one file or a directory, each reported by kind.

mod common;

use common::{Spool, run, temp_dir};
use spool_core::ws::{Config, Message};
use spool_std::Client;

#[test]
fn replays_the_checked_in_logs_of_both_kinds() {
    let logs = common_logs();
    let (status, stdout, stderr) = run(&["replay", logs.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed channel log") && stdout.contains("channel_phoenix_js_session"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("replayed websocket log").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("replayed 3 logs"), "{stdout}");

    let one = logs.join("python_plain_session.jsonl");
    let (status, stdout, _) = run(&["replay", one.to_str().unwrap()]);
    assert!(status.success());
    assert!(
        stdout.starts_with("replayed websocket log") && stdout.contains("closed with 1000"),
        "{stdout}"
    );
}

/// A connection recorded by `spool echo --record` on each shell replays, and says what it was.
#[test]
fn replays_what_echo_records_on_both_shells() {
    for shell in ["smol", "std"] {
        let dir = temp_dir(&format!("replay-echo-{shell}"));
        let spool = Spool::start(&[
            "echo",
            "--port",
            "0",
            "--shell",
            shell,
            "--record",
            dir.to_str().unwrap(),
        ]);
        let mut client =
            Client::connect(&format!("ws://{}/", spool.addr), Config::default()).unwrap();
        client.send(Message::text("recorded")).unwrap();
        assert_eq!(client.recv().unwrap(), Message::text("recorded"));
        client.close(1000, "bye").unwrap();
        // The server writes the log as the connection ends; give it a moment to finish.
        let log = dir.join("0.jsonl");
        let mut stdout = String::new();
        for _ in 0..100 {
            let (status, out, _) = run(&["replay", log.to_str().unwrap()]);
            if status.success() && out.contains("closed with 1000") {
                stdout = out;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            stdout.starts_with("replayed websocket log"),
            "{shell}: {stdout:?}"
        );
        drop(spool);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_file_of_neither_kind_or_an_empty_directory_fails_and_says_so() {
    let dir = temp_dir("replay-bad");
    let (status, _, stderr) = run(&["replay", dir.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("no .jsonl logs"), "{stderr}");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"setup\":{\"what\":1}}\n").unwrap();
    let (status, _, stderr) = run(&["replay", bad.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("neither a WebSocket nor a channel log"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn common_logs() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("logs")
}
