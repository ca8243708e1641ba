//! Benchmark peer: an echo server on async-tungstenite over smol (one executor thread plus
//! async-io's reactor), on 127.0.0.1:PORT. Every text and binary message is sent back;
//! tungstenite answers pings and closes.

use std::net::TcpListener;

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use smol::{Async, LocalExecutor};
use spool_tests::peer::port_arg;

async fn serve(stream: Async<std::net::TcpStream>) -> Result<(), Box<dyn std::error::Error>> {
    stream.get_ref().set_nodelay(true)?;
    let mut ws = async_tungstenite::accept_async(stream).await?;
    while let Some(message) = ws.next().await {
        match message? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let port = port_arg("peer_async_tungstenite");
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], port))?;
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        loop {
            let (stream, _) = listener.accept().await?;
            ex.spawn(async move {
                let _ = serve(stream).await;
            })
            .detach();
        }
    }))
}
