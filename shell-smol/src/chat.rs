//! The demo of `spool serve`: the `room:*` channel (`spool_core::channel::demo`) served over
//! WebSockets, with a chat page that uses it.

use std::path::PathBuf;
use std::sync::Arc;

use spool_core::channel::{self, Runtime};
use spool_std::channels::{ChannelSocket, Hub};

use crate::{HttpResponse, Server, ServerHandle, StartError};

/// The page served at `/`.
const CHAT_PAGE: &str = include_str!("chat.html");

pub use spool_core::channel::demo::{APP, Room, router, router_for};

/// How to run the demo server.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// Where to listen, e.g. `127.0.0.1:4000`.
    pub bind: String,
    /// Write a channel log of every event here.
    pub record: Option<PathBuf>,
}

/// A running demo server.
pub struct ChatServer {
    server: ServerHandle,
    _hub: Arc<Hub>,
    live: crate::live_demo::LiveDemo,
}

impl ChatServer {
    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The live views' service (`/live-demo`, `/dashboard`).
    pub fn live(&self) -> &Arc<spool_std::live::Live> {
        self.live.live()
    }

    /// Stops the server and its hub.
    pub fn shutdown(self) {
        self.server.shutdown();
    }

    /// Blocks while the server runs.
    pub fn wait(self) {
        self.server.wait();
    }
}

/// Starts the demo: sockets at `/socket/websocket`, the chat page at `/`.
///
/// # Errors
/// [`StartError`] when the server cannot start, or the record file cannot be created.
pub fn serve(options: ChatOptions) -> Result<ChatServer, StartError> {
    let config = channel::Config {
        node: format!("spool{}", std::process::id()),
        hash_seed: random_seed(),
        ..channel::Config::default()
    };
    let runtime = Runtime::new_single_node(router(), config);
    let hub = Arc::new(Hub::start(runtime, APP, options.record).map_err(StartError::SystemError)?);
    let pages = Box::new(|request: &spool_core::ws::Request| match request.path() {
        "/" | "/index.html" => Some(HttpResponse::new(
            200,
            "text/html; charset=utf-8",
            CHAT_PAGE,
        )),
        _ => None,
    });
    let socket = ChannelSocket::new(hub.clone(), "/socket/websocket", pages);
    let (site, live) = crate::live_demo::mount(socket, hub.clone())?;
    let server = Server::new(site)
        .bind(options.bind)
        .config(crate::live_demo::ws_config())
        .start()?;
    Ok(ChatServer {
        server,
        _hub: hub,
        live,
    })
}

/// A seed for the runtime's hash maps, from the OS's per-process hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
