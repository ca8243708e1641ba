//! Benchmark peer: an echo server on tokio-websockets (tokio, one thread), on 127.0.0.1:PORT.
//! Every text and binary message is sent back; the library answers pings and closes.

use futures_util::{SinkExt, StreamExt};
use spool_tests::peer::port_arg;
use tokio::net::{TcpListener, TcpStream};
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
    let port = port_arg("peer_tokio_websockets");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(async move {
                let _ = serve(stream).await;
            });
        }
    })
}
