//! A real browser against `spool serve`'s live views: Debian's chromium driven by
//! puppeteer-core (`tests/node/live_demo_browser.js`) opens `/live-demo`, clicks, types, sees
//! the page change, then watches `/dashboard` tick. Screenshots go to
//! `target/tmp/live-browser/`.
//!
//! Needs `node`, `tests/node/node_modules` (`npm ci`) and `/usr/bin/chromium` (or
//! `$SPOOL_CHROMIUM`); `bash .ci/test` installs all three. Nothing is skipped: without a
//! browser that starts, this test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use spool_smol::chat::{self, ChatOptions};

const TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn chromium_clicks_and_types_on_live_demo_and_watches_the_dashboard() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        dir.join("node_modules/puppeteer-core").is_dir(),
        "{}/node_modules/puppeteer-core is missing: run `bash .ci/test` (it runs `npm ci`)",
        dir.display()
    );
    let chromium = std::env::var("SPOOL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no browser at {chromium}: run `bash .ci/test` (it installs Debian's chromium)"
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let _ = std::fs::remove_file(shots.join("live-demo.png"));

    let server = chat::serve(ChatOptions {
        bind: "127.0.0.1:0".into(),
        ..ChatOptions::default()
    })
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let node = std::env::var_os("SPOOL_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let mut child = Command::new(&node)
        .arg(dir.join("live_demo_browser.js"))
        .arg(&base)
        .arg(&shots)
        .current_dir(&dir)
        .env("SPOOL_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}` (Node 20+ is needed): {e}", node.display()));
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
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    server.shutdown();
    assert!(
        status.is_some_and(|s| s.success()) && out.contains("ok live_demo_browser"),
        "the browser test failed ({status:?})\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(shots.join("live-demo.png").is_file(), "no screenshot");
    eprintln!("{}", out.trim());
}
