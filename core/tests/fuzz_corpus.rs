//! Replays every input in `fuzz/corpus/<target>/` through the fuzz target's body, so that what
//! the fuzzers found (and the seeds) stay regression tests under plain `cargo test`. The bodies
//! sit behind spool-core's `fuzzing` feature, which its dev-dependency on itself turns on for
//! every test build, so `cargo test --workspace` replays all corpora with no flag.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
    eprintln!("{target}: {count} inputs replayed");
}

#[test]
fn ws_frames_corpus() {
    replay("ws_frames", spool_core::fuzzing::ws_frames);
}

#[test]
fn ws_server_handshake_corpus() {
    replay(
        "ws_server_handshake",
        spool_core::fuzzing::ws_server_handshake,
    );
}

#[test]
fn ws_client_handshake_corpus() {
    replay(
        "ws_client_handshake",
        spool_core::fuzzing::ws_client_handshake,
    );
}

#[test]
fn channel_decode_corpus() {
    replay("channel_decode", spool_core::fuzzing::channel_decode);
}

#[test]
fn channel_events_corpus() {
    replay("channel_events", spool_core::fuzzing::channel_events);
}

#[test]
fn live_decode_corpus() {
    replay("live_decode", spool_core::cassette::fuzz::live_decode);
}

#[test]
fn cluster_receive_corpus() {
    replay("cluster_receive", spool_core::fuzzing::cluster_receive);
}
