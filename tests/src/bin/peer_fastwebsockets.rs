//! Benchmark peer: an echo server on fastwebsockets (tokio, one thread), on 127.0.0.1:PORT.
//! The opening handshake is read by hand (fastwebsockets' own needs hyper); then every text
//! and binary message is sent back, pings answered and closes returned by the library.

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use spool_tests::peer::{Upgrade, serve_on_one_thread, upgrade_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn serve(mut stream: TcpStream) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        match upgrade_response(&head) {
            Upgrade::Partial => continue,
            Upgrade::Bad => return Ok(()),
            // The client waits for the 101 before it sends a frame: nothing follows the head.
            Upgrade::Accept(response, _) => {
                stream.write_all(&response).await?;
                break;
            }
        }
    }
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_writev(true);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

fn main() -> std::io::Result<()> {
    serve_on_one_thread("peer_fastwebsockets", |stream| async move {
        let _ = serve(stream).await;
    })
}
