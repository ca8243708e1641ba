//! What the benchmark suite's peers (`src/bin/peer_*.rs`) share: the opening handshake of the
//! ones whose library has none of its own, the arguments, and the mini Phoenix protocol of the
//! fan-out peers (a `phx_join` is answered `ok` and subscribes; a `shout` goes to everyone).

/// What [`upgrade_response`] made of the bytes read so far.
pub enum Upgrade {
    /// The request head is not complete yet.
    Partial,
    /// The 101 response to write, and how many bytes the head took.
    Accept(Vec<u8>, usize),
    /// Not a WebSocket upgrade (or a head over 8 KiB): close the connection.
    Bad,
}

/// Parses an upgrade request head and builds the 101 answer (RFC 6455 §4.2.2).
pub fn upgrade_response(head: &[u8]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) if head.len() <= 8192 => Upgrade::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let key = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .and_then(|h| std::str::from_utf8(h.value).ok());
            match key {
                Some(key) => {
                    let accept = spool_core::ws::accept_key(key.trim());
                    let response = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    Upgrade::Accept(response.into_bytes(), len)
                }
                None => Upgrade::Bad,
            }
        }
        _ => Upgrade::Bad,
    }
}

/// The tokio peers' server: one thread, one current-thread runtime, each accepted connection a
/// local task running `serve`. Binds 127.0.0.1 on the port of the command line.
pub fn serve_on_one_thread<F, Fut>(name: &str, serve: F) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future + 'static,
{
    let port = port_arg(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let task = serve(stream);
            tokio::task::spawn_local(async move {
                task.await;
            });
        }
    })
}

/// The port from the first argument; exits with a usage line otherwise.
pub fn port_arg(name: &str) -> u16 {
    match std::env::args().nth(1).and_then(|p| p.parse().ok()) {
        Some(port) => port,
        None => {
            eprintln!("usage: {name} PORT   (listens on 127.0.0.1:PORT)");
            std::process::exit(2);
        }
    }
}

/// The client frame at the start of `b`: (first byte, head length with the key, payload
/// length, masking key). `None` until the whole frame is there; `Some(Err(()))` when it is
/// unmasked or longer than `max`, which ends the connection.
#[inline]
#[allow(clippy::type_complexity)]
pub fn client_frame(b: &[u8], max: usize) -> Option<Result<(u8, usize, usize, [u8; 4]), ()>> {
    if b.len() < 2 {
        return None;
    }
    let (fin_op, masked, len7) = (b[0], b[1] & 0x80 != 0, (b[1] & 0x7f) as usize);
    let (len, head) = match len7 {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(l) as usize, 10)
        }
        126 | 127 => return None,
        n => (n, 2),
    };
    if !masked || len > max {
        return Some(Err(()));
    }
    if b.len() < head + 4 + len {
        return None;
    }
    let key = [b[head], b[head + 1], b[head + 2], b[head + 3]];
    Some(Ok((fin_op, head + 4, len, key)))
}

/// Appends a server frame's head (unmasked) for a payload of `len` bytes.
#[inline]
pub fn push_server_head(out: &mut Vec<u8>, fin_op: u8, len: usize) {
    out.push(fin_op);
    match len {
        0..=125 => out.push(len as u8),
        126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// XOR with the key, eight bytes at a time.
#[inline]
pub fn unmask(data: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// What a fan-out peer does with a text message from a client.
pub enum Channel {
    /// Answer this reply (and subscribe the connection).
    Join(String),
    /// Send this text to every subscriber.
    Broadcast(String),
    /// Nothing.
    Ignore,
}

/// Reads a Phoenix V2 message `[join_ref, ref, topic, event, payload]`.
pub fn channel_message(text: &str) -> Channel {
    let Ok(serde_json::Value::Array(v)) = serde_json::from_str::<serde_json::Value>(text) else {
        return Channel::Ignore;
    };
    let [join_ref, reference, topic, event, payload] = &v[..] else {
        return Channel::Ignore;
    };
    match event.as_str() {
        Some("phx_join") => Channel::Join(
            serde_json::json!([
                join_ref,
                reference,
                topic,
                "phx_reply",
                {"status": "ok", "response": {}}
            ])
            .to_string(),
        ),
        Some("shout") => {
            Channel::Broadcast(serde_json::json!([null, null, topic, "shout", payload]).to_string())
        }
        _ => Channel::Ignore,
    }
}
