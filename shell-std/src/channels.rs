//! Serving channels over WebSockets: a hub thread that owns the channel [`Runtime`], and a
//! [`Handler`] ([`ChannelSocket`]) that connects each socket to it. Works with both shells'
//! servers, since they share the handler trait.
//!
//! The hub is the shell around the runtime: it turns socket events into `channel::Event`s,
//! calls `handle`, and hands each outbound's frame to its recipients' mailboxes. A broadcast's
//! frame is one `Bytes`: every recipient gets a reference to the same bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use spool_core::channel::{self, ClientId, Frame, Outbound, Recipients, Runtime};
use spool_core::replay::{ChannelLine, ChannelSetup};
use spool_core::ws::{CloseInfo, Message, Request};

use crate::clock::Clock;
use crate::handler::{Conn, Handler, HttpResponse, Incoming, Mailbox, Next, Rejection};

/// A seed for [`channel::Config::with_seed`], from the OS: the runtime's hash maps are keyed
/// by topics and presence keys that peers choose, so the seed must be one they cannot guess.
pub fn hash_seed() -> u64 {
    let mut seed = [0; 8];
    crate::random::fill(&mut seed);
    u64::from_le_bytes(seed)
}

/// What the hub sends a socket.
#[derive(Clone, Debug)]
pub enum ToSocket {
    /// A frame to write.
    Frame(Frame),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

enum HubInput {
    Connect(ClientId, Mailbox<ToSocket>),
    Event(channel::Event),
    Stop,
}

/// The hub's thread. Dropping it stops the thread.
pub struct Hub {
    tx: mpsc::Sender<HubInput>,
    thread: Option<JoinHandle<()>>,
    clock: Clock,
}

impl Hub {
    /// Starts the hub around `runtime`. With `record`, every event and its outbounds are
    /// written there as a channel log (`spool replay` reads it); `app` names the application
    /// in the log's setup line.
    ///
    /// # Errors
    /// When the record file cannot be created or the thread cannot start.
    pub fn start(mut runtime: Runtime, app: &str, record: Option<PathBuf>) -> std::io::Result<Hub> {
        let mut recorder = match record {
            Some(path) => {
                let mut w = BufWriter::new(File::create(path)?);
                let setup = ChannelSetup {
                    app: app.to_string(),
                    adapter: runtime.adapter_label(),
                    config: runtime.config().clone(),
                };
                writeln!(
                    w,
                    "{}",
                    serde_json::to_string(&ChannelLine::Setup(setup)).unwrap_or_default()
                )?;
                w.flush()?;
                Some(w)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel::<HubInput>();
        let clock = Clock::new();
        let thread = std::thread::Builder::new()
            .name("spool-hub".into())
            .spawn(move || {
                let mut mailboxes: HashMap<ClientId, Mailbox<ToSocket>> = HashMap::new();
                loop {
                    // One timer: the runtime's next deadline, which a Tick answers.
                    let input = match runtime.next_deadline() {
                        Some(at) => match rx.recv_timeout(clock.until(at)) {
                            Ok(input) => input,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                HubInput::Event(channel::Event::Tick {
                                    now_ms: clock.now_ms(),
                                })
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                        None => match rx.recv() {
                            Ok(input) => input,
                            Err(_) => break,
                        },
                    };
                    let event = match input {
                        HubInput::Stop => break,
                        HubInput::Connect(id, mailbox) => {
                            mailboxes.insert(id, mailbox);
                            continue;
                        }
                        HubInput::Event(e) => e,
                    };
                    let gone = match &event {
                        channel::Event::Disconnect { client_id, .. } => Some(*client_id),
                        _ => None,
                    };
                    let outbounds = runtime.handle(event.clone());
                    deliver(&outbounds, &mailboxes);
                    if let Some(w) = recorder.as_mut() {
                        let line = ChannelLine::Step { event, outbounds };
                        // A full disk stops the recording, not the server.
                        if writeln!(w, "{}", serde_json::to_string(&line).unwrap_or_default())
                            .and_then(|_| w.flush())
                            .is_err()
                        {
                            recorder = None;
                        }
                    }
                    if let Some(id) = gone {
                        mailboxes.remove(&id);
                    }
                }
            })?;
        Ok(Hub {
            tx,
            thread: Some(thread),
            clock,
        })
    }

    fn send(&self, input: HubInput) {
        // Fails only once the hub has stopped, when there is nobody left to tell.
        let _ = self.tx.send(input);
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Gives an event to the runtime from outside a socket (an application broadcast, say).
    pub fn event(&self, event: channel::Event) {
        self.send(HubInput::Event(event));
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.send(HubInput::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hands each outbound's frame to its recipients: one clone of the frame's `Bytes` each.
fn deliver(outbounds: &[Outbound], mailboxes: &HashMap<ClientId, Mailbox<ToSocket>>) {
    for o in outbounds {
        match (o.delivery(), o) {
            ((Recipients::One(c), Some(frame)), _) => {
                send_to(mailboxes, c, ToSocket::Frame(frame.clone()))
            }
            ((Recipients::Many(cs), Some(frame)), _) => {
                for c in cs {
                    send_to(mailboxes, *c, ToSocket::Frame(frame.clone()));
                }
            }
            (
                _,
                Outbound::CloseSocket {
                    client_id,
                    code,
                    reason,
                },
            ) => {
                send_to(
                    mailboxes,
                    *client_id,
                    ToSocket::Close(*code, reason.clone()),
                );
            }
            _ => {}
        }
    }
}

fn send_to(mailboxes: &HashMap<ClientId, Mailbox<ToSocket>>, client: ClientId, message: ToSocket) {
    if let Some(m) = mailboxes.get(&client) {
        // A socket that just went away misses this frame; its Disconnect is on its way.
        let _ = m.send(message);
    }
}

/// Pages served next to the socket (the chat page, say): `None` answers 404.
pub type Pages = dyn Fn(&Request) -> Option<HttpResponse> + Send + Sync;

/// The WebSocket handler of a channel server: each socket is a client of the hub.
pub struct ChannelSocket {
    hub: Arc<Hub>,
    next_id: AtomicU64,
    mount: String,
    pages: Box<Pages>,
}

impl ChannelSocket {
    /// Sockets at `mount` (phoenix.js appends `/websocket` to its endpoint, so
    /// `/socket/websocket` for `new Socket("/socket")`), pages from `pages`.
    pub fn new(hub: Arc<Hub>, mount: &str, pages: Box<Pages>) -> ChannelSocket {
        ChannelSocket {
            hub,
            next_id: AtomicU64::new(1),
            mount: mount.to_string(),
            pages,
        }
    }

    /// The WebSocket configuration a channel server wants: `phoenix` as subprotocol (for
    /// clients that send their token that way), pages on, no compression (as Phoenix: a
    /// broadcast's frame is shared only while nobody compresses it per socket), and a 60 s idle
    /// timeout that phoenix.js's 30 s heartbeat keeps from firing.
    pub fn ws_config() -> spool_core::ws::Config {
        spool_core::ws::Config {
            protocols: vec!["phoenix".into()],
            plain_http: true,
            deflate: None,
            idle_timeout_ms: Some(60_000),
            ..spool_core::ws::Config::default()
        }
    }
}

impl Handler for ChannelSocket {
    type State = ClientId;
    type User = ToSocket;

    fn on_upgrade(&self, request: &Request) -> Result<(), Rejection> {
        if request.path() == self.mount {
            Ok(())
        } else {
            Err(Rejection::new(404, "no socket here"))
        }
    }

    fn on_request(&self, request: &Request) -> HttpResponse {
        (self.pages)(request)
            .unwrap_or_else(|| HttpResponse::new(404, "text/plain; charset=utf-8", "not found\n"))
    }

    fn on_init(&self, conn: &mut Conn<ToSocket>) -> ClientId {
        let id = ClientId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.hub.send(HubInput::Connect(id, conn.mailbox()));
        self.hub.send(HubInput::Event(channel::Event::Connect {
            now_ms: self.hub.now_ms(),
            client_id: id,
        }));
        id
    }

    fn handle(
        &self,
        id: &mut ClientId,
        incoming: Incoming<ToSocket>,
        conn: &mut Conn<ToSocket>,
    ) -> Next {
        let frame = match incoming {
            Incoming::Message(Message::Text(t)) => Frame::Text(t),
            Incoming::Message(Message::Binary(b)) => Frame::Binary(b),
            Incoming::Message(_) => return Next::Continue,
            Incoming::User(ToSocket::Frame(Frame::Text(t))) => {
                conn.send(Message::Text(t));
                return Next::Continue;
            }
            Incoming::User(ToSocket::Frame(Frame::Binary(b))) => {
                conn.send(Message::Binary(b));
                return Next::Continue;
            }
            Incoming::User(ToSocket::Close(code, reason)) => {
                conn.close(code, reason);
                return Next::Continue;
            }
        };
        let event = channel::Event::Receive {
            now_ms: self.hub.now_ms(),
            client_id: *id,
            frame,
        };
        self.hub.send(HubInput::Event(event));
        Next::Continue
    }

    fn on_close(&self, id: ClientId, _info: &CloseInfo) {
        self.hub.send(HubInput::Event(channel::Event::Disconnect {
            now_ms: self.hub.now_ms(),
            client_id: id,
        }));
    }
}
