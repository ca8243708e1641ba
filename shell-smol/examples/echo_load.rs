//! Load for an echo server, to watch its CPU and context switches (`/proc/PID/status`).
//!
//! ```text
//! cargo run --release -p spool-smol --example echo_load -- ws://127.0.0.1:9001 CONNS SECS [LEN]
//! ```
//! Opens CONNS connections, each sending a LEN-byte binary message (default 1024) and waiting
//! for its echo, over and over for SECS seconds; prints round trips per second.

use std::time::{Duration, Instant};

use spool_smol::{Client, ws};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_string());
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let len: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let config = ws::Config {
        deflate: None,
        ..ws::Config::default()
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let executor = smol::LocalExecutor::new();
    let total = smol::block_on(executor.run(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (url, config) = (url.clone(), config.clone());
            tasks.push(executor.spawn(async move {
                let mut client = match Client::connect(&url, config).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("echo_load: {e}");
                        return 0u64;
                    }
                };
                let message = ws::Message::binary(vec![b'x'; len]);
                let mut n = 0;
                while Instant::now() < end {
                    if client.send(message.clone()).await.is_err() || client.recv().await.is_err() {
                        break;
                    }
                    n += 1;
                }
                let _ = client.close(1000, "").await;
                n
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await;
        }
        total
    }));
    println!(
        "echo_load: {conns} connections, {len} B: {} round trips/s",
        total / secs.max(1)
    );
}
