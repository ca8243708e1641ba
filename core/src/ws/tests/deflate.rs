//! permessage-deflate on the wire: the examples of RFC 7692 §7.2.3, received in both roles.

use bytes::Bytes;

use super::*;

/// A server that negotiated permessage-deflate (context takeover both ways).
fn open_server_deflate() -> Connection {
    let mut ws = Connection::server(Config {
        deflate: Some(DeflateConfig::default()),
        ..Config::default()
    })
    .unwrap();
    ws.handle(Event::Open { now_ms: 0 });
    let request = request_with("Sec-WebSocket-Extensions: permessage-deflate\r\n");
    receive(&mut ws, 0, request);
    let out = ws.handle(Event::Accept { now_ms: 0 });
    assert!(
        matches!(out.last(), Some(Outbound::Opened(h)) if h.deflate.is_some()),
        "{out:?}"
    );
    ws
}

/// A client whose server answered with permessage-deflate (context takeover both ways).
fn open_client_deflate() -> Connection {
    let key = [5u8; 16];
    let request = ClientRequest {
        url: Url::parse("ws://h/").unwrap(),
        key,
        mask_seed: 1,
        headers: vec![],
    };
    let mut ws = Connection::client(
        Config {
            deflate: Some(DeflateConfig::default()),
            ..Config::default()
        },
        request,
    )
    .unwrap();
    ws.handle(Event::Open { now_ms: 0 });
    let key_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        accept_key(&key_b64)
    );
    let out = receive(&mut ws, 0, answer);
    assert!(
        matches!(out.last(), Some(Outbound::Opened(h)) if h.deflate.is_some()),
        "{out:?}"
    );
    ws
}

/// Feeds compressed text messages (RSV1 set, one frame each) to a server (masked) and to a
/// client (unmasked), and returns what each delivered and whether it stayed open.
#[track_caller]
fn receive_compressed(payloads: &[&[u8]]) -> [(Vec<Outbound>, bool); 2] {
    let mut server = open_server_deflate();
    let mut client = open_client_deflate();
    let (mut to_server, mut to_client) = (vec![], vec![]);
    for (i, p) in payloads.iter().enumerate() {
        to_server.extend(receive(
            &mut server,
            1 + i as u64,
            test_frame(true, true, 1, p, M),
        ));
        to_client.extend(receive(
            &mut client,
            1 + i as u64,
            test_frame(true, true, 1, p, None),
        ));
    }
    let (s_open, c_open) = (server.is_open(), client.is_open());
    [(to_server, s_open), (to_client, c_open)]
}

#[track_caller]
fn assert_delivers(payloads: &[&[u8]], texts: &[&str]) {
    let want: Vec<Outbound> = texts
        .iter()
        .map(|t| Outbound::Deliver(Message::text(*t)))
        .collect();
    for ((out, open), role) in receive_compressed(payloads)
        .into_iter()
        .zip(["server", "client"])
    {
        assert_eq!(out, want, "{role}");
        assert!(open, "{role} still open");
    }
}

const HELLO: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

#[test]
fn rfc7692_7_2_3_1_a_message_compressed_in_one_block() {
    assert_delivers(&[HELLO], &["Hello"]);
}

#[test]
fn rfc7692_7_2_3_2_the_second_message_refers_back_to_the_first() {
    assert_delivers(
        &[HELLO, &[0xf2, 0x00, 0x11, 0x00, 0x00]],
        &["Hello", "Hello"],
    );
}

#[test]
fn rfc7692_7_2_3_3_a_block_with_no_compression() {
    let stored = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    assert_delivers(&[&stored], &["Hello"]);
}

#[test]
fn rfc7692_7_2_3_4_a_final_block_then_more_messages() {
    let bfinal: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    assert_delivers(&[bfinal, HELLO, HELLO], &["Hello", "Hello", "Hello"]);
}

#[test]
fn a_message_that_ends_exactly_at_its_final_block_leaves_the_stream_clean() {
    let bfinal_only: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_delivers(
        &[bfinal_only, HELLO, bfinal_only],
        &["Hello", "Hello", "Hello"],
    );
}

#[test]
fn bytes_after_the_final_block_are_ignored() {
    let trailing: &[u8] = &[
        0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0xde, 0xad, 0xbe, 0xef,
    ];
    assert_delivers(&[trailing, HELLO], &["Hello", "Hello"]);
}

#[test]
fn rfc7692_7_2_3_5_two_blocks_in_one_message() {
    let two = [
        0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ];
    assert_delivers(&[&two], &["Hello"]);
}

#[test]
fn rfc7692_examples_split_across_fragments_and_reads() {
    // 7.2.3.4 as two frames (RSV1 on the first only), each read split at every offset.
    let bfinal: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    let mut wire = test_frame(false, true, 1, &bfinal[..3], M).to_vec();
    wire.extend_from_slice(&test_frame(true, false, 0, &bfinal[3..], M));
    wire.extend_from_slice(&test_frame(true, true, 1, HELLO, M));
    for cut in 0..=wire.len() {
        let mut ws = open_server_deflate();
        let mut out = receive(&mut ws, 1, wire[..cut].to_vec());
        out.extend(receive(&mut ws, 2, wire[cut..].to_vec()));
        assert_eq!(
            out,
            [
                Outbound::Deliver(Message::text("Hello")),
                Outbound::Deliver(Message::text("Hello"))
            ],
            "cut at {cut}"
        );
    }
}

// ---- prepared (broadcast) messages ----

fn with_deflate() -> Config {
    deflate_config(|_| {})
}

fn deflate_config(f: impl FnOnce(&mut DeflateConfig)) -> Config {
    let mut d = DeflateConfig::default();
    f(&mut d);
    Config {
        deflate: Some(d),
        ..Config::default()
    }
}

/// Sends `prepared` from the pair's server; returns the frame's body and what the client got.
fn server_sends_prepared(p: &mut Pair, prepared: &PreparedMessage) -> (Bytes, Vec<Message>) {
    let out = p.server.handle(Event::SendPrepared {
        now_ms: p.now_ms,
        message: prepared.clone(),
    });
    let [Outbound::Transmit(frame)] = &out[..] else {
        panic!("{out:?}")
    };
    let body = frame.body().clone();
    p.absorb(out, false);
    p.drive();
    (body, delivered(&mut p.client_got))
}

#[test]
fn a_broadcast_is_compressed_once_and_its_frame_shared() {
    let text = "the same news for everyone, compressed once. ".repeat(40);
    let prepared = PreparedMessage::compressed(Message::text(text.clone()), 15, 1);
    let shared = prepared.deflated().unwrap().clone();
    assert!(shared.len() < text.len() / 4);
    // Like every event, it goes into an event log and comes back the same.
    let event = Event::SendPrepared {
        now_ms: 1,
        message: prepared.clone(),
    };
    let line = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);

    // Servers whose own side resets its window (the client asked, or the server insists).
    let asked = || deflate_config(|d| d.server_no_context_takeover = true);
    let insists = || deflate_config(|d| d.server_no_context_takeover = true);
    let mut a = Pair::new(asked(), with_deflate());
    let mut b = Pair::new(with_deflate(), insists());
    for p in [&mut a, &mut b] {
        p.client_got.clear();
        let (body, got) = server_sends_prepared(p, &prepared);
        assert_eq!(body.as_ptr(), shared.as_ptr(), "the very same bytes");
        assert_eq!(got, [Message::text(text.clone())]);
        // The connection still compresses its own messages, and decodes after the shared one.
        p.server_sends(Message::text(text.clone()));
        assert_eq!(delivered(&mut p.client_got), [Message::text(text.clone())]);
    }
}

#[test]
fn a_prepared_message_that_does_not_fit_is_compressed_or_sent_plain() {
    let text = "a broadcast that some connections cannot take as it is. ".repeat(30);
    let prepared = PreparedMessage::compressed(Message::text(text.clone()), 15, 1);
    let shared = prepared.deflated().unwrap().clone();
    let cases = [
        // Context takeover: the shared bytes would desynchronise the server's own window.
        ("context takeover", with_deflate(), true),
        // A smaller window than the bytes were made with.
        (
            "9-bit window",
            deflate_config(|d| {
                d.server_no_context_takeover = true;
                d.server_max_window_bits = 9;
            }),
            true,
        ),
        ("no compression", Config::default(), false),
    ];
    for (name, client_config, compressed) in cases {
        let mut p = Pair::new(client_config, with_deflate());
        p.client_got.clear();
        for _ in 0..2 {
            let (body, got) = server_sends_prepared(&mut p, &prepared);
            assert_ne!(body.as_ptr(), shared.as_ptr(), "{name}");
            assert_eq!(body.len() < text.len(), compressed, "{name}");
            assert_eq!(got, [Message::text(text.clone())], "{name}");
        }
    }
}

#[test]
fn a_client_sends_prepared_bytes_masked() {
    let text = "from a client, compressed once. ".repeat(20);
    let prepared = PreparedMessage::compressed(Message::binary(text.clone()), 15, 6);
    let mut p = Pair::new(
        deflate_config(|d| d.client_no_context_takeover = true),
        with_deflate(),
    );
    p.server_got.clear();
    let out = p.client.handle(Event::SendPrepared {
        now_ms: p.now_ms,
        message: prepared.clone(),
    });
    assert_eq!(transmits(&out)[0], 0xc2, "FIN, RSV1, binary");
    p.absorb(out, true);
    p.drive();
    assert_eq!(
        delivered(&mut p.server_got),
        [Message::binary(text.into_bytes())]
    );
    // Pings are never compressed; small messages follow the threshold.
    assert_eq!(
        PreparedMessage::compressed(Message::Ping(Bytes::new()), 15, 1).deflated(),
        None
    );
    let small = PreparedMessage::compressed(Message::text("hi"), 15, 1);
    let out = p.client.handle(Event::SendPrepared {
        now_ms: p.now_ms,
        message: small,
    });
    assert_eq!(transmits(&out)[0], 0x81, "below threshold_len: plain");
}
