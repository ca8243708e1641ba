//! Benchmark peer: an echo server on tokio-websockets (tokio, one thread), on 127.0.0.1:PORT.
//! Every text and binary message is sent back; the library answers pings and closes.

use futures_util::{SinkExt, StreamExt};
use spool_tests::peer::serve_on_one_thread;
use tokio::net::TcpStream;
use tokio_websockets::ServerBuilder;

async fn serve(stream: TcpStream) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    let (_request, mut ws) = ServerBuilder::new().accept(stream).await?;
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            ws.send(message).await?;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    serve_on_one_thread("peer_tokio_websockets", |stream| async move {
        let _ = serve(stream).await;
    })
}
