//! The handler surface of a reconnecting client, in the shape of Late (`001_*` seed): every
//! callback defaulted, each answering ok, frames to send, or stop; `call` from outside with a
//! [`reply`]. Both shells' drivers (`spool_std::reconnecting`, `spool_smol::reconnecting`)
//! call the same trait, so a handler runs on either.

use spool_core::client;
use spool_core::ws::Message;

/// What a callback asks of the connection (Late's `call_result`).
#[derive(Debug)]
pub enum Next {
    /// Carry on.
    Ok,
    /// Send these frames. From `handle_connect`, `handle_in` and `handle_info` they belong to
    /// the current connection (sent now, or not at all if there is none: a heartbeat, a join,
    /// an answer); from `init`, `handle_call` and `handle_disconnect` they are queued like
    /// `send` and survive reconnects.
    Reply(Vec<Message>),
    /// With [`client::Config::hold_until_ready`]: the connection is ready, let the queue flow
    /// (a spool addition, for protocols that must join before they push).
    Ready,
    /// Close the connection with 1000 and stop reconnecting.
    Stop,
    /// With [`client::Config::confirm_by_reply`]: the server answered this many of the oldest
    /// messages sent and not yet confirmed (a spool addition).
    Confirmed(u32),
    /// What was sent on this connection and not confirmed was lost (a channel crashed): send
    /// it again, first, after the next [`Next::Ready`] with `hold_until_ready`; and send these
    /// frames on this connection now (a rejoin). A spool addition.
    Rewind(Vec<Message>),
}

impl Next {
    /// The events this answer means for the client machine, appended to `events`.
    /// `this_connection`: the callback answered for the current connection (its frames go now
    /// or not at all) rather than for the session (its frames are queued and survive
    /// reconnects). Both shells' drivers use it, so a `Stop` means the same close everywhere.
    pub fn into_events(self, this_connection: bool, now_ms: u64, events: &mut Vec<client::Event>) {
        match self {
            Next::Ok => {}
            Next::Reply(frames) => {
                events.extend(frames.into_iter().map(|message| {
                    if this_connection {
                        client::Event::SendNow { now_ms, message }
                    } else {
                        client::Event::Send { now_ms, message }
                    }
                }));
            }
            Next::Ready => events.push(client::Event::Ready { now_ms }),
            Next::Confirmed(count) => events.push(client::Event::Confirmed { now_ms, count }),
            Next::Rewind(frames) => {
                events.push(client::Event::Rewind { now_ms });
                let send_now = |message| client::Event::SendNow { now_ms, message };
                events.extend(frames.into_iter().map(send_now));
            }
            Next::Stop => events.push(client::Event::Close {
                now_ms,
                code: 1000,
                reason: String::new(),
            }),
        }
    }
}

/// The callbacks of a reconnecting client, every one defaulted (Late's behaviour).
pub trait Handler: Send + 'static {
    /// What `call` carries in.
    type Call: Send + 'static;
    /// What [`reply`] carries back.
    type Reply: Send + 'static;
    /// What `info` carries in.
    type Info: Send + 'static;

    /// Runs once, before the first attempt.
    fn init(&mut self) -> Next {
        Next::Ok
    }

    /// After connecting or reconnecting, with the server's response headers.
    fn handle_connect(&mut self, headers: &[(String, String)]) -> Next {
        let _ = headers;
        Next::Ok
    }

    /// After an open connection ended, with its close code and reason (1006 and empty when it
    /// ended without a close handshake; 1001 `pong timeout` when the peer stopped answering).
    fn handle_disconnect(&mut self, code: u16, reason: &str) -> Next {
        let _ = (code, reason);
        Next::Ok
    }

    /// A frame arrived: text, binary, and pings and pongs (pings are answered already).
    fn handle_in(&mut self, frame: Message) -> Next {
        let _ = frame;
        Next::Ok
    }

    /// A `call` arrived; answer it with [`reply`] (now or later). Returning
    /// `Reply(frames)` sends frames to the server, not to the caller. Dropping `from` without
    /// a reply leaves the caller to its timeout.
    fn handle_call(&mut self, call: Self::Call, from: From<Self::Reply>) -> Next {
        let _ = (call, from);
        Next::Ok
    }

    /// A `info` arrived.
    fn handle_info(&mut self, info: Self::Info) -> Next {
        let _ = info;
        Next::Ok
    }

    /// An attempt failed (spool addition): refused, timed out, a proxy's refusal.
    fn handle_failure(&mut self, error: &client::Error) {
        let _ = error;
    }

    /// The queue was full and a message was dropped; `dropped` is the running total (spool
    /// addition).
    fn handle_dropped(&mut self, dropped: u64) {
        let _ = dropped;
    }
}

/// Who is waiting for a reply: hand it to [`reply`].
pub struct From<R> {
    id: u64,
    deliver: Box<dyn FnOnce(u64, R) + Send>,
}

impl<R> From<R> {
    /// For drivers: the caller of call `id`, reached through `deliver`.
    pub fn new(id: u64, deliver: impl FnOnce(u64, R) + Send + 'static) -> From<R> {
        From {
            id,
            deliver: Box::new(deliver),
        }
    }

    /// The call's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<R> std::fmt::Debug for From<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("From")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Answers a call (Late's `reply/2`). A reply after the call timed out goes nowhere.
pub fn reply<R>(from: From<R>, value: R) {
    (from.deliver)(from.id, value);
}
