//! Helpers shared by spool's cross-crate tests: an echo handler for both shells' servers, the
//! way to find the Python peer that `.ci/test` installs, and the codec benchmarks' harness.

use std::path::PathBuf;

pub mod codec;

use spool_core::ws::{self, Message};
use spool_std::{Conn, Handler, Incoming, Next};

/// Sends back every text and binary message; pings and pongs are the core's business.
pub struct Echo;

impl Handler for Echo {
    type State = ();
    type User = ();

    fn on_init(&self, _conn: &mut Conn<()>) {}

    fn handle(&self, _state: &mut (), incoming: Incoming<()>, conn: &mut Conn<()>) -> Next {
        if let Incoming::Message(m @ (Message::Text(_) | Message::Binary(_))) = incoming {
            conn.send(m);
        }
        Next::Continue
    }
}

/// Which shell runs a server in a test.
#[derive(Clone, Copy, Debug)]
pub enum Shell {
    /// spool-smol.
    Smol,
    /// spool-std.
    Std,
}

/// A running echo server of either shell; stops when dropped.
pub enum EchoServer {
    /// On spool-smol.
    Smol(Option<spool_smol::ServerHandle>),
    /// On spool-std.
    Std(Option<spool_std::ServerHandle>),
}

impl EchoServer {
    /// Starts an echo server on 127.0.0.1 with `config`.
    pub fn start(shell: Shell, config: ws::Config) -> EchoServer {
        match shell {
            Shell::Smol => EchoServer::Smol(Some(
                spool_smol::Server::new(Echo)
                    .bind("127.0.0.1:0")
                    .threads(2)
                    .config(config)
                    .start()
                    .unwrap(),
            )),
            Shell::Std => EchoServer::Std(Some(
                spool_std::Server::new(Echo)
                    .bind("127.0.0.1:0")
                    .threads(2)
                    .config(config)
                    .start()
                    .unwrap(),
            )),
        }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let addr = match self {
            EchoServer::Smol(h) => h.as_ref().map(|h| h.local_addr()),
            EchoServer::Std(h) => h.as_ref().map(|h| h.local_addr()),
        };
        format!("ws://{}", addr.expect("running"))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        match self {
            EchoServer::Smol(h) => h.take().map(|h| h.shutdown()),
            EchoServer::Std(h) => h.take().map(|h| h.shutdown()),
        };
    }
}

/// The Python with `websockets` installed: `$SPOOL_PYTHON`, else the venv `.ci/test` makes.
///
/// # Panics
/// When neither exists: run `bash .ci/test`, which installs it.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("SPOOL_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/venv/bin/python")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .expect("the Python websockets peer is not installed: run `bash .ci/test`")
}

/// A path under `tests/`.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub mod peer;
