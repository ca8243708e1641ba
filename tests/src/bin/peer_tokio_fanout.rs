//! Benchmark peer for fan-out: a tokio broadcast-channel server (tokio-websockets, one thread)
//! on 127.0.0.1:PORT speaking just enough of Phoenix's V2 protocol: a `phx_join` is answered
//! `ok` and subscribes the connection to the one broadcast channel; a `shout` is encoded once
//! and sent, through the channel, to every subscriber as `[null,null,topic,"shout",payload]`.
//! A subscriber that falls more than 4,096 messages behind loses the oldest (tokio's
//! `broadcast` semantics), which the load generator counts as missing.

use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use spool_tests::peer::{Channel, channel_message, serve_on_one_thread};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};

async fn serve(
    stream: TcpStream,
    hub: Rc<broadcast::Sender<bytes::Bytes>>,
) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    let (_request, mut ws) = ServerBuilder::new().accept(stream).await?;
    let mut subscription: Option<broadcast::Receiver<bytes::Bytes>> = None;
    loop {
        let received = async {
            match &mut subscription {
                Some(rx) => Some(rx.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = ws.next() => {
                let Some(message) = message else { return Ok(()) };
                let message = message?;
                let Some(text) = message.as_text() else { continue };
                match channel_message(text) {
                    Channel::Join(reply) => {
                        subscription.get_or_insert_with(|| hub.subscribe());
                        ws.send(Message::text(reply)).await?;
                    }
                    Channel::Broadcast(shout) => {
                        let _ = hub.send(bytes::Bytes::from(shout));
                    }
                    Channel::Ignore => {}
                }
            }
            shout = received => match shout {
                Some(Ok(shout)) => {
                    // Safe: the channel only carries what `channel_message` made from a str.
                    let text = tokio_websockets::Payload::from(shout);
                    ws.send(Message::text(text)).await?;
                }
                Some(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Some(Err(broadcast::error::RecvError::Closed)) | None => return Ok(()),
            },
        }
    }
}

fn main() -> std::io::Result<()> {
    let (hub, _) = broadcast::channel(4096);
    let hub = Rc::new(hub);
    serve_on_one_thread("peer_tokio_fanout", move |stream| {
        let hub = hub.clone();
        async move {
            let _ = serve(stream, hub).await;
        }
    })
}
