//! The demo of `spool serve`: the `room:*` channel (`spool_core::channel::demo`) served over
//! WebSockets, with a chat page that uses it.
//!
//! The socket checks each upgrade's `Origin` as Phoenix's `check_origin` does, so that a page
//! on another site cannot open a socket with a visitor's cookies (cross-site WebSocket
//! hijacking): see [`OriginCheck`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use spool_core::channel::{self, Runtime};
use spool_core::ws::{CloseInfo, Request};
use spool_std::channels::{ChannelSocket, Hub, SocketState, ToSocket};

use crate::{
    Conn, Handler, HttpResponse, Incoming, Next, Rejection, Server, ServerHandle, StartError,
};

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
    /// Serve `wss://` and `https://` with this PEM certificate chain and PEM private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Origins allowed besides the request's own host; see [`OriginCheck`].
    pub allowed_origins: Vec<AllowedOrigin>,
    /// Join a cluster over Redis; `None` serves one node with no Redis.
    pub cluster: Option<ClusterOptions>,
    /// Which shell runs the sockets (the hub is the same thread either way).
    pub shell: ShellKind,
}

/// Which shell's server runs the sockets of `spool serve`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShellKind {
    /// spool-smol: a task per connection on an executor per core.
    #[default]
    Smol,
    /// spool-std: connections on event-loop threads over epoll.
    Std,
}

/// The running server, on either shell.
enum AnyServer {
    Smol(ServerHandle),
    Std(spool_std::ServerHandle),
}

impl AnyServer {
    fn local_addr(&self) -> std::net::SocketAddr {
        match self {
            AnyServer::Smol(s) => s.local_addr(),
            AnyServer::Std(s) => s.local_addr(),
        }
    }

    fn shutdown(self) {
        match self {
            AnyServer::Smol(s) => s.shutdown(),
            AnyServer::Std(s) => s.shutdown(),
        }
    }

    fn wait(self) {
        match self {
            AnyServer::Smol(s) => s.wait(),
            AnyServer::Std(s) => s.wait(),
        }
    }
}

/// How a `spool serve` node joins its cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The Redis server, `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// The cluster's name: nodes with the same name share topics and presence.
    pub cluster: String,
    /// This node's id, unique in the cluster and stable across restarts.
    pub node_id: String,
    /// How often this node tells the others it is alive (default 1,500 ms).
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is down and its presences leave (default 30,000 ms).
    pub down_after_ms: u64,
    /// A node silent this long is forgotten (default 20 minutes).
    pub permdown_after_ms: u64,
    /// Which Redis client carries the bus (both speak the same channel and messages).
    pub bus: BusKind,
}

/// Which Redis adapter a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusKind {
    /// The `redis` crate's async client on smol ([`crate::cluster_bus::SmolRedisBus`]).
    #[default]
    Smol,
    /// Its blocking client on two threads (`spool_std::cluster::RedisBus`).
    Threads,
}

impl ClusterOptions {
    /// Node `node_id` of `cluster` over the Redis at `redis_url`, with Phoenix.Tracker's
    /// periods.
    pub fn new(redis_url: &str, cluster: &str, node_id: &str) -> ClusterOptions {
        let defaults = spool_core::cluster::Options::new(cluster, node_id, 0);
        ClusterOptions {
            redis_url: redis_url.into(),
            cluster: cluster.into(),
            node_id: node_id.into(),
            heartbeat_interval_ms: defaults.heartbeat_interval_ms,
            down_after_ms: defaults.down_after_ms,
            permdown_after_ms: defaults.permdown_after_ms,
            bus: BusKind::default(),
        }
    }
}

impl Default for ChatOptions {
    /// `127.0.0.1:4000`, no recording, no TLS, same-host origins only.
    fn default() -> Self {
        ChatOptions {
            bind: "127.0.0.1:4000".to_string(),
            record: None,
            tls: None,
            allowed_origins: Vec::new(),
            cluster: None,
            shell: ShellKind::default(),
        }
    }
}

/// Why the demo server could not start: each names what failed.
#[derive(Debug)]
pub enum ServeError {
    /// The record file could not be created.
    Record(PathBuf, std::io::Error),
    /// The channel hub's thread could not start.
    Hub(std::io::Error),
    /// The server could not start on this address.
    Start(String, StartError),
    /// The cluster options do not hold together, or the Redis URL is not one.
    Cluster(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Record(path, e) => {
                write!(f, "cannot create the record file {}: {e}", path.display())
            }
            ServeError::Hub(e) => write!(f, "cannot start the channel hub: {e}"),
            ServeError::Start(bind, e) => write!(f, "cannot start the server on {bind}: {e}"),
            ServeError::Cluster(e) => write!(f, "cannot join the cluster: {e}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Record(_, e) | ServeError::Hub(e) => Some(e),
            ServeError::Start(_, e) => Some(e),
            ServeError::Cluster(_) => None,
        }
    }
}

/// A running demo server.
pub struct ChatServer {
    server: AnyServer,
    hub: Arc<Hub>,
    live: Arc<AtomicUsize>,
    live_views: crate::live_demo::LiveDemo,
}

impl ChatServer {
    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// How many sockets are open right now.
    pub fn live_connections(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }

    /// The live views' service (`/live-demo`, `/dashboard`).
    pub fn live_views(&self) -> &Arc<spool_std::live::Live> {
        self.live_views.live()
    }

    /// Stops the server (every socket is closed with 1001 and says goodbye to the hub), then
    /// stops the hub once it has handled everything before, so a recording ends with every
    /// socket's disconnect.
    pub fn shutdown(self) {
        self.server.shutdown();
        // The live views' ticker holds a reference to the hub for the dashboard: stop it first.
        drop(self.live_views);
        // The server's threads are joined, and with them went the socket handler's reference
        // to the hub: this is the last one. Dropping it queues the hub's stop behind every
        // event already sent and joins its thread, which writes (and flushes) each line.
        drop(self.hub);
    }

    /// Blocks while the server runs.
    pub fn wait(self) {
        self.server.wait();
    }
}

/// Starts the demo: sockets at `/socket/websocket`, the chat page at `/`.
///
/// # Errors
/// [`ServeError`] naming the record file that cannot be created, or the address the server
/// cannot start on (bind refused, TLS files unreadable).
pub fn serve(options: ChatOptions) -> Result<ChatServer, ServeError> {
    if let Some(path) = &options.record {
        // Created here, not only by the hub, so that the error can name the path.
        std::fs::File::create(path).map_err(|e| ServeError::Record(path.clone(), e))?;
    }
    let config = channel::Config {
        node: format!("spool{}", std::process::id()),
        ..channel::Config::with_seed(spool_std::channels::hash_seed())
    };
    let hub = match &options.cluster {
        None => {
            let runtime = Runtime::new_single_node(router(), config);
            Hub::start(runtime, APP, options.record)
        }
        Some(c) => {
            let cluster = spool_core::cluster::Options {
                heartbeat_interval_ms: c.heartbeat_interval_ms,
                down_after_ms: c.down_after_ms,
                permdown_after_ms: c.permdown_after_ms,
                ..spool_core::cluster::Options::new(
                    &c.cluster,
                    &c.node_id,
                    spool_std::cluster::boot_id(),
                )
                .transport("redis")
            };
            let runtime = Runtime::new_cluster_ready(cluster, router(), config)
                .map_err(|e| ServeError::Cluster(e.to_string()))?;
            let failed = |e: spool_std::cluster::BusError| ServeError::Cluster(e.to_string());
            let bus: Box<dyn spool_std::cluster::ClusterBus> = match c.bus {
                BusKind::Smol => Box::new(
                    crate::cluster_bus::SmolRedisBus::new(&c.redis_url, &c.cluster)
                        .map_err(failed)?,
                ),
                BusKind::Threads => Box::new(
                    spool_std::cluster::RedisBus::new(&c.redis_url, &c.cluster).map_err(failed)?,
                ),
            };
            Hub::start_clustered(runtime, APP, options.record, bus)
        }
    };
    let hub = Arc::new(hub.map_err(ServeError::Hub)?);
    let pages = Box::new(|request: &Request| match request.path() {
        "/" | "/index.html" => Some(HttpResponse::new(
            200,
            "text/html; charset=utf-8",
            CHAT_PAGE,
        )),
        _ => None,
    });
    let live = Arc::new(AtomicUsize::new(0));
    let origins = OriginCheck::new(options.allowed_origins);
    let socket = ChatSocket {
        channels: ChannelSocket::new(hub.clone(), "/socket/websocket", pages),
        origins: origins.clone(),
        live: live.clone(),
    };
    // One origin policy for every socket of the server: /live follows --allow-origin too.
    let rule = Arc::new(move |request: &Request| origins.check(request));
    let (site, live_views) = crate::live_demo::mount(socket, hub.clone(), rule)
        .map_err(|e| ServeError::Start(options.bind.clone(), StartError::SystemError(e)))?;
    let failed = |e| ServeError::Start(options.bind.clone(), e);
    let server = match options.shell {
        ShellKind::Smol => {
            let mut server = Server::new(site)
                .bind(options.bind.clone())
                .config(crate::live_demo::ws_config());
            if let Some((cert, key)) = options.tls {
                server = server.tls(cert, key);
            }
            AnyServer::Smol(server.start().map_err(failed)?)
        }
        ShellKind::Std => {
            let mut server = spool_std::Server::new(site)
                .bind(options.bind.clone())
                .config(crate::live_demo::ws_config());
            if let Some((cert, key)) = options.tls {
                server = server.tls(cert, key);
            }
            AnyServer::Std(server.start().map_err(failed)?)
        }
    };
    Ok(ChatServer {
        server,
        hub,
        live,
        live_views,
    })
}

/// The channel socket behind an origin check, counting open sockets.
struct ChatSocket {
    channels: ChannelSocket,
    origins: OriginCheck,
    live: Arc<AtomicUsize>,
}

impl Handler for ChatSocket {
    type State = SocketState;
    type User = ToSocket;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        self.channels.on_upgrade(request)?;
        self.origins.check(request)
    }

    fn on_request(&self, request: &Request) -> HttpResponse {
        self.channels.on_request(request)
    }

    fn on_init(&self, conn: &mut Conn<ToSocket>) -> SocketState {
        self.live.fetch_add(1, Ordering::Relaxed);
        self.channels.on_init(conn)
    }

    fn handle(
        &self,
        state: &mut SocketState,
        incoming: Incoming<ToSocket>,
        conn: &mut Conn<ToSocket>,
    ) -> Next {
        self.channels.handle(state, incoming, conn)
    }

    fn on_close(&self, state: SocketState, info: &CloseInfo) {
        self.channels.on_close(state, info);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which `Origin`s may open a socket, after Phoenix's `check_origin`.
///
/// - A request without `Origin` passes: browsers always send one on a WebSocket upgrade, so
///   its absence means a non-browser client, which has no visitor's cookies to abuse.
/// - An origin whose host is the request's own `Host` passes, whatever its scheme and port:
///   Phoenix compares only the host, too, and cookies do not tell ports apart either.
/// - An origin matching an [`AllowedOrigin`] passes. Unlike Phoenix, where a list replaces the
///   host check, the list adds to it: the chat page is always served from the same host.
/// - Anything else (`null` included) is answered 403.
#[derive(Clone, Debug, Default)]
pub struct OriginCheck {
    allowed: Vec<AllowedOrigin>,
}

impl OriginCheck {
    /// Same host, plus `allowed`.
    pub fn new(allowed: Vec<AllowedOrigin>) -> OriginCheck {
        OriginCheck { allowed }
    }

    /// Accepts or refuses `request` by its `Origin`.
    ///
    /// # Errors
    /// A 403 [`Rejection`] naming the origin.
    pub fn check(&self, request: &Request) -> Result<(), Rejection> {
        let Some(origin) = request.origin.as_deref() else {
            return Ok(());
        };
        let refused = || Rejection::new(403, format!("origin {origin} is not allowed"));
        let Some(parsed) = Origin::parse(origin) else {
            return Err(refused());
        };
        let same_host = split_host_port(&request.host)
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case(&parsed.host));
        if same_host || self.allowed.iter().any(|a| a.matches(&parsed)) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

/// One entry of `--allow-origin`, in Phoenix's forms: `https://example.com` (that scheme, host
/// and port, the port defaulting by scheme), `//example.com` (any scheme, any port),
/// `//example.com:8080` (any scheme, that port), a host `*.example.com` for any subdomain of
/// it, or `*` for every origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedOrigin {
    /// `None`: any scheme.
    scheme: Option<String>,
    /// Lowercase; `*` for anything, `*.x` for subdomains of `x`.
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl AllowedOrigin {
    fn matches(&self, origin: &Origin) -> bool {
        let host = if self.host == "*" {
            true
        } else if let Some(parent) = self.host.strip_prefix("*.") {
            origin
                .host
                .strip_suffix(parent)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            self.host == origin.host
        };
        host && self.scheme.as_ref().is_none_or(|s| *s == origin.scheme)
            && self.port.is_none_or(|p| Some(p) == origin.port)
    }
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(AllowedOrigin {
                scheme: None,
                host: "*".into(),
                port: None,
            });
        }
        let bad =
            || format!("{s:?} is not an origin: use scheme://host[:port], //host[:port] or *");
        if let Some(rest) = s.strip_prefix("//") {
            let (host, port) = split_host_port(rest.trim_end_matches('/')).ok_or_else(bad)?;
            return Ok(AllowedOrigin {
                scheme: None,
                host: host.to_ascii_lowercase(),
                port,
            });
        }
        let origin = Origin::parse(s).ok_or_else(bad)?;
        Ok(AllowedOrigin {
            scheme: Some(origin.scheme),
            host: origin.host,
            port: origin.port,
        })
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = &self.scheme {
            write!(f, "{scheme}:")?;
        }
        if self.host == "*" && self.scheme.is_none() {
            return f.write_str("*");
        }
        write!(f, "//{}", self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// An `Origin` header value (RFC 6454 §7): `scheme://host[:port]`.
struct Origin {
    /// Lowercase.
    scheme: String,
    /// Lowercase; an IPv6 address keeps its brackets.
    host: String,
    /// The explicit port, else the scheme's default, else `None`.
    port: Option<u16>,
}

impl Origin {
    /// `None` for `null` or anything without a scheme and a host.
    fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_host_port(rest.trim_end_matches('/'))?;
        let port = port.or(match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        });
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// `host[:port]` or `[v6]:port` into its parts; `None` when the host is empty, the port is not
/// a number, or a path follows.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, origin: Option<&str>) -> Request {
        Request {
            target: "/socket/websocket".into(),
            host: host.into(),
            origin: origin.map(Into::into),
            ..Request::default()
        }
    }

    fn check(allowed: &[&str], host: &str, origin: Option<&str>) -> bool {
        let allowed = allowed.iter().map(|a| a.parse().unwrap()).collect();
        OriginCheck::new(allowed)
            .check(&request(host, origin))
            .is_ok()
    }

    #[test]
    fn same_host_passes_whatever_the_scheme_and_port() {
        assert!(check(&[], "localhost:4000", Some("http://localhost:4000")));
        assert!(check(&[], "localhost:4000", Some("https://LOCALHOST")));
        assert!(check(&[], "[::1]:4000", Some("http://[::1]:4000")));
        assert!(check(&[], "example.com", Some("https://example.com/")));
    }

    #[test]
    fn no_origin_passes_and_foreign_or_null_is_refused() {
        assert!(check(&[], "localhost:4000", None));
        assert!(!check(&[], "localhost:4000", Some("http://evil.example")));
        assert!(!check(&[], "localhost:4000", Some("null")));
        assert!(!check(
            &[],
            "localhost:4000",
            Some("http://localhost.evil.example")
        ));
        let refused = OriginCheck::default()
            .check(&request("a:1", Some("http://b")))
            .unwrap_err();
        assert_eq!(refused.status, 403);
    }

    #[test]
    fn allowed_origins_in_phoenix_forms() {
        let list = [
            "https://example.com",
            "//another.com:888",
            "//other.com",
            "//*.sub.org",
        ];
        let host = "spool.local:4000";
        assert!(check(&list, host, Some("https://example.com")));
        assert!(check(&list, host, Some("https://example.com:443")));
        assert!(!check(&list, host, Some("http://example.com")));
        assert!(!check(&list, host, Some("https://example.com:8443")));
        assert!(check(&list, host, Some("http://another.com:888")));
        assert!(!check(&list, host, Some("http://another.com")));
        assert!(check(&list, host, Some("ws://other.com:1234")));
        assert!(check(&list, host, Some("https://a.b.sub.org")));
        assert!(!check(&list, host, Some("https://sub.org")));
        assert!(!check(&list, host, Some("https://evilsub.org")));
        assert!(check(&["*"], host, Some("https://anything.example")));
    }

    #[test]
    fn bad_allowed_origins_are_refused_and_good_ones_display_as_given() {
        for bad in [
            "example.com",
            "https://",
            "//",
            "https://a:b",
            "https://a/path",
        ] {
            assert!(bad.parse::<AllowedOrigin>().is_err(), "{bad}");
        }
        for good in ["https://example.com:443", "//example.com", "//x.org:8", "*"] {
            let parsed: AllowedOrigin = good.parse().unwrap();
            assert_eq!(parsed.to_string(), good);
        }
    }
}
