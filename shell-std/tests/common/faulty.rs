//! A WebSocket handler for fault tests, shared by both shells' tests (spool-smol includes this
//! file with `#[path]`): it panics on "panic", queues 512 KiB on "half", echoes the rest, sends
//! its user messages as binary messages, and reports its mailboxes and closes.

use std::sync::Mutex;
use std::sync::mpsc::Sender;

use spool_core::ws::{CloseInfo, Message};
use spool_std::{Conn, Handler, Incoming, Mailbox, Next};

/// The handler; set `closes` and `mailboxes` to hear about each connection.
#[derive(Default)]
pub struct Faulty {
    pub closes: Mutex<Option<Sender<CloseInfo>>>,
    pub mailboxes: Mutex<Option<Sender<Mailbox<Vec<u8>>>>>,
}

impl Faulty {
    /// Reports every close to `closes`.
    pub fn reporting(closes: Sender<CloseInfo>) -> Faulty {
        Faulty {
            closes: Mutex::new(Some(closes)),
            ..Faulty::default()
        }
    }
}

impl Handler for Faulty {
    type State = ();
    type User = Vec<u8>;

    fn on_init(&self, conn: &mut Conn<Vec<u8>>) {
        if let Some(tx) = &*self.mailboxes.lock().unwrap() {
            let _ = tx.send(conn.mailbox());
        }
    }

    fn handle(&self, _: &mut (), incoming: Incoming<Vec<u8>>, conn: &mut Conn<Vec<u8>>) -> Next {
        match incoming {
            Incoming::Message(Message::Text(t)) if t == "panic" => panic!("asked to"),
            Incoming::Message(Message::Text(t)) if t == "half" => {
                // 512 KiB: under the 1 MiB bound, more than loopback buffers take at once.
                for _ in 0..64 {
                    conn.send(Message::binary(vec![1u8; 8 << 10]));
                }
            }
            Incoming::Message(m) if !m.is_control() => conn.send(m),
            Incoming::Message(_) => {}
            Incoming::User(bytes) => conn.send(Message::binary(bytes)),
        }
        Next::Continue
    }

    fn on_close(&self, _: (), info: &CloseInfo) {
        if let Some(tx) = &*self.closes.lock().unwrap() {
            let _ = tx.send(info.clone());
        }
    }
}
