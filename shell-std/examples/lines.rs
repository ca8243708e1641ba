//! A line protocol on spool's raw layer: no WebSocket, the same acceptor, bounds and shutdown.
//!
//! Every line a client sends comes back upper-cased; `TIME` answers the server's clock, `QUIT`
//! says goodbye and closes. A line longer than 4 KiB is refused and the connection closed, so
//! a client cannot make the server buffer without end.
//!
//! ```sh
//! cargo run -p spool-std --example lines -- 127.0.0.1:7000
//! printf 'hello\nTIME\nQUIT\n' | nc 127.0.0.1 7000
//! ```

use bytes::{Bytes, BytesMut};
use spool_std::tcp::{Conn, Handler, Packet};

/// The longest line, newline excluded.
pub const MAX_LINE: usize = 4096;

/// The line protocol's handler.
pub struct Lines;

impl Handler for Lines {
    /// The part of a line received so far.
    type State = BytesMut;
    /// A line to send to this client from elsewhere in the program.
    type User = String;

    fn on_init(&self, conn: &mut Conn<String>) -> BytesMut {
        conn.send(Bytes::from_static(b"HELLO\n"));
        BytesMut::new()
    }

    fn handle(&self, partial: &mut BytesMut, packet: Packet<String>, conn: &mut Conn<String>) {
        let data = match packet {
            Packet::Data(data) => data,
            Packet::User(line) => {
                conn.send(Bytes::from(format!("{line}\n")));
                return;
            }
        };
        partial.extend_from_slice(&data);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line = partial.split_to(end + 1);
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.trim_end_matches('\r');
            match line {
                "QUIT" => {
                    conn.send(Bytes::from_static(b"BYE\n"));
                    conn.close();
                    return;
                }
                "TIME" => conn.send(Bytes::from(format!("{} ms\n", conn.now_ms()))),
                _ => conn.send(Bytes::from(format!("{}\n", line.to_uppercase()))),
            }
        }
        if partial.len() > MAX_LINE {
            conn.send(Bytes::from_static(b"ERR line too long\n"));
            conn.close();
        } else if partial.is_empty() {
            // An idle connection keeps no buffer.
            *partial = BytesMut::new();
        }
    }
}

#[allow(dead_code)]
fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let server = match spool_std::TcpServer::new(Lines).bind(addr).start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("lines: {e}");
            std::process::exit(1);
        }
    };
    println!("lines: listening on {}", server.local_addr());
    server.wait();
}
